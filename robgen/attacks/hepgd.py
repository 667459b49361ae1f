"""High-Energy PGD (Beadini & Masi, Ital-IA 2023).

Untargeted PGD lowers the energy E(x) = -logsumexp(f(x)) of its examples below
that of natural images, so a threshold on E(x) detects them. HE-PGD ascends

    CE(f(x + δ), y) + λ · E(x + δ)

instead, fooling the classifier while keeping the energy at the level of
natural data, which defeats the energy detector. The paper uses λ ≈ 1.2,
step 1/255 and a random start in the eps-ball.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..checks import check_positive
from .base import Attack
from .objectives import high_energy_loss


class HighEnergyPGD(Attack):
    """PGD on CE + lam * E(x); `lam=0` is exactly `PGD`.

    Example:
        >>> attack = HighEnergyPGD(model, eps=8/255, step_size=1/255, steps=40, lam=1.2)
        >>> x_adv = attack(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        step_size: Optional[float] = None,
        steps: int = 10,
        lam: float = 1.2,
        temperature: float = 1.0,
        norm: str = "linf",
        random_start: bool = True,
        generator: Optional[torch.Generator] = None,
        *,
        alpha: Optional[float] = None,
        fused: Optional[bool] = None,
    ) -> None:
        super().__init__(model, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
                         generator=generator, alpha=alpha, fused=fused)
        lam = float(lam)
        if not (math.isfinite(lam) and lam >= 0):  # a negative weight pulls the energy down: plain PGD's side,
            # the opposite of what HE-PGD is for (and of every λ the paper reports)
            raise ValueError(f"lam must be a finite number >= 0 (HE-PGD raises the energy; 0 is plain PGD), got {lam}")
        self.lam = lam
        self.temperature = check_positive(temperature, "temperature")

    def objective(self, labels, target):
        if target is not None:
            raise ValueError("HighEnergyPGD is an untargeted attack: call it without target")
        return lambda logits: high_energy_loss(logits, labels, self.lam, self.temperature)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", lam={self.lam:g})"


HEPGD = HighEnergyPGD
