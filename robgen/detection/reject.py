"""Reject options: detectors as calibrated, differentiable scores, ready for an adaptive attacker.

One convention for every detector: `score > 0` means rejected (flagged adversarial), `score <= 0`
accepted. The score is a detector's raw statistic minus its threshold, signed so that the side that
looks adversarial is positive:

    kind            statistic                              rejected when          score
    "energy"        E_T(x) = -T logsumexp(f(x)/T)          E_T(x) < tau           tau - E_T(x)
    "band"          E_T(x)                                 E < lo or E > hi       max(lo - E, E - hi)
    "class-energy"  E(x, ŷ) = -f_ŷ(x) = -max_k f_k(x)      E(x, ŷ) < tau          tau - E(x, ŷ) = tau + max_k f_k(x)
    "multi-t"       E_t(x) at temperatures t_1..t_M        some E_t(x) < tau_t    max_t (tau_t - E_t(x))
    "mahalanobis"   min_c Mahalanobis distance of the      distance > t           distance - t
                    penultimate features to class c
    "energy-gap"    E(x, ŷ) - E_T(x) (= -log p(ŷ|x) at     gap > t                gap - t
                    T = 1)
    "robust-margin" max over the rho-ball around x of      margin > t             margin - t
                    E(z, ŷ) - min_{k != ŷ} E(z, k)
    "custom"        a user's s(x) (or s(logits))           s > t                  s - t

"energy" is Beadini & Masi (2023)'s detector: untargeted PGD lowers E(x), so low energy is
adversarial. `EnergyDetector` flags `E <= threshold`; a reject option rejects only strictly below
`tau`, so that its calibration can promise an exact bound (below). "mahalanobis" is the simplified
Lee et al. (2018) score of `baselines.MahalanobisScorer` (class means and a shared covariance of the
penultimate features of clean *training* images).

Calibration (the rule of Tramèr, Carlini, Brendel & Madry 2020, "On adaptive attacks to adversarial
example defenses": fix the threshold on clean held-out data, then attack): every threshold comes from
the clean validation images alone, at a target false-positive rate α (default 5%). With n validation
images, at most m = floor(α n) of them are rejected, exactly: the threshold sits halfway between two
adjacent order statistics of the clean statistic, and ties with the last accepted one are accepted. For an
upper threshold (reject s > t) t lies between the (n - m)-th smallest value and the next; for a lower one
(reject E < tau) tau lies between the m-th smallest and the (m + 1)-th. Halfway, not on a value: a score
recomputed with another batch size or on another device differs in its last bits, and a threshold on a
calibration value would then reject that image, one more than the budget. The band spends floor(α n / 2)
on its low tail and the rest on its high tail.
"multi-t" rejects the union over temperatures, so its per-temperature thresholds sit at a common
level k (each alone would reject at most k) found by bisection as the largest k whose union still
rejects at most m. The validation false-positive rate achieved, with its Wilson interval, is kept.
With `calibrate(..., fpr_among="correct", labels=)`, the m and the rate count among the images the model
classifies correctly (Chen et al. 2023's stratified convention): rejecting a misclassified clean image costs a
defended classifier nothing, so the budget goes to the correct ones, and all clean images are then rejected
more often than α (`RejectOption.fit_values`).
The bound is exact for the statistic as computed at calibration; a threshold fitted on float32
outputs is a float32 number, so the same float32 outputs give the same decisions again (outputs
recomputed on another device or batch may differ in the last bits).

Scores are pure functions of one forward pass's outputs (`score_from(logits, features)`), and
differentiable, so an attack pays one model pass per step for both the classifier and the detector
(`robgen.detection.defended.DefendedClassifier`). The exception is "robust-margin", which runs the
model again inside a small ball around the input (`needs_network`; `steps + 1` more passes a score).
A reject option records the fingerprint of the model it was calibrated on (`robgen.models.fingerprint`)
and refuses any other.

    reject = make_reject_option("energy", temperature=1.0, target_fpr=0.05).calibrate(model, val_images)
    reject.save(folder / "reject-energy.json")
    reject = RejectOption.load(folder / "reject-energy.json", model=model)   # refuses another model
    mine = RejectOption.from_callable(lambda x: my_detector(x)).calibrate(model, val_images)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import check_positive, check_steps
from ..energy import class_energy, classification_margin, energy
from ..engine import LinfBall, projected_gradient_ascent
from ..metrics import accept_down_to, accept_up_to
from ..engine.autograd import outside_inference_mode
from ..models.fingerprint import model_fingerprint
from ..models.state import eval_mode
from .baselines import MahalanobisScorer, penultimate_features
from .detector import TEMPERATURES, EnergyDetector
from .reject_base import (  # noqa: F401  (re-exported: the public face of reject options is this module)
    FORMAT, FORMAT_VERSION, FPR_AMONG, RejectOption, allowed_rejections,
    check_fpr_among, lower_threshold, upper_threshold,
)

__all__ = ["KINDS", "REJECT_OPTIONS", "RejectOption", "make_reject_option", "EnergyReject", "EnergyBandReject",
           "ClassEnergyReject", "MultiTemperatureReject", "MahalanobisReject", "EnergyGapReject", "RobustMarginReject",
           "CallableReject", "allowed_rejections", "lower_threshold", "upper_threshold", "FORMAT", "FORMAT_VERSION"]


class _LowStatisticReject(RejectOption):
    """A statistic that is low on adversarial inputs: reject it below tau; score = tau - statistic."""

    def __init__(self, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        self.tau: Optional[float] = None

    def _fit_values(self, values):
        self.tau = lower_threshold(values, self.target_fpr)

    def _score_from_values(self, values):
        return self.tau - values

    def thresholds(self):
        return {"tau": self.tau}

    def _set_thresholds(self, thresholds):
        self.tau = float(thresholds["tau"])


class _HighStatisticReject(RejectOption):
    """A statistic that is high on adversarial inputs: reject it above the threshold; score = statistic - threshold."""

    def __init__(self, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        self.threshold: Optional[float] = None

    def _fit_values(self, values):
        self.threshold = upper_threshold(values, self.target_fpr)

    def _score_from_values(self, values):
        return values - self.threshold

    def thresholds(self):
        return {"threshold": self.threshold}

    def _set_thresholds(self, thresholds):
        self.threshold = float(thresholds["threshold"])


class EnergyReject(_LowStatisticReject):
    """Beadini & Masi (2023)'s one-sided energy detector: reject E_T(x) < tau; score = tau - E_T(x)."""

    kind = "energy"

    def __init__(self, temperature: float = 1.0, target_fpr: float = 0.05, float64: bool = False) -> None:
        super().__init__(target_fpr)
        self.temperature = check_positive(temperature, "temperature")
        self.float64 = bool(float64)  # compute E_T in float64, as EnergyDetector does (`from_detector` sets it)

    def values(self, logits, features=None, inputs=None, network=None):
        return energy(logits.double() if self.float64 else logits, self.temperature, check=False)

    def settings(self):
        return {"temperature": self.temperature, **({"float64": True} if self.float64 else {})}

    @classmethod
    def from_detector(cls, detector: EnergyDetector, model: torch.nn.Module) -> "EnergyReject":
        """The reject option that rejects what a fitted `EnergyDetector` flags, bound to `model`.

        The detector flags E_T(x) <= its threshold (Youden's or another rule, fitted on clean *and*
        attacked images, so it is no FPR-calibrated threshold); this option rejects E_T(x) < tau with
        tau the next float64 above that threshold and computes E_T in float64 as the detector does
        (`float64=True`), so the two reject the same inputs. Its `target_fpr` is the detector's clean
        validation FPR when recorded (else 0.05), and `calibration` says where the threshold came from. The
        detector must record the weights it was fitted for (`EnergyDetector.bind`), and refuses other ones.
        """
        if not isinstance(detector, EnergyDetector):
            raise TypeError(f"detector must be a fitted EnergyDetector, got {type(detector).__name__}")
        threshold = float(detector._require_fit())
        if detector.model_fingerprint is None:  # a threshold on an unknown model's energy scale: bound to this one,
            # DefendedClassifier would trust it
            raise ValueError("this energy detector does not record which model it was fitted for (fitted without "
                             "bind(model), or saved by robgen before 2026-12-05): if it was fitted on this model's "
                             "energies, detector.bind(model) first; else fit one for this model (python -m robgen "
                             "fit-detector)")
        detector.check_model(model)
        fpr = detector.validation.get("false_positive_rate")
        option = cls(detector.temperature, fpr if fpr is not None and 0 <= fpr < 1 else 0.05, float64=True)
        option.tau = math.nextafter(threshold, math.inf)
        option.validation = {key: detector.validation[key] for key in ("false_positive_rate", "false_positive_rate_ci")
                             if key in detector.validation}
        if "n_clean" in detector.validation:
            option.validation["n"] = detector.validation["n_clean"]  # the clean images that FPR was measured on
        option.calibration = {"from": "EnergyDetector", "rule": detector.rule, "threshold": threshold}
        return option.bind(model)


class EnergyBandReject(RejectOption):
    """A two-sided energy band: reject E_T(x) < lo or E_T(x) > hi; score = max(lo - E, E - hi).

    Catches attacks that push the energy either way (untargeted attacks lower it, targeted ones
    raise it: Mirza et al. 2024). The low tail gets floor(α n / 2) of the clean budget, the high
    tail the rest.
    """

    kind = "band"

    def __init__(self, temperature: float = 1.0, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        self.temperature = check_positive(temperature, "temperature")
        self.lo: Optional[float] = None
        self.hi: Optional[float] = None

    def values(self, logits, features=None, inputs=None, network=None):
        return energy(logits, self.temperature, check=False)

    def _fit_values(self, values):
        ordered = torch.sort(values.flatten()).values
        n = len(ordered)
        total = allowed_rejections(n, self.target_fpr)
        low = total // 2
        self.lo = accept_down_to(ordered, low)  # #{E < lo} <= low
        self.hi = accept_up_to(ordered, n - 1 - (total - low))  # #{E > hi} <= total - low; lo <= hi as total <= n - 1

    def _score_from_values(self, values):
        return torch.maximum(self.lo - values, values - self.hi)

    def thresholds(self):
        return {"lo": self.lo, "hi": self.hi}

    def _set_thresholds(self, thresholds):
        self.lo, self.hi = float(thresholds["lo"]), float(thresholds["hi"])

    def _check_loaded(self):
        super()._check_loaded()
        if self.lo > self.hi:  # a calibration keeps lo <= hi: the band would accept nothing
            raise ValueError(f"the band's lo {self.lo!r} is above its hi {self.hi!r}, so it rejects every point: "
                             "this file was damaged or edited; calibrate the detector again")

    def settings(self):
        return {"temperature": self.temperature}


class ClassEnergyReject(_LowStatisticReject):
    """Reject a low class energy at the predicted class: E(x, ŷ) = -max_k f_k(x) < tau.

    score = tau - E(x, ŷ) = tau + max_k f_k(x): an over-confident top logit is rejected. (A
    threshold on max_k f_k would be t = -tau; the energy scale is kept so that "low energy =
    rejected" reads the same as for "energy".)
    """

    kind = "class-energy"

    def values(self, logits, features=None, inputs=None, network=None):
        return class_energy(logits, logits.argmax(1), check=False)


class EnergyGapReject(_HighStatisticReject):
    """Reject a large gap between the class energy and the free energy: E(x, ŷ) - E_T(x) > t.

    At T = 1 the gap is -log p(ŷ | x): the classifier's own doubt, read as a difference of the
    paper's two energies. A robust model's adversarial examples sit near a decision boundary, so a
    point the attacker can only just push across it has a low top probability; the adaptive
    attacker must find a point misclassified *with confidence*. (Selective classification, as in
    Stutz et al. 2020's confidence thresholding; here one more reject option under the same attacks.)
    """

    kind = "energy-gap"

    def __init__(self, temperature: float = 1.0, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        self.temperature = check_positive(temperature, "temperature")

    def values(self, logits, features=None, inputs=None, network=None):
        return class_energy(logits, logits.argmax(1), check=False) - energy(logits, self.temperature, check=False)

    def settings(self):
        return {"temperature": self.temperature}


class RobustMarginReject(_HighStatisticReject):
    """Reject an input whose predicted class is not robust in a small ball around it: m_rho(x) > t, with

        m_rho(x) = max_{||z - x||_inf <= rho} [E(z, ŷ) - min_{k != ŷ} E(z, k)],   ŷ = argmax_k f_k(x),

    the class-energy margin of the predicted class at the worst point of the ball (> 0 where some point
    within rho is classified otherwise). The max is taken by `steps` signed-gradient steps of the one
    engine loop from z = x (no random start: the defended classifier stays a deterministic function), step
    2.5 rho / steps. Its gradient is Danskin's, the margin's gradient at the point found (passed through
    where the ball is clipped to [0, 1], where the exact one is 0), so an adaptive attacker differentiates
    it like any other score; one score costs `steps + 1` extra forward+backward
    passes (`passes_per_score`).

    Why it can survive an attacker who knows it (the idea of consistency-based rejection; Tramèr 2022's
    reduction run the other way): if the classifier is right on the whole eps - rho ball around a clean
    image (rho <= eps / 2), then every misclassified point z of its eps ball has, within rho, a point of
    that smaller ball (z pulled back toward the image), classified right, so an exact detector rejects z;
    and the clean image itself, robust at rho, is accepted. So with an exact inner max and t = 0 the
    defended model is at least as accurate under attack at eps as the bare model at eps - rho, and its
    false positives fall on clean images the bare model loses at eps anyway. The calibration sets t at
    the target FPR, so t = 0 only when that FPR happens to match, and `steps` steps are no exact max:
    measure, do not assume (results/adaptive/README.md has what it does on the shipped robust model).
    """

    kind = "robust-margin"
    reads_energy = False
    needs_inputs = True
    needs_network = True
    scores_the_prediction = True  # the predicted class's margin: it jumps where the prediction flips

    def __init__(self, radius: float = 2 / 255, steps: int = 3, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        try:
            self.ball = LinfBall(radius)  # refuses radius <= 0 or > 1 (pixels are in [0, 1])
        except ValueError as error:
            raise ValueError(f"robust-margin's radius: {error}") from None
        self.radius = self.ball.eps
        try:
            self.steps = check_steps(steps)
        except ValueError as error:
            raise ValueError(f"robust-margin's inner steps: {error}") from None
        self.passes_per_score = self.steps + 1

    @outside_inference_mode  # its inner ascent differentiates, also when scoring inside torch.inference_mode()
    def values(self, logits, features=None, inputs=None, network=None):
        predicted = logits.detach().argmax(1)
        worst = projected_gradient_ascent(network, inputs.detach(),
                                          lambda out: classification_margin(out, predicted, check=False),
                                          self.ball, self.steps, 2.5 * self.radius / self.steps)
        # The point found, with the input's gradient (Danskin): the ball moves with x, and its maximiser with it,
        # except in the coordinates the pixel range [0, 1] holds (the ball reaches past 0 or 1 and the point sits
        # there), which do not move with x.
        start = inputs.detach()
        held = ((worst <= 0) & (start - self.radius < 0)) | ((worst >= 1) & (start + self.radius > 1))
        point = torch.where(held, worst, inputs + (worst - start))
        return classification_margin(network(point), predicted, check=False)

    def settings(self):
        return {"radius": self.radius, "steps": self.steps}


class MultiTemperatureReject(RejectOption):
    """Energies at several temperatures: reject when any E_t(x) < tau_t; score = max_t (tau_t - E_t(x)).

    The taus sit at one common level k (tau_t just below the (k + 1)-th smallest clean E_t, so each alone
    rejects at most k), with k the largest level at which the union rejects at most floor(α n)
    clean validation images, found by bisection (the union only grows with k).
    """

    kind = "multi-t"

    def __init__(self, temperatures: Sequence[float] = TEMPERATURES, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        self.temperatures = tuple(check_positive(t, "temperature") for t in temperatures)
        if not self.temperatures:
            raise ValueError("multi-t needs at least one temperature, e.g. temperatures=(0.1, 1.0, 10.0)")
        self.taus: Optional[List[float]] = None
        self.level: Optional[int] = None

    def values(self, logits, features=None, inputs=None, network=None):
        return torch.stack([energy(logits, t, check=False) for t in self.temperatures], dim=1)

    def _fit_values(self, values):
        ordered = torch.sort(values, dim=0).values  # (n, M), each column ascending
        budget = allowed_rejections(len(values), self.target_fpr)

        def union(level: int) -> int:
            return int((values < ordered[level][None, :]).any(1).sum())

        low, high = 0, budget  # union(0) = 0 <= budget; find the largest level within it
        while low < high:
            middle = (low + high + 1) // 2
            if union(middle) <= budget:
                low = middle
            else:
                high = middle - 1
        self.level = low
        self.taus = [accept_down_to(column, low) for column in ordered.T]  # the union rejects the same images

    def _score_from_values(self, values):
        taus = torch.tensor(self.taus, dtype=values.dtype, device=values.device)
        return (taus[None, :] - values).max(1).values

    def thresholds(self):
        return {"taus": self.taus, "level": self.level}

    @property
    def fitted(self) -> bool:
        return self.taus is not None  # the level only records how they were found: a file without it scores

    def _set_thresholds(self, thresholds):
        self.taus = [float(t) for t in thresholds["taus"]]
        self.level = None if thresholds.get("level") is None else int(thresholds["level"])
        if len(self.taus) != len(self.temperatures):
            raise ValueError(f"{len(self.taus)} thresholds for {len(self.temperatures)} temperatures")

    def settings(self):
        return {"temperatures": list(self.temperatures)}


class MahalanobisReject(_HighStatisticReject):
    """Lee et al. (2018), simplified: reject a large Mahalanobis distance of the penultimate features.

    The class means and shared covariance come from clean *training* images (`fit_reference` or
    `fit_reference_on`, through `baselines.MahalanobisScorer`); the threshold from clean validation
    images. score = min_c (z - mu_c)^T Sigma^-1 (z - mu_c) - t, in float64, differentiable in the
    features z (and so in the input, through the model).
    """

    kind = "mahalanobis"
    reads_energy = False
    needs_features = True

    def __init__(self, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr)
        self.scorer: Optional[MahalanobisScorer] = None
        self.reference: Dict[str, object] = {}

    def fit_reference(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      model: Optional[torch.nn.Module] = None) -> "MahalanobisReject":
        """Class means and the shared covariance of clean training features (N, D) with their labels (`model`: the
        network the features came from, recorded so that calibrating on another is refused). A new reference makes
        a new statistic: the thresholds fitted on the old one (and the model they were bound to) are dropped, so
        the option must be fitted again before it scores."""
        labels = torch.as_tensor(labels).long().cpu()
        self.scorer = MahalanobisScorer().fit(features.detach().cpu(), labels, num_classes)
        self.reference = {"n": int(len(labels)), "num_classes": int(num_classes), "dim": int(features.shape[1])}
        if model is not None:
            self.reference["model_fingerprint"] = model_fingerprint(model)
        self.threshold, self.validation, self.model_fingerprint = None, {}, None
        return self

    def fit_reference_on(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         batch_size: int = 256) -> "MahalanobisReject":
        """`fit_reference` on the penultimate features of clean training `images` through `model`."""
        features, logits = penultimate_features(model, images, batch_size)
        return self.fit_reference(features, labels, logits.shape[1], model=model)

    def _check_model_first(self, model: torch.nn.Module) -> None:
        """The class statistics are a model's feature space: thresholds fitted on another model's would describe
        neither. Statistics from `fit_reference` without `model` record none and are taken on trust."""
        recorded = self.reference.get("model_fingerprint")
        if recorded is not None and recorded != model_fingerprint(model):
            raise ValueError("this Mahalanobis reject option's class statistics come from another model's features "
                             f"(weights {recorded[:12]}…): fit_reference_on(this model, train_images, train_labels) "
                             "before calibrating it on this model")

    def bind(self, model):
        self._check_model_first(model)
        return super().bind(model)

    def _check_ready(self) -> None:
        self._require_reference()

    def _require_reference(self) -> MahalanobisScorer:
        if self.scorer is None:
            raise RuntimeError("the Mahalanobis reject option has no class statistics yet: call "
                               "fit_reference_on(model, train_images, train_labels) before calibrating it")
        return self.scorer

    def values(self, logits, features=None, inputs=None, network=None):
        scorer = self._require_reference()
        if features.shape[1] != scorer.means.shape[1]:
            raise ValueError(f"features have {features.shape[1]} dimensions but the class statistics "
                             f"{scorer.means.shape[1]}: pass the same model's penultimate features")
        if scorer.means.device != features.device:  # follow the features (the model's device)
            scorer.means, scorer.precision = scorer.means.to(features.device), scorer.precision.to(features.device)
        return scorer.score(features)

    def _state(self):
        if self.scorer is None:
            return {}
        return {"means": self.scorer.means.cpu().tolist(), "precision": self.scorer.precision.cpu().tolist(),
                "reference": self.reference}

    def _set_state(self, state):
        if state:
            self.scorer = MahalanobisScorer()
            self.scorer.means = torch.tensor(state["means"], dtype=torch.float64)
            self.scorer.precision = torch.tensor(state["precision"], dtype=torch.float64)
            self.reference = state.get("reference", {})

    def _check_loaded(self):
        super()._check_loaded()
        if self.scorer is None:
            raise ValueError("this Mahalanobis reject option holds no class statistics (\"state\": its class means "
                             "and precision): the file was damaged or edited; calibrate the detector again")
        means, precision = self.scorer.means, self.scorer.precision
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"this Mahalanobis reject option's class means {tuple(means.shape)} and precision "
                             f"{tuple(precision.shape)} do not fit (classes x D and D x D): the file was damaged or "
                             "edited; calibrate the detector again")
        if not (torch.isfinite(means).all() and torch.isfinite(precision).all()):
            raise ValueError("this Mahalanobis reject option's class means or precision hold NaN or infinite values: "
                             "the file was damaged or edited; calibrate the detector again")


def detector_modules(fn: Callable) -> List[torch.nn.Module]:
    """The torch modules a user's detector function runs, as far as they can be found: `fn` itself, the module
    of a bound method, a functools.partial's function and arguments, and the modules a function reads from its
    closure or by a global name (`lambda x: my_detector(x)` at a module's top level). Duplicates once."""
    found: List[torch.nn.Module] = []
    seen, todo = set(), [fn]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.nn.Module):
            found.append(item)
            continue
        if isinstance(item, functools.partial):
            todo += [item.func, *item.args, *item.keywords.values()]
            continue
        owner = getattr(item, "__self__", None)
        if owner is not None:
            todo.append(owner)
        code = getattr(item, "__code__", None)
        if code is not None:
            todo += [cell.cell_contents for cell in (getattr(item, "__closure__", None) or ())
                     if _cell_filled(cell)]
            names = getattr(item, "__globals__", {})
            todo += [names[name] for name in code.co_names if name in names]
    return found


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not yet assigned
        return False
    return True


class CallableReject(_HighStatisticReject):
    """A user's own detector: any differentiable `fn` returning one score per image, higher = more adversarial.

    `on="input"`: `fn(x)` of the images (it may run its own networks); `on="logits"`: `fn(logits)` of
    the defended model's logits (no extra pass). Calibrated like the others: reject `fn > t`, t
    from the clean validation order statistics; score = fn - t. Saved with its threshold, its name and the
    fingerprint of the networks it runs; the function itself is passed again to
    `RejectOption.load(path, fn=...)`, which refuses one whose networks have other weights.

    The networks `fn` runs (`detector_modules`: `fn` itself, a bound method's module, a partial's arguments,
    the modules its closure or its global names hold) run in eval mode whenever it scores, as the defended
    model does: a batch-norm layer left in train mode would score each batch by its own statistics and
    update them, so calibration would change the detector and an attack batch would be judged unlike the
    calibration batches. A network reached some other way (an attribute of a global object) is not found:
    pass `modules=[...]`, or put it in eval mode yourself.
    """

    kind = "custom"
    reads_energy = False
    ON = ("input", "logits")

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], on: str = "input", name: str = "custom",
                 target_fpr: float = 0.05, modules: Sequence[torch.nn.Module] = ()) -> None:
        super().__init__(target_fpr)
        if not callable(fn):
            raise TypeError(f"fn must be a function of the images (or logits) returning (N,) scores, got {fn!r}")
        if on not in self.ON:
            raise ValueError(f"on must be one of {', '.join(self.ON)}, got {on!r}")
        if any(not isinstance(module, torch.nn.Module) for module in modules):
            raise TypeError("modules must be the torch.nn.Module networks fn runs")
        self.fn, self.on, self.name = fn, on, str(name)
        self.needs_inputs = on == "input"
        found = detector_modules(fn)
        self.modules = found + [module for module in modules if all(module is not f for f in found)]
        self.detector_fingerprint: Optional[str] = None  # the networks' weights when the threshold was fitted

    def networks_fingerprint(self) -> Optional[str]:
        """A SHA-256 of the weights of the networks `fn` runs (None when it runs none that robgen can find)."""
        if not self.modules:
            return None
        return hashlib.sha256("".join(model_fingerprint(module) for module in self.modules).encode()).hexdigest()

    def values(self, logits, features=None, inputs=None, network=None):
        source = inputs if self.on == "input" else logits
        with contextlib.ExitStack() as stack:  # its networks in eval mode, as the defended model is run
            for module in self.modules:
                stack.enter_context(eval_mode(module))
            out = self.fn(source)
        if not isinstance(out, torch.Tensor) or out.shape != (source.shape[0],):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the detector function {self.name!r} must return a tensor of shape "
                             f"({source.shape[0]},), one score per image, got {shape}")
        return out

    def fit_values(self, values, correct=None):
        super().fit_values(values, correct)
        self.detector_fingerprint = self.networks_fingerprint()
        return self

    def settings(self):
        return {"on": self.on, "name": self.name}

    def _state(self):
        return {"detector_fingerprint": self.detector_fingerprint} if self.detector_fingerprint else {}

    def _set_state(self, state):
        self._check_networks(state.get("detector_fingerprint"))
        self.detector_fingerprint = state.get("detector_fingerprint")

    def check_model(self, model: torch.nn.Module) -> None:
        """The model's check, and the detector's own networks still those it was calibrated with: their weights
        changed after calibration (fine-tuned, or loaded again) put the threshold on another scale, which
        `DefendedClassifier` used as if nothing had happened (a load refuses it)."""
        super().check_model(model)
        self._check_networks(self.detector_fingerprint)

    def _check_networks(self, recorded: Optional[str]) -> None:
        found = self.networks_fingerprint()
        if recorded is not None and found != recorded:
            raise ValueError(f"the detector {self.name!r} was calibrated with networks of other weights (theirs "
                             f"{recorded[:12]}…, the function given now runs "
                             f"{'none robgen can find' if found is None else found[:12] + '…'}): its threshold is "
                             "on that detector's scale; calibrate this one again on clean validation images")


REJECT_OPTIONS = {option.kind: option for option in
                  (EnergyReject, EnergyBandReject, ClassEnergyReject, MultiTemperatureReject, MahalanobisReject,
                   EnergyGapReject, RobustMarginReject)}
KINDS: Tuple[str, ...] = tuple(REJECT_OPTIONS)


def make_reject_option(kind: str, **settings) -> RejectOption:
    """An uncalibrated reject option of a known kind, e.g. `make_reject_option("energy", temperature=2.0)`.

    Kinds: "energy", "band", "class-energy", "multi-t", "mahalanobis", "energy-gap", "robust-margin"; a user's
    detector comes from `RejectOption.from_callable(fn)`.
    """
    if kind not in REJECT_OPTIONS:
        hint = " (a user's detector: RejectOption.from_callable(fn))" if kind == CallableReject.kind else ""
        raise ValueError(f"unknown detector {kind!r}: choose from {', '.join(KINDS)}{hint}, or wrap your own "
                         "differentiable detector with RejectOption.from_callable(fn)")
    option_class = REJECT_OPTIONS[kind]
    accepted = [name for name in inspect.signature(option_class.__init__).parameters if name != "self"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise TypeError(f"the {kind!r} detector takes no setting {', '.join(unknown)}: its settings are "
                        f"{', '.join(accepted) or 'none'}")
    return option_class(**settings)
