"""Detection metrics for an energy threshold, as pure functions.

Convention throughout: an input is flagged adversarial when its energy is at
or below the threshold (`energy <= threshold`), because PGD lowers E(x).
"Positives" are adversarial examples, "negatives" clean ones:

    detection rate (TPR)      = P(adv flagged)
    false-negative rate (FNR) = 1 - TPR
    false-positive rate (FPR) = P(clean flagged)
    AUROC = P(E(adv) < E(clean)) + 1/2 P(E(adv) = E(clean))

Every rate comes with a 95% interval: Wilson's score interval for
proportions (detection rate, FPR, accuracies), its counterpart for AUROC (the
score interval of Hanley & McNeil's variance, `auroc_interval`: it keeps its
coverage near AUROC 1, where a bootstrap over images collapses to a point), and
a normal-approximation interval for means (mean ± z·s/√n).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

RULES = ("gmean", "youden", "fpr")


def _as_1d(values, name: str) -> torch.Tensor:
    # a list or array is read as float64 at once (torch would make float32 of a list, rounding close energies
    # together); a tensor keeps its values, cast up
    t = (values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float64))
    if t.ndim > 1 and math.prod(t.shape[1:]) != 1:  # (1, K) too: one image's logits, not K energies
        raise ValueError(f"{name} must be energies of shape (N,), got shape {tuple(t.shape)}: for (N, K) logits "
                         "pass robgen.energy(logits)")
    t = t.to("cpu", torch.float64).flatten()
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
    return float((clean_above.double() + 0.5 * ties.double()).sum() / (clean.numel() * adv.numel()))


def _roc_counts(clean_energy, adv_energy) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(thresholds, adversarial flagged, clean flagged, n_adversarial, n_clean): exact counts per threshold."""
    clean = torch.sort(_as_1d(clean_energy, "clean_energy")).values
    adv = torch.sort(_as_1d(adv_energy, "adv_energy")).values
    candidates = torch.unique(torch.cat([clean, adv]))
    thresholds = torch.cat([candidates.new_tensor([-math.inf]), candidates])
    flagged_adv = torch.searchsorted(adv, thresholds, right=True)
    flagged_clean = torch.searchsorted(clean, thresholds, right=True)
    return thresholds, flagged_adv, flagged_clean, adv.numel(), clean.numel()


def roc_curve(clean_energy, adv_energy) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(thresholds, tpr, fpr) for every distinct threshold, ascending; the first flags nothing."""
    thresholds, flagged_adv, flagged_clean, n_adv, n_clean = _roc_counts(clean_energy, adv_energy)
    return thresholds, flagged_adv.double() / n_adv, flagged_clean.double() / n_clean


def accept_up_to(ordered: torch.Tensor, i: int) -> float:
    """A threshold t for a rule `v <= t` (or `reject v > t`) that takes ordered[: i + 1] and not the rest of the
    ascending `ordered`: halfway to the next value, so that a recomputation that differs in the last bits (another
    batch size, device or precision) cannot move the value at i across it; ordered[i] itself when nothing is above
    it, or when the two are neighbouring floats with nothing between them."""
    if i + 1 >= len(ordered):
        return float(ordered[i])
    low, high = float(ordered[i]), float(ordered[i + 1])
    halfway = (low + high) / 2
    return halfway if low <= halfway < high else low


def accept_down_to(ordered: torch.Tensor, i: int) -> float:
    """A threshold tau for `reject v < tau` that accepts ordered[i:] and rejects ordered[:i] (ascending): halfway
    to the value below, as `accept_up_to`; ordered[0] itself when nothing is below."""
    if i <= 0:
        return float(ordered[0])
    low, high = float(ordered[i - 1]), float(ordered[i])
    halfway = (low + high) / 2
    return halfway if low < halfway <= high else high


def choose_threshold(clean_energy, adv_energy, rule: str = "gmean", target_fpr: float = 0.05) -> float:
    """The threshold a rule picks on validation energies.

    - "gmean": maximise sqrt(TPR * (1 - FPR));
    - "youden": maximise Youden's J = TPR - FPR;
    - "fpr": the highest threshold whose FPR is at most `target_fpr`.

    The rule chooses among the energies themselves (clean and adversarial): one
    chosen flags every input up to it, ties included. For "gmean" and "youden",
    ties of the score go to the lowest energy (fewest clean inputs flagged). For
    "fpr", FPR only grows with the threshold, so the rule takes the last
    energy before FPR exceeds the budget (spending it, and so catching the most
    adversarial inputs it allows); when even the lowest energy would exceed
    it, the threshold flags nothing. Its validation FPR keeps the budget; on
    new clean images of the same distribution the expected FPR can exceed it by
    up to 1/(n + 1) for n clean validation images (a review's simulation, 5% at
    n = 500: 5.14% on average), which is why every report prints the test FPR.
    The threshold returned sits halfway between the chosen energy and the next
    larger one (`accept_up_to`), which flags the same validation inputs, so that
    the input at the chosen energy is flagged also when its energy is computed
    again in another precision (float32 against the float64 the detector
    computes from logits), unless the two energies lie within that precision's
    rounding of each other. One that flags nothing is 1 below the lowest energy.
    """
    thresholds, a, c, n_a, n_c = _roc_counts(clean_energy, adv_energy)  # TPR = a / n_a, FPR = c / n_c
    if rule == "fpr":
        if not 0 <= target_fpr < 1:
            raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
        allowed = c.double() / n_c <= target_fpr + 1e-12  # a prefix (FPR non-decreasing); thresholds[0] = -inf in it
        best = int(allowed.sum()) - 1  # its last entry = the highest threshold within the budget
    else:
        # Each score scaled to whole numbers, so that tied rates tie exactly (in floats 0.3 - 0.1 < 0.4 - 0.2):
        # gmean^2 * n_a * n_c = a * (n_c - c), Youden's J * n_a * n_c = a * n_c - c * n_a.
        if rule == "gmean":
            score = a * (n_c - c)
        elif rule == "youden":
            score = a * n_c - c * n_a
        else:
            raise ValueError(f"unknown threshold rule {rule!r}: choose from {', '.join(RULES)}")
        best = int(torch.argmax(score))  # first maximum = lowest threshold
    if best == 0:  # flag nothing: sit below the lowest energy (by 1, or by one float where that is lost)
        lowest = float(thresholds[1])
        return lowest - 1.0 if lowest - 1.0 < lowest else math.nextafter(lowest, -math.inf)
    return accept_up_to(thresholds, best)


def detection_metrics(clean_energy, adv_energy, threshold: float) -> Dict[str, float]:
    """Rates of the rule `energy <= threshold` on clean and adversarial energies, with 95% intervals.

    `*_ci` entries are (low, high): Wilson for the detection rate and FPR, `auroc_interval` for AUROC.
    """
    clean = _as_1d(clean_energy, "clean_energy")
    adv = _as_1d(adv_energy, "adv_energy")
    if math.isnan(float(threshold)):  # NaN flags nothing and says nothing: a corrupt or unfitted detector
        raise ValueError("the threshold is NaN: fit the detector again")
    tpr = float((adv <= threshold).double().mean())
    fpr = float((clean <= threshold).double().mean())
    area = auroc(clean, adv)
    return {
        "detection_rate": tpr,
        "false_negative_rate": 1.0 - tpr,
        "false_positive_rate": fpr,
        "true_negative_rate": 1.0 - fpr,
        "balanced_accuracy": (tpr + 1.0 - fpr) / 2,
        "g_mean": math.sqrt(tpr * (1.0 - fpr)),
        "youden_j": tpr - fpr,
        "auroc": area,
        "detection_rate_ci": rate_interval(adv <= threshold),
        "false_positive_rate_ci": rate_interval(clean <= threshold),
        "auroc_ci": auroc_interval(clean, adv, area=area),
        "confidence": 0.95,
        "threshold": float(threshold),
        "n_clean": int(clean.numel()),
        "n_adversarial": int(adv.numel()),
        "clean_energy_mean": float(clean.mean()),
        "adversarial_energy_mean": float(adv.mean()),
    }


def _z(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level, e.g. 1.96 for 0.95."""
    confidence = float(confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2, dtype=torch.float64)))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson's score interval for a proportion `successes / n`; (nan, nan) when n = 0."""
    z = _z(confidence)
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exactly, the interval holds p and stays in [0, 1]; in floating point, at p = 0 or 1 its bound lands a rounding
    # error past p (3.5e-18 above 0 for 0 of 100): clamp so that low <= p <= high always holds
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def auroc_interval(clean_energy, adv_energy, confidence: float = 0.95, *,
                   area: Optional[float] = None) -> Tuple[float, float]:
    """A score interval for AUROC: the θ in [0, 1] with (AUROC - θ)² <= z² V(θ), V being Hanley & McNeil's (1982)
    variance of the AUROC of n₊ adversarial and n₋ clean images at true value θ,

        V(θ) = θ(1 - θ) [1 + (n₊ - 1)(1 - θ)/(2 - θ) + (n₋ - 1) θ/(1 + θ)] / (n₊ n₋),

    inverted as Wilson's interval inverts the binomial variance (Newcombe 2006 studies such intervals). Unlike a
    bootstrap over images it does not collapse at a perfect separation (AUROC 1 of 30 + 30 images: [0.93, 1]);
    simulated with Gaussian energies it covers the true AUROC 94-99% of the time from 10 + 10 to 500 + 500 images
    and AUROC 0.5 to 0.999. `area`: the AUROC of these energies, when already computed."""
    z2 = _z(confidence) ** 2
    clean, adv = _as_1d(clean_energy, "clean_energy"), _as_1d(adv_energy, "adv_energy")
    value = auroc(clean, adv) if area is None else float(area)
    n_adv, n_clean = adv.numel(), clean.numel()

    def outside(theta: float) -> bool:  # theta is outside the interval
        variance = theta * (1 - theta) * (1 + (n_adv - 1) * (1 - theta) / (2 - theta)
                                          + (n_clean - 1) * theta / (1 + theta)) / (n_adv * n_clean)
        return (value - theta) ** 2 > z2 * variance

    def boundary(far: float) -> float:  # from `far` (outside) towards `value` (inside), by bisection
        if not outside(far):
            return far
        out, inside = far, value
        for _ in range(60):
            middle = (out + inside) / 2
            out, inside = (middle, inside) if outside(middle) else (out, middle)
        return inside

    return (min(value, boundary(0.0)), max(value, boundary(1.0)))


AUROC_INTERVAL = "hanley-mcneil score"  # what a report records to say its AUROC intervals are `auroc_interval`'s


def auroc_interval_words(results: dict) -> str:
    """How the AUROC intervals of a results.json were made, in words: `auroc_interval` where it records
    AUROC_INTERVAL, else the percentile bootstrap of the runs made before (its resamples, 500 by default)."""
    if results.get("auroc_interval") == AUROC_INTERVAL:
        return "the score interval of Hanley & McNeil's variance (`robgen.metrics.auroc_interval`)"
    resamples = (results.get("settings") or {}).get("n_boot", 500)
    return f"a percentile bootstrap over images ({resamples} resamples, clean and adversarial images resampled separately)"


def yes_no(flags, name: str = "flags") -> torch.Tensor:
    """`flags` (booleans, or numbers that are all 0 or 1, of any shape) as a flat bool tensor; other numbers
    refused: a rate of scores or probabilities is no share of anything."""
    flags = torch.as_tensor(flags).detach().flatten()
    if flags.dtype != torch.bool:
        if flags.numel() and not bool(((flags == 0) | (flags == 1)).all()):
            raise ValueError(f"{name} must be yes/no outcomes (booleans, or 0 and 1), got other values: pass e.g. "
                             "`score > threshold`, not the scores themselves")
        flags = flags.bool()
    return flags


def rate_interval(flags, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson interval of the fraction of true values in a boolean tensor."""
    flags = yes_no(flags)
    return wilson_interval(float(flags.sum()), int(flags.numel()), confidence)


def rate_text(flags) -> str:
    """The fraction of true values in a boolean tensor with its Wilson 95% interval: "17.3% [12.2%, 23.8%]";
    "no images" when there are none (a share of nothing, such as the attacks caught where none succeeded)."""
    flags = yes_no(flags)
    if flags.numel() == 0:
        return "no images"
    low, high = rate_interval(flags)
    return f"{flags.double().mean():.1%} [{low:.1%}, {high:.1%}]"


PAIRED_INTERVAL = "agresti-min"  # what a result records to say its paired differences' intervals are this one's


def paired_difference_interval(first, second, confidence: float = 0.95) -> Tuple[float, float]:
    """An interval for P(second) - P(first) of paired yes/no outcomes (each image judged twice): Agresti & Min
    (2005)'s, the Wald interval after adding 1/2 to each cell of the 2x2 table. The normal approximation of the
    mean difference gives (0, 0) whenever no pair differs, and covered a difference of -1 point on 500 pairs
    48% of the time in a simulation (this one: 100%); near a difference of 0 it is conservative."""
    z = _z(confidence)
    first, second = yes_no(first, "first"), yes_no(second, "second")
    if first.shape != second.shape:
        raise ValueError(f"paired outcomes need one of each per pair, got {first.numel()} and {second.numel()}")
    if first.numel() == 0:
        return (math.nan, math.nan)
    cells = first.numel() + 2
    only_first = float((first & ~second).sum()) + 0.5
    only_second = float((second & ~first).sum()) + 0.5
    difference = (only_second - only_first) / cells
    half = z * math.sqrt(((only_first + only_second) - (only_second - only_first) ** 2 / cells) / cells ** 2)
    # the interval is centred on the adjusted difference; at low confidence it could leave out the observed one
    observed = float(second.double().mean() - first.double().mean())
    return (max(-1.0, min(observed, difference - half)), min(1.0, max(observed, difference + half)))


def mean_interval(values, confidence: float = 0.95,
                  within: Optional[Tuple[float, float]] = None) -> Tuple[float, float]:
    """mean ± z·s/√n (normal approximation; fine for the hundreds of images robgen reports on), cut to `within`
    where the values cannot leave it (probabilities: (0, 1); a judge's mean of 0.975 had [0.926, 1.024])."""
    z = _z(confidence)
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() < 2:
        return (math.nan, math.nan)
    mean, half = float(values.mean()), z * float(values.std()) / math.sqrt(values.numel())
    low, high = mean - half, mean + half
    if within is not None:
        low, high = max(low, within[0]), min(high, within[1])
    return (low, high)
