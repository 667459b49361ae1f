"""Attack images against the model's own prediction, as a person sees the result: 8-bit pixels.

The CLI's `attack` command and the app's Attack tab both show this flow:
predict, attack the prediction (or pull toward a target class), quantise the
result to what a PNG can hold while staying inside the threat model, and
report the top classes and energies of the quantised images.

    outcome = attack_own_predictions(model, x, PGD(model, eps=8/255, steps=10))
    outcome.top(0)                       # {label: probability} of image 0 after the attack
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..attacks import Attack
from ..energy import energy
from ..engine import Trace


def quantise(x_adv: torch.Tensor, x: torch.Tensor, attack: Attack) -> torch.Tensor:
    """`x_adv` rounded to 8-bit levels, then projected back into the attack's threat model around `x`."""
    return attack.constraint.project((x_adv * 255).round() / 255, x)


def top_classes(logits: torch.Tensor, labels: List[str], k: int = 5) -> Dict[str, float]:
    """{label: probability} of the k most likely classes of one image's logits."""
    probs = logits.float().softmax(-1).view(-1)
    values, indices = probs.topk(min(k, len(labels)))
    return {labels[int(i)]: float(v) for v, i in zip(values, indices)}


@dataclass
class AttackOutcome:
    """Clean and (quantised) adversarial images with what the model says about both, on the CPU."""

    clean: torch.Tensor  # (N, C, H, W)
    adversarial: torch.Tensor  # (N, C, H, W), 8-bit levels, inside the threat model
    clean_logits: torch.Tensor  # (N, K)
    adversarial_logits: torch.Tensor
    labels: List[str]  # the model's class labels
    trace: Trace

    @property
    def clean_energy(self) -> torch.Tensor:
        return energy(self.clean_logits, check=False)

    @property
    def adversarial_energy(self) -> torch.Tensor:
        return energy(self.adversarial_logits, check=False)

    def top(self, index: int, k: int = 5, adversarial: bool = True) -> Dict[str, float]:
        logits = self.adversarial_logits if adversarial else self.clean_logits
        return top_classes(logits[index], self.labels, k)

    def change(self, index: int) -> Dict[str, float]:
        """L-inf and L2 size of the change of image `index`."""
        delta = (self.adversarial[index] - self.clean[index]).flatten()
        return {"linf": float(delta.abs().max()), "l2": float(delta.norm())}


def attack_own_predictions(model, x: torch.Tensor, attack: Attack, target_class: Optional[int] = None,
                           progress: Optional[Callable] = None) -> AttackOutcome:
    """Attack `x` (on the model's device) away from the model's predictions, or toward `target_class`."""
    with torch.no_grad():
        clean_logits = model(x)
    labels = clean_logits.argmax(1)
    target = torch.full_like(labels, int(target_class)) if target_class is not None else None
    x_adv, trace = attack(x, labels, target=target, return_trace=True, progress=progress)
    x_adv = quantise(x_adv, x, attack)
    with torch.no_grad():
        adv_logits = model(x_adv)
    return AttackOutcome(x.cpu(), x_adv.cpu(), clean_logits.float().cpu(), adv_logits.float().cpu(),
                         list(model.spec.class_labels), trace)


def combine_outcomes(outcomes: List[AttackOutcome]) -> AttackOutcome:
    """One outcome for several batches (images concatenated, traces combined)."""
    if len(outcomes) == 1:
        return outcomes[0]
    return AttackOutcome(
        torch.cat([o.clean for o in outcomes]), torch.cat([o.adversarial for o in outcomes]),
        torch.cat([o.clean_logits for o in outcomes]), torch.cat([o.adversarial_logits for o in outcomes]),
        outcomes[0].labels, Trace.combine([o.trace for o in outcomes], [len(o.clean) for o in outcomes]),
    )
