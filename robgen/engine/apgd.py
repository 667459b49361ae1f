"""Auto-PGD's step-size schedule on any objective and constraint of the engine.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML), Algorithm 1, as in the authors' code (fra31/auto-attack, apgd.py):

    eta = 2 eps (per image)
    z       = P(x_k + eta * direction(grad f(x_k)))
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))       alpha = 0.75 (1 at the first step)

At checkpoints (after 0.22 N steps, then after intervals shrinking by 0.03 N, down to 0.06 N) an
image's step size is halved, and it restarts from the best point it has seen (with that point's
gradient), when its objective rose in at most rho = 75% of the steps since the last checkpoint, or
when its step was not halved at the last checkpoint and its best value has not improved since.

`projected_gradient_ascent` (loop.py) takes fixed steps; this is the same idea with the schedule,
so that an attack picks either by name (robgen.attacks.adaptive.KPlusOneAPGD uses it).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .autograd import gradient_mode, outside_inference_mode, recordable
from .loop import Objective


def _checkpoint_windows(steps: int):
    """The lengths of the intervals between checkpoints: 0.22 N, then 0.03 N shorter each time, at least 0.06 N."""
    window, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    while True:
        yield window
        window = max(window - shrink, shortest)


@outside_inference_mode
def auto_projected_gradient_ascent(
    model: torch.nn.Module,
    x: torch.Tensor,
    objective: Objective,
    constraint,
    steps: int,
    random_start: bool = True,
    generator: Optional[torch.Generator] = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    watch: Optional[Callable[[int, torch.Tensor, object], Optional[bool]]] = None,
    progress: Optional[Callable[[float], None]] = None,
) -> torch.Tensor:
    """Ascend `objective(model(x'))` over x' in `constraint` with APGD's schedule; returns each image's best point.

    `steps` steps cost `steps + 1` forward and backward passes (the start is evaluated too), and
    `watch(k, x_k, outputs_k)` sees every one of them, k = 0 (the start) to `steps`, with the
    outputs of that pass (as in `projected_gradient_ascent`; detach what you keep). A `watch` that
    returns True stops the run there: the point it just watched is returned. Unlike the
    fixed-step loop, a longer run is not an extension of a shorter one: the checkpoints depend on
    `steps`. The caller chooses the model's mode.
    """
    if not math.isfinite(constraint.eps):
        raise ValueError("APGD's step sizes start at 2 eps: it needs a bounded constraint (an L-inf or L2 ball)")
    x = x.detach()
    per_image = (x.shape[0],) + (1,) * (x.ndim - 1)

    def evaluate(step: int, point: torch.Tensor):
        with gradient_mode():  # also when the caller is inside torch.no_grad() or torch.inference_mode()
            point = recordable(point).requires_grad_(True)
            outputs = model(point)
            values = objective(outputs)
            (grad,) = torch.autograd.grad(values.sum(), point)
        stop = watch is not None and bool(watch(step, point.detach(), outputs))
        return values.detach(), grad, stop

    x_k = constraint.random_start(x, generator) if random_start else x.clone()
    value, grad, stop = evaluate(0, x_k)
    if stop:
        return x_k
    best_x, best_value, best_grad = x_k.clone(), value.clone(), grad.clone()
    eta = torch.full(per_image, 2 * constraint.eps, dtype=x.dtype, device=x.device)
    x_previous = x_k
    windows = _checkpoint_windows(steps)
    window, since_checkpoint = next(windows), 0
    increases = torch.zeros_like(value)
    best_at_checkpoint = best_value.clone()
    halved_at_checkpoint = torch.ones_like(value, dtype=torch.bool)  # as the reference code: no stall test at the first
    for step in range(1, steps + 1):
        with torch.no_grad():
            alpha = momentum if step > 1 else 1.0
            z = constraint.project(x_k + eta * constraint.direction(grad), x)
            x_previous, x_k = x_k, constraint.project(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_previous), x)
        new_value, grad, stop = evaluate(step, x_k)
        if stop:
            if progress is not None:
                progress(1.0)
            return x_k
        increases += (new_value > value).to(increases.dtype)
        value = new_value
        improved = value > best_value
        best_x[improved], best_value[improved], best_grad[improved] = x_k[improved], value[improved], grad[improved]
        since_checkpoint += 1
        if since_checkpoint == window:
            halve = (increases <= rho * window) | (~halved_at_checkpoint & (best_at_checkpoint >= best_value))
            eta = torch.where(halve.view(per_image), eta / 2, eta)
            x_k = torch.where(halve.view(per_image), best_x, x_k)
            grad = torch.where(halve.view(per_image), best_grad, grad)
            halved_at_checkpoint, best_at_checkpoint = halve, best_value.clone()
            increases.zero_()
            window, since_checkpoint = next(windows), 0
        if progress is not None:
            progress(step / steps)
    return best_x
