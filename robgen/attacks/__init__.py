"""Adversarial attacks sharing one projected-gradient loop.

`PGD`, `FGSM`, `HighEnergyPGD` (alias `HEPGD`) and `APGD`; the loop, the
threat models and the objectives are in loop.py, constraints.py and
objectives.py, so a new attack is a subclass with another `objective`.
"""

from .apgd import APGD
from .base import Attack
from .constraints import L2Ball, LinfBall, Masked, Unconstrained, make_constraint
from .hepgd import HEPGD, HighEnergyPGD
from .loop import Trace, eval_mode, projected_gradient_ascent
from .pgd import FGSM, PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "hepgd": HighEnergyPGD, "apgd": APGD}


def make_attack(name: str, model, **settings) -> Attack:
    """An attack by name ("fgsm", "pgd", "hepgd", "apgd") with its settings."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: choose from {', '.join(ATTACKS)}")
    return ATTACKS[key](model, **settings)


def attack_from_settings(name: str, model, *, eps: float, alpha: float, steps: int, lam: float = 1.2,
                         norm: str = "linf", random_start: bool = True, generator=None) -> Attack:
    """An attack by name from one common set of settings, each attack taking those it uses.

    FGSM takes eps; PGD also alpha, steps and random_start; HE-PGD also lam;
    APGD eps and steps (it picks its own step sizes). The CLI and the app
    offer all the settings at once and build their attack with this.
    """
    key = name.lower().replace("-", "").replace("_", "")
    settings = dict(eps=eps, norm=norm, generator=generator)
    if key in ("pgd", "hepgd"):
        settings.update(alpha=alpha, steps=steps, random_start=random_start)
    if key == "hepgd":
        settings.update(lam=lam)
    if key == "apgd":
        settings.update(steps=steps)
    return make_attack(name, model, **settings)


__all__ = [
    "Attack", "PGD", "FGSM", "HighEnergyPGD", "HEPGD", "APGD", "Trace", "LinfBall", "L2Ball", "Unconstrained", "Masked",
    "make_constraint", "make_attack", "attack_from_settings", "projected_gradient_ascent", "eval_mode", "ATTACKS",
]
