"""Adaptive attacks on a classifier with a reject option: each knows the detector exactly.

    defended = DefendedClassifier(model, reject)
    x_adv = KPlusOnePGD(defended, eps=8/255, steps=100, restarts=5, generator=g)(x, y)
    x_adv = KPlusOneAPGD(defended, eps=8/255, steps=100, loss="dlr")(x, y)
    x_adv = PenaltyPGD(defended, eps=8/255, steps=100, restarts=4)(x, y)

A detector is only evaluated when the attacker knows it (Carlini & Wagner 2017, "Adversarial
examples are not easily detected"; Tramèr, Carlini, Brendel & Madry 2020, "On adaptive attacks to
adversarial example defenses"). The attacker wins on an image when some point of the eps-ball is
misclassified *and* accepted (score <= 0). Every iterate counts: each attack shows every iterate
of every restart to an `EvasionTracker` (evasion.py) through the engine's `watch` hook, from the
forward pass each step makes anyway, and the call returns, per image, the first evading point
found (else the final iterate). Later restarts run only on the images not yet evaded.

- `KPlusOnePGD`, `KPlusOneAPGD`: Carlini & Wagner (2017)'s (K + 1)-logit construction: the
  detector becomes an extra class K, and the attack drives the combined logits G to a class other
  than y *and* K. Objectives on G: the margin max_{j not in {y, K}} G_j - max(G_y, G_K)
  (`kplusone_margin`, CW-like), -log(p_y + p_K) (`kplusone_cross_entropy`) and the margin
  over Croce & Hein (2020)'s DLR scale (`kplusone_dlr`). PGD takes fixed steps, APGD its step-size
  schedule (robgen/engine/apgd.py). `KPlusOneTargetedAPGD`: APGD toward one other class per restart
  (the runner-up first), `kplusone_targeted_margin` G_t - max_{j != t} G_j. Against a detector whose score is
  a property of the predicted class (`scores_the_prediction`: robust-margin) the margins leave G_K out of their
  guard until the class is won (`class_first`): lowering it while y is predicted makes y surer.
- `PenaltyPGD`: the Lagrangian min(margin(f(x), y), kappa) - lam * relu(score(x) + m), with lam
  searched per image over the restarts (doubled for an image whose final point is still rejected,
  halved for one still classified correctly).
- `OrthogonalPGD` (orthogonal.py) and `LogitMatching` (matching.py); `run_suite` (suite.py) runs
  them all, and non-adaptive attacks beside them, and keeps each image's first evasion.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from ..checks import check_positive, check_steps
from ..energy import classification_margin
from ..engine import make_constraint, projected_gradient_ascent
from ..engine.apgd import auto_projected_gradient_ascent
from ..engine.autograd import outside_inference_mode
from ..engine.fused import inference_graph
from ..models.state import eval_mode, model_dtype
from .base import attack_inputs, in_callers_precision
from .evasion import DefendedOutputs, EvasionTracker, Outputs, check_defended


# ---- objectives on the (K + 1) combined logits G (class K = "rejected") -------------------------
def _wrong_for_attacker(combined: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K + 1) bool: the true class and the detector class K, the two the attacker must avoid."""
    mask = F.one_hot(labels, combined.shape[1]).bool()
    mask[:, -1] = True
    return mask


def kplusone_margin(combined: torch.Tensor, labels: torch.Tensor, class_first: bool = False) -> torch.Tensor:
    """max_{j not in {y, K}} G_j - max(G_y, G_K): > 0 exactly where the point is misclassified and accepted.

    `class_first`: while the model still predicts y the guard is G_y alone, the detector's logit left out until
    the class is won. For a detector that `scores_the_prediction` (robust-margin: the predicted class's margin
    within a small ball), lowering G_K while y is predicted makes y surer, and the plain guard pulled a rejected
    point near the boundary back toward y: on Imagenette's robust model (K+1) PGD on the plain margin evaded none
    of 40 images that the same margin with this guard, APGD-CE and plain PGD each evaded 8 of
    (scripts/probe_kplusone_margin.py). The value is the same wherever y is not predicted, and a point counts as
    an evasion by the tracker's own test, whatever the loss."""
    others = combined.masked_fill(_wrong_for_attacker(combined, labels), float("-inf")).max(1).values
    true = combined.gather(1, labels[:, None])[:, 0]
    guard = torch.maximum(true, combined[:, -1])
    if class_first:
        guard = torch.where(combined[:, :-1].argmax(1) == labels, true, guard)
    return others - guard


def kplusone_cross_entropy(combined: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log(p_y(G) + p_K(G)): the cross-entropy of the two classes the attacker must avoid taken as one (ascend
    it). With the detector silent (p_K = 0) it is the plain cross-entropy -log p_y, so that (K+1) APGD-CE
    climbs what APGD-CE on the bare model climbs; log p of the best other class alone, a target that moves
    as the logits do, missed images plain PGD on the cross-entropy broke.

    Computed as softplus(logsumexp(G_others) - logsumexp(G_y, G_K)), the same function: the difference
    logsumexp(G) - logsumexp(G_y, G_K) cancels to exactly 0, value and gradient, once the detector's logit
    leads the others by about 17 (float32), and the attack then ignores the detector on a strongly
    rejected point and APGD, seeing no better point, stalls at its start. The softplus moves that limit, not
    removes it: its gradient, about e^-lead, underflows past a lead of about 87 in float32 (745 in float64);
    the margin and DLR losses have no such limit."""
    wrong = _wrong_for_attacker(combined, labels)
    log_avoided = torch.logsumexp(combined.masked_fill(~wrong, float("-inf")), 1)
    log_others = torch.logsumexp(combined.masked_fill(wrong, float("-inf")), 1)
    return F.softplus(log_others - log_avoided)


def kplusone_dlr(combined: torch.Tensor, labels: torch.Tensor, class_first: bool = False) -> torch.Tensor:
    """`kplusone_margin` over G_pi1 - G_pi4: Croce & Hein (2020)'s DLR, invariant to the logits' scale.

    DLR divides by G_pi1 - G_pi3; here two classes (y and K) are excluded instead of one, so the
    scale reaches one rank further down: with pi3, whenever y and K are the top two the best other
    class is pi3 itself and the ratio is -1 whatever the logits, with no gradient to climb.
    """
    ordered = combined.sort(1, descending=True).values
    return (kplusone_margin(combined, labels, class_first)
            / (ordered[:, 0] - ordered[:, min(3, combined.shape[1] - 1)] + 1e-12))


def kplusone_targeted_margin(combined: torch.Tensor, targets: torch.Tensor, class_first: bool = False) -> torch.Tensor:
    """G_t - max_{j != t} G_j, the true class and the detector class K among the j: > 0 exactly where the
    target t (a class other than y) leads the combined logits, so the point is classified t and accepted.
    `class_first`: while the model does not predict t, the detector's logit is left out of the max (see
    `kplusone_margin`)."""
    if not class_first:
        return -classification_margin(combined, targets, check=False)
    target = combined.gather(1, targets[:, None])[:, 0]
    classes = combined[:, :-1].scatter(1, targets[:, None], float("-inf")).max(1).values
    guard = torch.where(combined[:, :-1].argmax(1) == targets, torch.maximum(classes, combined[:, -1]), classes)
    return target - guard


def _class_first(defended) -> bool:
    """Whether the margin attacks on `defended` win the class before the detector (`kplusone_margin`)."""
    return bool(getattr(defended.reject, "scores_the_prediction", False))


KPLUSONE_LOSSES: Dict[str, Callable[..., torch.Tensor]] = {
    "margin": kplusone_margin, "ce": kplusone_cross_entropy, "dlr": kplusone_dlr}


def _loss(name: str, table: Dict[str, Callable]) -> str:
    if name not in table:
        raise ValueError(f"unknown loss {name!r}: choose from {', '.join(table)}")
    return name


# ---- the shared driver ---------------------------------------------------------------------------
class AdaptiveAttack:
    """An attack on a `DefendedClassifier`: settings at construction, data at call time.

    Args:
        defended: the classifier with its calibrated reject option.
        eps, norm: the threat model ("linf" or "l2"; eps in pixel units, e.g. 8/255).
        step_size: length of one step; default 2.5 eps / steps (Madry et al. 2018).
        steps: gradient steps per restart.
        restarts: runs per image; a later run starts at a fresh random point of the ball and is made
            only on the images no earlier run evaded.
        random_start: start the first run at a random point of the ball (later ones always do).
        generator: the `torch.Generator` for the random starts (the global RNG is untouched).

    `attack(x, y)` returns, per image, the first evading point found, else its final iterate;
    `attack.run(x, y, tracker)` returns the final iterates and shows every iterate to `tracker`
    (what `run_suite` calls). Subclasses define `_once` (one run on some of the images, through
    `network`: a `DefendedOutputs(self.defended, network=network)`).

    Like robgen's other attacks, the steps run through the model's fused copy when the caller left
    it in eval mode (robgen/engine/fused.py; `attack.fused = False` or `set_fusion(False)` runs the
    model itself). The copy computes the same function up to float rounding, so every first evasion
    it shows is confirmed by the defended classifier itself before it counts (`EvasionTracker.observe`
    with `verify`), and each run's final point is judged by the model.
    """

    fused: Optional[bool] = None  # True / False / None (follow robgen.engine.fused.fusion_enabled())

    def __init__(self, defended, eps: float = 8 / 255, step_size: Optional[float] = None, steps: int = 100,
                 norm: str = "linf", restarts: int = 1, random_start: bool = True,
                 generator: Optional[torch.Generator] = None) -> None:
        self.defended = check_defended(defended)
        self.constraint = make_constraint(norm, eps)
        self.eps, self.norm = self.constraint.eps, self.constraint.norm
        if self.norm == "none":
            raise ValueError("adaptive attacks are measured in a ball: use norm 'linf' or 'l2'")
        self.steps = check_steps(steps)
        self.step_size = check_positive(2.5 * self.eps / self.steps if step_size is None else step_size, "step_size")
        self.restarts = check_steps(restarts, "restarts")
        self.random_start, self.generator = bool(random_start), generator

    @outside_inference_mode
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per image, the first evading point found (misclassified and accepted), else the final iterate; in the
        type of the images given where that is wider (float64 pixels for a float32 model, as `Attack` returns)."""
        given = x.detach() if isinstance(x, torch.Tensor) else x
        x, y = self._check_inputs(x, y)
        tracker = EvasionTracker(self.defended, x, y)
        final = self.run(x, y, tracker)
        found = torch.where(tracker.evaded.view(-1, *([1] * (x.ndim - 1))), tracker.images, final)
        return in_callers_precision(found, given, self.constraint)

    @outside_inference_mode
    def run(self, x: torch.Tensor, y: torch.Tensor, tracker: EvasionTracker) -> torch.Tensor:
        """Every restart, every iterate shown to `tracker`; returns each image's final iterate of its last run."""
        x, y = x.detach(), torch.as_tensor(y, device=x.device).long()
        final = x.clone()
        model = self.defended.model
        network = inference_graph(model, self.fused, example=x)  # before eval_mode: train mode runs the model
        with eval_mode(model):
            self._begin(x, y)
            for restart in range(self.restarts):
                todo = (~tracker.evaded).nonzero()[:, 0]
                if len(todo) == 0:
                    break
                tracker.run = restart
                watch = tracker.watch(todo, verify=network is not model)
                final[todo] = self._once(x[todo], y[todo], restart, watch, todo, network)
                misclassified, rejected = tracker.check(final[todo], todo)
                self._adapt(todo, misclassified, rejected)
        return final

    def _once(self, x, y, restart: int, watch, index: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        """One run on the images `index` (x, y are theirs) through `network`; returns the final iterates."""
        raise NotImplementedError

    def _begin(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Per-call set-up before the first run (PenaltyPGD: its lam per image)."""

    def _adapt(self, index: torch.Tensor, misclassified: torch.Tensor, rejected: torch.Tensor) -> None:
        """After a run: what its final points were (PenaltyPGD moves lam)."""

    def _starts_random(self, restart: int) -> bool:
        return self.random_start or restart > 0

    def _check_inputs(self, x, y):
        x, y, _ = attack_inputs(self.defended.model, x, y, model_size=True)  # float32 for a float16 model
        return x, y

    def _settings(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._settings()
        return (f"{type(self).__name__}(eps={self.eps:.5g}, step_size={self.step_size:.5g}, steps={self.steps}, "
                f"norm={self.norm!r}, restarts={self.restarts}{', ' + extra if extra else ''})")


# ---- Carlini & Wagner's construction, by PGD and by APGD ------------------------------------------
class KPlusOnePGD(AdaptiveAttack):
    """PGD on the (K + 1) combined logits (Carlini & Wagner 2017): away from both y and the detector class.

    `loss`: "margin" (max_{j not in {y, K}} G_j - max(G_y, G_K)), "ce" (-log(p_y + p_K), the
    cross-entropy of y and K taken as one) or "dlr" (the margin on DLR's scale).

    Example:
        >>> attack = KPlusOnePGD(DefendedClassifier(model, reject), eps=8/255, steps=100, restarts=5, generator=g)
        >>> x_adv = attack(x, y)
    """

    def __init__(self, defended, eps: float = 8 / 255, step_size: Optional[float] = None, steps: int = 100,
                 norm: str = "linf", restarts: int = 1, loss: str = "margin", random_start: bool = True,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(defended, eps, step_size, steps, norm, restarts, random_start, generator)
        self.loss = _loss(loss, KPLUSONE_LOSSES)
        classes = getattr(getattr(defended.model, "spec", None), "num_classes", None)  # else read from the logits
        if self.loss == "dlr" and classes is not None:
            _check_dlr_classes(classes)

    def _objective(self, y: torch.Tensor):
        loss = KPLUSONE_LOSSES[self.loss]
        class_first = {"class_first": True} if self.loss in ("margin", "dlr") and _class_first(self.defended) else {}

        def objective(outputs):
            if self.loss == "dlr":
                _check_dlr_classes(outputs.combined.shape[1] - 1)
            return loss(outputs.combined, y, **class_first)

        return objective

    def _once(self, x, y, restart, watch, index, network):
        return projected_gradient_ascent(DefendedOutputs(self.defended, network=network), x, self._objective(y),
                                         self.constraint,
                                         self.steps, self.step_size, random_start=self._starts_random(restart),
                                         generator=self.generator, watch=watch)

    def _settings(self) -> str:
        return f"loss={self.loss!r}"


def _check_dlr_classes(classes: int) -> None:
    if classes < 3:
        raise ValueError(f"the (K+1) DLR loss needs at least 3 classes (it scales by the fourth-largest of the K+1 "
                         f"logits; with {classes} it is -1 wherever y and the detector lead, with no gradient): use "
                         "loss 'margin' or 'ce'")


class KPlusOneAPGD(KPlusOnePGD):
    """APGD (Croce & Hein 2020: momentum 0.75, step halving at checkpoints, restart from the best point)
    on the (K + 1) combined logits; `loss` "ce" or "dlr" (or "margin"). Picks its own step sizes.

    Example:
        >>> x_adv = KPlusOneAPGD(defended, eps=8/255, steps=100, loss="dlr", generator=g)(x, y)
    """

    def __init__(self, defended, eps: float = 8 / 255, steps: int = 100, norm: str = "linf", restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, random_start: bool = True,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(defended, eps, 2 * eps, steps, norm, restarts, loss, random_start, generator)
        self.rho = float(rho)

    def _once(self, x, y, restart, watch, index, network):
        return auto_projected_gradient_ascent(DefendedOutputs(self.defended, network=network), x,
                                              self._objective(y), self.constraint,
                                              self.steps, random_start=self._starts_random(restart),
                                              generator=self.generator, rho=self.rho, watch=watch)


class KPlusOneTargetedAPGD(KPlusOneAPGD):
    """Multi-targeted APGD on the (K + 1) combined logits (the step scheme of Croce & Hein 2020's APGD-T with a
    Carlini-Wagner margin for its loss, not their targeted DLR; one target class per restart as in Gowal et al.
    2019's multi-targeted attack): restart r ascends `kplusone_targeted_margin` toward target t_r, the image's r-th likeliest class other than y at its clean
    point (the runner-up first), so that t_r overtakes the true class and the detector class at once. After
    the K - 1 other classes the targets start again from the runner-up.

    An untargeted attack climbs toward whichever wrong class is closest now, which may lead into a region the
    detector rejects; one target per restart searches each nearby class's region in turn.

    Example:
        >>> x_adv = KPlusOneTargetedAPGD(defended, eps=8/255, steps=100, restarts=3, generator=g)(x, y)
    """

    def __init__(self, defended, eps: float = 8 / 255, steps: int = 100, norm: str = "linf", restarts: int = 3,
                 rho: float = 0.75, random_start: bool = True, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(defended, eps, steps, norm, restarts, "margin", rho, random_start, generator)
        self.targets: Optional[torch.Tensor] = None  # per image, the other classes in its clean logits' order

    def _begin(self, x, y):
        with torch.no_grad():  # x: the attack's iterates, float32 for a float16 or bfloat16 model
            logits = self.defended.model(x.to(model_dtype(self.defended.model)))
        if logits.shape[1] < 2:
            raise ValueError("a targeted attack needs at least two classes")
        others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        self.targets = others.argsort(1, descending=True)[:, :logits.shape[1] - 1]

    def _objective(self, targets: torch.Tensor):
        class_first = _class_first(self.defended)
        return lambda outputs: kplusone_targeted_margin(outputs.combined, targets, class_first)

    def _once(self, x, y, restart, watch, index, network):
        targets = self.targets[index, restart % self.targets.shape[1]]
        return auto_projected_gradient_ascent(DefendedOutputs(self.defended, network=network), x,
                                              self._objective(targets), self.constraint,
                                              self.steps, random_start=self._starts_random(restart),
                                              generator=self.generator, rho=self.rho, watch=watch)

    def _settings(self) -> str:
        return "targets: one class per restart, the runner-up first"


# ---- the Lagrangian ------------------------------------------------------------------------------
class PenaltyPGD(AdaptiveAttack):
    """PGD on min(margin(f(x), y), kappa) - lam * relu(score(x) + m), lam searched per image.

    The classification margin (max_{j != y} f_j - f_y, capped at `confidence` = kappa as in Carlini
    & Wagner's loss, so that a point misclassified by kappa is moved by the penalty alone; the cap
    makes the attack far less sensitive to lam's scale) against the reject score pushed
    `score_margin` = m (in the score's units) below 0, safely inside the accepted region (for the
    energy band, whose score is the larger of its two sides, both edges at once). With kappa = 0 a
    point misclassified and at least m inside has no gradient left and stays put.

    lam starts at `lam`; after each restart an image still not evaded gets 2 lam if its final point
    was rejected, lam / 2 if it was accepted and classified correctly; evaded images are done.
    `restarts` is the number of lam rounds.

    Example:
        >>> x_adv = PenaltyPGD(defended, eps=8/255, steps=100, restarts=4, lam=1.0, generator=g)(x, y)
    """

    def __init__(self, defended, eps: float = 8 / 255, step_size: Optional[float] = None, steps: int = 100,
                 norm: str = "linf", restarts: int = 4, lam: float = 1.0, score_margin: float = 0.01,
                 confidence: float = 0.0, random_start: bool = True,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(defended, eps, step_size, steps, norm, restarts, random_start, generator)
        self.lam = check_positive(lam, "lam")
        self.score_margin, self.confidence = float(score_margin), float(confidence)
        for name, value in (("score_margin", self.score_margin), ("confidence", self.confidence)):
            if not 0 <= value < math.inf:  # below 0 the objective stops pushing before the point misclassifies or
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")  # is accepted
        self.lams: Optional[torch.Tensor] = None  # per image, after a call: the lam a next run would take

    def _begin(self, x, y):
        self.lams = torch.full((x.shape[0],), self.lam, dtype=x.dtype, device=x.device)

    def _once(self, x, y, restart, watch, index, network):
        lam = self.lams[index]

        def objective(outputs: Outputs) -> torch.Tensor:
            margin = classification_margin(outputs.logits, y, check=False).clamp(max=self.confidence)
            return margin - lam * F.relu(outputs.score + self.score_margin).to(margin.dtype)

        return projected_gradient_ascent(DefendedOutputs(self.defended, network=network), x, objective,
                                         self.constraint, self.steps,
                                         self.step_size, random_start=self._starts_random(restart),
                                         generator=self.generator, watch=watch)

    def _adapt(self, index, misclassified, rejected):
        lam = self.lams[index]
        self.lams[index] = torch.where(rejected, lam * 2, torch.where(misclassified, lam, lam / 2))

    def _settings(self) -> str:
        return f"lam={self.lam:g}, score_margin={self.score_margin:g}, confidence={self.confidence:g}"
