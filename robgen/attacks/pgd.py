"""FGSM and PGD, the standard first-order attacks.

FGSM: Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples".
PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import Attack
from .objectives import prediction_divergence, wrong_class_log_prob


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


class DivergencePGD(PGD):
    """PGD away from the model's own clean prediction: ascends KL(p(·|x) || p(·|x')) (`objectives.
    prediction_divergence`), the labels unused. The inner maximisation of TRADES (Zhang et al. 2019, "Theoretically
    Principled Trade-off between Robustness and Accuracy"), which robgen's "trades" training mode learns from.
    Its start must be random: at x' = x the divergence is at its minimum and its gradient is zero.

    Example:
        >>> x_adv = DivergencePGD(model, eps=8/255, step_size=2/255, steps=10)(x, y)
    """

    def __init__(self, model: torch.nn.Module, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        if not self.random_start:
            raise ValueError("DivergencePGD needs random_start=True: from x itself the divergence's gradient is zero "
                             "and no step would move")

    def perturb(self, x, y, target, recorder, progress):
        with torch.no_grad():
            self._clean_log_probs = F.log_softmax(self.graph(x).float(), dim=1)
        try:
            return super().perturb(x, y, target, recorder, progress)
        finally:
            del self._clean_log_probs

    def objective(self, labels, target):
        if target is not None:
            raise ValueError("DivergencePGD is untargeted (it moves away from the clean prediction): use PGD for a "
                             "targeted attack")
        reference = self._clean_log_probs
        return lambda logits: prediction_divergence(logits, reference)


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
