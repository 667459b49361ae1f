"""Stochastic gradient Langevin dynamics on the classifier's energy (Grathwohl et al. 2020, JEM).

    x_{k+1} = clip_[0,1]( x_k - (alpha / 2) * ∇ₓ E(x_k) + sigma * e_k ),   e_k ~ N(0, I)

with E(x) = -logsumexp f(x) (unconditional, samples of p(x)) or
E(x, y) = -f(x)[y] (conditional, samples of p(x, y)). This is the short-run,
replay-free sampler: every chain starts afresh from noise (or seeds) and runs
a fixed number of steps. Unlike `synthesize`, the step follows the raw
gradient rather than its direction, as Langevin dynamics requires; JEM's
recipe uses alpha = 2 (a gradient step of 1) and sigma = 0.01.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch

from ..attacks.constraints import random_normal
from ..attacks.loop import Trace, TraceRecorder, eval_mode
from ..checks import check_positive, check_steps
from ..progress import step_reporter
from .ascent import class_indices
from .seeds import SeedDistribution, initial_images


def sgld_sample(
    model,
    n: int = 8,
    *,
    target_class=None,
    steps: int = 20,
    alpha: float = 2.0,
    sigma: float = 0.01,
    init: Union[str, torch.Tensor] = "uniform",
    seeds: Optional[SeedDistribution] = None,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable] = None,
    return_trace: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, Trace]]:
    """`n` short-run SGLD samples of p(x) (no `target_class`) or of p(x | y) (with one).

    Args:
        target_class: None for E(x), or a class (index or label, or n of them) for E(x, y).
        steps: Langevin steps per chain.
        alpha: the step: x moves by -(alpha / 2) * ∇E.
        sigma: standard deviation of the added Gaussian noise (0 < sigma).
        init: "uniform" noise (JEM), "gaussian" class seeds (conditional only), "gray" or images.
        generator: the source of all randomness.
        return_trace: also return a `Trace` (energy and, conditionally, target probability per step).

    Returns:
        images (n, C, H, W) in [0, 1].
    """
    device = next(model.parameters()).device
    n = check_steps(n, "n")
    steps = check_steps(steps)
    alpha = check_positive(alpha, "alpha")
    sigma = check_positive(sigma, "sigma")
    conditional = target_class is not None
    if conditional:
        target = class_indices(model, target_class, n, device)
    elif init == "gaussian":
        raise ValueError("init='gaussian' draws class-conditional seeds: give a target_class, or use init='uniform'")
    else:
        target = torch.zeros(n, dtype=torch.long, device=device)
    x = initial_images(init, target, model, generator, device, seeds)
    recorder = TraceRecorder(target, target if conditional else None) if return_trace else None
    report = step_reporter(progress, "SGLD")
    with eval_mode(model):
        for step in range(steps):
            with torch.enable_grad():
                x.requires_grad_(True)
                logits = model(x)
                if conditional:
                    energies = -logits.gather(1, target.view(-1, 1)).squeeze(1)
                else:
                    energies = -torch.logsumexp(logits, dim=1)
                (grad,) = torch.autograd.grad(energies.sum(), x)
            if recorder is not None:
                recorder.record(step, logits.detach(), -energies.detach())
            with torch.no_grad():
                noise = random_normal(x.shape, x, generator)
                x = (x.detach() - (alpha / 2) * grad + sigma * noise).clamp_(0, 1)
            if report is not None:
                report((step + 1) / steps)
        if recorder is not None:
            with torch.no_grad():
                logits = model(x)
                energies = -logits.gather(1, target.view(-1, 1)).squeeze(1) if conditional else -torch.logsumexp(logits, 1)
                recorder.record(steps, logits, -energies)
    return (x, recorder.finish()) if return_trace else x
