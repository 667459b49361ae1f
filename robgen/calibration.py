"""The energy detector shipped next to a checkpoint, fitted once on validation images.

`calibrate_detector` attacks `n` validation images, fits an `EnergyDetector`
on their clean and adversarial energies, measures it on `n` test images, and
keeps the validation energies in `detector.calibration`, so that the app can
draw the histogram that the threshold was chosen on. The result lives in
`detector.json` in the checkpoint folder:

    python -m robgen fit-detector --model cifar10-resnet10-standard --data cifar10
    detector = load_shipped_detector(robgen.load_model("cifar10-resnet10-standard"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from . import data as datasets
from .detector import EnergyDetector
from .energy import compute_energies
from .models.checkpoint import model_folder

DETECTOR_FILE = "detector.json"


def calibrate_detector(model, dataset_name: str, attack, n: int = 500, rule: str = "gmean", val_size: int = 5000,
                       data_root: Optional[str] = None, download: bool = False, batch_size: int = 250,
                       progress=True, seed: int = 0) -> EnergyDetector:
    """Fit on the first `n` images of the seeded validation split; evaluate on the first `n` test images."""
    size = model.spec.input_size[1]
    train = datasets.load_dataset(dataset_name, "train", root=data_root, download=download, image_size=size)
    test = datasets.load_dataset(dataset_name, "test", root=data_root, download=download, image_size=size)
    if datasets.class_names(test) != list(model.spec.class_labels):
        raise ValueError(f"{dataset_name}'s classes are not the model's {model.spec.class_labels}")
    _, val = datasets.train_val_split(train, val_size, seed=seed)
    splits = {"validation": datasets.first(val, n, "validation split"), "test": datasets.first(test, n, "test split")}
    energies = {}
    for name, subset in splits.items():
        loader = datasets.make_loader(subset, batch_size=batch_size)
        clean = compute_energies(model, loader, progress=progress, desc=f"{name}: clean")
        adversarial = compute_energies(model, loader, attack=attack, progress=progress, desc=f"{name}: attack")
        energies[name] = (clean, adversarial)
    (val_clean, val_adv), (test_clean, test_adv) = energies["validation"], energies["test"]
    detector = EnergyDetector(rule=rule).fit(val_clean.energy, val_adv.energy)
    detector.calibration = {
        "data": str(dataset_name), "attack": repr(attack), "n_validation": len(val_clean.energy),
        "n_test": len(test_clean.energy), "test": detector.evaluate(test_clean.energy, test_adv.energy),
        "clean_accuracy": test_clean.accuracy, "adversarial_accuracy": test_adv.accuracy,
        "clean_energy": [round(float(e), 4) for e in val_clean.energy],
        "adversarial_energy": [round(float(e), 4) for e in val_adv.energy],
    }
    return detector


def shipped_detector_path(model) -> Optional[Path]:
    folder = model_folder(model)
    return folder / DETECTOR_FILE if folder is not None else None


def load_shipped_detector(model) -> EnergyDetector:
    """The detector in the model's checkpoint folder, or an error that says how to fit one."""
    path = shipped_detector_path(model)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"no {DETECTOR_FILE} next to this model: fit one with `python -m robgen fit-detector --model "
            f"{getattr(model.spec, 'source', '') or 'MODEL'} --data DATASET`"
        )
    return EnergyDetector.load(path)


def calibration_energies(detector: EnergyDetector) -> tuple:
    """(clean, adversarial) validation energies the detector was fitted on, as tensors (empty if unknown)."""
    return (torch.tensor(detector.calibration.get("clean_energy", [])),
            torch.tensor(detector.calibration.get("adversarial_energy", [])))
