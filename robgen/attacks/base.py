"""`Attack`: settings at construction, data at call time (as in torchattacks).

    attack = PGD(model, eps=8/255, step_size=1/255, steps=10)
    x_adv = attack(x, y)                          # untargeted
    x_adv = attack(x, y, target=t)                # targeted toward classes t
    x_adv, trace = attack(x, y, return_trace=True)
    x_adv = attack(x, y, watch=fn)                # fn(k, x_k, logits_k) sees every iterate the loop steps from

Calling checks the inputs, puts the model in eval mode (restoring the
caller's mode afterwards) and returns pixels in [0, 1] inside the eps-ball.
A model the caller left in eval mode is attacked through its fused copy
(batch norm folded into the convolutions, see robgen/engine/fused.py); one
left in train mode, as training leaves it, is attacked as it is.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Tuple, Union

import torch

from ..checks import check_positive, check_steps, labels_for
from ..progress import step_reporter
from ..engine import Objective, Trace, TraceRecorder, make_constraint, projected_gradient_ascent
from ..engine.autograd import outside_inference_mode
from ..engine.fused import inference_graph
from ..models.state import eval_mode, model_dtype, pixels_for
from .objectives import cross_entropy, negative_cross_entropy

logger = logging.getLogger(__name__)


def class_indices_for(model, value, n: int, num_classes: int, device, name: str = "y") -> torch.Tensor:
    """(n,) class indices: a tensor, a list, one class for all n images, or label names (a string, a list or a
    NumPy array of them, read by the model's spec)."""
    named = (isinstance(value, str) or getattr(getattr(value, "dtype", None), "kind", None) in ("U", "S", "O")
             or (isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value)))
    if named:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError(f"{name} names classes by label ({value!r}), but the model has no robgen spec to read "
                             "its labels from: give class indices")
        value = spec.class_indices(value, n)
    return labels_for(value, n, num_classes, device, name=name)


def attack_inputs(model: torch.nn.Module, x: torch.Tensor, y, target=None, model_size: bool = False):
    """(x, y, target) as an attack steps them, checked: `x` detached (a result attached to the caller's graph
    through the projection sent gradients back into x) [0, 1] pixels in the model's working type; `y` and
    `target` (n,) class indices, each given as a tensor, a list, one class for all images, or labels.
    `model_size`: the images must have the model's input size."""
    x = pixels_for(model, x.detach() if isinstance(x, torch.Tensor) else x, model_size=model_size, working=True)
    spec = getattr(model, "spec", None)
    if spec is not None:
        num_classes = spec.num_classes
    else:
        with torch.no_grad(), eval_mode(model):
            logits = model(x[:1].to(model_dtype(model)))
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise TypeError(f"the model returned {type(logits).__name__}"
                            f"{' of shape ' + str(tuple(logits.shape)) if isinstance(logits, torch.Tensor) else ''}, "
                            "not logits of shape (N, classes): wrap it so that its forward returns the logits alone "
                            "(e.g. a timm or Hugging Face model's output.logits)")
        num_classes = logits.shape[1]
    y = class_indices_for(model, y, x.shape[0], num_classes, x.device, "y")
    if target is not None:
        target = class_indices_for(model, target, x.shape[0], num_classes, x.device, "target")
        same = int((target == y).sum())
        if same:  # the attack then only makes the model surer of the right class, and "reaches" the target
            logger.warning("%d of %d images' target class is their own label: a targeted attack cannot move them "
                           "to another class, and counts them as reaching the target", same, len(y))
    return x, y, target


def resolve_step_size(step_size: Optional[float], alpha: Optional[float], default: float) -> float:
    """`step_size`, or torchattacks' `alpha` for it, or `default`; both at once is an error."""
    if step_size is not None and alpha is not None:
        raise TypeError("pass step_size or its torchattacks alias alpha, not both")
    if step_size is not None:
        return step_size
    return alpha if alpha is not None else default


def default_step_size(norm: str, eps: float, steps: int) -> float:
    """The step an attack takes when none is given: 1/255 per pixel in L-inf (the paper's PGD), and in L2
    2.5·eps/steps of the whole step (Madry et al.'s rule; a 1/255 step there crosses 0.04 of a 0.5 ball in 10
    steps, and the random start alone decides what it finds)."""
    return 2.5 * eps / steps if norm == "l2" else 1 / 255  # (no ball, "none": 1/255, as before the L2 rule)


def in_callers_precision(x_adv: torch.Tensor, given: torch.Tensor, constraint) -> torch.Tensor:
    """The attack's result in the type of the images it was `given`, where that is wider than the type it ran in
    (float64 pixels for a float32 model), projected again onto the ball around them there: rounded to float32, a
    point on the ball's edge lay up to 4e-8 outside it (`constraint` None, no ball to keep: only the type)."""
    if not given.is_floating_point() or torch.finfo(given.dtype).bits <= torch.finfo(x_adv.dtype).bits:
        return x_adv
    given = given.detach().to(x_adv.device)
    return x_adv.to(given.dtype) if constraint is None else constraint.project(x_adv.to(given.dtype), given)


def _never_stopping(watch: Callable) -> Callable[[int, torch.Tensor, object], bool]:
    """`watch` as an engine-loop hook that never stops the loop (the caller asked for the attack's final point)."""
    def shown(step: int, points: torch.Tensor, outputs: object) -> bool:
        watch(step, points, outputs)
        return False
    return shown


class Attack:
    """A projected-gradient attack; subclasses choose the objective.

    Args:
        model: a classifier taking [0, 1] pixels and returning logits.
        eps: radius of the threat model (L-inf: in pixel units, e.g. 8/255).
        step_size: length of one step (L-inf: per pixel; L2: of the whole step); default
            `default_step_size`: 1/255 in L-inf, 2.5·eps/steps in L2.
        steps: number of gradient steps (>= 1).
        norm: "linf" or "l2".
        random_start: start from a uniform point of the eps-ball.
        generator: a `torch.Generator` for the random start (global RNG untouched).
        alpha: torchattacks' name for `step_size`, accepted so that code written for
            torchattacks (`PGD(model, eps=8/255, alpha=2/255, steps=10)`) runs unchanged.
        fused: run the fused copy of an eval-mode model (True), the model itself (False),
            or follow `robgen.engine.fused.fusion_enabled()` (None, the default). Also
            settable after construction: `attack.fused = False`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        step_size: Optional[float] = None,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        generator: Optional[torch.Generator] = None,
        *,
        alpha: Optional[float] = None,
        fused: Optional[bool] = None,
    ) -> None:
        self.model = model
        self.fused = fused
        self._graph: Optional[torch.nn.Module] = None
        self._watch: Optional[Callable] = None
        self.constraint = make_constraint(norm, eps)
        self.eps = self.constraint.eps
        self.norm = self.constraint.norm
        self.steps = check_steps(steps)
        self.step_size = check_positive(resolve_step_size(step_size, alpha, default=default_step_size(
            self.norm, self.eps, self.steps)), "step_size")
        self.random_start = bool(random_start)
        self.generator = generator

    def objective(self, labels: torch.Tensor, target: Optional[torch.Tensor]) -> Objective:
        """What to ascend: CE away from the labels, or -CE toward the target."""
        if target is not None:
            return lambda logits: negative_cross_entropy(logits, target)
        return lambda logits: cross_entropy(logits, labels)

    @outside_inference_mode
    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: Optional[torch.Tensor] = None,
        return_trace: bool = False,
        progress: Optional[Callable] = None,
        watch: Optional[Callable[[int, torch.Tensor, object], object]] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Trace]]:
        """Adversarial versions of `x` (true labels `y`; `target` makes it targeted).

        `watch(k, x_k, logits_k)`: shown every iterate the engine loop steps from, x_0 (the start) to x_{steps-1}
        (`engine.projected_gradient_ascent`; the returned point is not shown), with the logits of the graph the
        attack runs (its fused copy, in eval mode); what it returns is ignored, the attack runs to its end. For a
        caller to whom every point the attack passes through counts (`attacks.suite.run_suite` judges each with a
        detector). Attacks that do not step through that loop (the zoo's, APGD) show it nothing."""
        given = x.detach() if isinstance(x, torch.Tensor) else x
        x, y, target = self._check_inputs(x, y, target)
        recorder = TraceRecorder(y, target) if return_trace else None
        graph = inference_graph(self.model, self.fused, example=x)  # decided before eval_mode: train mode runs the model
        # the fused copy (cached, kept for later calls) too has every module's mode back after the attack, whatever
        # the code inside set (torchattacks puts a model it found in train mode back with train())
        with eval_mode(self.model), eval_mode(graph):
            self._graph = graph
            self._watch = None if watch is None else _never_stopping(watch)
            try:
                x_adv = self.perturb(x, y, target, recorder, step_reporter(progress, type(self).__name__))
            finally:
                self._graph = self._watch = None
        x_adv = in_callers_precision(x_adv, given, self.constraint)
        if return_trace:
            return x_adv, recorder.finish()
        return x_adv

    @property
    def graph(self) -> torch.nn.Module:
        """What the current call runs: the fused copy of an eval-mode model, else the model itself."""
        return self._graph if self._graph is not None else self.model

    def perturb(self, x, y, target, recorder, progress) -> torch.Tensor:
        return projected_gradient_ascent(
            self.graph, x, self.objective(y, target), self.constraint, self.steps, self.step_size,
            random_start=self.random_start, generator=self.generator, recorder=recorder, progress=progress,
            watch=self._watch,
        )

    def _check_inputs(self, x, y, target):
        return attack_inputs(self.model, x, y, target)  # float32 iterates for a float16 model: its grid rounds steps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.5g}, step_size={self.step_size:.5g}, steps={self.steps}, "
            f"norm={self.norm!r}, random_start={self.random_start})"
        )
