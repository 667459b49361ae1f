"""Shared fixtures: tiny random models, and a small CNN trained on real CIFAR-10; the test markers.

Markers (`pytest -m "not slow"` gives feedback in under a minute; CI runs everything):
- `data`: needs the shared CIFAR-10 archive (any test using `cifar_root`); also `slow`;
- `browser`: drives headless Chromium (tests/test_browser.py); also `slow`;
- `slow`: the above, the modules in SLOW_MODULES, and tests marked by hand.

The real-data fixtures unpack ../shared/data/cifar10-imagefolder.tar.gz (or
use $ROBGEN_DATA if it already holds cifar10/) into a git-ignored cache, and
skip with a stated reason where the archive is absent.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

import robgen
from robgen.models import Classifier, ModelSpec
from robgen.models.checkpoint import build_network

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROBGEN_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-imagefolder.tar.gz"


SLOW_MODULES = {"test_app", "test_browser", "test_distributed", "test_end_to_end", "test_reproduce",
                "test_packaging", "test_shipped_checkpoints", "test_synthesis_cli"}
DATA_FIXTURES = {"cifar_root", "trained_checkpoint"}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds to minutes; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "browser: drives headless Chromium")
    config.addinivalue_line("markers", "data: needs the shared CIFAR-10 archive (../shared/data)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
            item.add_marker(pytest.mark.slow)
        if module == "test_browser":
            item.add_marker(pytest.mark.browser)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def tiny_model(width: int = 4, seed: int = 0, num_classes: int = 10) -> Classifier:
    """A random narrow CIFAR ResNet10 (fast on the CPU), in eval mode."""
    torch.manual_seed(seed)  # tests only: library code never seeds globally
    spec = ModelSpec(
        architecture="resnet10_cifar", num_classes=num_classes, class_labels=[f"c{i}" for i in range(num_classes)],
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 32, 32), arch_kwargs={"width": width},
    )
    return Classifier(build_network(spec), spec).eval()


@pytest.fixture
def model() -> Classifier:
    return tiny_model()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)


def unpacked_data_root(holds, archive: Path, what: str) -> Path:
    """$ROBGEN_DATA or ~/.cache/robgen-data where `holds(root)`, else the cache with `archive` unpacked into it;
    a skip with the reason where the archive is absent."""
    env_root = os.environ.get("ROBGEN_DATA")
    if env_root and holds(Path(env_root)):
        return Path(env_root)
    cache = Path.home() / ".cache" / "robgen-data"
    if holds(cache):
        return cache
    if not archive.is_file():
        pytest.skip(f"real-data test: {archive} is absent (needs {what})")
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as unpacking:
        unpacking.extractall(cache, filter="data")
    return cache


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A data root holding cifar10/{train,test}/<class>/ images."""
    def holds_cifar(root: Path) -> bool:
        return (root / "cifar10" / "test" / "truck").is_dir() and (root / "cifar10" / "train" / "truck").is_dir()

    return unpacked_data_root(holds_cifar, CIFAR_ARCHIVE, "the shared CIFAR-10 archive")


IMAGENETTE_ARCHIVE = SHARED_DATA / "imagenette2-160.tar.gz"
DATA_FIXTURES |= {"imagenette_root"}


@pytest.fixture(scope="session")
def imagenette_root() -> Path:
    """A data root holding Imagenette (imagenette2-160/{train,val}/<wnid>/ images, or imagenette/{train,val}/)."""
    def holds_imagenette(root: Path) -> bool:
        return any((root / folder / "train" / "n03888257").is_dir() and (root / folder / "val" / "n03888257").is_dir()
                   for folder in ("imagenette", "imagenette2-160"))

    return unpacked_data_root(holds_imagenette, IMAGENETTE_ARCHIVE, "the shared Imagenette archive")


@pytest.fixture(scope="session")
def trained_checkpoint(cifar_root, tmp_path_factory) -> Path:
    """A width-8 ResNet10 trained for about a minute (4 epochs of 10,000 CIFAR-10 images), once per session."""
    from robgen.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("trained") / "cifar10-small"
    config = TrainConfig(data="cifar10", width=8, epochs=4, train_limit=10000, batch_size=128, lr=0.1,
                         eval_subset=100, eval_steps=2, seed=0)
    train(config, folder, data_root=cifar_root, device="cpu", progress=False)
    return folder


def make_toy_image_folder(root: Path, classes: int = 4, per_class: int = 40, size: int = 16) -> Path:
    """A learnable ImageFolder: each class a colour plus noise."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])[:classes]
    for label, colour in enumerate(colours):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            x = (colour.view(3, 1, 1) + 0.25 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
            robgen.save_image(x, folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """A 4-class, 160-image ImageFolder of 16x16 images that a tiny model learns in seconds."""
    return make_toy_image_folder(tmp_path_factory.mktemp("toy") / "images")
