"""FGSM and PGD, the standard first-order attacks.

FGSM: Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples".
PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import Attack
from .objectives import wrong_class_log_prob


class PGD(Attack):
    """Projected gradient descent on the cross-entropy, L-inf or L2.

    Example:
        >>> attack = PGD(model, eps=8/255, step_size=1/255, steps=10)
        >>> x_adv = attack(x, y)
        >>> x_adv, trace = attack(x, y, return_trace=True)   # per-step energy, accuracy, loss
    """


class ConfidentPGD(PGD):
    """PGD toward a confident mistake: ascends the log-probability of the most likely wrong class
    (`objectives.wrong_class_log_prob`) instead of the cross-entropy. Untargeted only.

    Against a classifier that rejects unconfident inputs this is the attack that matters (the
    high-confidence attack of Stutz et al. 2020); robgen's "reject" training mode learns from it.

    Example:
        >>> x_adv = ConfidentPGD(model, eps=8/255, step_size=2/255, steps=10)(x, y)
    """

    def objective(self, labels, target):
        if target is not None:
            raise ValueError("ConfidentPGD is untargeted (it seeks the most confident wrong class): use PGD for a "
                             "targeted attack")
        return lambda logits: wrong_class_log_prob(logits, labels)


class FGSM(Attack):
    """One step of size eps along sign(∇ CE) (L-inf), or along ∇ CE / ||∇ CE|| (L2, "FGM").

    Example:
        >>> x_adv = FGSM(model, eps=8/255)(x, y)
    """

    def __init__(
        self, model: torch.nn.Module, eps: float = 8 / 255, norm: str = "linf", generator: Optional[torch.Generator] = None,
        *, fused: Optional[bool] = None,
    ) -> None:
        super().__init__(model, eps=eps, step_size=eps, steps=1, norm=norm, random_start=False, generator=generator,
                         fused=fused)
