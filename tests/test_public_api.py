"""The public surface is small and pinned; the README's Python example runs."""

import re

import robgen
from tests.conftest import REPO

PUBLIC = {
    "load_model", "list_models", "load_checkpoint", "save_checkpoint", "Classifier", "ModelSpec",
    "energy", "class_energy", "log_prob_given_x", "model_outputs", "ModelOutputs",
    "Attack", "FGSM", "PGD", "HighEnergyPGD", "HEPGD", "APGD", "Trace", "make_attack",
    "EnergyDetector", "load_image", "save_image", "synthesize", "inpaint", "translate", "sgld_sample",
    "attacks", "data", "metrics", "synthesis", "__version__",
}


def test_public_api_is_pinned():
    assert set(robgen.__all__) == PUBLIC
    for name in robgen.__all__:
        assert hasattr(robgen, name), name


def test_readme_python_example_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has a Python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["report"]["detection_rate"] >= 0
