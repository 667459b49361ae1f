"""The adaptive evaluation of a detector: thresholds fixed on held-out clean images, then every attack that knows it.

    results = adaptive_evaluation(model, "cifar10", detectors=("energy", "band"), eps_list=(4/255, 8/255),
                                  limit=500, steps=100, restarts=3, out_dir=Path("runs/adaptive"))
    results["rows"][0]["dara"]        # {"rate", "ci", "count", "n"}: detection-aware robust accuracy

The protocol of Tramèr, Carlini, Brendel & Madry (2020, "On adaptive attacks to adversarial example
defenses") with the sanity checks of Carlini et al. (2019, "On evaluating adversarial robustness"):

1. Each reject option (robgen/detection/reject.py) is calibrated on the clean validation images the
   model's training held out (`data.model_val_split`), at `target_fpr` of them all (or, with
   `fpr_among="correct"`, of the ones the model classifies correctly); a model that records no such
   split for this data set is refused before any work. Mahalanobis takes its class statistics from
   clean training images outside the validation split (`reference_size` of them, as reproduce does).
   Under torchrun every rank then takes rank 0's detectors (`shared_calibration`).
2. For every detector and eps, the suite (robgen/attacks/suite.py) runs on the first `limit` test
   images: (K+1) PGD, (K+1) APGD-CE and -DLR, Orthogonal PGD, Penalty PGD, logit matching (targets:
   validation images of other classes the defended model accepts and classifies correctly), (K+1) APGD-T
   (one target class per restart, the runner-up first), and the
   non-adaptive references, PGD and HE-PGD (several λ) on the bare model. With `skip_evaded` each
   adaptive attack after the first runs only on the images still defended (`still_defended`).
3. The same suite runs once more per eps against the detector switched off (`DetectorOff`, which
   accepts everything): its DARA must equal the bare model's robust accuracy under the suite, which
   is measured by another path (the bare model re-run on every attack's points).
4. The model passes are estimated before anything runs (`estimate_passes`), logged and reported.

Each (detector, eps, attack) is one stage (experiments/stages.py): its per-image flags are kept on
disk as soon as it finishes, its random draws come from `stage_seed(seed, stage)` and, per batch,
`distributed.per_batch_seeds`, so an interrupted run continues with the numbers of an
uninterrupted one, and under torchrun each rank attacks its share of the batches and every rank
gets all the flags back (rank 0 writes). The report (adaptive_report.py) turns the flags into
DARA with Wilson intervals, the per-attack breakdown, the sanity checks and the figure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import TensorDataset

from .. import data as datasets
from .. import distributed
from ..detection.dara import eps_label
from ..detection.defended import DefendedClassifier
from ..detection.reject import KINDS, CallableReject, RejectOption, check_fpr_among, make_reject_option
from ..files import write_atomically
from ..models.loading import load_model
from ..models.state import model_device
from ..progress import step_reporter
from . import stages as stage_files
from .adaptive_report import OFF, summarise, write_report
from .adaptive_suite import (ADAPTIVE, DetectorOff, MissingStage, SuiteStageStore, hepgd_name, judge_reference,
                             make_suite_attack, matching_skip_reason, reference_stage, suite_names, suite_stage)
from .pipeline import detection_splits, model_outputs, tensor_batches
from .stages import data_location, model_fingerprint, run_environment, same_name, stage_seed

logger = logging.getLogger(__name__)

STAGES = ".stages"  # under the output folder: the finished stages of a run not yet written
CALIBRATION = "detectors"  # in the stage folder: the detectors as the run calibrated them, read back on resume
# robgen's code besides stages.STAGE_CODE that decides a stage's flags: the reject options, the defended
# classifier, the calibration and the suite
ADAPTIVE_CODE = ("detection", "experiments/adaptive.py", "experiments/adaptive_suite.py")


@dataclass
class AdaptiveSettings:
    """The experiment's settings, recorded in results.json and in the stage key."""

    detectors: Tuple[str, ...] = ("energy",)
    eps_list: Tuple[float, ...] = (8 / 255,)
    limit: int = 500
    steps: int = 100
    restarts: int = 3
    # the targeted attacks' runs, one target class each (APGD-T, logit matching); None: `restarts` (AutoAttack's
    # APGD-T takes 9 on CIFAR-10)
    target_classes: Optional[int] = None
    target_fpr: float = 0.05
    # the validation images target_fpr is counted among: "all", or "correct" (the ones the model classifies
    # correctly, Chen et al. 2023's stratified convention; all clean images are then rejected more often)
    fpr_among: str = "all"
    seed: int = 0
    batch_size: int = 100
    lambdas: Tuple[float, ...] = (0.6, 1.2, 2.0)  # HE-PGD's λ on the bare model (non-adaptive references)
    reference_size: int = 2000  # clean training images for Mahalanobis's class statistics
    match_targets: int = 100  # validation images offered to logit matching as targets
    # each adaptive attack after the first runs only on the images no earlier one evaded (and that are clean-correct
    # and accepted): the same DARA for far fewer passes on a robust model; per-attack rates among the images attacked
    skip_evaded: bool = False
    # each named detector's own settings besides target_fpr, e.g. {"robust-margin": {"radius": 4 / 255}}
    detector_settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.detectors = tuple(dict.fromkeys(str(name) for name in self.detectors))
        if not self.detectors:
            raise ValueError(f"name at least one detector: {', '.join(KINDS)}")
        if OFF in self.detectors:
            raise ValueError(f"{OFF!r} is the detector switched off, which every run measures anyway: "
                             f"choose from {', '.join(KINDS)}")
        self.eps_list = tuple(sorted({float(eps) for eps in self.eps_list}))
        bad = [eps for eps in self.eps_list if not 0 < eps <= 1]
        if not self.eps_list or bad:
            raise ValueError(f"every eps must be in (0, 1] (pixels are in [0, 1]: write 8/255, not 8), got "
                             f"{', '.join(f'{eps:g}' for eps in bad) or 'none'}")
        clash = same_name(self.eps_list, eps_label)
        if clash:  # stages and report rows are named by the label: one would be read back as the other
            raise ValueError(f"eps {' and '.join(repr(eps) for eps in clash[1])} are one radius to 6 digits (both "
                             f"{clash[0]}): give it once")
        for name in ("limit", "steps", "restarts", "batch_size", "reference_size", "match_targets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.target_classes is not None and int(self.target_classes) < 1:
            raise ValueError(f"target_classes must be >= 1 (or None: as many as the restarts), got "
                             f"{self.target_classes}")
        if not 0 < float(self.target_fpr) < 1:
            raise ValueError(f"target_fpr must be in (0, 1), e.g. 0.05, got {self.target_fpr}")
        check_fpr_among(self.fpr_among)
        self.lambdas = tuple(dict.fromkeys(float(lam) for lam in self.lambdas))
        if not all(math.isfinite(lam) and lam >= 0 for lam in self.lambdas):  # as reproduce's sweep: a negative λ
            # would pull the energy down, the paper's PGD side, not HE-PGD's
            raise ValueError(f"HE-PGD's lambdas must be finite numbers >= 0, got {self.lambdas}")
        clash = same_name(self.lambdas, hepgd_name)
        if clash:  # the attack is named by it: the second would never run
            raise ValueError(f"HE-PGD's lambdas {' and '.join(repr(lam) for lam in clash[1])} are one to 6 digits "
                             f"(both {clash[0]!r}): give it once")
        given = dict(self.detector_settings or {})
        bad = [kind for kind, values in given.items() if not isinstance(values, Mapping)]
        if bad:
            raise ValueError(f"detector_settings maps each kind to its settings, e.g. {{'robust-margin': {{'radius': "
                             f"2 / 255}}}}; got {given[bad[0]]!r} for {bad[0]!r}")
        self.detector_settings = {str(kind): dict(values) for kind, values in given.items()}
        for kind, values in self.detector_settings.items():
            if kind not in self.detectors:
                raise ValueError(f"settings for the {kind!r} detector, which this run does not name "
                                 f"({', '.join(self.detectors)}): name it, or drop its settings")
            if "target_fpr" in values:
                raise ValueError("target_fpr is the run's setting, shared by every detector, not one detector's")
            try:  # refuses a setting the kind does not take, and a bad value (a radius outside (0, 1], ...)
                make_reject_option(kind, **values)
            except TypeError as error:
                raise ValueError(str(error)) from None

    @property
    def target_runs(self) -> int:
        """Runs of the targeted attacks (APGD-T, logit matching), one target class each."""
        return int(self.target_classes) if self.target_classes is not None else self.restarts

    @property
    def most_runs(self) -> int:
        """The most runs any adaptive attack makes: the restarts, or more target classes."""
        return max(self.restarts, self.target_runs)

    @property
    def attacks(self) -> Tuple[str, ...]:
        """The suite's attacks, in the order each image's first evasion is credited to."""
        return suite_names(self.lambdas)

    @property
    def references(self) -> Tuple[str, ...]:
        """The suite's attacks that do not know the detector (on the bare model): every point they pass through is
        judged for the DARA, their final points for the bare model's accuracy there and the detection rate."""
        return tuple(name for name in self.attacks if name not in ADAPTIVE)

    def reference_images(self, n_train: int) -> int:
        """How many clean training images Mahalanobis's class statistics take: `reference_size`, fewer where the
        training split has fewer."""
        return min(self.reference_size, n_train)


def load_run(results: Mapping[str, Any]):
    """(model in eval mode, splits) of a finished run, from its results.json: the model it names, refused if its
    weights are not the ones the run recorded, and the data under the data root it ran on (runs since 2026-12-06
    record both; an older one, or one whose root is not on this machine, is read under the default root). For
    the scripts that attack a run's images again (scripts/check_dara_independently.py,
    scripts/probe_attack_on_defended.py)."""
    model = load_model(results["model"]).eval()
    recorded = results.get("model_fingerprint")
    if recorded is not None and model_fingerprint(model) != recorded:
        raise ValueError(f"{results['model']} now has other weights than the run attacked ({recorded[:12]}…): its "
                         "detectors and images belong to those; run the adaptive evaluation again")
    root = results.get("data_root")
    if root is not None and not Path(root).exists():  # made on another machine (a lent GPU's checkout): the same
        logger.warning("the run's data root %s is not here: reading %s under the default one", root, results["data"])
        root = None  # named data set under this machine's default root, which its recorded split then checks
    return model, detection_splits(model, results["data"], data_root=root)


def require_validation_split(spec, data) -> None:
    """Refuse a model whose training record names no validation split held out of `data` (read as
    `data.model_val_size` reads it), saying what to do: the thresholds need clean images it never trained on."""
    if datasets.recorded_val_size(spec, data) is not None:
        return
    training = spec.training if isinstance(spec.training, dict) else {}
    recorded = training.get("data", {}) if isinstance(training.get("data"), dict) else {}
    trained_on = recorded.get("name") or training.get("config", {}).get("data")
    raise ValueError(
        f"this model records no validation split held out of {data}'s training images (its training record "
        f"{'names ' + repr(trained_on) if trained_on else 'names no data set'}), so there are no clean images it "
        f"never trained on to fix the detectors' thresholds with: use a model trained by robgen on {data} "
        "(python -m robgen train records its split)")


def estimate_passes(settings: AdaptiveSettings, n_test: int, n_validation: int, n_reference: int = 0,
                    shared_references: bool = True, score_passes: Optional[Mapping[str, int]] = None) -> dict:
    """Image-passes through the model a run will make, before it runs: an upper bound (a later restart runs
    only on the images no earlier one evaded, and an adaptive attack stops on a batch once all of it evaded).

    Per image and suite: (K+1) PGD, Penalty PGD and logit matching `restarts x steps` forward+backward
    passes, APGD (CE, DLR, targeted) `restarts x (steps + 1)`, Orthogonal PGD `restarts x steps` forwards with two
    backward passes each (counted as two); forwards: one per restart (the final point), the suite's clean pass (and
    for logit matching and APGD-T another, which orders the target classes), the check of the attack's final point,
    the stored point's pass per attack, one confirmation per image and adaptive attack (its first evasion,
    seen through the fused copy, run through the model itself: a second one only where the two disagree at
    a boundary, which the bound leaves out), logit matching's targets per batch and once per suite (does it have
    targets to match). Suites: one per detector and
    eps, plus the detector switched off per eps. The non-adaptive references, PGD and each HE-PGD, `steps`
    forward+backward passes and `steps` forwards that judge each point they pass through: once per eps, with one
    more forward at the final point, when `shared_references` (`run_suites`), else in every suite, with three. Then the clean validation pass (calibration), the Mahalanobis reference and the
    clean test pass. `score_passes`: detector -> the forward+backward passes one of its scores costs on top
    of the model's pass (`RejectOption.passes_per_score`, "robust-margin"'s inner steps; 0 if not named):
    every step of an adaptive attack on it, and every pass of its suite and calibration that scores a point,
    pays them too (and its calibration, which reads the images, runs its own clean validation pass; counted
    also for a detector given already calibrated, which the bound may overcount); a score taken without a
    gradient pays one of them as a forward alone, counted in both totals. And the first batch's gradient check of
    each suite's defended classifier (one more backward pass per image).
    """
    s, r, t = settings.steps, settings.restarts, settings.target_runs
    gradient = {"k+1 pgd": r * s, "k+1 apgd-ce": r * (s + 1), "k+1 apgd-dlr": r * (s + 1), "k+1 apgd-t": t * (s + 1),
                "orthogonal pgd": 2 * r * s, "penalty pgd": r * s, "logit matching": t * s, "pgd (bare model)": s,
                **{hepgd_name(lam): s for lam in settings.lambdas}}
    ordering = ("logit matching", "k+1 apgd-t")  # a clean pass orders each image's target classes
    forward = {name: ((t if name in ordering else r) + 4 + (name in ordering) if name in ADAPTIVE
                      else s + (1 if shared_references else 3)) for name in gradient}
    suites = (len(settings.detectors) + 1) * len(settings.eps_list)
    per_suite = [name for name in gradient if name in ADAPTIVE or not shared_references]
    once = [name for name in gradient if name not in per_suite]
    batches = math.ceil(n_test / settings.batch_size)
    costs = [int((score_passes or {}).get(name, 0)) for name in settings.detectors]
    extra, rerun = sum(costs), sum(cost > 0 for cost in costs)
    # the points a suite scores, per image: each adaptive step (Orthogonal PGD's two backward passes share one
    # forward), each forward pass; and per eps logit matching's targets (per batch, and once to check them)
    scored = (sum(r * s if name == "orthogonal pgd" else gradient[name] for name in per_suite if name in ADAPTIVE)
              + sum(forward[name] for name in per_suite))
    scored_targets = (batches + 1) * settings.match_targets
    # per detector whose score costs passes: its suites' points, the check that logit matching has targets, and
    # its calibration; a score taken without a gradient pays one of its passes as a forward alone (robust-margin:
    # the margin at the inner point), counted as both, so that each total stays a bound
    scored_points = (len(settings.eps_list) * (n_test * scored + scored_targets) + settings.match_targets
                     + n_validation)
    checked = suites * min(settings.batch_size, n_test)  # each defended classifier's one gradient check, 1st batch
    backward_total = (n_test * (suites * sum(gradient[name] for name in per_suite)
                                + len(settings.eps_list) * sum(gradient[name] for name in once))
                      + scored_points * extra + checked)
    forward_total = (suites * (n_test * sum(forward[name] for name in per_suite) + (batches + 1) * settings.match_targets)
                     + len(settings.eps_list) * n_test * sum(forward[name] for name in once)
                     + n_validation * (1 + rerun) + scored_points * rerun + n_reference + n_test)
    return {"forward_backward_passes": backward_total, "forward_passes": forward_total, "suites": suites,
            "n_test": n_test, "per_image_per_suite": {name: {"forward_backward": gradient[name],
                                                             "forward": forward[name]} for name in per_suite},
            "per_image_per_eps": {name: {"forward_backward": gradient[name], "forward": forward[name]}
                                  for name in once},
            "note": "an upper bound: later restarts run only on the images not yet evaded, and an adaptive "
                    "attack stops on a batch once every image of it has evaded"}


def _option_digest(option: RejectOption) -> dict:
    """What a stage key records of a detector: kind, thresholds, and a digest of everything else it holds."""
    text = json.dumps(option.to_dict(), sort_keys=True, default=str).encode()
    return {"kind": option.kind, "thresholds": option.thresholds(), "sha256": hashlib.sha256(text).hexdigest()}


def recorded_key_of_this_run(stage_dir: Optional[Path], run_key: dict) -> Optional[dict]:
    """The stage folder's key if an earlier attempt of this same run wrote it (equal to `run_key` in all but the
    detectors: same settings, data, weights, code), else None."""
    if stage_dir is None:
        return None
    recorded = stage_files.read_key(Path(stage_dir) / stage_files.KEY_FILE)
    same_run = json.loads(json.dumps(run_key, sort_keys=True, default=str))
    if not recorded or {k: v for k, v in recorded.items() if k != "detectors"} != same_run:
        return None
    return recorded


def require_kept_stages(stage_dir: Optional[Path], replace_stale_stages: bool = False) -> None:
    """What `report_only` needs before any work: a stage folder a run kept (--keep-stages), which it must not
    remove (no --overwrite). The command checks it before loading the model; the library again."""
    if replace_stale_stages:
        raise ValueError("--report-only rewrites the report from the stages a run kept and never removes them: drop "
                         "--overwrite (replace_stale_stages)")
    if stage_dir is None or not (Path(stage_dir) / stage_files.KEY_FILE).is_file():
        raise ValueError(f"--report-only writes a report again from the stages a run kept (--keep-stages); "
                         f"{stage_dir} holds none")


def refuse_other_stages(stage_dir: Path, run_key: dict, earlier: Optional[dict], kept: Mapping[str, RejectOption],
                        given: Mapping[str, RejectOption]) -> None:
    """For `report_only`: refuse stages another run made (other settings, data, weights or code: `earlier` is
    None), and stages made against a detector that is neither kept in the folder nor given as the same file (a
    fresh calibration would be another detector than the stages knew)."""
    if earlier is None:
        differ = _differing_keys(stage_files.read_key(Path(stage_dir) / stage_files.KEY_FILE) or {}, run_key)
        raise ValueError(f"{stage_dir} holds the stages of another run (its {', '.join(differ)} differ: other "
                         "settings, data, weights or code): a report can be written again only with the command, "
                         "software and model that made them")
    def same(option: RejectOption, digest: dict) -> bool:
        return json.loads(json.dumps(_option_digest(option), default=str)) == digest

    unmatched = sorted(name for name, digest in (earlier.get("detectors") or {}).items()
                       if name != OFF and name not in kept and not (name in given and same(given[name], digest)))
    if unmatched:
        raise ValueError(f"{stage_dir}: its stages were made against detectors ({', '.join(unmatched)}) that its "
                         f"{CALIBRATION}/ folder does not hold or that were not given as the same files "
                         "(--detector-file): a report can be written again only against those detectors")


def refuse_stages_of_another_run(stage_dir: Optional[Path], run_key: dict) -> None:
    """For a run that attacks, without --overwrite (`replace_stale_stages`): refuse, before its detectors are
    calibrated (passes over the whole validation split), a stage folder that another run's stages are in (other
    settings, data, weights or code; the stage store would refuse it only after the calibration)."""
    if stage_dir is None or not (Path(stage_dir) / stage_files.KEY_FILE).is_file():
        return
    recorded = stage_files.read_key(Path(stage_dir) / stage_files.KEY_FILE)
    if recorded is False:
        raise ValueError(f"{Path(stage_dir) / stage_files.KEY_FILE} is damaged (not the JSON object robgen writes): "
                         "nothing says which run the stages beside it belong to; pass --overwrite to start again")
    recorded = recorded or {}
    stage_files.refuse_another_commands(stage_dir, recorded, run_key)
    differ = _differing_keys(recorded, run_key)
    details = stage_files.key_differences({k: recorded.get(k) for k in differ},
                                          json.loads(json.dumps({k: run_key.get(k) for k in differ}, default=str)))
    raise ValueError(f"{stage_dir} holds the finished stages of another run (its {', '.join(differ) or 'key'} "
                     f"differ: {'; '.join(details)}): run the same command with the same software to continue it, "
                     "or pass --overwrite to start again")


def _differing_keys(recorded: dict, run_key: dict) -> List[str]:
    """The entries of a stage folder's key that differ from this run's, the detectors aside (calibrated later)."""
    wanted = json.loads(json.dumps(run_key, sort_keys=True, default=str))
    return sorted(k for k in set(recorded) | set(wanted) if k != "detectors" and recorded.get(k) != wanted.get(k))


def kept_calibration(stage_dir: Optional[Path], recorded: Optional[dict], model) -> Dict[str, RejectOption]:
    """The detectors an interrupted attempt of this same run calibrated and kept in its stage folder (CALIBRATION),
    so that the resumed run attacks exactly the thresholds its finished stages were computed against.

    Calibration is not bit-reproducible: a Mahalanobis threshold computed with one thread and with two differs in
    its 15th digit (BLAS adds in another order), and the stage key, which records every threshold, would then call
    the finished stages another run's. `recorded`: the folder's key when it is this same run's
    (`recorded_key_of_this_run`; None: nothing is read back); each kept file is taken only if it is the detector
    that key records (its digest).
    """
    if recorded is None:
        return {}
    folder = Path(stage_dir) / CALIBRATION
    kept = {}
    for name, digest in (recorded.get("detectors") or {}).items():
        path = folder / f"{name}.json"
        if name == OFF or not path.is_file():
            continue
        try:
            option = RejectOption.load(path, model=model)
        except ValueError:  # unreadable or for another model: calibrate it again
            continue
        if json.loads(json.dumps(_option_digest(option), default=str)) == digest:
            kept[name] = option
    return kept


def keep_calibration(stage_dir: Optional[Path], reject: Mapping[str, RejectOption],
                     given: Mapping[str, RejectOption]) -> None:
    """Write each detector this run calibrated (not OFF, not one `given` calibrated by the caller, which a later
    run naming only its kind must not take for its own) into the stage folder for `kept_calibration` (rank 0);
    removed with the stages once the results are written."""
    if stage_dir is None or not distributed.is_main():
        return
    for name, option in reject.items():
        if name == OFF or name in given or isinstance(option, CallableReject):
            continue
        path = Path(stage_dir) / CALIBRATION / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(option.to_dict(), indent=1, default=str) + "\n"
        write_atomically(path, lambda target: target.write_text(text))


def calibrate_detectors(model, data, splits, settings: AdaptiveSettings,
                        given: Mapping[str, RejectOption]) -> Dict[str, RejectOption]:
    """Every detector of `settings` calibrated on the clean validation split (`given` ones kept as they are),
    and the detector switched off (OFF), fitted on the same images for its (zero) validation FPR.

    Under torchrun the detectors that read the images (robust-margin: several passes per validation image) are
    calibrated on rank 0 alone; the other ranks' come back unfitted, and `shared_calibration` hands every rank
    rank 0's detectors anyway. The rest are fitted on every rank: their validation and reference passes are
    collective (each rank runs its share) and their fits cost next to nothing."""
    loader = datasets.make_loader(splits.validation, settings.batch_size)
    validation = model_outputs(model, loader, features=True, progress=False)
    stratified = settings.fpr_among == "correct"  # the FPR counted among the correctly classified: needs the labels
    calibration = {"data": str(data), "split": "validation images held out of the model's training",
                   "n": len(validation)}
    options: Dict[str, RejectOption] = {}
    for name in settings.detectors:
        if name in given:
            options[name] = given[name]
            continue
        option = make_reject_option(name, target_fpr=settings.target_fpr, **settings.detector_settings.get(name, {}))
        if option.needs_inputs:  # it reads the images (robust-margin runs the model near them): calibrate on them
            if distributed.is_main():
                images, image_labels = datasets.load_tensors(splits.validation)
                option.calibrate(model, images, settings.batch_size, fpr_among=settings.fpr_among,
                                 labels=image_labels if stratified else None)
                option.calibration = dict(calibration)
            options[name] = option
            continue
        if option.needs_features:  # Mahalanobis: class statistics of clean training images outside validation
            reference = datasets.first(splits.train, settings.reference_images(len(splits.train)), "training split")
            ref = model_outputs(model, datasets.make_loader(reference, settings.batch_size), features=True,
                                progress=False)
            option.fit_reference(ref.features, ref.labels, validation.logits.shape[1], model=model)
        option.fit(validation.logits, validation.features if option.needs_features else None, model=model,
                   fpr_among=settings.fpr_among, labels=validation.labels if stratified else None)
        option.calibration = dict(calibration, **({"reference": option.reference} if option.needs_features else {}))
        options[name] = option
    options[OFF] = DetectorOff(target_fpr=0.0).fit(validation.logits, model=model)
    options[OFF].calibration = calibration
    return options


def shared_calibration(reject: Mapping[str, RejectOption],
                       given: Mapping[str, RejectOption]) -> Dict[str, RejectOption]:
    """Under torchrun, every rank's detectors replaced by rank 0's (the ones it calibrated or read back; `given`
    ones and the detector switched off are the same everywhere): calibration is not bit-reproducible across
    thread counts and machines, and every rank must attack the thresholds rank 0 records in the stage key and
    results.json. (The other ranks' detectors that read the images come unfitted from `calibrate_detectors`.)"""
    if not distributed.is_distributed():
        return dict(reject)
    own = {name: option.to_dict() for name, option in reject.items() if name != OFF and name not in given}
    main = distributed.broadcast_from_main(own)
    return {name: RejectOption.from_dict(main[name]) if name in main else option for name, option in reject.items()}


def detector_profiles(names: Sequence[str], given: Mapping[str, RejectOption],
                      detector_settings: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, RejectOption]:
    """Each named detector: the calibrated one `given` for it, else a new uncalibrated one of its kind with its
    `detector_settings`, which says what a run will cost before it calibrates (`passes_per_score`,
    `shares_references`). An unknown kind is refused, naming the known ones."""
    settings = detector_settings or {}
    return {name: given[name] if name in given else make_reject_option(name, **settings.get(name, {}))
            for name in names}


def shares_references(reject: Mapping[str, RejectOption]) -> bool:
    """Whether the non-adaptive references can be computed once per eps for every detector: each detector's score
    is a function of the logits (and penultimate features) at a point, which the reference stage computes at
    each point the attack passes through and judges by every detector. A detector
    of the input images (a user's, or robust-margin, which runs the model near them) needs the points themselves,
    so then each detector runs its own references."""
    return not any(option.needs_inputs for option in reject.values())


def run_suites(model, reject: Mapping[str, RejectOption], settings: AdaptiveSettings, x: torch.Tensor,
               y: torch.Tensor, targets: Tuple[torch.Tensor, torch.Tensor], store: SuiteStageStore, clean=None,
               progress=True):
    """Every (detector, eps, attack) stage, computed or read back from `store`: ({detector: {eps: {attack:
    per-image flags}}}, {detector: why logit matching was skipped}). A stage's generator is seeded by
    `stage_seed(settings.seed, stage name)` alone.

    The adaptive attacks run once per detector and eps; with `settings.skip_evaded` each after the first only on
    the images still defended (`still_defended`). The non-adaptive references (PGD and HE-PGD on the bare
    model) run once per eps, as stages "reference-eps<eps>-<attack>", every detector judging each point they pass
    through (`reference_stage`, `judge_reference`), when `shares_references` and `clean` (the clean test images' `ModelOutputs`, in data
    order, with features when a detector reads them) is given; else once per detector, like the adaptive ones.
    """
    flags: Dict[str, Dict[float, Dict[str, Dict[str, torch.Tensor]]]] = {}
    skipped: Dict[str, str] = {}
    shared = clean is not None and shares_references(reject)
    references = tuple(name for name in settings.attacks if name not in ADAPTIVE) if shared else ()
    total = (len(reject) * (len(settings.attacks) - len(references)) + len(references)) * len(settings.eps_list)
    bar = step_reporter(progress if distributed.is_main() else None, "adaptive attacks")
    done = 0

    def reporter():
        nonlocal done
        done += 1
        return (lambda fraction, at=done - 1: bar((at + fraction) / total)) if bar else (lambda fraction: None)

    def generator_for(stage: str) -> torch.Generator:
        return torch.Generator(device=model_device(model)).manual_seed(stage_seed(settings.seed, stage))

    shared_points: Dict[float, Dict[str, Dict[str, torch.Tensor]]] = {}
    if references:
        bare = DefendedClassifier(model, next(iter(reject.values())))  # the references attack `bare.model` alone
        for eps in settings.eps_list:
            for name in references:
                stage, report = f"reference-eps{eps_label(eps)}-{name}", reporter()

                def compute(name=name, eps=eps, generator=generator_for(stage), report=report,
                            parts=store.parts(stage)):
                    attack = make_suite_attack(name, bare, eps, settings, generator, targets)
                    return reference_stage(model, attack, x, y, settings.batch_size, reject, report, parts)

                shared_points.setdefault(eps, {})[name] = store.run(stage, compute)
    for detector, option in reject.items():
        defended = DefendedClassifier(model, option)
        reason = matching_skip_reason(defended, *targets)
        if reason is not None:
            skipped[detector] = reason
            logger.warning("logit matching against %s skipped: %s", detector, reason)
        for eps in settings.eps_list:
            for name in settings.attacks:
                if name in references:
                    flags.setdefault(detector, {}).setdefault(eps, {})[name] = judge_reference(
                        detector, option, shared_points[eps][name], clean.logits, clean.features, model_device(model))
                    continue
                stage, report = f"{detector}-eps{eps_label(eps)}-{name}", reporter()
                if name == "logit matching" and reason is not None:
                    report(1.0)
                    continue

                # a reference (run per detector when the detectors read the images) attacks every image: its
                # final points measure the bare model, whatever the adaptive attacks before it evaded
                standing = still_defended(flags[detector][eps]) if (
                    settings.skip_evaded and name in ADAPTIVE and flags.get(detector, {}).get(eps)) else None

                # a reference per detector draws the random starts of the shared one, so that every detector
                # judges the same points of the bare model (its detection rate is then over the same successes)
                seeded = stage if name in ADAPTIVE else f"reference-eps{eps_label(eps)}-{name}"

                def compute(name=name, eps=eps, generator=generator_for(seeded), defended=defended, report=report,
                            standing=standing, parts=store.parts(stage)):
                    attack = make_suite_attack(name, defended, eps, settings, generator, targets)
                    return suite_stage(defended, attack, name, x, y, eps, settings.batch_size, generator, report,
                                       standing, parts)

                flags.setdefault(detector, {}).setdefault(eps, {})[name] = store.run(stage, compute)
    return flags, skipped


def still_defended(stages: Mapping[str, Dict[str, torch.Tensor]]) -> torch.Tensor:
    """The images still defended after `stages` (one detector and eps): clean-correct, accepted, and evaded by none."""
    first = next(iter(stages.values()))
    standing = first["clean_correct"] & first["clean_accepted"]
    for stage in stages.values():
        standing &= ~stage["evaded"]
    return standing


@datasets.reads_data_root
def adaptive_evaluation(model, data, detectors: Sequence[Union[str, RejectOption]] = ("energy",),
                        eps_list: Sequence[float] = (8 / 255,), limit: int = 500, steps: int = 100, restarts: int = 3,
                        target_fpr: float = 0.05, seed: int = 0, out_dir: Optional[Path] = None, *, data_root=None,
                        download: bool = False, progress=True, stage_dir: Optional[Path] = None,
                        replace_stale_stages: bool = False, keep_stages: bool = False, report_only: bool = False,
                        **options) -> dict:
    """Calibrate, attack, report; see the module docstring. Writes results.json, results.md, adaptive_dara.png and
    detectors/ to `out_dir` (if given).

    `detectors`: kinds ("energy", "band", "class-energy", "multi-t", "mahalanobis", "energy-gap", "robust-margin") to
    calibrate here, or reject options already calibrated for this model (refused if calibrated for another). `options`: the other
    `AdaptiveSettings` (batch_size, fpr_among, lambdas, reference_size, match_targets, skip_evaded, detector_settings: each
    named kind's settings, e.g. {"robust-margin": {"radius": 4 / 255}}). `stage_dir` (default
    `out_dir/.stages`): the finished stages, read back by the same call after an interruption; removed once the
    results are written, unless `keep_stages`. `replace_stale_stages` (the command's --overwrite): stages of
    another run there are removed instead of refused. `report_only`: the same call on a run finished with
    `keep_stages` writes its results and report again from those stages (the report code of the day), attacking
    nothing: a missing or stale stage is an error, and no stage is removed.
    """
    given = {option.kind: option for option in detectors if isinstance(option, RejectOption)}
    names = [option.kind if isinstance(option, RejectOption) else str(option) for option in detectors]
    if len(given) < sum(isinstance(option, RejectOption) for option in detectors) or len(set(names)) < len(names):
        raise ValueError(f"a detector is named twice ({', '.join(names)}): give each kind once")
    settings = AdaptiveSettings(detectors=tuple(names), eps_list=tuple(eps_list), limit=limit, steps=steps,
                                restarts=restarts, target_fpr=target_fpr, seed=seed, **options)
    calibrated_with_settings = sorted(set(given) & set(settings.detector_settings))
    if calibrated_with_settings:
        raise ValueError(f"the {calibrated_with_settings[0]!r} detector is given calibrated, with its own settings: "
                         "drop its detector_settings, or name its kind to calibrate it here with them")
    profiles = detector_profiles(names, given, settings.detector_settings)  # an unknown kind says which are known
    require_validation_split(model.spec, data)
    for option in given.values():
        option._require_fit()
        option.check_model(model)
    started = time.perf_counter()
    splits = detection_splits(model, data, data_root=data_root, download=download)  # the split training held out
    x, y = datasets.load_tensors(datasets.first(splits.test, settings.limit, "test split"))
    n_reference = settings.reference_images(len(splits.train)) if "mahalanobis" in set(names) - set(given) else 0
    estimate = estimate_passes(settings, len(x), len(splits.validation), n_reference, shares_references(profiles),
                               {name: option.passes_per_score for name, option in profiles.items()})
    logger.info("adaptive evaluation: at most %s forward+backward and %s forward image-passes (%d suites of %d "
                "attacks on %d images)", f"{estimate['forward_backward_passes']:,}", f"{estimate['forward_passes']:,}",
                estimate["suites"], len(settings.attacks), len(x))
    if stage_dir is None and out_dir is not None:
        stage_dir = Path(out_dir) / STAGES
    if report_only:
        require_kept_stages(stage_dir, replace_stale_stages)
    run_key = {"command": "adaptive", "settings": asdict(settings), "data": str(data),
               "data_root": data_location(data, data_root),
               "model": model_fingerprint(model), "n_validation": len(splits.validation), "n_test": len(x),
               # the images themselves: a file replaced in place keeps the path and the counts
               "pixels": {"validation": datasets.pixels_fingerprint(splits.validation),
                          "test": datasets.pixels_fingerprint(TensorDataset(x, y))},
               "adaptive_code": stage_files.code_fingerprint(parts=ADAPTIVE_CODE), **run_environment(model)}
    earlier = recorded_key_of_this_run(stage_dir, run_key)  # an interrupted attempt's key, if this same run's
    kept = kept_calibration(stage_dir, earlier, model)  # its detectors, exactly
    if report_only:  # refused before calibrating anything
        refuse_other_stages(stage_dir, run_key, earlier, kept, given)
    elif earlier is None and not replace_stale_stages:
        refuse_stages_of_another_run(stage_dir, run_key)
    reject = shared_calibration(calibrate_detectors(model, data, splits, settings, {**kept, **given}), given)
    pool = datasets.first(splits.validation, min(settings.match_targets, len(splits.validation)), "validation split")
    targets = datasets.load_tensors(pool)
    # an attempt of this run cut after writing its key but before keeping its detectors or finishing a stage left
    # nothing to lose: its key, a hair apart in the detectors, is replaced without --overwrite
    cut_before_any_stage = earlier is not None and not any(Path(stage_dir).rglob("*.safetensors"))  # or batch
    store = SuiteStageStore(stage_dir, dict(run_key, detectors={name: _option_digest(option)
                                                                for name, option in reject.items()}),
                            replace_stale=not report_only and (replace_stale_stages or cut_before_any_stage),
                            computes=not report_only)
    if not report_only:
        keep_calibration(stage_dir, reject, given)
    try:  # past the set-up every input is checked: an error now is a bug to see whole, not bad input to explain
        clean = model_outputs(model, tensor_batches(x, y, settings.batch_size), progress=False,
                              features=any(option.needs_features for option in reject.values()))
        flags, skipped = run_suites(model, reject, settings, x, y, targets, store, clean, progress)
    except MissingStage:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise RuntimeError(f"the adaptive evaluation failed while attacking, after its set-up: {error}") from error
    wall = time.perf_counter() - started + store.reused_seconds
    results = summarise(model, data, settings, reject, clean.correct, flags, skipped)
    results.update(data_root=None if data_root is None else str(data_root), model_fingerprint=model_fingerprint(model),
                   n_validation=len(splits.validation), n_reference=n_reference, estimate=estimate,
                   hardware=distributed.hardware(model_device(model)), wall_seconds=wall,
                   continued={"stages_read_back": store.reused, "batches_read_back": store.reused_batches,
                              "their_seconds": store.reused_seconds})
    earlier_results = None if out_dir is None else Path(out_dir) / "results.json"
    if report_only and earlier_results is not None and earlier_results.is_file():
        # how the run was made is the run's, not this rewrite's (which read every stage back, on this machine)
        made = json.loads(earlier_results.read_text())
        results.update({key: made[key] for key in ("wall_seconds", "continued", "hardware") if key in made})
    if report_only:
        results["report_written_again"] = True
    if out_dir is not None and distributed.is_main():
        write_report(results, reject, Path(out_dir))
    if not (keep_stages or report_only):
        store.clear()
    return results
