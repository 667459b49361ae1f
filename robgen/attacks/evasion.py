"""What an adaptive attack sees of a defended classifier, and which of its points count as evasions.

    module = DefendedOutputs(defended)              # x -> Outputs(logits, score, features): one model pass
    tracker = EvasionTracker(defended, x, y)
    projected_gradient_ascent(module, x, objective, constraint, steps, step_size, watch=tracker.watch())
    tracker.check(x_final)                          # the returned point too (one forward pass)
    tracker.evaded, tracker.images                  # (N,) bool; the first evading point of each image

A point *evades* the defended classifier when it is misclassified (argmax of the K logits != y)
and accepted (reject score <= 0). Every iterate of an attack is a point the attacker may submit,
so the tracker keeps, per image, the first evading iterate it is shown: a later iterate that drifts
back (classified correctly again, or rejected) cannot undo a success, and a longer run of the same
attack from the same start can only add evasions (Carlini et al. 2019, "On evaluating adversarial
robustness": more steps never help the defence). The engine's loops show the tracker every
iterate through their `watch` hook, from the forward pass the step makes anyway.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..detection.baselines import last_linear
from ..detection.defended import DefendedClassifier, combine_logits
from ..engine.autograd import outside_inference_mode


class Outputs(NamedTuple):
    """One forward pass of a defended classifier: logits (N, K), reject score (N,) (> 0 rejected), features."""

    logits: torch.Tensor
    score: torch.Tensor
    features: Optional[torch.Tensor] = None  # the penultimate features (N, D), when asked for

    @property
    def combined(self) -> torch.Tensor:
        """(N, K + 1) logits of Carlini & Wagner (2017)'s construction: argmax K iff rejected (`combine_logits`)."""
        return combine_logits(self.logits, self.score)


def check_defended(defended) -> DefendedClassifier:
    """Refuse anything but a `DefendedClassifier`, saying how to build one."""
    if not isinstance(defended, DefendedClassifier):
        raise TypeError("adaptive attacks need the model and its detector together: pass "
                        "DefendedClassifier(model, reject) (robgen.detection.defended), got "
                        f"{type(defended).__name__}")
    return defended


class DefendedOutputs(nn.Module):
    """The defended classifier as the engine's "model": x -> `Outputs(logits, score, features)` in one pass.

    `features=True` also returns the penultimate features (the input of the model's last
    nn.Linear, caught in the same pass), for attacks that match them.
    """

    def __init__(self, defended: DefendedClassifier, features: bool = False,
                 network: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.defended = check_defended(defended)
        self.features = bool(features)
        self.network = defended.model if network is None else network  # the model, or its fused copy
        if self.features:
            last_linear(self.network)  # a model without a linear head has no penultimate features: say so now

    def forward(self, x: torch.Tensor) -> Outputs:
        if not self.features:
            return Outputs(*self.defended.outputs(x, self.network))
        caught: List[torch.Tensor] = []
        hook = last_linear(self.network).register_forward_hook(
            lambda module, inputs, output: caught.append(inputs[0].flatten(1)))
        try:
            logits, score = self.defended.outputs(x, self.network)
        finally:
            hook.remove()
        # the first pass is the one at x: a score that runs the network again near x (robust-margin) adds more
        return Outputs(logits, score, caught[0])


class EvasionTracker:
    """Per image, the first point shown to it that is misclassified and accepted by the defended classifier.

    Attributes (on the images' device):
        evaded: (N,) bool, an evading point was seen;
        images: (N, C, H, W), the first evading point where `evaded`, else the clean image;
        observed: (N,) long, how many points of each image were looked at;
        first_run: (N,) long, the run (1-based) in which the first evasion was seen, 0 where none: an attack with
            restarts sets `run` (0-based) before each, so a report can tell what fewer restarts would have found.

    `judge_itself`: every point shown is judged by running this tracker's defended classifier on it, whatever
    outputs come with it (for an attack built against another defended classifier, whose outputs carry that
    one's score: one more pass per point).

    `stop_when_all_evaded`: its `watch` hooks tell the engine's loop to stop once every image they
    watch has evaded (for a caller that wants only the evasions, as `run_suite`: the flags and first
    evading points are the same, the steps after are saved). Off by default: an attack's final point
    is then the end of its full run (the app's single-image attack goes on past the boundary).
    """

    @outside_inference_mode  # its counters are updated in place by attacks, which run with the mode off
    def __init__(self, defended: DefendedClassifier, x: torch.Tensor, y: torch.Tensor,
                 stop_when_all_evaded: bool = False, judge_itself: bool = False) -> None:
        self.defended = check_defended(defended)
        self.stop_when_all_evaded = bool(stop_when_all_evaded)
        self.judge_itself = bool(judge_itself)
        self.x, self.y = x.detach(), torch.as_tensor(y, device=x.device).long()
        if self.y.shape != (x.shape[0],):
            raise ValueError(f"y must hold one label per image, shape ({x.shape[0]},), got {tuple(self.y.shape)}")
        self.evaded = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.images = self.x.clone()
        self.observed = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.first_run = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.run = 0  # the run (restart) now shown, 0-based

    def _index(self, index: Optional[torch.Tensor]) -> torch.Tensor:
        return torch.arange(len(self.y), device=self.y.device) if index is None else index.to(self.y.device)

    @torch.no_grad()
    def observe(self, points: torch.Tensor, outputs: Tuple[torch.Tensor, ...],
                index: Optional[torch.Tensor] = None, verify: bool = False) -> torch.Tensor:
        """Look at `points` of the images `index` (default: all, in order) with their `(logits, score, ...)`.

        Keeps the points that evade for images that had none; returns (n,) bool, which evade.
        `verify`: the outputs came from another network than the defended model (its fused copy),
        so a point that would be a first evasion is kept only if the defended classifier itself,
        run once more on it, also finds it misclassified and accepted (a pass over those few points).
        """
        index = self._index(index)
        if self.judge_itself:
            outputs, verify = self.defended.outputs(points.detach()), False
        logits, score = outputs[0].detach(), outputs[1].detach()
        if logits.shape[0] != len(index) or points.shape[0] != len(index):
            raise ValueError(f"{points.shape[0]} points with {logits.shape[0]} outputs for {len(index)} images: "
                             "pass one point and one output row per image of `index`")
        evading = (logits.argmax(1) != self.y[index]) & (score <= 0)
        self.observed[index] += 1
        new = evading & ~self.evaded[index]
        if verify and bool(new.any()):
            candidates = new.nonzero()[:, 0]
            again_logits, again_score = self.defended.outputs(points.detach()[candidates])
            lost = candidates[~((again_logits.argmax(1) != self.y[index[candidates]]) & (again_score <= 0))]
            evading, new = evading.clone(), new.clone()
            evading[lost], new[lost] = False, False
        if bool(new.any()):
            where = index[new]
            self.images[where] = points.detach()[new].to(self.images.dtype)
            self.evaded[where] = True
            self.first_run[where] = self.run + 1
        return evading

    def watch(self, index: Optional[torch.Tensor] = None,
              verify: bool = False) -> Callable[[int, torch.Tensor, Tuple], bool]:
        """A `watch(step, x_k, outputs_k)` hook for the engine's loops, for the images `index` (default: all);
        `verify`: the loop runs another network than the defended model (see `observe`). It returns True (stop)
        when `stop_when_all_evaded` and every image of `index` has evaded."""
        def watch(step: int, points: torch.Tensor, outputs: Tuple) -> bool:
            self.observe(points, outputs, index, verify)
            return self.stop_when_all_evaded and bool(self.evaded[self._index(index)].all())
        return watch

    @torch.no_grad()
    def check(self, points: torch.Tensor, index: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One forward pass of the defended classifier on `points`: observe them; return (misclassified, rejected).

        The model runs in the mode the caller left it in (attacks and `run_suite` hold it in eval mode).
        """
        logits, score = self.defended.outputs(points)
        self.observe(points, (logits, score), index)
        return logits.argmax(1) != self.y[self._index(index)], score > 0

    def merge(self, other: "EvasionTracker") -> torch.Tensor:
        """Take `other`'s evasions (of the same images) where this tracker has none; returns (N,) bool, the new ones."""
        new = other.evaded & ~self.evaded
        self.images[new] = other.images[new]
        self.first_run[new] = other.first_run[new]
        self.evaded |= new
        return new
