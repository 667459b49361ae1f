"""Per-step statistics of an optimisation: what the attack or synthesis did at every iterate.

`TraceRecorder` collects batch means on the device while the loop runs and
syncs once at the end; `Trace` is the result (plain lists, JSON-ready), and
`Trace.combine` merges the traces of several batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional

import torch

from ..energy import energy


@dataclass
class Trace:
    """Batch means per step of an attack; entry k describes the iterate after k steps."""

    step: List[int] = field(default_factory=list)
    energy_mean: List[float] = field(default_factory=list)  # mean E(x) at T = `temperature` (1 unless said)
    energy_std: List[float] = field(default_factory=list)
    accuracy: List[float] = field(default_factory=list)  # fraction still classified as the true label
    loss: List[float] = field(default_factory=list)  # mean objective
    true_prob: List[float] = field(default_factory=list)  # mean p(y | x), true label
    target_prob: List[float] = field(default_factory=list)  # mean p(t | x), targeted attacks only
    temperature: float = 1.0  # of energy_mean and energy_std (an attack on a detector: the detector's T)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def combine(traces: List["Trace"], sizes: List[int]) -> "Trace":
        """One trace for several batches of `sizes` images (weighted means, pooled std); the batches' traces must
        record the same steps at the same temperature (one attack's settings)."""
        if len(traces) != len(sizes) or not traces:
            raise ValueError(f"give one batch size per trace: {len(traces)} traces and {len(sizes)} sizes")
        for trace in traces[1:]:
            if list(trace.step) != list(traces[0].step) or trace.temperature != traces[0].temperature:
                raise ValueError(
                    "traces of different steps or temperatures cannot be combined into one: steps "
                    f"{_steps_text(traces[0])} at T = {traces[0].temperature:g} and {_steps_text(trace)} at "
                    f"T = {trace.temperature:g} (combine the traces of batches attacked with the same settings)")
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
            target_prob=mean("target_prob").tolist(), temperature=traces[0].temperature,
        )


def _steps_text(trace: Trace) -> str:
    steps = list(trace.step)
    return f"{steps[0]}..{steps[-1]} ({len(steps)} entries)" if steps else "none"


class TraceRecorder:
    """Collects per-step statistics on the device and syncs once at the end.

    `labels` are the true classes (accuracy and p(y | x) are measured against
    them); None when there are none, as in unconditional sampling, and then the
    trace leaves `accuracy` and `true_prob` empty rather than invent a class.
    """

    def __init__(self, labels: Optional[torch.Tensor], target: Optional[torch.Tensor] = None,
                 temperature: float = 1.0) -> None:
        self.labels, self.target, self.temperature = labels, target, float(temperature)
        self.steps: List[int] = []
        self.rows: List[torch.Tensor] = []

    @torch.no_grad()
    def record(self, step: int, logits: torch.Tensor, loss: torch.Tensor,
               labels: Optional[torch.Tensor] = None) -> None:
        """Statistics of one iterate; `labels`: those of the images `logits` hold, when they are not all of
        `self.labels` (an attack whose later restarts run on the images not yet broken)."""
        labels = self.labels if labels is None else labels
        logits = logits.float()
        energies = energy(logits, self.temperature, check=False)
        probs = logits.softmax(1)
        missing = energies.new_tensor(float("nan"))
        true_prob = probs.gather(1, labels.view(-1, 1)).mean() if labels is not None else missing
        target_prob = probs.gather(1, self.target.view(-1, 1)).mean() if self.target is not None else missing
        std = energies.std() if energies.numel() > 1 else energies.new_zeros(())
        accuracy = (logits.argmax(1) == labels).float().mean() if labels is not None else missing
        self.steps.append(step)
        self.rows.append(torch.stack([energies.mean(), std, accuracy, loss.float().mean(), true_prob, target_prob]))

    def finish(self) -> Trace:
        table = torch.stack(self.rows).cpu().tolist() if self.rows else []
        columns = [list(c) for c in zip(*table)] if table else [[] for _ in range(6)]
        energy_mean, energy_std, accuracy, loss, true_prob, target_prob = columns
        if self.labels is None:
            accuracy, true_prob = [], []
        if self.target is None:
            target_prob = []
        return Trace(self.steps, energy_mean, energy_std, accuracy, loss, true_prob, target_prob, self.temperature)
