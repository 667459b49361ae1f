"""Detectors of adversarial examples: the training-free energy detector and the baselines beside it.

- detector.py: `EnergyDetector` (a threshold on E(x); the rules are in robgen.metrics)
- baselines.py: Mahalanobis, LID and KD+BU on penultimate features
- reject.py: reject options for the adaptive evaluation: calibrated at a clean false-positive rate, a
  differentiable score (> 0 rejects), several kinds (`make_reject_option`); reject_base.py: what they share
  (order-statistic thresholds, calibration, the model check, JSON)
- defended.py: `DefendedClassifier`, a model plus a reject option, with the (K+1)-logit construction
- dara.py: detection-aware robust accuracy and the other rates of a defended classifier
"""

from .baselines import KDBUScorer, LIDScorer, MahalanobisScorer, last_linear, penultimate_features
from .detector import TEMPERATURES, EnergyDetector

__all__ = ["EnergyDetector", "TEMPERATURES", "MahalanobisScorer", "LIDScorer", "KDBUScorer", "last_linear", "penultimate_features"]
