"""Multi-targeted logit matching (Tramèr, Carlini, Brendel & Madry 2020, "On adaptive attacks to
adversarial example defenses", the attack on detectors that read a model's outputs).

For a natural image x_t of another class, one that the defended classifier classifies correctly
and accepts, descend ||f(x) - f(x_t)||^2 inside the eps-ball around x: a point whose logits are
those of a natural image is classified as x_t is and, by a detector that reads only the logits,
scored as x_t is, which is accepted. A detector that reads the penultimate features (Mahalanobis)
is matched on the features instead (the logits follow, through the linear head). Each image is
matched to several targets in turn, one per restart; every iterate counts, as in the other
adaptive attacks.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from ..checks import check_pixels
from ..engine import projected_gradient_ascent
from ..models.state import eval_mode
from .adaptive import AdaptiveAttack
from .evasion import DefendedOutputs, Outputs

logger = logging.getLogger(__name__)

MATCH = ("auto", "logits", "features")


class LogitMatching(AdaptiveAttack):
    """Descend the squared distance to the outputs of natural images of other classes (one target per restart).

    Args:
        targets, target_labels: a pool of natural images (N_t, C, H, W) in [0, 1] and their labels;
            those the defended classifier misclassifies or rejects are dropped (with a log line).
        restarts: targets per image, one class per restart: the other classes in the order of the image's
            clean logits (the runner-up first), one accepted target of each, then a second of each, and so on
            (cycling through the pool when it holds fewer).
        match: "logits", "features" (the penultimate features), or "auto" (the features when the
            reject option reads them, else the logits).

    Example:
        >>> attack = LogitMatching(defended, targets=x_val, target_labels=y_val, eps=8/255, steps=100, restarts=5)
        >>> x_adv = attack(x, y)
    """

    def __init__(self, defended, targets: torch.Tensor, target_labels: torch.Tensor, eps: float = 8 / 255,
                 step_size: Optional[float] = None, steps: int = 100, norm: str = "linf", restarts: int = 4,
                 match: str = "auto", random_start: bool = True, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(defended, eps, step_size, steps, norm, restarts, random_start, generator)
        if match not in MATCH:
            raise ValueError(f"match must be one of {', '.join(MATCH)}, got {match!r}")
        self.match = ("features" if defended.reject.needs_features else "logits") if match == "auto" else match
        check_pixels(targets, name="targets")
        target_labels = torch.as_tensor(target_labels, device=targets.device).long()
        if target_labels.shape != (targets.shape[0],):
            raise ValueError(f"target_labels must hold one label per target image, shape ({targets.shape[0]},), "
                             f"got {tuple(target_labels.shape)}")
        self.targets, self.target_labels = targets.detach(), target_labels
        self._goals: Optional[torch.Tensor] = None  # the usable targets' matched outputs, and their labels
        self._goal_labels: Optional[torch.Tensor] = None
        self._order: Optional[torch.Tensor] = None
        self._counts: Optional[torch.Tensor] = None

    def _matched(self, outputs: Outputs) -> torch.Tensor:
        return outputs.features if self.match == "features" else outputs.logits

    def _begin(self, x, y):
        module = DefendedOutputs(self.defended, features=self.match == "features")
        with torch.no_grad(), eval_mode(self.defended.model):
            outputs = module(self.targets.to(x.device, x.dtype))  # float64 targets for a float32 model, ...
        labels = self.target_labels.to(x.device)
        usable = (outputs.logits.argmax(1) == labels) & (outputs.score <= 0)
        if not bool(usable.all()):
            logger.info("logit matching: %d of %d target images are misclassified or rejected and are not used",
                        int((~usable).sum()), len(usable))
        goals, labels = self._matched(outputs).detach()[usable], labels[usable]
        other = labels[None, :] != y[:, None]  # (N, targets): targets of another class than each image's
        missing = (~other.any(1)).nonzero()[:, 0]
        if len(missing):
            raise ValueError(f"no usable target image of another class for images of class(es) "
                             f"{sorted(set(y[missing].tolist()))}: pass natural images of several classes that the "
                             "defended classifier accepts and classifies correctly")
        # Per image, one target of each other class in turn (multi-targeted), the classes in the order of the image's
        # clean logits (the runner-up first: the nearest boundary), then a second target of each class, and so on.
        with torch.no_grad(), eval_mode(self.defended.model):
            clean_logits = module(x).logits
        num_classes = clean_logits.shape[1]
        rank = torch.empty_like(clean_logits, dtype=torch.long)
        rank.scatter_(1, clean_logits.argsort(1, descending=True),
                      torch.arange(num_classes, device=x.device).expand_as(rank))
        occurrence = torch.zeros_like(labels)  # the j-th target of its class in the pool: 0, 1, ...
        for label in labels.unique():
            where = (labels == label).nonzero()[:, 0]
            occurrence[where] = torch.arange(len(where), device=labels.device)
        key = occurrence[None, :] * num_classes + rank.gather(1, labels[None, :].expand(len(y), -1))
        key = torch.where(other, key, torch.full_like(key, torch.iinfo(torch.long).max))  # own class: never used
        self._order = torch.sort(key, dim=1, stable=True).indices
        self._counts = other.sum(1)
        self._goals, self._goal_labels = goals, labels

    def _once(self, x, y, restart, watch, index, network):
        pick = self._order[index, restart % self._counts[index]]
        goal = self._goals[pick]

        def objective(outputs: Outputs) -> torch.Tensor:
            return -(self._matched(outputs) - goal).pow(2).flatten(1).sum(1)

        module = DefendedOutputs(self.defended, features=self.match == "features", network=network)
        return projected_gradient_ascent(module, x, objective, self.constraint, self.steps, self.step_size,
                                         random_start=self._starts_random(restart), generator=self.generator,
                                         watch=watch)

    def _settings(self) -> str:
        return f"match={self.match!r}, targets={len(self.targets)}"
