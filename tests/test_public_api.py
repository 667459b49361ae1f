"""The public surface is small and pinned; the README's Python example runs."""

import re

import torch

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
    torch.manual_seed(0)  # the example draws unseeded images: seeded, its clean and adversarial rates differ
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    report, detector = namespace["report"], namespace["detector"]
    clean_test, adversarial_test = namespace["clean_logits"][8:], namespace["adv_logits"][8:]
    assert report["n_clean"] == report["n_adversarial"] == 8, "the report describes the 8-image test half"
    # the report's rates are those of the fitted detector's own predictions on the test half
    flagged_adversarial = detector.predict(adversarial_test)
    flagged_clean = detector.predict(clean_test)
    assert flagged_adversarial.shape == flagged_clean.shape == (8,)
    assert report["detection_rate"] == float(flagged_adversarial.double().mean())
    assert report["false_positive_rate"] == float(flagged_clean.double().mean())
    assert report["threshold"] == detector.threshold
