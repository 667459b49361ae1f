"""The one projected-gradient loop behind every attack and every synthesis method.

    x_0     = random point of the constraint set (or x)
    x_{k+1} = Project( x_k + step_size * direction(∇ objective(f(x_k))) )

Attacks and synthesis differ only in the objective and the constraint (see
constraints.py here and robgen/attacks/objectives.py). The loop keeps no autograd graph across steps: each step
builds one graph for one forward/backward and frees it.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from .autograd import gradient_mode, outside_inference_mode, recordable
from .trace import TraceRecorder

logger = logging.getLogger(__name__)

Objective = Callable[[torch.Tensor], torch.Tensor]  # logits (N, K) -> per-example values (N,)


@outside_inference_mode
def projected_gradient_ascent(
    model: torch.nn.Module,
    x: torch.Tensor,
    objective: Objective,
    constraint,
    steps: int,
    step_size: float,
    random_start: bool = False,
    generator: Optional[torch.Generator] = None,
    recorder: Optional[TraceRecorder] = None,
    progress: Optional[Callable] = None,
    on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
    watch: Optional[Callable[[int, torch.Tensor, object], Optional[bool]]] = None,
) -> torch.Tensor:
    """Ascend `objective(model(x'))` over x' in `constraint` around x; returns x' (detached).

    The caller chooses the model's mode (attacks use `eval_mode`). With a
    `recorder`, statistics of every iterate are recorded, the last one with an
    extra forward pass; without one, the cost is exactly `steps` forward and
    backward passes. `on_step(k, x_k)` sees every iterate after step k
    (synthesis keeps the snapshots of a path with it).

    `watch(k, x_k, outputs_k)` sees every iterate the loop differentiates, x_0 (the start)
    to x_{steps-1}, with the model's outputs for it from the step's own forward pass (no
    extra pass). The outputs come as the model returned them, a tensor or a tuple, their
    graph already freed by the backward pass: detach what you keep. The returned point
    x_steps is not watched: a caller for whom every iterate counts
    (robgen.attacks.evasion.EvasionTracker) checks it with one more forward pass. A `watch` that
    returns True has seen all it needs (every image evaded): the loop stops there and returns
    x_k, the point it just watched, without taking its step.
    """
    x = x.detach()
    x_adv = constraint.random_start(x, generator) if random_start else x.clone()
    for step in range(steps):
        with gradient_mode():  # also when the caller is inside torch.no_grad() or torch.inference_mode()
            x_adv = recordable(x_adv).requires_grad_(True)
            logits = model(x_adv)
            loss = objective(logits)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        if watch is not None and watch(step, x_adv.detach(), logits):
            x_adv = x_adv.detach()
            if progress is not None:
                progress(1.0)
            steps = step  # the returned point is x_step: the recorder records it under that index
            break
        if step == 0 and not bool(grad.any()):
            logger.warning(
                "the input gradient is exactly zero: the attack cannot move. Is the model returning "
                "probabilities through an argmax, or masking gradients?"
            )
        if recorder is not None:
            recorder.record(step, logits.detach(), loss.detach())
        with torch.no_grad():
            x_adv = constraint.project(x_adv.detach() + step_size * constraint.direction(grad), x)
        if on_step is not None:
            on_step(step + 1, x_adv)
        if progress is not None:
            progress((step + 1) / steps)
    if recorder is not None:
        with torch.no_grad():
            logits = model(x_adv)
            recorder.record(steps, logits, objective(logits))
    return x_adv
