"""The energy detector against the whole attack zoo (robgen/attacks/zoo.py).

    results = zoo_study(model, detection_splits(model, "cifar10", limit=500), ZooStudySettings())
    python -m robgen zoo --model cifar10-resnet10-standard --data cifar10 --limit 500 --out results/zoo

For every attack, on the same clean images and through the one detection
pipeline (`model_outputs`, `fit_detector`, `evaluate_detector`):

- what the attack does: how many images it perturbed at all (torchattacks'
  APGD, APGD-T, CW, FAB, Square and AutoAttack return the clean image where
  they fail or the model was already wrong), success rate (clean-correct
  images it makes wrong), mean perturbation size (L-inf and L2), mean
  ΔE = E(adv) - E(clean) per image;
- the detector fitted once on PGD-40 (the paper's: 8/255, step 1/255, 40
  steps, random start) on the validation split: detection rate (over all
  attacked images), false-positive rate and AUROC on the test split, and the
  detection rate on successful examples (pipeline.DEFINITIONS), which leaves
  out the images an attack returned unchanged, that would otherwise count as misses;
- the detector refitted on the attack itself (the most a defender who knows
  the attack could do with a threshold on E(x)), on its perturbed validation
  images only (`fit_detector`): the same rates.

Intervals are 95%: Wilson's for proportions, its counterpart for AUROC
(`metrics.auroc_interval`), the normal approximation for means. An attack that fails on a model
(an exception) is reported in the table with its error, and the study goes on.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from .. import data as datasets
from .. import distributed
from ..attacks.zoo import ZOO_NAMES, ZooSettings, zoo_attack, zoo_entry
from ..detection.detector import EnergyDetector
from ..metrics import AUROC_INTERVAL, auroc_interval, mean_interval, wilson_interval
from ..models.state import model_device
from .pipeline import (
    DEFINITIONS, DetectionSplits, ModelOutputs, evaluate_detector, fit_detector, model_outputs, successful,
)

logger = logging.getLogger(__name__)

FIT_ATTACK = "PGD-40"  # the paper's detector is fitted on PGD examples of the validation split


# the threat settings that one attack of the zoo alone takes (eps and step_size: many)
THREAT_SETTING_USERS = {"l2_eps": "PGD-L2", "lam": "HE-PGD", "square_queries": "Square"}


@dataclass
class ZooStudySettings:
    """What the study runs; stored in results.json."""

    attacks: Tuple[str, ...] = ZOO_NAMES
    threat: ZooSettings = field(default_factory=ZooSettings)
    rule: str = "youden"  # the official notebooks' threshold rule
    temperature: Union[float, str] = "search"  # the official notebooks search T by validation AUROC
    batch_size: int = 250
    seed: int = 0
    fused: Optional[bool] = None  # None: robgen.engine.fused's setting

    def __post_init__(self) -> None:
        # unknown names fail here, listing all; two spellings of one attack ("PGD-40", "pgd") run it once
        self.attacks = tuple(dict.fromkeys(zoo_entry(name).name for name in self.attacks))
        if not self.attacks:
            raise ValueError(f"no attacks given: choose from {', '.join(ZOO_NAMES)}")
        # a threat setting none of the chosen attacks takes would be recorded in results.json as if it were used
        defaults = ZooSettings()
        unused = [f"{name.replace('_', '-')} (used by {attack} only)" for name, attack in THREAT_SETTING_USERS.items()
                  if getattr(self.threat, name) != getattr(defaults, name) and attack not in self.attacks]
        if unused:
            raise ValueError(f"none of the attacks {', '.join(self.attacks)} takes {', '.join(unused)}: leave it out, "
                             "or add the attack that takes it")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.temperature != "search" and not (isinstance(self.temperature, (int, float))
                                                  and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0 or 'search', got {self.temperature!r}")


class PerturbationRecorder:
    """Wraps an attack for `model_outputs`: returns its output and keeps each image's L-inf and L2 change."""

    def __init__(self, attack) -> None:
        self.attack = attack
        self.linf: List[torch.Tensor] = []
        self.l2: List[torch.Tensor] = []

    @property
    def generator(self):
        """The attack's generator, which `model_outputs` reseeds per batch from its index: without it one stream ran
        on from the validation batches into the test batches, and --val-size changed the test numbers."""
        return getattr(self.attack, "generator", None)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, **call_settings) -> torch.Tensor:
        adversarial = self.attack(images, labels, **call_settings)
        delta = (adversarial - images).detach().flatten(1).double()
        self.linf.append(delta.abs().amax(1).cpu())
        self.l2.append(delta.norm(dim=1).cpu())
        return adversarial

    def sizes(self) -> Dict[str, torch.Tensor]:
        return {"linf": torch.cat(self.linf), "l2": torch.cat(self.l2)}


def _generator(model, settings: ZooStudySettings, name: str) -> torch.Generator:
    """A generator per attack, seeded from the study's seed and the attack's name (not from its position)."""
    seed = settings.seed * 1_000_003 + zlib.crc32(name.encode())
    return torch.Generator(device=model_device(model)).manual_seed(seed % (2**63))


def _proportion(flags: torch.Tensor) -> dict:
    flags = flags.flatten().bool()
    n, hits = int(flags.numel()), int(flags.sum())
    return {"value": hits / n if n else math.nan, "ci": list(wilson_interval(hits, n)), "n": n}


def _mean(values: torch.Tensor) -> dict:
    values = values.flatten().double()
    n = int(values.numel())
    return {"value": float(values.mean()) if n else math.nan, "ci": list(mean_interval(values)), "n": n}


def detector_rates(detector: EnergyDetector, clean: ModelOutputs, adversarial: ModelOutputs) -> dict:
    """Detection rate, FPR and AUROC (with intervals) and the detection rate on successful examples, on test."""
    report = evaluate_detector(detector, clean, adversarial)
    flagged_adv, flagged_clean = detector.predict(adversarial.logits), detector.predict(clean.logits)
    clean_energy, adv_energy = detector.energies(clean.logits), detector.energies(adversarial.logits)
    success = successful(clean, adversarial)
    return {
        "detection_rate": _proportion(flagged_adv),
        "false_positive_rate": _proportion(flagged_clean),
        "auroc": {"value": report["auroc"], "ci": list(auroc_interval(clean_energy, adv_energy, area=report["auroc"]))},
        "detection_rate_successful": _proportion(flagged_adv[success]),
        "threshold": detector.threshold, "temperature": detector.temperature,
    }


def attack_effect(clean: ModelOutputs, adversarial: ModelOutputs, sizes: Dict[str, torch.Tensor]) -> dict:
    """Images attacked and perturbed, success rate, perturbation sizes, ΔE = E(adv) - E(clean) (T = 1, per image)."""
    success = successful(clean, adversarial)
    delta_energy = adversarial.energy() - clean.energy()
    return {
        "n_attacked": len(adversarial), "n_perturbed": int(adversarial.perturbed_mask.sum()),
        "success_rate": _proportion(success[clean.correct]),
        "adversarial_accuracy": _proportion(adversarial.correct),
        "linf": _mean(sizes["linf"]), "l2": _mean(sizes["l2"]),
        "linf_successful": _mean(sizes["linf"][success]), "l2_successful": _mean(sizes["l2"][success]),
        "delta_energy": _mean(delta_energy),
    }


def zoo_study(model, splits: DetectionSplits, settings: Optional[ZooStudySettings] = None, progress=True,
              on_attack=None) -> dict:
    """Run every attack of `settings.attacks` against the energy detector; returns the results (JSON-ready).

    `on_attack(name, row)` is called after each attack (the CLI prints a line).
    The per-image ΔE of every attack (test split) is in `results["delta_energy"]`.
    """
    if distributed.is_distributed():  # the perturbation sizes are recorded per process, in its share's order
        raise ValueError("zoo_study runs in one process: start it without torchrun")
    settings = settings or ZooStudySettings()
    started = time.perf_counter()
    loaders = splits.loaders(settings.batch_size)

    def outputs(split: str, attack=None, desc: str = "") -> ModelOutputs:
        return model_outputs(model, loaders[split], attack=attack, progress=progress if attack is not None else False,
                             desc=desc)

    clean = {split: outputs(split) for split in loaders}

    def run(name: str):
        """Adversarial outputs and perturbation sizes on both splits, the seconds taken and the attack's repr."""
        attack = zoo_attack(name, model, settings.threat, _generator(model, settings, name), settings.fused)
        recorders = {split: PerturbationRecorder(attack) for split in loaders}
        seconds = time.perf_counter()
        adversarial = {split: outputs(split, recorders[split], f"{name} ({split})") for split in loaders}
        sizes = {split: recorders[split].sizes() for split in loaders}
        return adversarial, sizes, time.perf_counter() - seconds, repr(attack)

    fit_run = run(FIT_ATTACK)  # an error here ends the study: nothing to compare with
    paper_detector = fit_detector(clean["validation"], fit_run[0]["validation"], settings.rule, settings.temperature)

    rows, delta_energy = [], {}
    for name in settings.attacks:
        entry = zoo_entry(name)
        row = {"attack": name, "threat": entry.threat, "access": entry.access, "source": entry.source,
               "reference": entry.reference, "targeted": entry.targeted}
        try:
            adversarial, sizes, seconds, description = fit_run if name == FIT_ATTACK else run(name)
        except Exception as error:  # an attack that fails on this model: report it and go on
            logger.warning("%s failed: %s: %s", name, type(error).__name__, error)
            row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            if on_attack is not None:
                on_attack(name, row)
            continue
        test = adversarial["test"]
        try:  # on the attack's perturbed validation images: an attack that changed none has nothing to fit on,
            # which says nothing against its measured effect (a model it cannot fool: 0 successes, as measured)
            refit = fit_detector(clean["validation"], adversarial["validation"], settings.rule, settings.temperature)
            refitted = detector_rates(refit, clean["test"], test)
        except ValueError as error:
            logger.warning("%s: no detector refitted on it: %s", name, error)
            refitted = {"error": str(error)}
        row.update(
            attack_repr=description, seconds=seconds,
            **attack_effect(clean["test"], test, sizes["test"]),
            n_perturbed_validation=int(adversarial["validation"].perturbed_mask.sum()),
            fitted_on_pgd40=detector_rates(paper_detector, clean["test"], test),
            refitted=refitted,
        )
        delta_energy[name] = (test.energy() - clean["test"].energy()).tolist()
        rows.append(row)
        if on_attack is not None:
            on_attack(name, row)
    return {
        "model": model.spec.source, "architecture": model.spec.architecture, "arch_kwargs": model.spec.arch_kwargs,
        "data": splits.data, "n_validation": len(clean["validation"]), "n_test": len(clean["test"]),
        "clean_accuracy": _proportion(clean["test"].correct),
        "clean_energy_mean": _mean(clean["test"].energy()),
        "fit_attack": FIT_ATTACK, "detector": paper_detector.to_dict(),
        "n_validation_perturbed_fit_attack": int(fit_run[0]["validation"].perturbed_mask.sum()),
        "definitions": DEFINITIONS, "auroc_interval": AUROC_INTERVAL,
        "settings": {**asdict(settings), "attacks": list(settings.attacks)},
        "rows": rows, "delta_energy": delta_energy,
        "hardware": distributed.hardware(model_device(model)), "wall_seconds": time.perf_counter() - started,
    }


@datasets.reads_data_root
def run_zoo(model, data, out: Optional[Path] = None, *, val_size: Optional[int] = None, limit: Optional[int] = None,
            data_root=None, download: bool = False, settings: Optional[ZooStudySettings] = None, progress=True,
            on_attack=None) -> dict:
    """Splits of `data` (validation held out of train, test), the study, and its report in `out` (if given)."""
    from .pipeline import detection_splits
    from .zoo_report import write_report

    settings = settings or ZooStudySettings()
    splits = detection_splits(model, data, val_size=val_size, limit=limit, seed=settings.seed, data_root=data_root,
                              download=download)
    results = zoo_study(model, splits, settings, progress=progress, on_attack=on_attack)
    if out is not None:
        write_report(results, Path(out))
    return results
