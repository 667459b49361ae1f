"""Adversarial attacks, each a few lines on top of the engine's projected-gradient loop.

`PGD`, `FGSM`, `HighEnergyPGD` (alias `HEPGD`) and `APGD`. The loop and the
threat models live in `robgen.engine`; the objectives in objectives.py; so a
new attack is a subclass with another `objective`. `make_attack` is the one
factory by name that the CLI, the app and the experiments use.
"""

from .apgd import APGD
from .base import Attack
from .factory import ATTACKS, make_attack
from .hepgd import HEPGD, HighEnergyPGD
from .pgd import FGSM, PGD

__all__ = ["Attack", "PGD", "FGSM", "HighEnergyPGD", "HEPGD", "APGD", "make_attack", "ATTACKS"]
