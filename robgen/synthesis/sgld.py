"""Stochastic gradient Langevin dynamics on the classifier's energy (Grathwohl et al. 2020, JEM).

    x_{k+1} = clip_[0,1]( x_k - step_size * ∇ₓ E(x_k) + noise * e_k ),   e_k ~ N(0, I)

with E(x) = -logsumexp f(x) (unconditional, samples of p(x)) or
E(x, y) = -f(x)[y] (conditional, samples of p(x, y)). This is the short-run,
replay-free sampler: every chain starts afresh from noise (or seeds) and runs
a fixed number of steps. Unlike `synthesize`, the step follows the raw
gradient rather than its direction, as Langevin dynamics requires.

Pixel scale matters. JEM works on pixels in [-1, 1] with a gradient step of 1
and noise 0.01. On robgen's [0, 1] pixels, u = (x + 1) / 2, the same dynamics
is a step of 1/4 on ∇ᵤE and noise 0.005 (`JEM_STEP_SIZE`, `JEM_NOISE`).
robgen's defaults (step 1, noise 0.01) are four times that step and twice
that noise: on the shipped CIFAR-10 models JEM's step barely moves the
images in 20 steps, since their gradients are far smaller than a JEM
model's, which is trained for sampling.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch

from ..checks import check_positive, check_steps
from ..energy import class_energy, energy
from ..engine import Trace, TraceRecorder, random_normal
from ..engine.autograd import gradient_mode, outside_inference_mode, recordable
from ..engine.fused import inference_graph
from ..models.state import eval_mode, model_device
from ..progress import step_reporter
from .ascent import class_indices
from .seeds import SeedDistribution, initial_images


JEM_STEP_SIZE, JEM_NOISE = 0.25, 0.005  # JEM's recipe (step 1, noise 0.01 on [-1, 1] pixels) on [0, 1] pixels
DEFAULT_STEP_SIZE, DEFAULT_NOISE = 1.0, 0.01


@outside_inference_mode
def sgld_sample(
    model,
    target_class=None,
    n: int = 8,
    *,
    steps: int = 20,
    step_size: float = DEFAULT_STEP_SIZE,
    noise: float = DEFAULT_NOISE,
    init: Union[str, torch.Tensor] = "uniform",
    seeds: Optional[SeedDistribution] = None,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable] = None,
    return_trace: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, Trace]]:
    """`n` short-run SGLD samples of p(x) (no `target_class`) or of p(x | y) (with one).

    Args:
        target_class: None for E(x), or a class (index or label, or n of them) for E(x, y).
        n: chains (images) to run.
        steps: Langevin steps per chain.
        step_size: x moves by -step_size * ∇E per step (see the module notes on JEM's value).
        noise: standard deviation of the Gaussian noise added per step (0 < noise).
        init: "uniform" noise (JEM), "gaussian" class seeds (conditional only), "gray" or images.
        generator: the source of all randomness.
        return_trace: also return a `Trace` (energy and, conditionally, target probability per step).

    Returns:
        images (n, C, H, W) in [0, 1].
    """
    device = model_device(model)
    n = check_steps(n, "n")
    steps = check_steps(steps)
    step_size = check_positive(step_size, "step_size")
    noise = check_positive(noise, "noise")
    conditional = target_class is not None
    if conditional:
        target = class_indices(model, target_class, n, device)
    elif init == "gaussian":
        raise ValueError("init='gaussian' draws class-conditional seeds: give a target_class, or use init='uniform'")
    else:
        target = torch.zeros(n, dtype=torch.long, device=device)
    x = initial_images(init, target, model, generator, device, seeds)
    recorder = TraceRecorder(target if conditional else None, target if conditional else None) if return_trace else None
    report = step_reporter(progress, "SGLD")
    graph = inference_graph(model, example=x)  # the fused copy of an eval-mode model
    with eval_mode(model):
        for step in range(steps):
            with gradient_mode():
                x = recordable(x).requires_grad_(True)
                logits = graph(x)
                energies = _energies(logits, target if conditional else None)
                (grad,) = torch.autograd.grad(energies.sum(), x)
            if recorder is not None:
                recorder.record(step, logits.detach(), -energies.detach())
            with torch.no_grad():
                x = (x.detach() - step_size * grad + noise * random_normal(x.shape, x, generator)).clamp_(0, 1)
            if report is not None:
                report((step + 1) / steps)
        if recorder is not None:
            with torch.no_grad():
                logits = graph(x)
                energies = _energies(logits, target if conditional else None)
                recorder.record(steps, logits, -energies)
    return (x, recorder.finish()) if return_trace else x


def _energies(logits: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """E(x, y) for the chains' classes, or E(x) for unconditional chains."""
    return class_energy(logits, target, check=False) if target is not None else energy(logits, check=False)
