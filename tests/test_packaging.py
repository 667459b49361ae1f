"""`pip install .` gives a robgen that finds its shipped checkpoints (and their seeds and detectors) anywhere."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# every checkpoint folder of the checkout (the CIFAR-10 and Imagenette models)
SHIPPED = sorted(folder.name for folder in (REPO / "checkpoints").iterdir() if (folder / "config.json").is_file())

# Run in a fresh interpreter, outside the checkout, against the installed copy only.
PROBE = """
import json, robgen
from robgen.models import loading

found = {"robgen": robgen.__file__, "models": robgen.list_models(),
         "search_path": [str(p) for p in getattr(loading, "checkpoint_search_path", lambda: [])()]}
try:
    from robgen.experiments.calibration import load_shipped_detector
    from robgen.models.checkpoint import model_folder
    from robgen.synthesis import load_seeds

    model = robgen.load_model("cifar10-resnet10-robust")
    found.update(folder=str(model_folder(model)), labels=model.spec.class_labels,
                 seeds=load_seeds(model).class_labels, threshold=load_shipped_detector(model).threshold)
except Exception as error:
    found["error"] = f"{type(error).__name__}: {error}"
print(json.dumps(found))
"""


def test_pyproject_lists_every_subpackage():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "robgen").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "robgen._checkpoints" in listed


@pytest.mark.slow
def test_a_non_editable_install_finds_the_shipped_checkpoints(tmp_path):
    pytest.importorskip("setuptools")
    source = _mkdir(tmp_path / "source")  # a clean copy, so the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "trainer_state.pt")
    shutil.copytree(REPO / "robgen", source / "robgen", ignore=ignore)
    shutil.copytree(REPO / "checkpoints", source / "checkpoints", ignore=ignore)
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = _mkdir(tmp_path / "elsewhere")
    env = {key: value for key, value in os.environ.items() if key not in ("ROBGEN_CHECKPOINTS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                           cwd=elsewhere, env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    installed = target / "robgen"
    assert Path(found["robgen"]).parent == installed, "the probe must import the installed copy"
    assert found["models"] == SHIPPED
    assert "error" not in found, found.get("error")
    assert found["search_path"] == [str(installed / "_checkpoints")]
    assert found["folder"] == str(installed / "_checkpoints" / "cifar10-resnet10-robust")
    assert found["seeds"] == found["labels"] and found["threshold"] is not None
    assert not list(installed.glob("_checkpoints/*/trainer_state.pt")), "training state is not shipped"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
