"""The paper's figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def energy_histogram(clean: torch.Tensor, adversarial: torch.Tensor, path: Path, title: str,
                     adversarial_label: str = "PGD") -> Path:
    """Fig. 2a / 3a: histograms of E(x) for clean and adversarial images."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    low = float(min(clean.min(), adversarial.min()))
    high = float(max(clean.max(), adversarial.max()))
    bins = torch.linspace(low, high, 60).tolist()
    axis.hist(clean.tolist(), bins=bins, alpha=0.6, label="clean", color="tab:blue")
    axis.hist(adversarial.tolist(), bins=bins, alpha=0.6, label=adversarial_label, color="tab:red")
    axis.set_xlabel("E(x) = -logsumexp f(x)   (lower = more likely)")
    axis.set_ylabel("images")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def energy_vs_steps(steps: Sequence[int], means: Sequence[float], stds: Sequence[float], accuracies: Sequence[float],
                    path: Path, title: str) -> Path:
    """Fig. 2b / 3b: mean ± std of E(x) against attack steps, the accuracy written above each point."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    positions = list(range(len(steps)))
    axis.errorbar(positions, means, yerr=stds, marker="o", capsize=4, color="tab:red")
    for x, mean, std, accuracy in zip(positions, means, stds, accuracies):
        axis.annotate(f"{100 * accuracy:.0f}%", (x, mean + std), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize=8)
    axis.set_xticks(positions, [str(s) for s in steps])
    axis.set_xlabel("attack steps (accuracy above each point)")
    axis.set_ylabel("E(x), mean ± std")
    axis.set_title(title)
    axis.margins(y=0.15)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def adaptive_sweep(lams: Sequence[float], series: dict, path: Path, title: str) -> Path:
    """Detection rate and attack success of HE-PGD against λ (one line per series)."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, values in series.items():
        axis.plot(list(lams), list(values), marker="o", label=label)
    axis.set_xlabel("HE-PGD λ")
    axis.set_ylabel("rate")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
