"""Orthogonal PGD (Bryniarski, Hingun, Pachuca, Wang & Carlini 2022, "Evading adversarial example
detection defenses with orthogonal projected gradient descent", ICLR).

Summing a classification loss and a detector loss lets the two gradients fight: a step that flips
the label may raise the detector's score by as much. Orthogonal PGD takes, per image and per step,
one of the two gradients with its component along the other removed:

    not yet misclassified:  g = g_c - proj_{g_d}(g_c)     flip the label without moving the score
    misclassified:          g = g_d - proj_{g_c}(g_d)     lower the score without undoing the flip

with g_c the gradient of the classification margin (or cross-entropy) and g_d that of -score. As in
the authors' code (v-wangg/OrthogonalPGD), a label counts as flipped only when the true class's
logit trails the top one by `flip_margin` (0.05), and either projection can be switched off
(both off: their "selective" PGD). Where the two gradients agree (an attack that happens to
lower the score anyway), the projection removes the useful direction: this attack is one of a
suite, not a replacement for the others. Both gradients come from one forward pass (two
`autograd.grad` calls on the same graph). The step
needs two gradients, which the engine's one-objective loop does not take, so this attack runs its
own short loop on the engine's constraints; every iterate is shown to the tracker all the same.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..energy import classification_margin
from ..engine.autograd import gradient_mode, recordable
from ..engine.constraints import finite_gradient, unit_direction
from .adaptive import AdaptiveAttack, _loss
from .evasion import DefendedOutputs

CLASSIFICATION_LOSSES = {"margin": lambda logits, labels: classification_margin(logits, labels, check=False),
                         "ce": lambda logits, labels: F.cross_entropy(logits, labels, reduction="none")}


def remove_component(g: torch.Tensor, along: torch.Tensor) -> torch.Tensor:
    """g minus its projection on `along`, per image: g - <g, â> â with â = a / |a| (g itself where a = 0).
    `along` is normalised first: |a|^2 of a tiny float32 gradient underflows, and any floor on it would leave
    part of the component that must go."""
    flat_g, unit = g.flatten(1), unit_direction(along).flatten(1)
    return (flat_g - (flat_g * unit).sum(1, keepdim=True) * unit).view_as(g)


class OrthogonalPGD(AdaptiveAttack):
    """PGD stepping on the classifier's gradient orthogonal to the detector's, then the other way round.

    `loss`: the classification loss ascended before the label flips, "margin" (max_{j != y} f_j - f_y)
    or "ce". `project_classifier` / `project_detector`: remove from the classifier's (detector's)
    gradient its component along the other's.

    Example:
        >>> x_adv = OrthogonalPGD(DefendedClassifier(model, reject), eps=8/255, steps=100, generator=g)(x, y)
    """

    def __init__(self, defended, eps: float = 8 / 255, step_size: Optional[float] = None, steps: int = 100,
                 norm: str = "linf", restarts: int = 1, loss: str = "margin", project_classifier: bool = True,
                 project_detector: bool = True, flip_margin: float = 0.05, random_start: bool = True,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(defended, eps, step_size, steps, norm, restarts, random_start, generator)
        self.loss = _loss(loss, CLASSIFICATION_LOSSES)
        self.project_classifier, self.project_detector = bool(project_classifier), bool(project_detector)
        self.flip_margin = float(flip_margin)

    def _once(self, x, y, restart, watch, index, network):
        model, classification = DefendedOutputs(self.defended, network=network), CLASSIFICATION_LOSSES[self.loss]
        per_image = (-1,) + (1,) * (x.ndim - 1)
        x_k = self.constraint.random_start(x, self.generator) if self._starts_random(restart) else x.clone()
        for step in range(self.steps):
            with gradient_mode():
                x_k = recordable(x_k).requires_grad_(True)
                outputs = model(x_k)
                (toward_class,) = torch.autograd.grad(classification(outputs.logits, y).sum(), x_k, retain_graph=True)
                (toward_accept,) = torch.autograd.grad((-outputs.score).sum(), x_k, allow_unused=True)
            if toward_accept is None:  # a score that does not depend on the input: nothing to avoid
                toward_accept = torch.zeros_like(toward_class)
            # NaN entries (a detector undefined there) are no direction, before the projections mix the pixels
            toward_class, toward_accept = finite_gradient(toward_class), finite_gradient(toward_accept)
            if watch(step, x_k.detach(), outputs):
                return x_k.detach()  # every image has evaded: nothing left to look for
            with torch.no_grad():
                flipped = (classification_margin(outputs.logits, y, check=False) > self.flip_margin).view(per_image)
                if self.project_detector:
                    detector_step = remove_component(toward_accept, toward_class)
                else:
                    detector_step = toward_accept
                if self.project_classifier:
                    classifier_step = remove_component(toward_class, toward_accept)
                else:
                    classifier_step = toward_class
                grad = torch.where(flipped, detector_step, classifier_step)
                x_k = self.constraint.project(x_k.detach() + self.step_size * self.constraint.direction(grad), x)
        return x_k

    def _settings(self) -> str:
        return (f"loss={self.loss!r}, project_classifier={self.project_classifier}, "
                f"project_detector={self.project_detector}")
