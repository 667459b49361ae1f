"""Per-example objectives that the projected-gradient loop ascends.

Each returns a tensor of shape (N,), one value per image, so that the
gradient of its sum gives every image its own gradient whatever the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..energy import energy


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(f(x), y): ascending it pushes x away from class y (untargeted attack)."""
    return F.cross_entropy(logits, labels, reduction="none")


def negative_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-CE(f(x), t): ascending it pulls x toward class t (targeted attack)."""
    return -F.cross_entropy(logits, target, reduction="none")


def high_energy_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float, temperature: float = 1.0) -> torch.Tensor:
    """CE(f(x), y) + lam * E(x), with E(x) = -T logsumexp(f(x) / T) at T = `temperature`.

    The High-Energy PGD objective of Beadini & Masi (2023): the CE term fools
    the classifier while the energy term keeps E(x) from dropping below the
    energies of natural images, which hides the example from EnergyDetector.
    """
    return F.cross_entropy(logits, labels, reduction="none") + lam * energy(logits, temperature, check=False)


def wrong_class_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max over k != y of log p(k | x): ascending it makes x a confident mistake (the attack a confidence reject
    option faces: Stutz et al. 2020's CCAT trains against it). In energies, -(E(x, k) - E(x)) for the best wrong k."""
    log_p = F.log_softmax(logits.float(), dim=1)
    own = F.one_hot(labels, logits.shape[1]).bool()
    return log_p.masked_fill(own, float("-inf")).max(dim=1).values


def prediction_divergence(logits: torch.Tensor, reference_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p(x')) = sum_k p_ref(k) (log p_ref(k) - log p(k | x')), with p_ref given as log-probabilities
    (typically the clean image's prediction): how far x' moves the model's whole prediction, labels unused.
    TRADES (Zhang et al. 2019) ascends it to find its training point and minimises it, weighted, beside the
    clean cross-entropy."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (reference_log_probs.exp() * (reference_log_probs - log_p)).sum(dim=1)
