"""The energy a classifier's logits define, as pure functions: the one place the formulas are typed.

Reading the logits f(x) of a K-class classifier as an energy-based model
(Grathwohl et al. 2020, "Your classifier is secretly an energy based model"):

    E(x, y) = -f(x)[y]                                  (class energy; low = likely pair)
    E(x)    = -T * logsumexp(f(x) / T)                  (free energy; low = high p(x))
    log p(y | x) = -E(x, y) + E(x)                      (at T = 1)

T is the `temperature` (1 unless said otherwise). Beadini & Masi (2023) show
that untargeted PGD lowers E(x) below that of natural images, which
`EnergyDetector` exploits. Everything else in robgen (attacks, traces,
synthesis, detectors, reports) calls these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_logits, check_positive, labels_for


_SMALL_TEMPERATURE = 1e-3  # above it logits / T overflows float32 only for logits beyond 1e35: the plain formula,
# whose rounding every number robgen has reported was computed with


def energy(logits: torch.Tensor, temperature: float = 1.0, check: bool = True) -> torch.Tensor:
    """Free energy E(x) = -T * logsumexp(logits / T) with T = `temperature`, shape (N,); float32 for
    half-precision logits.

    Example:
        >>> energy(torch.tensor([[0.0, 0.0]]))  # -log 2
        tensor([-0.6931])
    """
    temperature = check_positive(temperature, "temperature")
    if check:
        check_logits(logits)
    if logits.dtype in (torch.float16, torch.bfloat16):  # the energy in float32, as the docstring says
        logits = logits.float()
    if temperature >= _SMALL_TEMPERATURE:
        return -temperature * torch.logsumexp(logits / temperature, dim=1)
    # Below it, the same function written as -m - T * logsumexp((logits - m) / T), m the largest logit: logits / T
    # overflows float32 to inf at T = 1e-40 (or at 1e-37 for logits of 100), (logits - m) / T, never above 0, does
    # not; its gradient is -softmax(logits / T) whatever torch gives the max. The division in float64: a T below
    # float32's smallest number (1.4e-45) is 0 there, and 0 / 0 made the energy NaN.
    top = logits.amax(dim=1, keepdim=True)
    spread = torch.logsumexp((logits - top).double() / temperature, dim=1)
    return -top.squeeze(1) - (temperature * spread).to(logits.dtype)


def class_energy(logits: torch.Tensor, y: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Class-conditional energy E(x, y) = -logits[y], shape (N,); `y` one class per row (or one for all rows)."""
    if check:
        check_logits(logits)
        y = labels_for(y, logits.shape[0], logits.shape[1], logits.device)
    return -logits.gather(1, y.long().view(-1, 1)).squeeze(1)


def log_prob_given_x(logits: torch.Tensor, y: torch.Tensor, check: bool = True) -> torch.Tensor:
    """log p(y | x) = log_softmax(logits)[y] = -E(x, y) + E(x), shape (N,)."""
    if check:
        check_logits(logits)
        y = labels_for(y, logits.shape[0], logits.shape[1], logits.device)
    return F.log_softmax(logits, dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)


def classification_margin(logits: torch.Tensor, y: torch.Tensor, check: bool = True) -> torch.Tensor:
    """max_{k != y} f_k - f_y = E(x, y) - min_{k != y} E(x, k), shape (N,): Carlini & Wagner's margin, > 0
    exactly where class y is not the top class (its class energy is not the lowest)."""
    if check:
        check_logits(logits)
        y = labels_for(y, logits.shape[0], logits.shape[1], logits.device)
    y = y.long().view(-1, 1)
    others = logits.scatter(1, y, float("-inf")).max(1).values
    return others - logits.gather(1, y).squeeze(1)
