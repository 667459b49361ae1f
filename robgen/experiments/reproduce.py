"""Reproduce Table 1 and Figs. 2-3 of Beadini & Masi (2023), with baselines and an adaptive attacker.

One call (`reproduce`, or `python -m robgen reproduce --data cifar10|imagenette`) does all of it on
the same clean and adversarial examples:

- **Table 1**: the energy detector against PGD 8/255, PGD 16/255 and APGD
  8/255 (40 steps; PGD and HE-PGD step 1/255 with a random start): threshold
  fitted on the validation split (held out of train; clean images against the
  attacked ones the attack changed, pipeline.DEFINITIONS), evaluated on the test
  split (detection over all attacked images and over the successful ones);
  the official protocol (Youden's J, temperature searched) and, for comparison, G-mean and T = 1.
  The paper's numbers for the data set (PAPER_FACTS) stand beside the official-protocol rows.
- **Baselines**: Mahalanobis, LID and KD+BU (detection/baselines.py) on the same examples.
- **Figs. 2-3**: E(x) histograms, clean vs PGD and vs HE-PGD (λ = 1.2), and
  mean ± std of E(x) against the number of steps with the accuracy above; HE-PGD
  also at the official notebook's step count where it differs (Imagenette: 10).
- **Adaptive attacker**: HE-PGD for several λ against the detector fitted on
  PGD, and two attempts to rescue it (a two-sided band on E(x), and a
  threshold on the class energy E(x, ŷ) = -max f(x)).
- **Cost**: the model passes the run made (counted where the attacks run), one
  batch pass timed on this hardware, and the floor they set against the wall time.

Per-data-set facts (the paper's numbers, HE-PGD's λ and step counts) live in one
table, PAPER_FACTS; everything else is the same code for every data set.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from .. import data as datasets
from .. import distributed
from ..attacks import APGD, PGD, HighEnergyPGD
from ..detection.baselines import KDBUScorer, LIDScorer, MahalanobisScorer, last_linear
from ..detection.detector import EnergyDetector
from ..metrics import AUROC_INTERVAL, choose_threshold, detection_metrics, rate_interval
from ..models.state import model_device
from .cost import PassLedger, measure_pass_time
from .pipeline import (
    DEFINITIONS, ModelOutputs, detection_splits, evaluate_detector, fit_detector, model_outputs, perturbed_only,
    successful,
)
from .reproduce_report import write_report
from .stages import (StageStore, data_location, model_fingerprint, read_stage, run_environment, same_name, stage_seed,
                     write_stage)

logger = logging.getLogger(__name__)

TABLE_ATTACKS = {"pgd-8": ("pgd", 8 / 255), "pgd-16": ("pgd", 16 / 255), "apgd-8": ("apgd", 8 / 255)}
STAGES = ".stages"  # under the output folder: finished attacks of a run not yet written (experiments.stages)
FIGURE_STEPS = (0, 2, 5, 10, 20, 40)  # the official notebooks' points; 0 = the random start


@dataclass(frozen=True)
class PaperFacts:
    """What the paper and its official notebooks say about one data set (see PAPER.md); rates as fractions.

    `table1` maps a Table 1 attack to the paper's "detection_rate" and "printed_fpr_column" (the column
    headed FPR, quoted as printed: on CIFAR-10 PGD it is 100% minus the detection rate, see the report);
    `cited_baselines` maps a baseline (first word of its name) to the numbers the paper cites for it;
    `hepgd_steps` are the HE-PGD step counts to run besides the detector's `steps` (None stands for those).
    """

    table1: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cited_baselines: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    hepgd_lam: float = 1.2  # the paper text's λ
    hepgd_steps: Tuple[Optional[int], ...] = (None,)
    notebook_hepgd: Optional[Mapping[str, float]] = None  # the notebook's HE-PGD run: lam, steps, correct of n_test
    notes: Tuple[str, ...] = ()


# The one place for per-data-set facts of the paper (Table 1, cited baselines, the HE-PGD runs).
PAPER_FACTS: Dict[str, PaperFacts] = {
    "cifar10": PaperFacts(
        table1={"pgd-8": {"detection_rate": 0.9838, "printed_fpr_column": 0.0162},
                "apgd-8": {"detection_rate": 0.8545, "printed_fpr_column": 0.0119}},
        cited_baselines={"KD+BU": {"attack": "pgd-8", "detection_rate": 0.9227, "printed_fpr_column": 0.0096},
                         "LID": {"attack": "pgd-8", "detection_rate": 0.9439, "printed_fpr_column": 0.0181}},
        hepgd_lam=1.2, hepgd_steps=(None,),
        notebook_hepgd={"lam": 1.5, "steps": 20, "correct": 0, "n_test": 10000},
        notes=("The official notebook prints CIFAR-10 PGD 8/255 as TPR 98.38 / FPR 1.67 (threshold −15.99).",
               "KD+BU and LID are cited by the paper from Aldahdooh et al. 2022, not measured on the paper's examples.",
               "The notebook's own CIFAR-10 HE-PGD run uses λ = 1.5 and 20 steps; robgen runs the paper text's λ = 1.2 "
               "at the detector's step count (pass --lam 1.5 --hepgd-steps 20 for the notebook's run)."),
    ),
    "imagenette": PaperFacts(
        table1={"pgd-8": {"detection_rate": 0.9824, "printed_fpr_column": 0.0137},
                "pgd-16": {"detection_rate": 0.996, "printed_fpr_column": 0.0}},
        hepgd_lam=1.2, hepgd_steps=(10, None),
        notebook_hepgd={"lam": 1.2, "steps": 10, "correct": 1, "n_test": 3925},
        notes=("The official notebook's Imagenette HE-PGD run takes 10 steps; the run at the detector's step count "
               "(40 by default) follows the detector's protocol and Fig. 3b's step axis.",
               "The paper's Imagenette model is the notebook's ResNet10 on CenterCrop(150) (84.03% clean accuracy); "
               "compare the architecture and clean accuracy above before comparing rates."),
    ),
}
NO_PAPER_FACTS = PaperFacts(notes=("The paper reports no numbers for this data set.",))


def paper_facts(data) -> PaperFacts:
    """The paper's facts for a data set name (none for other data sets or ImageFolder paths)."""
    return PAPER_FACTS.get(str(data).lower(), NO_PAPER_FACTS)


# Settings that no stage's outputs depend on, left out of the stage key so that changing one reuses the attacks:
# named in their stages (an attack's name, HE-PGD's λ and step count: another sweep reuses the attacks it shares
# with this one), or used only after the attacks (the baselines' reference images, the band, the timing).
NOT_IN_STAGES = ("attacks", "lam", "lambdas", "hepgd_steps", "reference_size", "lid_reference", "band_quantile",
                 "timing_repeats")


@dataclass
class ReproduceSettings:
    """The experiment's settings; stored in results.json (with every None resolved)."""

    attacks: Tuple[str, ...] = ("pgd-8", "pgd-16", "apgd-8")
    steps: int = 40
    step_size: float = 1 / 255
    lam: Optional[float] = None  # HE-PGD's λ; None: the data set's (PAPER_FACTS)
    hepgd_steps: Optional[Tuple[int, ...]] = None  # HE-PGD runs besides `steps`; None: the data set's (Imagenette: 10)
    lambdas: Tuple[float, ...] = (0.0, 0.3, 0.6, 1.2, 2.0, 4.0)  # the adaptive sweep; 0 and `lam` cost no attack
    val_size: Optional[int] = None  # None: the split the model's training held out (data.model_val_size)
    limit: Optional[int] = None
    batch_size: int = 250
    reference_size: int = 2000  # clean training images: Mahalanobis class statistics, LID reference
    lid_reference: int = 100
    band_quantile: float = 0.975  # upper edge of the two-sided band, on clean validation energies
    timing_repeats: int = 5  # timed batch passes (the fastest counts) for the cost accounting
    seed: int = 0
    extra: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attacks = tuple(dict.fromkeys(self.attacks))  # named twice: one row (Table 1 and the baselines had two)
        if not self.attacks:  # Table 1 without its PGD rows
            raise ValueError(f"no attacks given: name at least one of {', '.join(TABLE_ATTACKS)}")
        unknown = [name for name in self.attacks if name not in TABLE_ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack {unknown[0]!r}: choose from {', '.join(TABLE_ATTACKS)}")
        for name, value in (("steps", self.steps), *(("hepgd_steps", k) for k in self.hepgd_steps or ()),
                            ("reference_size", self.reference_size), ("timing_repeats", self.timing_repeats),
                            ("batch_size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam}")
        lid_k = LIDScorer().k
        if min(self.reference_size, self.lid_reference) <= lid_k:  # checked after every attack otherwise
            raise ValueError(f"LID compares each image with its {lid_k} nearest reference images: reference_size and "
                             f"lid_reference must exceed {lid_k}, got {self.reference_size} and {self.lid_reference}")
        if not 0 < self.band_quantile < 1:
            raise ValueError(f"band_quantile must be in (0, 1), got {self.band_quantile}")
        self.lambdas = tuple(dict.fromkeys(float(lam) for lam in self.lambdas))
        if not self.lambdas or not all(math.isfinite(lam) and lam >= 0 for lam in self.lambdas):
            raise ValueError(f"the λ sweep needs at least one λ, each a finite number >= 0; got {self.lambdas}")
        clash = same_name(self.lambdas, lam_label)  # its stages are named "hepgd-8-lam<label>"
        if clash:
            raise ValueError(f"the λ sweep's {' and '.join(repr(lam) for lam in clash[1])} share the name "
                             f"{clash[0]}: give it once")

    def resolved(self, model, data) -> "ReproduceSettings":
        """These settings with the data set's defaults filled in (val split, λ, HE-PGD step counts)."""
        facts = paper_facts(data)
        extra_steps = self.hepgd_steps if self.hepgd_steps is not None else facts.hepgd_steps
        return replace(
            self,
            val_size=self.val_size if self.val_size is not None else datasets.model_val_size(model.spec, data),
            lam=self.lam if self.lam is not None else facts.hepgd_lam,
            hepgd_steps=tuple(sorted({self.steps, *(self.steps if k is None else k for k in extra_steps)})),
        )


def lam_label(lam: float) -> str:
    """λ as stage names and results' keys spell it: 6 significant digits ("1.2"), all of them where those would
    make two λ one ("1.5000004", which λ stays out of the stage key for, so a rerun with another λ would read the
    first one's stages back)."""
    short = f"{lam:g}"
    return short if float(short) == lam else repr(float(lam))


def hepgd_name(settings: ReproduceSettings, steps: int) -> str:
    """The results' key of an HE-PGD run: "hepgd-8-lam1.2" at the detector's step count, else "...-10steps"."""
    return f"hepgd-8-lam{lam_label(settings.lam)}" + ("" if steps == settings.steps else f"-{steps}steps")


def check_reference(reference, num_classes: int) -> None:
    """The baselines' clean training images must hold every class (Mahalanobis and KD fit one mean per class) and
    more images than LID's neighbours."""
    missing = sorted(set(range(num_classes)) - set(datasets.labels_of(reference)))
    if missing:
        raise ValueError(f"the baselines' {len(reference)} reference images (the first of the training split) hold no "
                         f"image of classes {missing}: raise --reference-size")
    lid_k = LIDScorer().k
    if len(reference) <= lid_k:  # the settings' sizes are checked with them; the training split may be smaller
        raise ValueError(f"LID compares each image with its {lid_k} nearest reference images, but the training "
                         f"split gives only {len(reference)}: use more training images")


def _generator(model, settings: ReproduceSettings) -> torch.Generator:
    return torch.Generator(device=model_device(model)).manual_seed(settings.seed)


def _make_hepgd(model, settings: ReproduceSettings, lam: float, steps: Optional[int] = None) -> HighEnergyPGD:
    """HE-PGD at 8/255 with the paper's step 1/255 and random start."""
    return HighEnergyPGD(model, eps=8 / 255, step_size=settings.step_size, steps=steps or settings.steps, lam=lam,
                         generator=_generator(model, settings))


def _make_attack(name: str, model, settings: ReproduceSettings):
    """One of the Table 1 attacks by name (see TABLE_ATTACKS)."""
    generator = _generator(model, settings)
    kind, eps = TABLE_ATTACKS[name]
    if kind == "apgd":
        return APGD(model, eps=eps, steps=settings.steps, generator=generator)
    return PGD(model, eps=eps, step_size=settings.step_size, steps=settings.steps, generator=generator)


def _score_rule(clean_val, adv_val, clean_test, adv_test) -> dict:
    """Fit a Youden threshold on scores where low = adversarial; evaluate on test."""
    threshold = choose_threshold(clean_val, adv_val, "youden")
    return detection_metrics(clean_test, adv_test, threshold)


@datasets.reads_data_root
def reproduce(model, data: str = "cifar10", out_dir: Optional[Path] = None, data_root=None,
              settings: Optional[ReproduceSettings] = None, progress=True, download: bool = False,
              stage_dir: Optional[Path] = None, replace_stale_stages: bool = False) -> dict:
    """Run every experiment; write results.json, results.md and the figures to `out_dir` (if given).

    `stage_dir` (default `out_dir/.stages`): where each finished attack's outputs are kept
    (`experiments.stages`), so that the same call after an interruption continues where it stopped;
    removed once the results are written. `replace_stale_stages` (the command's --overwrite): stages of
    another run there are removed instead of refused.
    """
    settings = (settings or ReproduceSettings()).resolved(model, data)  # recorded in results.json as resolved
    facts = paper_facts(data)
    started = time.perf_counter()
    splits = detection_splits(model, data, val_size=settings.val_size, limit=settings.limit, seed=settings.seed,
                              data_root=data_root, download=download)
    if stage_dir is None and out_dir is not None:
        stage_dir = Path(out_dir) / STAGES
    keyed_settings = {name: value for name, value in asdict(settings).items() if name not in NOT_IN_STAGES}
    stages = StageStore(stage_dir, {"command": "reproduce", "settings": keyed_settings, "data": str(data),
                                    "model": model_fingerprint(model),
                                    "data_root": data_location(data, data_root),
                                    "n_validation": len(splits.validation), "n_test": len(splits.test),
                                    # the images themselves: a file replaced in place keeps the path and the counts
                                    "pixels": {split: datasets.pixels_fingerprint(getattr(splits, split))
                                               for split in ("validation", "test")},
                                    **run_environment(model)}, replace_stale=replace_stale_stages)
    if settings.reference_size > len(splits.train):
        logger.warning("reference_size %d is larger than the %d training images outside the validation split: the "
                       "baselines' reference statistics are taken on all %d", settings.reference_size,
                       len(splits.train), len(splits.train))
    reference = datasets.first(splits.train, min(settings.reference_size, len(splits.train)), "training split")
    check_reference(reference, model.spec.num_classes)  # before any attack, not after all of them
    loaders = {"val": datasets.make_loader(splits.validation, settings.batch_size),
               "test": datasets.make_loader(splits.test, settings.batch_size)}
    timing = measure_pass_time(model, min(settings.batch_size, len(splits.test)), settings.timing_repeats,
                               _generator(model, settings))
    ledger = PassLedger()
    clean: Dict[str, ModelOutputs] = {}

    def outputs(split: str, attack=None, desc: str = "", name: str = "clean") -> ModelOutputs:
        stage = f"{name}-{split}"

        def compute() -> ModelOutputs:
            generator = getattr(attack, "generator", None)
            if generator is not None:  # seeded by the stage alone: the same draws whichever stages were read back
                generator.manual_seed(stage_seed(settings.seed, stage))
            return model_outputs(model, loaders[split], attack=attack, features=True, trace=attack is not None,
                                 progress=progress if attack is not None else False, desc=desc,
                                 # an attack over a split can outlast a session: its batches kept as they finish
                                 parts=stages.parts(stage, write_stage, read_stage) if attack is not None else None)

        result = stages.run(stage, compute)
        ledger.add(name, split, attack, len(result), int(clean[split].correct.sum()) if attack is not None else 0)
        return result

    for split in loaders:
        clean[split] = outputs(split)
    ref = model_outputs(model, datasets.make_loader(reference, settings.batch_size), features=True, progress=False)
    ledger.add("clean (reference)", "train", None, len(ref), 0)
    adversarial: Dict[str, Dict[str, ModelOutputs]] = {}
    steps_of: Dict[str, int] = {}
    for name in dict.fromkeys(["pgd-8", *settings.attacks]):
        attack = _make_attack(name, model, settings)
        adversarial[name] = {split: outputs(split, attack, f"{name} ({split})", name) for split in loaders}
        steps_of[name] = settings.steps
    he_name = hepgd_name(settings, settings.steps)  # the run of Table 1's protocol, Fig. 3 and the adaptive study
    he_names = []
    for steps in settings.hepgd_steps:
        name, attack = hepgd_name(settings, steps), _make_hepgd(model, settings, settings.lam, steps)
        adversarial[name] = {split: outputs(split, attack, f"HE-PGD λ={settings.lam:g}, {steps} steps ({split})", name)
                             for split in loaders}
        steps_of[name] = steps
        he_names.append(name)

    # Table 1 (+ HE-PGD, which the paper shows evading the detector)
    table = []
    # An attack that changed no validation image (torchattacks' APGD on a model it cannot fool) leaves nothing to fit a
    # detector on: its rows are left out and named in results["unfitted"], with why, instead of ending the run.
    unfitted = [{"attack": name, "reason": f"the attack changed none of the {len(adversarial[name]['val'])} validation "
                 "images, so no detector can be fitted on it"}
                for name in [*settings.attacks, *he_names] if not adversarial[name]["val"].perturbed_mask.any()]
    fittable = [name for name in [*settings.attacks, *he_names] if name not in {row["attack"] for row in unfitted}]
    for name in fittable:
        adv = adversarial[name]
        for rule in ("youden", "gmean"):  # Youden's J with the temperature search is the official protocol
            for temperature in ("search", 1.0):
                official = rule == "youden" and temperature == "search"
                detector = fit_detector(clean["val"], adv["val"], rule, temperature)
                row = evaluate_detector(detector, clean["test"], adv["test"])
                row.update(_more_intervals(row, detector, clean["test"], adv["test"]))
                row.update(attack=name, steps=steps_of[name], search_temperature=temperature == "search",
                           n_validation_perturbed=int(adv["val"].perturbed_mask.sum()),
                           paper=dict(facts.table1.get(name, {})) if official else {}, official_protocol=official)
                table.append(row)

    # Baselines on the same examples
    mahalanobis = MahalanobisScorer().fit(ref.features, ref.labels, model.spec.num_classes)
    lid = LIDScorer(reference_size=settings.lid_reference).fit_reference(ref.features, ref.logits)
    kdbu = KDBUScorer().fit_reference(ref.features, ref.labels, model.spec.num_classes)
    head = last_linear(model)
    baselines = []

    def cited(detector: str, attack: str) -> dict:
        numbers = dict(facts.cited_baselines.get(detector.split()[0], {}))
        return numbers if numbers.pop("attack", None) == attack else {}

    for name in [name for name in settings.attacks if name in fittable]:
        adv = {"val": perturbed_only(adversarial[name]["val"]), "test": adversarial[name]["test"]}  # fit as Table 1
        m = {split: (-mahalanobis.score(clean[split].features), -mahalanobis.score(adv[split].features))
             for split in ("val", "test")}
        row = _score_rule(m["val"][0], m["val"][1], m["test"][0], m["test"][1])
        detector = "Mahalanobis (penultimate, tied covariance)"
        baselines.append({"detector": detector, "attack": name, "needs_adversarial_training": False,
                          "paper_cited": cited(detector, name), **row})
        lid_features = {split: (lid.lid_features(clean[split].features, clean[split].logits),
                                lid.lid_features(adv[split].features, adv[split].logits)) for split in ("val", "test")}
        lid.fit(*lid_features["val"])
        scores = {split: (-lid.score(c), -lid.score(a)) for split, (c, a) in lid_features.items()}
        row = _score_rule(scores["val"][0], scores["val"][1], scores["test"][0], scores["test"][1])
        detector = "LID (penultimate + logits, logistic regression)"
        baselines.append({"detector": detector, "attack": name, "needs_adversarial_training": True,
                          "paper_cited": cited(detector, name), **row})
        kdbu_features = {split: (kdbu.kdbu_features(clean[split].features, clean[split].logits, head),
                                 kdbu.kdbu_features(adv[split].features, adv[split].logits, head)) for split in ("val", "test")}
        kdbu.fit(*kdbu_features["val"])
        scores = {split: (-kdbu.score(c), -kdbu.score(a)) for split, (c, a) in kdbu_features.items()}
        row = _score_rule(scores["val"][0], scores["val"][1], scores["test"][0], scores["test"][1])
        detector = "KD+BU (kernel density + MC-dropout uncertainty, logistic regression)"
        baselines.append({"detector": detector, "attack": name, "needs_adversarial_training": True,
                          "paper_cited": cited(detector, name), **row})

    adaptive = _adaptive_study(model, settings, clean, adversarial, he_name,
                               lambda attack, desc, name: outputs("test", attack, desc, name))
    curves = {name: _curve(clean["test"], adversarial[name]["test"], steps_of[name]) for name in ("pgd-8", *he_names)}
    wall = time.perf_counter() - started + stages.reused_seconds  # earlier runs' share of a continued run
    results = {
        "paper": "Beadini & Masi, Exploring the Connection between Robust and Generative Models, Ital-IA 2023",
        "model": model.spec.source, "architecture": model.spec.architecture, "arch_kwargs": model.spec.arch_kwargs,
        "input_size": list(model.spec.input_size),
        "data": str(data), "n_validation": len(clean["val"]), "n_test": len(clean["test"]), "n_reference": len(ref),
        "clean_accuracy": clean["test"].accuracy, "clean_accuracy_ci": rate_interval(clean["test"].correct),
        "settings": asdict(settings), "paper_facts": asdict(facts), "hardware": distributed.hardware(model_device(model)),
        "hepgd_runs": [{"name": name, "steps": steps_of[name], "lam": settings.lam, "main": name == he_name}
                       for name in he_names],
        "definitions": DEFINITIONS, "auroc_interval": AUROC_INTERVAL,
        "table1": table, "unfitted": unfitted, "baselines": baselines, "adaptive": adaptive, "curves": curves,
        "energy_means": {"clean": float(clean["test"].energy().mean()),
                         **{name: float(adv["test"].energy().mean()) for name, adv in adversarial.items()}},
        "cost": ledger.summary(timing, wall),
        "wall_seconds": wall,
        "continued": {"stages_read_back": stages.reused, "batches_read_back": stages.reused_batches,
                      "their_seconds": stages.reused_seconds},
    }
    if out_dir is not None and distributed.is_main():  # under torchrun every rank has the results; one writes
        write_report(results, clean, adversarial, Path(out_dir))
    stages.clear()
    return results


def _more_intervals(row: dict, detector: EnergyDetector, clean: ModelOutputs, adversarial: ModelOutputs) -> dict:
    """Wilson intervals of the rates `evaluate_detector` reports without one (FNR, success, detection on success)."""
    success = successful(clean, adversarial)
    low, high = row["detection_rate_ci"]
    return {"false_negative_rate_ci": (1.0 - high, 1.0 - low),
            "detection_rate_successful_ci": rate_interval(detector.predict(adversarial.logits)[success]),
            "attack_success_rate_ci": rate_interval(success[clean.correct]),
            "adversarial_accuracy_ci": rate_interval(adversarial.correct)}


def _rate(hits: torch.Tensor, among: torch.Tensor) -> float:
    return float(hits[among].double().mean()) if among.any() else float("nan")


def _curve(clean: ModelOutputs, adversarial: ModelOutputs, steps: int) -> dict:
    """Energy mean/std and accuracy at FIGURE_STEPS up to `steps`, as the official Figs. 2b/3b, and at `steps`
    itself (the attack's result: with --steps 1 the curve held the start alone, with 100 it stopped at 40).

    Step 0 is the random start (PGD with 0 steps), not the clean image; the
    clean images' energy and accuracy are kept beside it as a reference line.
    """
    trace = adversarial.trace
    energies = clean.energy()
    rows = {"steps": [], "energy_mean": [], "energy_std": [], "accuracy": [],
            "clean": {"energy_mean": float(energies.mean()), "energy_std": float(energies.std()),
                      "accuracy": clean.accuracy}}
    for step in sorted({step for step in FIGURE_STEPS if step <= steps} | {steps}):
        rows["steps"].append(step)
        rows["energy_mean"].append(trace.energy_mean[step])
        rows["energy_std"].append(trace.energy_std[step])
        rows["accuracy"].append(trace.accuracy[step])
    return rows


def _adaptive_study(model, settings, clean, adversarial, he_name, attack_test) -> dict:
    """HE-PGD against λ; the one-sided detector (fit on PGD) and two rescue attempts."""
    pgd_val = perturbed_only(adversarial["pgd-8"]["val"])
    one_sided = fit_detector(clean["val"], pgd_val, "youden", temperature=1.0)
    upper = float(torch.quantile(clean["val"].energy().double(), settings.band_quantile))
    class_val = (-clean["val"].logits.max(1).values, -pgd_val.logits.max(1).values)
    class_threshold = choose_threshold(*class_val, "youden")
    clean_test_energy = clean["test"].energy()
    clean_class_energy = -clean["test"].logits.max(1).values
    correct = clean["test"].correct
    false_alarms = {
        "one_sided": clean_test_energy <= one_sided.threshold,
        "band": (clean_test_energy <= one_sided.threshold) | (clean_test_energy >= upper),
        "class_energy": clean_class_energy <= class_threshold,
    }
    fpr = {name: float(flags.double().mean()) for name, flags in false_alarms.items()}
    rows = []
    for lam in settings.lambdas:
        if lam == 0:
            adv = adversarial["pgd-8"]["test"]  # HE-PGD with λ = 0 is PGD (a tested identity)
        elif lam == settings.lam:  # the Table 1 run at the detector's step count
            adv = adversarial[he_name]["test"]
        else:
            attack = _make_hepgd(model, settings, lam)
            adv = attack_test(attack, f"HE-PGD λ={lam:g}", f"hepgd-8-lam{lam_label(lam)} (adaptive)")
        e = adv.energy()
        class_e = -adv.logits.max(1).values
        flagged = {"one_sided": e <= one_sided.threshold, "band": (e <= one_sided.threshold) | (e >= upper),
                   "class_energy": class_e <= class_threshold}
        success = successful(clean["test"], adv)
        rows.append({
            "lam": lam, "attack_success_rate": _rate(success, correct),
            "attack_success_rate_ci": rate_interval(success[correct]),
            "adversarial_accuracy": adv.accuracy, "adversarial_accuracy_ci": rate_interval(adv.correct),
            "energy_mean": float(e.mean()),
            **{f"detection_rate_{name}": float(hits.double().mean()) for name, hits in flagged.items()},
            **{f"detection_rate_{name}_ci": rate_interval(hits) for name, hits in flagged.items()},
        })
    return {"thresholds": {"one_sided": one_sided.threshold, "band_upper": upper, "class_energy": class_threshold},
            "false_positive_rate_on_clean_test": fpr,
            "false_positive_rate_on_clean_test_ci": {name: rate_interval(flags) for name, flags in false_alarms.items()},
            "rows": rows, "clean_energy_mean": float(clean_test_energy.mean())}
