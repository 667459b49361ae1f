"""The attack suite of the adaptive evaluation (adaptive.py), one attack at a time, as a resumable stage.

    attack = make_suite_attack("k+1 apgd-dlr", defended, 8/255, settings, generator, targets)
    flags = suite_stage(defended, attack, "k+1 apgd-dlr", x, y, 8/255, batch_size, generator, report)
    flags["evaded"], flags["point_logits"]        # per test image, in data order

- `make_suite_attack`: the suite's attacks by name (SUITE order: the adaptive attacks, then the
  non-adaptive references on the bare model), with the run's steps and restarts.
- `DetectorOff`: the detector switched off, a reject option that accepts everything; against it the
  suite measures the bare model (Carlini et al. 2019's sanity check).
- `saved_detector`: a finished run's detector as it saved it (or the detector switched off), for the
  scripts that attack a finished run again.
- `suite_stage`: one attack over the test images through `run_suite`, batch by batch, this rank's
  share of the batches under torchrun, each batch's random draws seeded by its index; every rank
  gets every batch's flags back, in data order.
- `reference_stage`, `judge_reference`: a non-adaptive reference's points, computed once per eps (they
  do not depend on the detector), each point it passes through judged by every detector as it goes.
- `SuiteStageStore`: `experiments.stages.StageStore` for such flags (a dict of tensors per stage).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

from .. import distributed
from ..attacks import PGD, HighEnergyPGD
from ..attacks.adaptive import KPlusOneAPGD, KPlusOnePGD, KPlusOneTargetedAPGD, PenaltyPGD
from ..attacks.matching import LogitMatching
from ..attacks.orthogonal import OrthogonalPGD
from ..attacks.suite import run_suite
from ..detection.defended import DefendedClassifier
from ..detection.reject import RejectOption
from ..detection.baselines import penultimate_features
from ..models.state import eval_mode, model_device, pixels_for, widened
from . import stages as stage_files
from .adaptive_report import OFF
from .pipeline import tensor_batches

ADAPTIVE = ("k+1 pgd", "k+1 apgd-ce", "k+1 apgd-dlr", "orthogonal pgd", "penalty pgd", "logit matching",
            "k+1 apgd-t")
BARE_PGD = "pgd (bare model)"
OFF_SCORE = 1e4  # DetectorOff's score is -OFF_SCORE: far below 0, so the (K + 1)-th logit never competes


def hepgd_name(lam: float) -> str:
    return f"hepgd lam={lam:g} (bare model)"


def suite_names(lambdas) -> Tuple[str, ...]:
    """The suite's attacks, in the order each image's first evasion is credited to."""
    return (*ADAPTIVE, BARE_PGD, *(hepgd_name(lam) for lam in lambdas))


class DetectorOff(RejectOption):
    """The detector switched off: accepts every input (score -OFF_SCORE, constant, still in the logits' graph).

    Carlini et al. (2019): with the detector off, an evaluation must give the bare classifier's numbers.
    Against it the (K+1)-logit attacks are the plain margin and cross-entropy attacks (the extra logit
    sits OFF_SCORE below the top class), and Orthogonal PGD's detector gradient is zero.
    """

    kind = OFF

    def values(self, logits, features=None, inputs=None, network=None):
        return logits[:, 0] * 0.0

    def _fit_values(self, values):
        pass

    def _score_from_values(self, values):
        return values - OFF_SCORE

    def thresholds(self):
        return {}

    def _set_thresholds(self, thresholds):
        pass


def saved_detector(run_dir, results: dict, name: str, model) -> RejectOption:
    """Detector `name` of a finished run (its results.json as `results`), as the run calibrated and saved it in
    detectors/; for OFF, the detector switched off. Refused if calibrated for another model."""
    if name == OFF:
        return DetectorOff(target_fpr=0.0).fit(torch.zeros(2, model.spec.num_classes), model=model)
    return RejectOption.load(Path(run_dir) / results["detectors"][name]["file"], model=model)


def make_suite_attack(name: str, defended: DefendedClassifier, eps: float, settings,
                      generator: torch.Generator, targets: Tuple[torch.Tensor, torch.Tensor]):
    """One attack of the suite by name, at `eps`, with `settings`' steps and restarts (the targeted ones: its
    `target_runs`, one target class each), drawing from `generator`.

    `targets`: (images, labels) offered to logit matching. The references on the bare model take the
    adaptive attacks' default step, 2.5 eps / steps (Madry et al. 2018).
    """
    common = dict(eps=eps, steps=settings.steps, generator=generator)
    if name == "k+1 pgd":
        return KPlusOnePGD(defended, restarts=settings.restarts, loss="margin", **common)
    if name in ("k+1 apgd-ce", "k+1 apgd-dlr"):
        loss = name.rsplit("-", 1)[1]
        if loss == "dlr" and defended.num_classes < 3:  # DLR has no scale on 2 classes: its margin, unscaled
            loss = "margin"
        return KPlusOneAPGD(defended, restarts=settings.restarts, loss=loss, **common)
    if name == "orthogonal pgd":
        return OrthogonalPGD(defended, restarts=settings.restarts, **common)
    if name == "penalty pgd":
        return PenaltyPGD(defended, restarts=settings.restarts, **common)
    if name == "k+1 apgd-t":
        return KPlusOneTargetedAPGD(defended, restarts=settings.target_runs, **common)
    if name == "logit matching":
        return LogitMatching(defended, *targets, restarts=settings.target_runs, **common)
    step_size = 2.5 * eps / settings.steps
    if name == BARE_PGD:
        return PGD(defended.model, step_size=step_size, **common)
    for lam in settings.lambdas:
        if name == hepgd_name(lam):
            return HighEnergyPGD(defended.model, step_size=step_size, lam=lam, **common)
    raise ValueError(f"unknown attack {name!r}: choose from {', '.join(suite_names(settings.lambdas))}")


def matching_skip_reason(defended: DefendedClassifier, targets: torch.Tensor, labels: torch.Tensor) -> Optional[str]:
    """Why logit matching cannot run (its usable targets, correct and accepted, span fewer than two classes)."""
    with torch.no_grad(), eval_mode(defended.model):
        logits, score = defended.outputs(pixels_for(defended.model, targets, name="targets", model_size=True).to(
            model_device(defended.model)))  # in the model's dtype: float64 targets failed on a float32 model
    usable = (logits.argmax(1).cpu() == labels) & (score.cpu() <= 0)
    classes = sorted(set(labels[usable].tolist()))
    if len(classes) >= 2:
        return None
    return (f"of the {len(labels)} validation target images, the defended model accepts and classifies correctly "
            f"only ones of {len(classes)} class(es) {classes}: no image has a target of another class")


def suite_stage(defended: DefendedClassifier, attack, name: str, x: torch.Tensor, y: torch.Tensor, eps: float,
                batch_size: int, generator: torch.Generator, report: Callable[[float], None],
                standing: Optional[torch.Tensor] = None,
                parts: Optional[stage_files.StageParts] = None) -> Dict[str, torch.Tensor]:
    """One attack of the suite over (x, y); per image (on the CPU, in data order):

    "evaded" (some point misclassified and accepted), "first_run" (in which restart, 1-based; 0: none),
    "misclassified" / "rejected" (its final point: where
    it stopped, `run_suite` stopping a batch once all of it evaded),
    "clean_correct" / "clean_accepted", "labels", and the model's "point_logits" and the reject
    "point_score" at the point the attack is judged by (its first evasion, else its final point),
    "attacked" (whether the attack ran on the image).

    `standing` (N bool, data order; `AdaptiveSettings.skip_evaded`): attack only these images. The others
    are recorded as not attacked: not evaded, their point the clean image. `parts` (`SuiteStageStore.parts`):
    each batch kept as it finishes and read back by the same stage run again after an interruption.
    """
    parts = parts if parts is not None else stage_files.StageParts(None)
    device, rows = model_device(defended.model), []
    share = distributed.shard_batches(tensor_batches(x, y, batch_size))
    with distributed.per_batch_seeds(generator) as reseed:
        for done, (index, (images, labels)) in enumerate(share):
            reseed(index)  # read back or not: the next batch's draws are its own
            chosen = None if standing is None else standing[index * batch_size:index * batch_size + len(images)]

            def attack_batch(images=images, labels=labels, chosen=chosen):  # moved to the device only if attacked
                row = _attack_batch(defended, attack, name, images.to(device), labels.to(device), eps, chosen)
                return {key: value.detach().cpu() for key, value in row.items()}

            rows.append((index, parts.run(index, attack_batch)))
            report((done + 1) / len(share))
    rows = distributed.gather_in_order(rows)
    return {key: torch.cat([row[key] for row in rows]).contiguous() for key in rows[0]}


def _attack_batch(defended: DefendedClassifier, attack, name: str, images: torch.Tensor, labels: torch.Tensor,
                  eps: float, chosen: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`suite_stage`'s flags for one batch, the attack run on the `chosen` images only (all when None); an image
    not chosen keeps its clean image as its point (the clean flags then come from one more forward pass)."""
    if chosen is None or bool(chosen.all()):
        result = run_suite(defended, images, labels, {name: attack}, eps=eps)
        outcome = result.attacks[name]
        points, evaded, first_run = outcome.images, outcome.evaded, outcome.first_run
        misclassified, rejected = outcome.misclassified, outcome.rejected
        clean_correct, clean_accepted = result.clean_correct, result.clean_accepted
        chosen = torch.ones_like(evaded)
    else:
        chosen = chosen.to(images.device)
        with torch.no_grad(), eval_mode(defended.model):
            clean_logits, clean_score = defended.outputs(images)
        clean_correct, clean_accepted = clean_logits.argmax(1) == labels, clean_score <= 0
        points, evaded = images.clone(), torch.zeros_like(chosen)
        first_run = torch.zeros(len(images), dtype=torch.long, device=images.device)
        misclassified, rejected = ~clean_correct, ~clean_accepted
        if chosen.any():
            outcome = run_suite(defended, images[chosen], labels[chosen], {name: attack}, eps=eps).attacks[name]
            points[chosen], evaded[chosen], first_run[chosen] = outcome.images, outcome.evaded, outcome.first_run
            misclassified[chosen], rejected[chosen] = outcome.misclassified, outcome.rejected
    with torch.no_grad(), eval_mode(defended.model):
        logits, score = defended.outputs(points)
    return {"evaded": evaded, "first_run": first_run, "misclassified": misclassified, "rejected": rejected,
            "clean_correct": clean_correct, "clean_accepted": clean_accepted, "labels": labels,
            "point_logits": widened(logits), "point_score": score.double(), "attacked": chosen}


def reference_stage(model, attack, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    reject: Mapping[str, RejectOption], report: Callable[[float], None],
                    parts: Optional[stage_files.StageParts] = None) -> Dict[str, torch.Tensor]:
    """A non-adaptive reference (PGD or HE-PGD on the bare model) over (x, y), once for every detector of `reject`
    (each a function of the logits and penultimate features at a point: `shares_references`). Per image (on the
    CPU, in data order): "labels", the model's "final_logits" at the attack's final point, and per detector d
    (every point the attack passed through judged by it, the final one too): "d/evaded" (one was misclassified and
    accepted), "d/rejected" (the final point is rejected), "d/logits" and "d/score" at the first evading point,
    else at the final point. `judge_reference` turns it into the detector's flags.

    The attack knows no detector, so its points are the same whichever detector judges them: the suite computes
    them once per eps instead of once per detector, and judges each iterate by every detector from one more pass
    of the model there. Batches, per-batch seeds, the torchrun share and `parts` as in `suite_stage`.
    """
    parts = parts if parts is not None else stage_files.StageParts(None)
    device, rows = model_device(model), []
    share = distributed.shard_batches(tensor_batches(x, y, batch_size))
    with eval_mode(model), distributed.per_batch_seeds(attack.generator) as reseed:
        for done, (index, (images, labels)) in enumerate(share):
            reseed(index)  # read back or not: the next batch's draws are its own

            def attack_batch(images=images, labels=labels):
                judge = _EveryPoint(model, reject, labels)
                final = attack(images.to(device), labels.to(device), watch=lambda step, points, outputs: judge(points))
                return judge.finish(final)

            rows.append((index, parts.run(index, attack_batch)))
            report((done + 1) / len(share))
    rows = distributed.gather_in_order(rows)
    return {key: torch.cat([row[key] for row in rows]).contiguous() for key in rows[0]}


class _EveryPoint:
    """`reference_stage`'s judge of one batch: shown each point the attack passes through, it runs the model there
    once and keeps, per detector, the first point that is misclassified and accepted (its logits and score);
    `finish(final)` judges the final point too and gives the batch's row of the stage."""

    def __init__(self, model, reject: Mapping[str, RejectOption], labels: torch.Tensor) -> None:
        self.model, self.reject, self.labels = model, reject, labels.cpu()
        self.features = any(option.needs_features for option in reject.values())
        self.evaded = {name: torch.zeros(len(labels), dtype=torch.bool) for name in reject}
        self.logits: Dict[str, torch.Tensor] = {}  # per detector, at its first evading points (made at the first call)
        self.score: Dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, points: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(the model's logits at `points`, on the CPU, {detector: score}); first evasions kept."""
        if self.features:
            features, logits = penultimate_features(self.model, points.detach())
        else:
            features, logits = None, widened(self.model(points.detach())).cpu()
        device, logits = model_device(self.model), widened(logits)  # a float64 model's logits as the calibration
        # and the adaptive attacks' verdicts read them: rounded to float32, a point on a threshold was judged apart
        wrong, scores = logits.argmax(1) != self.labels, {}
        for name, option in self.reject.items():
            score = option.score_from(logits.to(device), features.to(device) if option.needs_features else None)
            scores[name] = score = score.double().cpu()
            new = wrong & (score <= 0) & ~self.evaded[name]
            if name not in self.logits:
                self.logits[name], self.score[name] = torch.zeros_like(logits), torch.zeros_like(score)
            self.logits[name][new], self.score[name][new] = logits[new], score[new]
            self.evaded[name] |= new
        return logits, scores

    def finish(self, final: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits, scores = self(final)
        row = {"labels": self.labels, "final_logits": logits}
        for name in self.reject:
            evaded = self.evaded[name]
            row.update({f"{name}/evaded": evaded, f"{name}/rejected": scores[name] > 0,
                        f"{name}/logits": torch.where(evaded[:, None], self.logits[name], logits),
                        f"{name}/score": torch.where(evaded, self.score[name], scores[name])})
        return row


@torch.no_grad()
def judge_reference(name: str, reject: RejectOption, stage: Dict[str, torch.Tensor], clean_logits: torch.Tensor,
                    clean_features: Optional[torch.Tensor], device=None) -> Dict[str, torch.Tensor]:
    """A reference stage (`reference_stage`) judged by its detector `name` (`reject`): the flags `suite_stage`
    gives the attack. "evaded": some point it passed through (every iterate and the final point) is misclassified
    and accepted; "misclassified" / "rejected": at its final point (for the bare model's robustness and the
    detection rate); "point_logits" / "point_score": at its first evasion, else at its final point. The clean
    flags come from the clean test images' logits (and features) in data order, scored on `device` (the model's:
    a user's detector may hold tensors there); the flags come back on the CPU."""
    needs = reject.needs_features
    on = (lambda tensor: tensor.to(device)) if device is not None else (lambda tensor: tensor)  # noqa: E731
    labels, evaded = stage["labels"], stage[f"{name}/evaded"]
    clean_score = reject.score_from(on(clean_logits), on(clean_features) if needs else None).cpu()
    return {"evaded": evaded, "first_run": evaded.long(), "misclassified": stage["final_logits"].argmax(1) != labels,
            "rejected": stage[f"{name}/rejected"], "clean_correct": clean_logits.argmax(1) == labels,
            "clean_accepted": clean_score <= 0, "labels": labels, "point_logits": stage[f"{name}/logits"],
            "point_score": stage[f"{name}/score"]}


class MissingStage(ValueError):
    """A stage a store that only reads (`computes=False`) does not hold: bad input (the run named), not a bug."""


class SuiteStageStore(stage_files.StageStore):
    """A `StageStore` whose stages are one attack's per-image flags (a dict of tensors), not `ModelOutputs`.
    `computes=False`: only reads stages back, and a missing one is an error (a report written again from a
    finished run's kept stages must not start attacking)."""

    def __init__(self, folder, key: dict, replace_stale: bool = False, computes: bool = True) -> None:
        super().__init__(folder, key, replace_stale)
        self.computes = computes

    def run(self, name: str, compute: Callable[[], Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        kept = self.read(name, stage_files.read_tensors)
        if kept is not None:
            return kept
        if not self.computes:
            if self.folder is not None and self.path(name).exists():
                raise MissingStage(f"{self.path(name)} is there but cannot be read (cut short or damaged; the "
                                   "reader's error is in the warning above), so the report cannot be written again "
                                   "without attacking; run it without --report-only, which computes that stage again")
            parts = None if self.folder is None else stage_files.parts_folder(self.folder, name)
            if parts is not None and parts.is_dir():  # the run was stopped inside this stage: finish it
                raise MissingStage(f"{self.folder} has stage {name!r} under way, not finished ("
                                   f"{len(list(parts.glob('batch-*')))} of its batches kept): the run was stopped, so "
                                   "there is no report to write again; run the same command without --report-only, "
                                   "which continues it from those batches")
            raise MissingStage(f"{self.folder} has no stage {name!r}: the run was not finished with its stages kept "
                               "(--keep-stages), so its report cannot be written again without attacking; run it "
                               "without --report-only")
        started = time.perf_counter()
        tensors = compute()
        self.finish(name, time.perf_counter() - started,
                    lambda path, seconds: stage_files.write_tensors(tensors, seconds, path))
        return tensors
