"""`make_attack`: every attack by name, from one set of settings.

    attack = make_attack("hepgd", model, eps=8/255, step_size=1/255, steps=40, lam=1.2)

The CLI and the app offer all settings at once (eps, step size, steps, λ,
norm, random start, generator); each attack takes the ones it has and leaves
the rest: FGSM takes eps; PGD also the step size, steps and random start;
HE-PGD also λ; APGD eps and steps (it picks its own step sizes). A setting
that no attack knows is an error.
"""

from __future__ import annotations

import inspect
import logging
from typing import Dict, Type

from .apgd import APGD
from .base import Attack
from .hepgd import HighEnergyPGD
from .pgd import FGSM, PGD

logger = logging.getLogger(__name__)

ATTACKS: Dict[str, Type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "hepgd": HighEnergyPGD, "apgd": APGD}


def _settings_of(cls: Type[Attack]) -> set:
    return {name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "model")}


def attack_key(name: str) -> str:
    """The registry key of an attack name ("HE-PGD" -> "hepgd"), or an error listing the known ones."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: choose from {', '.join(ATTACKS)}")
    return key


def stronger_with(name: str) -> str:
    """What may make the attack called `name` stronger, in words, of the settings it takes: "more steps, a larger
    eps or a larger step size" for PGD; "a larger eps" for FGSM, which takes one step of size eps."""
    takes = _settings_of(ATTACKS[attack_key(name)])
    words = [words for setting, words in (("steps", "more steps"), ("eps", "a larger eps"),
                                          ("step_size", "a larger step size")) if setting in takes]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def make_attack(name: str, model, **settings) -> Attack:
    """The attack called `name` ("fgsm", "pgd", "hepgd", "apgd"), built from the settings it takes."""
    cls = ATTACKS[attack_key(name)]
    known = set().union(*(_settings_of(c) for c in ATTACKS.values()))
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown attack setting(s) {', '.join(unknown)}: attacks take {', '.join(sorted(known))}")
    takes = _settings_of(cls)
    unused = sorted(k for k in settings if k not in takes)
    if unused:
        logger.debug("%s ignores the settings %s", cls.__name__, ", ".join(unused))
    return cls(model, **{k: v for k, v in settings.items() if k in takes})
