"""What one training step minimises, per mode.

- "standard", "pgd", "fast", "quasi": the cross-entropy on the batch the mode trains on (clean images, or their
  adversarial examples, adversarial.py), with the recipe's label smoothing.
- "reject": training for a reject option. A test point is defended when it is classified correctly, or when every
  mistake in its ball is unconfident enough to be rejected (detection-aware robust accuracy with a confidence or
  energy-gap detector, robgen.detection). So the step minimises

      (1 - a) * CE(f(x), y) + a * CE(f(x*), y) + reject_weight * relu(log max_{k != y} p(k | x*) - log reject_cap)

  with x* the most confident mistake `ConfidentPGD` finds in the ball (or, with `reject_attack="pgd"`, PGD's
  cross-entropy maximum: a = 1 is then adversarial training plus the cap) and a = `reject_adversarial_share`: clean
  images stay correct and confident (accepted), and wherever the model can still be fooled, the fooling class is
  held below `reject_cap`. In energies the third term asks E(x*, k) - E(x*) >= -log reject_cap for every wrong
  class k. With a = 0 the model is free to trade robustness for clean accuracy; a > 0 keeps adversarial
  training's term, at no extra cost (x* is in the forward pass already). Stutz et al. 2020
  (CCAT) and Pang et al. 2022 (rectified rejection) train rejection from adversarial examples too; this is the
  plainest form, with no extra head, read by robgen's existing "energy-gap" reject option.
- "trades": Zhang et al. 2019 (TRADES), a robust model that trades less clean accuracy:

      CE(f(x), y) + trades_beta * KL(p(. | x) || p(. | x*))

  with x* the point of the ball whose prediction is farthest from the clean one (`DivergencePGD`). The second term
  asks the prediction to stay constant on the whole ball, misclassified images included, which is the property
  the `robust-margin` reject option needs of clean images (results/adaptive/README.md, avenue 4). The gradient flows
  through both predictions, as in TRADES; unlike its code, x and x* share one forward pass (one set of batch-norm
  statistics), as "reject" does.
- "weat": TRADES with each image's term weighted by 1 / softplus(|E(x)|), E(x) its clean free energy (detached, the
  weights not normalised): WEAT, the energy-weighted TRADES of Mirza et al. 2024 ("Shedding more light on robust
  classifiers under the lens of energy-based models"), which gives more weight to the images of high energy
  (near 0), the ones the model's energy ranks least like its data.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from ..attacks.objectives import prediction_divergence, wrong_class_log_prob
from ..energy import energy
from .config import DIVERGENCE_MODES, TrainConfig


def batch_loss(config: TrainConfig, net: torch.nn.Module, x: torch.Tensor, x_attacked: torch.Tensor,
               y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the step's loss, the logits its training accuracy is counted on) for clean `x` and the mode's `x_attacked`
    (`x` itself in "standard" mode). "reject", "trades" and "weat" run both in one forward pass (one set of
    batch-norm statistics) and count accuracy on the clean images; the other modes on the images they train on."""
    if config.mode != "reject" and config.mode not in DIVERGENCE_MODES:
        logits = net(x_attacked)
        return F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing), logits
    both = net(torch.cat([x, x_attacked])).float()
    clean, attacked = both[:len(x)], both[len(x):]
    if config.mode in DIVERGENCE_MODES:
        per_image = (F.cross_entropy(clean, y, label_smoothing=config.label_smoothing, reduction="none")
                     + config.trades_beta * prediction_divergence(attacked, F.log_softmax(clean, dim=1)))
        if config.mode == "weat":
            per_image = per_image / F.softplus(energy(clean, check=False).abs()).detach()
        return per_image.mean(), clean
    cross_entropy = F.cross_entropy(clean, y, label_smoothing=config.label_smoothing)
    cap = F.relu(wrong_class_log_prob(attacked, y) - math.log(config.reject_cap)).mean()
    share = config.reject_adversarial_share
    if share:  # (a share of 0 leaves the loss exactly as before the option existed)
        cross_entropy = (1 - share) * cross_entropy + share * F.cross_entropy(
            attacked, y, label_smoothing=config.label_smoothing)
    return cross_entropy + config.reject_weight * cap, clean
