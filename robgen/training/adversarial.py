"""The adversarial examples a training run learns from (modes "pgd", "fast", "quasi", "reject", "trades", "weat").

They come from robgen's own PGD (the same loop as the attacks and the synthesis), run with the model in eval
mode (the attack restores the train mode), from a random start drawn from a generator of this run's own:

- "pgd": Madry et al. 2018, `attack_steps` steps of `step_size` (default 2.5·eps/steps);
- "fast": Wong et al. 2020, "Fast is better than free": one step of 1.25·eps from a uniform random start;
- "quasi": the same single step at a very small budget (default L2 0.05, `config.QUASI_EPS`);
- "reject": `attack_steps` steps of `ConfidentPGD`, toward the most confident mistake in the ball, or of PGD with
  `reject_attack="pgd"` (losses.py says what is learnt from it);
- "trades" and "weat": Zhang et al. 2019, `attack_steps` steps of `DivergencePGD`, away from the model's own clean
  prediction (the labels unused), from the uniform random start of the others (TRADES' code starts at
  x + 0.001·N(0, 1)).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import distributed
from ..attacks import PGD
from ..attacks.pgd import ConfidentPGD, DivergencePGD
from .config import DIVERGENCE_MODES, MULTI_STEP_MODES, TrainConfig


def training_attack(config: TrainConfig, model, device: torch.device) -> Optional[PGD]:
    """The attack that makes the run's training examples (None for "standard" mode).

    Its generator is seeded from the run's seed and the process's rank, so every rank draws its own starts and a
    resumed run (which restores the generator's state) draws the same ones as an uninterrupted run.
    """
    if config.mode == "standard":
        return None
    steps = config.attack_steps if config.mode in MULTI_STEP_MODES else 1
    generator = torch.Generator(device=device).manual_seed(config.seed + 1 + distributed.rank())
    kind = PGD
    if config.mode == "reject" and config.reject_attack == "confident":
        kind = ConfidentPGD
    elif config.mode in DIVERGENCE_MODES:
        kind = DivergencePGD
    return kind(model, eps=config.eps, step_size=config.step_size, steps=steps, norm=config.norm, random_start=True,
                generator=generator)
