"""Attack images against the model's own prediction, as a person sees the result: 8-bit pixels.

The CLI's `attack` command and the app's Attack tab both show this flow:
predict, attack the prediction (or pull toward a target class), quantise the
result to what a PNG can hold while staying inside the threat model, and
report the top classes and energies of the quantised images.

    outcome = attack_own_predictions(model, x, PGD(model, eps=8/255, steps=10))
    outcome.top(0)                       # {label: probability} of image 0 after the attack
    outcome = evade_detector(model, x, load_shipped_detector(model), eps=8/255, steps=40)
    outcome.evaded                       # misclassified and accepted by the detector, as 8-bit images

`evade_detector` is the adaptive attacker (one who knows the detector): `PenaltyPGD` on the model
defended by its energy detector, aiming a margin inside the accepted region so that rounding to 8
bits keeps the point accepted and misclassified; the verdict is the detector's own, on the PNG.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..attacks import Attack
from ..attacks.adaptive import PenaltyPGD
from ..attacks.evasion import EvasionTracker
from ..checks import check_pixels
from ..detection.defended import DefendedClassifier
from ..detection.detector import EnergyDetector
from ..detection.reject import EnergyReject
from ..energy import energy
from ..engine import Trace
from ..engine.trace import TraceRecorder
from ..models.state import eval_mode, pixels_for
from ..progress import step_reporter


def on_levels(x: torch.Tensor) -> bool:
    """Whether every pixel of `x` is on the 8-bit levels (an image file's pixels; a resized photo's are not)."""
    levels = x.double() * 255
    return bool(((levels - levels.round()).abs() <= 1e-3).all())


def quantise(x_adv: torch.Tensor, x: torch.Tensor, attack) -> torch.Tensor:
    """`x_adv` on 8-bit levels inside the attack's threat model around `x` (`attack.constraint`: a robgen `Attack`
    or an adaptive attack), so that the PNG written is the image measured.

    Each pixel goes to the nearest level, or, where that would leave the ball, to the level next to it toward the
    clean pixel: for an image file's pixels (on the levels) no pixel moves farther from its clean value than the
    attack moved it, so an L2 or L-inf ball of any radius (8.5/255 too) holds the result. That is decided in whole
    levels (in float32 a pixel 8 levels from its clean value is 8.0000007/255 from it, outside an 8/255 ball, and the
    ball's projection moved it off the levels). Where the clean pixels are off the levels (a resized photo) and a
    level would still leave the ball, the ball's projection decides, off the levels."""
    constraint = attack.constraint
    levels = x_adv.double() * 255
    clean = x.double() * 255
    nearest, toward = levels.round(), torch.where(x_adv > x, levels.floor(), levels.ceil())  # toward: never farther
    if not on_levels(x):  # a resized photo
        nearest_image = (nearest / 255).to(x_adv.dtype)
        if torch.equal(constraint.project(nearest_image, x), nearest_image):
            return nearest_image
        out = (nearest - clean).abs() > (
            constraint.eps * 255 if constraint.norm == "linf" else (levels - clean).abs())
        return constraint.project((torch.where(out, toward, nearest) / 255).to(x_adv.dtype), x)
    change = nearest - clean.round()  # whole levels
    if constraint.norm == "linf":  # only the pixels the rounding took out of the ball
        out = change.abs() > constraint.eps * 255 + 1e-6
    else:  # an image whose rounded change leaves the ball: every pixel the rounding moved away from x
        outside = change.flatten(1).norm(dim=1) > constraint.eps * 255 * (1 + 1e-9)
        out = outside.view(-1, *[1] * (x.ndim - 1)) & ((nearest - clean).abs() > (levels - clean).abs())
    return (torch.where(out, toward, nearest) / 255).to(x_adv.dtype)


def top_classes(logits: torch.Tensor, labels: List[str], k: int = 5) -> Dict[str, float]:
    """{label: probability} of the k most likely classes of one image's logits."""
    probs = logits.float().softmax(-1).view(-1)
    values, indices = probs.topk(min(k, len(labels)))
    return {labels[int(i)]: float(v) for v, i in zip(values, indices)}


@dataclass
class AttackOutcome:
    """Clean and (quantised) adversarial images with what the model says about both, on the CPU."""

    clean: torch.Tensor  # (N, C, H, W)
    adversarial: torch.Tensor  # (N, C, H, W), 8-bit levels, inside the threat model
    clean_logits: torch.Tensor  # (N, K)
    adversarial_logits: torch.Tensor
    labels: List[str]  # the model's class labels
    trace: Trace

    @property
    def clean_energy(self) -> torch.Tensor:
        return energy(self.clean_logits, check=False)

    @property
    def adversarial_energy(self) -> torch.Tensor:
        return energy(self.adversarial_logits, check=False)

    def top(self, index: int, k: int = 5, adversarial: bool = True) -> Dict[str, float]:
        logits = self.adversarial_logits if adversarial else self.clean_logits
        return top_classes(logits[index], self.labels, k)

    def change(self, index: int) -> Dict[str, float]:
        """L-inf and L2 size of the change of image `index`."""
        adversarial, clean = self.adversarial[index].double(), self.clean[index].double()
        delta = (adversarial - clean).flatten()
        if on_levels(clean):  # a file's pixels: in whole levels
            delta = ((adversarial * 255).round() - (clean * 255).round()).flatten() / 255  # (float32: 8.0000007)
        return {"linf": float(delta.abs().max()), "l2": float(delta.norm())}


def attack_own_predictions(model, x: torch.Tensor, attack: Attack, target_class: Optional[int] = None,
                           progress: Optional[Callable] = None) -> AttackOutcome:
    """Attack `x` (on the model's device) away from the model's predictions, or toward `target_class`; the
    outcome's images in `x`'s type (a float16 model's attack steps in float32, `working_dtype`)."""
    given, x = x, pixels_for(model, x, working=True)
    with torch.no_grad(), eval_mode(model):  # a model in train mode: its running statistics, not the batch's,
        clean_logits = model(pixels_for(model, x))  # as the attack between runs it (and they stay as they were)
    labels = clean_logits.argmax(1)
    target = torch.full_like(labels, int(target_class)) if target_class is not None else None
    x_adv, trace = attack(x, labels, target=target, return_trace=True, progress=progress)
    x_adv = quantise(x_adv, x, attack)
    with torch.no_grad(), eval_mode(model):
        adv_logits = model(pixels_for(model, x_adv))
    return AttackOutcome(given.cpu(), x_adv.to(given.dtype).cpu(), clean_logits.float().cpu(), adv_logits.float().cpu(),
                         list(model.spec.class_labels), trace)


def combine_outcomes(outcomes: List[AttackOutcome]) -> AttackOutcome:
    """One outcome for several batches (images concatenated, traces combined)."""
    if len(outcomes) == 1:
        return outcomes[0]
    return AttackOutcome(
        torch.cat([o.clean for o in outcomes]), torch.cat([o.adversarial for o in outcomes]),
        torch.cat([o.clean_logits for o in outcomes]), torch.cat([o.adversarial_logits for o in outcomes]),
        outcomes[0].labels, Trace.combine([o.trace for o in outcomes], [len(o.clean) for o in outcomes]),
    )


# The adaptive attacker aims this far inside what the detector accepts, so that rounding to 8 bits keeps it
# there: a misclassification margin in logits, and an energy margin as a fraction of the spread (std) of
# the clean validation energies the detector was fitted on (0 when the detector does not record them).
EVASION_CONFIDENCE = 0.5
EVASION_ENERGY_MARGIN = 0.1


@dataclass
class EvasionOutcome(AttackOutcome):
    """An `AttackOutcome` of an attack that knows the detector, with the detector's verdicts on the 8-bit images."""

    flagged_clean: torch.Tensor = None  # (N,) bool: the detector flags the clean image
    flagged: torch.Tensor = None  # (N,) bool: the detector flags the (8-bit) adversarial image
    evaded: torch.Tensor = None  # (N,) bool: the adversarial image is misclassified and not flagged
    threshold: float = float("nan")  # the detector's: flagged when E_T(x) <= threshold
    temperature: float = 1.0
    attack: str = ""


class _TracingTracker(EvasionTracker):
    """An `EvasionTracker` that also records every iterate it sees (a `TraceRecorder`, steps counted over all
    runs, means over the images still attacked) and reports the fraction of the steps done. The trace's
    energies are at the detector's temperature, and its `loss` column holds the mean reject score (> 0: rejected)."""

    def __init__(self, defended, x, y, temperature: float, total: int, progress) -> None:
        super().__init__(defended, x, y)
        self.recorder = TraceRecorder(self.y, temperature=temperature)
        self.total, self.report, self.seen = max(1, total), progress, 0

    def observe(self, points, outputs, index=None, verify=False):
        evading = super().observe(points, outputs, index, verify)
        self.recorder.record(self.seen, outputs[0].detach(), outputs[1].detach(), labels=self.y[self._index(index)])
        self.seen += 1
        if self.report is not None:
            self.report(min(1.0, self.seen / self.total))
        return evading


def _quantised_evasions(model, detector, x, y, candidates, attack):
    """Per image, the first candidate that still evades once rounded to 8 bits (else the first candidate's)."""
    chosen = None
    for candidate in candidates:
        quantised = quantise(candidate, x, attack)
        with torch.no_grad(), eval_mode(model):
            logits = model(pixels_for(model, quantised))  # float32 for a half-precision model: cast
        evades = (logits.argmax(1) != y) & ~detector.predict(logits).to(y.device)
        if chosen is None:
            chosen, chosen_logits, chosen_evades = quantised, logits, evades
        else:
            better = evades & ~chosen_evades
            chosen = torch.where(better.view(-1, 1, 1, 1), quantised, chosen)
            chosen_logits = torch.where(better[:, None], logits, chosen_logits)
            chosen_evades = chosen_evades | evades
    return chosen, chosen_logits


def evade_detector(model, x: torch.Tensor, detector: EnergyDetector, eps: float = 8 / 255, steps: int = 40,
                   restarts: int = 4, step_size: Optional[float] = None, generator: Optional[torch.Generator] = None,
                   progress: Optional[Callable] = None) -> EvasionOutcome:
    """Attack `x` away from the model's predictions while the energy `detector` keeps accepting it.

    The attacker knows the detector: `PenaltyPGD` (L-inf ball of `eps`, `steps` per run, `restarts`
    rounds of its penalty weight) on the model defended by `EnergyReject.from_detector(detector)`,
    aiming `EVASION_CONFIDENCE` logits past the decision boundary and `EVASION_ENERGY_MARGIN` clean
    standard deviations inside the threshold. Every iterate counts. Of the final point and the first
    evading iterate, the first that still evades as an 8-bit image is returned.
    """
    if detector.model_fingerprint is None:  # an older detector.json, taken as the model's own by the loading path
        # (load_shipped_detector): trusted here too, on a copy
        detector = copy.deepcopy(detector).bind(model)
    reject = EnergyReject.from_detector(detector, model)
    defended = DefendedClassifier(model, reject)
    clean_energies = torch.tensor(detector.calibration.get("clean_energy", []), dtype=torch.float64)
    spread = float(clean_energies.std()) if len(clean_energies) > 1 else 0.0
    attack = PenaltyPGD(defended, eps=eps, step_size=step_size, steps=steps, restarts=restarts,
                        score_margin=EVASION_ENERGY_MARGIN * spread, confidence=EVASION_CONFIDENCE, generator=generator)
    check_pixels(x, model.spec.input_size[0])
    with torch.no_grad(), eval_mode(model):
        clean_logits = model(pixels_for(model, x))  # x: an attack's float32 pixels for a half-precision model
        labels = clean_logits.argmax(1)
        tracker = _TracingTracker(defended, x, labels, detector.temperature, (steps + 1) * restarts,
                                  step_reporter(progress, "adaptive attack"))  # each run: its steps and its check
        final = attack.run(x, labels, tracker)
        if tracker.report is not None:
            tracker.report(1.0)  # done, also when every image evaded before the last run
        x_adv, adv_logits = _quantised_evasions(model, detector, x, labels, [final, tracker.images], attack)
    clean_logits, adv_logits = clean_logits.float().cpu(), adv_logits.float().cpu()
    flagged = detector.predict(adv_logits)
    return EvasionOutcome(
        x.cpu(), x_adv.cpu(), clean_logits, adv_logits, list(model.spec.class_labels), tracker.recorder.finish(),
        flagged_clean=detector.predict(clean_logits), flagged=flagged,
        evaded=(adv_logits.argmax(1) != labels.cpu()) & ~flagged, threshold=float(detector.threshold),
        temperature=float(detector.temperature), attack=f"{attack!r} against {reject!r}",
    )
