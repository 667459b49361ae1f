"""The one projected-gradient loop behind every attack (and, later, synthesis).

    x_0     = random point of the constraint set (or x)
    x_{k+1} = Project( x_k + step_size * direction(∇ objective(f(x_k))) )

Attacks differ only in the objective and the constraint (see constraints.py
and objectives.py). The loop keeps no autograd graph across steps: each step
builds one graph for one forward/backward and frees it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, List, Optional

import torch

logger = logging.getLogger(__name__)

Objective = Callable[[torch.Tensor], torch.Tensor]  # logits (N, K) -> per-example values (N,)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put `model` in eval mode for the block and restore the caller's mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class Trace:
    """Batch means per step of an attack; entry k describes the iterate after k steps."""

    step: List[int] = field(default_factory=list)
    energy_mean: List[float] = field(default_factory=list)  # mean E(x) at T = 1
    energy_std: List[float] = field(default_factory=list)
    accuracy: List[float] = field(default_factory=list)  # fraction still classified as the true label
    loss: List[float] = field(default_factory=list)  # mean objective
    true_prob: List[float] = field(default_factory=list)  # mean p(y | x), true label
    target_prob: List[float] = field(default_factory=list)  # mean p(t | x), targeted attacks only

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def combine(traces: List["Trace"], sizes: List[int]) -> "Trace":
        """One trace for several batches of `sizes` images (weighted means, pooled std)."""
        if len(traces) == 1:
            return traces[0]
        weights = torch.tensor(sizes, dtype=torch.float64)
        total = weights.sum()

        def mean(name):
            table = torch.tensor([getattr(t, name) for t in traces], dtype=torch.float64)
            return (table * weights[:, None]).sum(0) / total if table.numel() else table.new_zeros(0)

        means = torch.tensor([t.energy_mean for t in traces], dtype=torch.float64)
        stds = torch.tensor([t.energy_std for t in traces], dtype=torch.float64)
        energy_mean = mean("energy_mean")
        # pooled second moment: E[e^2] = std^2 (n-1)/n + mean^2 within each batch
        n = weights[:, None]
        second = (((stds**2) * (n - 1) / n + means**2) * n).sum(0) / total
        pooled_std = torch.sqrt((second - energy_mean**2).clamp_min(0) * total / max(total - 1, 1))
        return Trace(
            step=list(traces[0].step), energy_mean=energy_mean.tolist(), energy_std=pooled_std.tolist(),
            accuracy=mean("accuracy").tolist(), loss=mean("loss").tolist(), true_prob=mean("true_prob").tolist(),
            target_prob=mean("target_prob").tolist(),
        )


class TraceRecorder:
    """Collects per-step statistics on the device and syncs once at the end."""

    def __init__(self, labels: torch.Tensor, target: Optional[torch.Tensor] = None) -> None:
        self.labels, self.target = labels, target
        self.steps: List[int] = []
        self.rows: List[torch.Tensor] = []

    @torch.no_grad()
    def record(self, step: int, logits: torch.Tensor, loss: torch.Tensor) -> None:
        logits = logits.float()
        energies = -torch.logsumexp(logits, dim=1)
        probs = logits.softmax(1)
        true_prob = probs.gather(1, self.labels.view(-1, 1)).mean()
        target_prob = probs.gather(1, self.target.view(-1, 1)).mean() if self.target is not None else true_prob * float("nan")
        std = energies.std() if energies.numel() > 1 else energies.new_zeros(())
        accuracy = (logits.argmax(1) == self.labels).float().mean()
        self.steps.append(step)
        self.rows.append(torch.stack([energies.mean(), std, accuracy, loss.float().mean(), true_prob, target_prob]))

    def finish(self) -> Trace:
        table = torch.stack(self.rows).cpu().tolist() if self.rows else []
        columns = list(zip(*table)) if table else [[] for _ in range(6)]
        target = [] if self.target is None else list(columns[5])
        return Trace(self.steps, *[list(c) for c in columns[:5]], target_prob=target)


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
) -> torch.Tensor:
    """Ascend `objective(model(x'))` over x' in `constraint` around x; returns x' (detached).

    The caller chooses the model's mode (attacks use `eval_mode`). With a
    `recorder`, statistics of every iterate are recorded, the last one with an
    extra forward pass; without one, the cost is exactly `steps` forward and
    backward passes. `on_step(k, x_k)` sees every iterate after step k
    (synthesis keeps the snapshots of a path with it).
    """
    x = x.detach()
    x_adv = constraint.random_start(x, generator) if random_start else x.clone()
    for step in range(steps):
        with torch.enable_grad():  # also when the caller is inside torch.no_grad()
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            loss = objective(logits)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
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
