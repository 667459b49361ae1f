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

from typing import Optional, Sequence, Union

import torch

from .. import data as datasets
from ..detection.detector import TEMPERATURES, EnergyDetector
from ..models.checkpoint import companion_file
from .pipeline import detection_experiment, detection_splits, perturbed_only

DETECTOR_FILE = "detector.json"


@datasets.reads_data_root
def calibrate_detector(model, dataset_name: str, attack, n: int = 500, rule: str = "youden",
                       temperature: Union[float, str] = "search", temperatures: Sequence[float] = TEMPERATURES,
                       val_size: Optional[int] = None,
                       data_root: Optional[str] = None, download: bool = False, batch_size: int = 250,
                       progress=True, seed: int = 0, target_fpr: float = 0.05) -> EnergyDetector:
    """Fit on the first `n` images of the seeded validation split; evaluate on the first `n` test images.

    The defaults are the official protocol: Youden's J, temperature searched over the official grid.
    `target_fpr`: the false-positive budget of rule "fpr".
    """
    splits = detection_splits(model, dataset_name, val_size=val_size, limit=n, seed=seed, data_root=data_root,
                              download=download)
    datasets.check_model_matches(model.spec, dataset_name, splits.classes, by_name=True)  # fitted to these classes
    result = detection_experiment(model, splits, attack, rule=rule, temperature=temperature,
                                  temperatures=temperatures, target_fpr=target_fpr, batch_size=batch_size,
                                  progress=progress)
    detector = result.detector.bind(model)
    val_clean = result.clean["validation"]
    val_adv = perturbed_only(result.adversarial["validation"])  # the adversarial side the threshold was fitted on
    detector.calibration = {
        "data": str(dataset_name), "attack": repr(attack), "n_validation": len(val_clean),
        "n_validation_perturbed": len(val_adv),
        "n_test": result.report["n_test"], "test": detector.evaluate(result.clean["test"].logits,
                                                                     result.adversarial["test"].logits),
        "clean_accuracy": result.report["clean_accuracy"], "adversarial_accuracy": result.report["adversarial_accuracy"],
        "clean_energy": [round(float(e), 4) for e in val_clean.energy(detector.temperature)],
        "adversarial_energy": [round(float(e), 4) for e in val_adv.energy(detector.temperature)],
    }
    return detector


def load_shipped_detector(model) -> EnergyDetector:
    """The detector in the model's checkpoint folder (refused if fitted for other weights), or an error that says
    how to fit one."""
    detector = EnergyDetector.load(companion_file(model, DETECTOR_FILE, "fit-detector"))
    detector.check_model(model)
    return detector


def calibration_energies(detector: EnergyDetector) -> tuple:
    """(clean, adversarial) validation energies the detector was fitted on, as tensors (empty if unknown)."""
    return (torch.tensor(detector.calibration.get("clean_energy", [])),
            torch.tensor(detector.calibration.get("adversarial_energy", [])))
