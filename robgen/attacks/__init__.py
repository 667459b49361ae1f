"""Adversarial attacks, each a few lines on top of the engine's projected-gradient loop.

`PGD`, `FGSM`, `HighEnergyPGD` (alias `HEPGD`) and `APGD`. The loop and the
threat models live in `robgen.engine`; the objectives in objectives.py; so a
new attack is a subclass with another `objective`. `make_attack` is the one
factory by name that the CLI, the app and the experiments use.

Adaptive attacks on a defended classifier (a model plus a reject option), each knowing the detector:
adaptive.py ((K+1)-logit PGD and APGD, the penalty attack), orthogonal.py (Orthogonal PGD), matching.py
(logit matching), evasion.py (every iterate counts: the first misclassified and accepted one), suite.py
(`run_suite`: the per-image worst case over the attacks).
"""

from .apgd import APGD
from .base import Attack
from .factory import ATTACKS, make_attack
from .hepgd import HEPGD, HighEnergyPGD
from .pgd import FGSM, PGD

__all__ = ["Attack", "PGD", "FGSM", "HighEnergyPGD", "HEPGD", "APGD", "make_attack", "ATTACKS"]
