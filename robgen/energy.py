"""The energy a classifier's logits define, and batched helpers to compute it.

Reading the logits f(x) of a K-class classifier as an energy-based model
(Grathwohl et al. 2020, "Your classifier is secretly an energy based model"):

    E(x, y) = -f(x)[y]                      (class energy; low = likely pair)
    E(x)    = -T * logsumexp(f(x) / T)      (free energy; low = high p(x))
    log p(y | x) = -E(x, y) + E(x)          (at T = 1)

Beadini & Masi (2023) show that untargeted PGD lowers E(x) below that of
natural images, which `EnergyDetector` exploits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from .checks import check_logits, check_positive
from .progress import progress_bar


def energy(logits: torch.Tensor, T: float = 1.0, check: bool = True) -> torch.Tensor:
    """Free energy E(x) = -T * logsumexp(logits / T), shape (N,).

    Example:
        >>> energy(torch.tensor([[0.0, 0.0]]))  # -log 2
        tensor([-0.6931])
    """
    T = check_positive(T, "T")
    if check:
        check_logits(logits)
    return -T * torch.logsumexp(logits / T, dim=1)


def class_energy(logits: torch.Tensor, y: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Class-conditional energy E(x, y) = -logits[y], shape (N,)."""
    if check:
        check_logits(logits)
    return -logits.gather(1, y.long().view(-1, 1)).squeeze(1)


def log_prob_given_x(logits: torch.Tensor, y: torch.Tensor, check: bool = True) -> torch.Tensor:
    """log p(y | x) = log_softmax(logits)[y] = -E(x, y) + E(x), shape (N,)."""
    if check:
        check_logits(logits)
    return F.log_softmax(logits, dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)


@dataclass
class EnergyRecord:
    """Per-example results over a data set, all on the CPU, in data order."""

    energy: torch.Tensor  # (N,) E(x) at the temperature used
    logits: torch.Tensor  # (N, K)
    labels: torch.Tensor  # (N,) true labels
    temperature: float = 1.0

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).float().mean()) if len(self.labels) else float("nan")


def compute_energies(
    model: torch.nn.Module,
    batches: Iterable,
    attack: Optional[Callable] = None,
    T: float = 1.0,
    progress=True,
    desc: str = "energies",
) -> EnergyRecord:
    """E(x), logits and labels over an iterable of (images, labels) batches.

    With `attack`, each batch is first replaced by `attack(images, labels)`, so
    the record holds the adversarial examples' energies; the adversarial images
    themselves are not kept, so memory stays bounded by one batch. `batches` is
    typically a DataLoader; `progress` is True (tqdm), False or a callback
    `fn(fraction, desc)`.
    """
    check_positive(T, "T")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    energies, all_logits, all_labels = [], [], []
    try:
        for images, labels in progress_bar(batches, desc=desc, progress=progress):
            images, labels = images.to(device), labels.to(device)
            if attack is not None:
                images = attack(images, labels)
            with torch.no_grad():
                logits = model(images).float()
            energies.append(energy(logits, T, check=False).cpu())
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("the data yielded no batches: is the data set empty?")
    return EnergyRecord(torch.cat(energies), torch.cat(all_logits), torch.cat(all_labels), float(T))


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
