"""Detectors of adversarial examples: the training-free energy detector and the baselines beside it.

- detector.py: `EnergyDetector` (a threshold on E(x); the rules are in robgen.metrics)
- baselines.py: Mahalanobis, LID and KD+BU on penultimate features
"""

from .baselines import KDBUScorer, LIDScorer, MahalanobisScorer, last_linear, penultimate_features
from .detector import TEMPERATURES, EnergyDetector

__all__ = ["EnergyDetector", "TEMPERATURES", "MahalanobisScorer", "LIDScorer", "KDBUScorer", "last_linear", "penultimate_features"]
