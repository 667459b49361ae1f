"""`run_suite`: every attack against one defended classifier, and each image's first evasion across all.

    defended = DefendedClassifier(model, reject)
    result = run_suite(defended, x, y, {
        "k+1 apgd-ce": KPlusOneAPGD(defended, eps=8/255, steps=100, loss="ce", generator=g),
        "k+1 apgd-dlr": KPlusOneAPGD(defended, eps=8/255, steps=100, loss="dlr", generator=g),
        "orthogonal": OrthogonalPGD(defended, eps=8/255, steps=100, generator=g),
        "penalty": PenaltyPGD(defended, eps=8/255, steps=100, restarts=4, generator=g),
        "logit matching": LogitMatching(defended, x_val, y_val, eps=8/255, steps=100, generator=g),
        "pgd (bare model)": PGD(model, eps=8/255, steps=100, generator=g),          # non-adaptive references
        "hepgd 1.2": HighEnergyPGD(model, eps=8/255, steps=100, lam=1.2, generator=g),
    }, eps=8/255)
    result.evaded          # (N,) bool: some attack reached a misclassified, accepted point
    result.report()        # robgen.detection.dara.detection_aware_report at the suite's eps: DARA, per attack, ... 

An adaptive attack (one with `run(x, y, tracker)`, robgen/attacks/adaptive.py) shows the suite
every iterate of every restart, and stops it on a batch once every image of the batch has evaded
(what follows could not change a flag). A robgen `Attack` on the bare model (PGD, HE-PGD) runs to its
end, and the suite judges every iterate it steps from (its `watch`, one more pass of the defended
classifier per step) and the point it returns: a point it passes through that is misclassified and
accepted counts, even where it ends rejected, and one it passes through that is misclassified counts
against the bare model. An `Attack` that does not step through the engine loop (APGD, the zoo's) shows
no iterate, and any other attack object, `attack(x, y) -> x_adv`, is judged on the point it returns.
For each attack the suite also
records whether its final point (where it stopped) is misclassified and whether it is rejected: for
an attack made against the bare model, its success there and the detector's detection rate among
its successes.
The clean images are scored once, for the clean accuracy with rejection and the DARA.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch

from ..checks import check_labels
from ..detection.dara import detection_aware_report
from ..engine import make_constraint
from ..engine.autograd import outside_inference_mode
from ..models.state import eval_mode, pixels_for
from ..progress import step_reporter
from .base import Attack, in_callers_precision
from .evasion import EvasionTracker, check_defended

logger = logging.getLogger(__name__)


@dataclass
class AttackOutcome:
    """One attack's results, per image (N,); `images`: its first evading point where `evaded`, else its final point."""

    evaded: torch.Tensor
    images: torch.Tensor
    misclassified: torch.Tensor  # its final point is misclassified by the model (detector aside)
    rejected: torch.Tensor  # its final point is rejected
    seconds: float = 0.0
    # some point it passed through (every iterate judged, the final one too) is misclassified: the bare model's
    # robustness against it; None: its final point's (`misclassified`)
    ever_misclassified: Optional[torch.Tensor] = None
    first_run: Optional[torch.Tensor] = None  # the run (1-based, restarts) of the first evasion, 0 where none
    adaptive: bool = False  # it knows the detector and stops on a batch once all of it evaded: its final points
    # depend on the batch, so they say nothing of the bare model's robustness


@dataclass
class SuiteResult:
    """All attacks together: per image the first evasion found (in the attacks' order) and which attack found it."""

    clean_correct: torch.Tensor
    clean_accepted: torch.Tensor
    evaded: torch.Tensor
    images: torch.Tensor  # the first evading point where `evaded`, else the clean image
    found_by: List[Optional[str]]  # the attack whose point is in `images`, None where nothing evaded
    attacks: Dict[str, AttackOutcome] = field(default_factory=dict)
    eps: Optional[float] = None  # the threat model the suite was run at (None: run_suite was given no eps)
    norm: Optional[str] = None  # "linf" or "l2"

    def evaded_by_attack(self) -> Dict[str, torch.Tensor]:
        return {name: outcome.evaded for name, outcome in self.attacks.items()}

    def report(self, eps: Optional[float] = None, norm: Optional[str] = None,
               best_known_at_half: Optional[float] = None) -> Dict[str, object]:
        """`detection_aware_report` of the suite at its threat model (`eps` and `norm` are the run's: given, they
        must agree with it; needed where run_suite was given no eps): DARA, the per-attack breakdown, Tramèr's ceiling note, and for
        the attacks that do not know the detector (PGD, HE-PGD on the bare model) the bare model's robust accuracy
        under them (misclassified at any point they passed through, as the DARA counts) and the detector's
        detection rate among their successes (at their final points). An adaptive
        attack's final points are left out: it stops on a batch once all of it evaded, so an image it evaded may
        end classified correctly, and where it ends depends on the batch (robust accuracy with the detector off
        is a suite run against `DetectorOff`)."""
        if eps is not None and self.eps is not None and not math.isclose(float(eps), self.eps, rel_tol=1e-9):
            raise ValueError(f"the suite ran at eps {self.eps:g}, not {float(eps):g}: report it at its own eps")
        if norm is not None:  # any spelling run_suite takes ("inf", "L-inf"), read as run_suite reads it
            norm = make_constraint(norm, 1.0).norm
        if norm is not None and self.norm is not None and norm != self.norm:
            raise ValueError(f"the suite ran in the {self.norm} norm, not {norm}: report it in its own norm")
        eps = self.eps if eps is None else float(eps)
        if eps is None:
            raise ValueError("pass the eps the suite's attacks were built with: report(eps=8/255) (run_suite was "
                             "given no eps to record)")
        norm = {"linf": "Linf", "l2": "L2"}.get((norm or self.norm or "linf").lower(), norm)
        judged = {name: o for name, o in self.attacks.items() if not o.adaptive}
        fooled = {name: o.misclassified if o.ever_misclassified is None else o.ever_misclassified
                  for name, o in judged.items()}  # as the DARA counts evasions: at any point it passed through
        return detection_aware_report(
            self.clean_correct, self.clean_accepted, self.evaded_by_attack(), eps,
            bare_adversarial_correct={name: ~flags for name, flags in fooled.items()} if judged else None,
            bare_adversarial_rejected={name: o.rejected for name, o in judged.items()} if judged else None,
            bare_final_correct={name: ~o.misclassified for name, o in judged.items()} if judged else None,
            norm=norm, best_known_at_half=best_known_at_half)


def _check_in_ball(name: str, points: torch.Tensor, x: torch.Tensor, constraint) -> None:
    if points.shape != x.shape:
        raise ValueError(f"attack {name!r} returned shape {tuple(points.shape)} for images of shape {tuple(x.shape)}")
    if constraint is not None:
        moved = (constraint.project(points.clone(), x) - points).abs().max()
        if float(moved) > 1e-5:
            raise ValueError(f"attack {name!r} left the {constraint.norm} ball of radius {constraint.eps:g} "
                             f"(or [0, 1]) by {float(moved):.3g}: build every attack of the suite with the suite's "
                             "eps and norm")


def _run_batch(defended, x, y, attacks: Mapping[str, object], constraint, progress, done, total) -> SuiteResult:
    with torch.no_grad(), eval_mode(defended.model):
        logits, score = defended.outputs(x)
    overall = EvasionTracker(defended, x, y)
    found_by: List[Optional[str]] = [None] * len(x)
    outcomes: Dict[str, AttackOutcome] = {}
    for name, attack in attacks.items():
        start = time.perf_counter()
        # an attack built against another defended classifier shows that one's scores: judged again by this one
        tracker = EvasionTracker(defended, x, y, stop_when_all_evaded=True,
                                 judge_itself=getattr(attack, "defended", defended) is not defended)
        ever = torch.zeros(len(x), dtype=torch.bool, device=x.device)

        def judge(step, points, outputs):  # every iterate judged by the defended classifier itself
            ever.logical_or_(tracker.check(points)[0])

        if hasattr(attack, "run"):
            final = attack.run(x, y, tracker)
        elif isinstance(attack, Attack):
            final = attack(x, y, watch=judge)
        else:
            final = attack(x, y)
        _check_in_ball(name, final, x, constraint)
        with eval_mode(defended.model):
            misclassified, rejected = tracker.check(final)
        ever |= misclassified
        _check_in_ball(name, tracker.images, x, constraint)
        images = torch.where(tracker.evaded.view(-1, *([1] * (x.ndim - 1))), tracker.images, final)
        outcomes[name] = AttackOutcome(tracker.evaded, images, misclassified, rejected, time.perf_counter() - start,
                                       first_run=tracker.first_run, adaptive=hasattr(attack, "run"),
                                       ever_misclassified=None if hasattr(attack, "run") else ever)
        for i in overall.merge(tracker).nonzero()[:, 0].tolist():
            found_by[i] = name
        done += 1
        if progress is not None:
            progress(done / total)
    return SuiteResult(logits.argmax(1) == y, score <= 0, overall.evaded, overall.images, found_by, outcomes)


def _concatenate(parts: List[SuiteResult]) -> SuiteResult:
    def cat(get) -> torch.Tensor:
        return torch.cat([get(part) for part in parts])

    outcomes = {name: AttackOutcome(*(cat(lambda p, f=f: getattr(p.attacks[name], f))
                                      for f in ("evaded", "images", "misclassified", "rejected")),
                                    seconds=sum(p.attacks[name].seconds for p in parts),
                                    first_run=cat(lambda p: p.attacks[name].first_run),
                                    adaptive=parts[0].attacks[name].adaptive,
                                    ever_misclassified=None if parts[0].attacks[name].ever_misclassified is None
                                    else cat(lambda p: p.attacks[name].ever_misclassified))
                for name in parts[0].attacks}
    return SuiteResult(cat(lambda p: p.clean_correct), cat(lambda p: p.clean_accepted), cat(lambda p: p.evaded),
                       cat(lambda p: p.images), [name for p in parts for name in p.found_by], outcomes)


@outside_inference_mode
def run_suite(defended, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, object],
              eps: Optional[float] = None, norm: str = "linf", batch_size: Optional[int] = None,
              progress=None) -> SuiteResult:
    """Run every attack (with its restarts) on (x, y) against `defended`; see the module docstring.

    Args:
        defended: the `DefendedClassifier` every evasion is judged by.
        attacks: {name: attack}, adaptive attacks (robgen.attacks.adaptive) or any `attack(x, y) -> x_adv`.
        eps, norm: the suite's threat model; when given, an attack built with another eps or norm (its `eps`
            and `norm` attributes) is refused, and every point an attack returns or evades with must lie in
            that ball.
        batch_size: attack this many images at a time (all at once by default).
        progress: True (a tqdm bar), None/False, or `fn(fraction, desc)` (robgen.progress), after each
            attack on each batch.
    """
    check_defended(defended)
    given = x
    if not attacks:
        raise ValueError("attacks is empty: pass {name: attack}, e.g. {'k+1 apgd-ce': KPlusOneAPGD(defended, eps)}")
    spec = getattr(defended.model, "spec", None)
    x = pixels_for(defended.model, x, model_size=True, working=True)  # float32 for a float16 model
    y = torch.as_tensor(y, device=x.device)
    if spec is not None:
        check_labels(y, x.shape[0], spec.num_classes)
    for name, attack in attacks.items():
        if getattr(attack, "defended", defended) is not defended:
            logger.warning("attack %r was built for another defended classifier: it does not attack this one's "
                           "detector (each point it passes through is judged by this one, one more pass a step)", name)
    constraint = make_constraint(norm, eps) if eps is not None else None
    if constraint is not None:  # a smaller ball passes the check on the points, and would be reported at this eps
        for name, attack in attacks.items():
            own_eps, own_norm = getattr(attack, "eps", None), getattr(attack, "norm", None)
            if isinstance(own_norm, str) and own_norm.lower().replace("-", "") in ("linf", "inf", "l2"):
                own_norm = make_constraint(own_norm, 1.0).norm
            if own_eps is not None and (not math.isclose(float(own_eps), constraint.eps, rel_tol=1e-6) or (
                    isinstance(own_norm, str) and own_norm != constraint.norm)):
                raise ValueError(f"attack {name!r} was built for the {own_norm} ball of radius {float(own_eps):g}, "
                                 f"the suite reports the {constraint.norm} ball of radius {constraint.eps:g}: build "
                                 "every attack of the suite with the suite's eps and norm")
    size = len(x) if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts, report = range(0, len(x), size), step_reporter(progress, "adaptive attacks")
    parts = [_run_batch(defended, x[i:i + size], y[i:i + size].long(), attacks, constraint, report,
                        k * len(attacks), len(starts) * len(attacks)) for k, i in enumerate(starts)]
    result = parts[0] if len(parts) == 1 else _concatenate(parts)
    if constraint is not None:
        result.eps, result.norm = constraint.eps, constraint.norm
    # the points in the type of the images given where that is wider (float64 pixels of a float32 model), in the
    # ball around them, as each attack returns them (they came back float32, up to 3e-8 outside it)
    widened = in_callers_precision(result.images, given, constraint)
    if widened.dtype != result.images.dtype:  # where nothing evaded: the clean image given, not its rounding
        unevaded = ~result.evaded.to(widened.device).view(-1, *([1] * (widened.ndim - 1)))
        widened = torch.where(unevaded, given.detach().to(widened), widened)
    result.images = widened
    for outcome in result.attacks.values():
        outcome.images = in_callers_precision(outcome.images, given, constraint)
    return result
