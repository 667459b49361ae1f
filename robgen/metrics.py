"""Detection metrics for an energy threshold, as pure functions.

Convention throughout: an input is flagged adversarial when its energy is at
or below the threshold (`energy <= threshold`), because PGD lowers E(x).
"Positives" are adversarial examples, "negatives" clean ones:

    detection rate (TPR)      = P(adv flagged)
    false-negative rate (FNR) = 1 - TPR
    false-positive rate (FPR) = P(clean flagged)
    AUROC = P(E(adv) < E(clean)) + 1/2 P(E(adv) = E(clean))
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

RULES = ("gmean", "youden", "fpr")


def _as_1d(values, name: str) -> torch.Tensor:
    t = torch.as_tensor(values).detach().to("cpu", torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: need at least one energy")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite energies")
    return t


def auroc(clean_energy, adv_energy) -> float:
    """Area under the ROC curve of the score -E (adversarial = low energy)."""
    clean = torch.sort(_as_1d(clean_energy, "clean_energy")).values
    adv = _as_1d(adv_energy, "adv_energy")
    below_or_equal = torch.searchsorted(clean, adv, right=True)  # clean <= a
    strictly_below = torch.searchsorted(clean, adv, right=False)  # clean < a
    clean_above = clean.numel() - below_or_equal
    ties = below_or_equal - strictly_below
    return float((clean_above + 0.5 * ties).sum() / (clean.numel() * adv.numel()))


def roc_curve(clean_energy, adv_energy) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(thresholds, tpr, fpr) for every distinct threshold, ascending; the first flags nothing."""
    clean = torch.sort(_as_1d(clean_energy, "clean_energy")).values
    adv = torch.sort(_as_1d(adv_energy, "adv_energy")).values
    candidates = torch.unique(torch.cat([clean, adv]))
    thresholds = torch.cat([candidates.new_tensor([-math.inf]), candidates])
    tpr = torch.searchsorted(adv, thresholds, right=True).double() / adv.numel()
    fpr = torch.searchsorted(clean, thresholds, right=True).double() / clean.numel()
    return thresholds, tpr, fpr


def choose_threshold(clean_energy, adv_energy, rule: str = "gmean", target_fpr: float = 0.05) -> float:
    """The threshold a rule picks on validation energies.

    - "gmean": maximise sqrt(TPR * (1 - FPR));
    - "youden": maximise Youden's J = TPR - FPR;
    - "fpr": the highest threshold whose FPR is at most `target_fpr`.
    Ties go to the lowest threshold (fewest clean inputs flagged).
    """
    thresholds, tpr, fpr = roc_curve(clean_energy, adv_energy)
    if rule == "gmean":
        score = torch.sqrt(tpr * (1 - fpr))
    elif rule == "youden":
        score = tpr - fpr
    elif rule == "fpr":
        if not 0 <= target_fpr < 1:
            raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
        allowed = fpr <= target_fpr + 1e-12
        score = torch.where(allowed, tpr, torch.full_like(tpr, -1.0))
    else:
        raise ValueError(f"unknown threshold rule {rule!r}: choose from {', '.join(RULES)}")
    best = int(torch.argmax(score))  # first maximum = lowest threshold
    threshold = float(thresholds[best])
    if math.isinf(threshold):  # nothing flagged is best: sit just below the lowest energy
        threshold = float(torch.min(thresholds[1:])) - 1.0
    return threshold


def detection_metrics(clean_energy, adv_energy, threshold: float) -> Dict[str, float]:
    """Rates of the rule `energy <= threshold` on clean and adversarial energies."""
    clean = _as_1d(clean_energy, "clean_energy")
    adv = _as_1d(adv_energy, "adv_energy")
    tpr = float((adv <= threshold).double().mean())
    fpr = float((clean <= threshold).double().mean())
    return {
        "detection_rate": tpr,
        "false_negative_rate": 1.0 - tpr,
        "false_positive_rate": fpr,
        "true_negative_rate": 1.0 - fpr,
        "balanced_accuracy": (tpr + 1.0 - fpr) / 2,
        "g_mean": math.sqrt(tpr * (1.0 - fpr)),
        "youden_j": tpr - fpr,
        "auroc": auroc(clean, adv),
        "threshold": float(threshold),
        "n_clean": int(clean.numel()),
        "n_adversarial": int(adv.numel()),
        "clean_energy_mean": float(clean.mean()),
        "adversarial_energy_mean": float(adv.mean()),
    }
