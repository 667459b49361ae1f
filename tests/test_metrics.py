"""Interval maths against values computed by hand, and the detection metrics' intervals."""

import math

import pytest
import torch

from robgen.metrics import auroc, bootstrap_interval, detection_metrics, mean_interval, rate_interval, wilson_interval


def test_wilson_interval_matches_the_formula_by_hand():
    # 8 of 10 at 95%: z = 1.959964; centre = (0.8 + z²/20) / (1 + z²/10); half = z·sqrt(0.016 + z²/400) / (1 + z²/10)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(centre - half, abs=1e-12) and high == pytest.approx(centre + half, abs=1e-12)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook values
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert rate_interval(torch.tensor([True] * 8 + [False] * 2)) == (low, high)


def test_wilson_interval_narrows_with_n_and_widens_with_confidence():
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] > wilson_interval(500, 1000)[1] - wilson_interval(500, 1000)[0]
    assert wilson_interval(5, 10, 0.99)[0] < wilson_interval(5, 10, 0.9)[0]


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.1])
def test_a_confidence_outside_zero_one_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        wilson_interval(1, 2, confidence)


def test_mean_interval_is_mean_plus_minus_z_standard_error():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * float(values.std()) / 2
    assert mean_interval(values) == pytest.approx((2.5 - half, 2.5 + half))


def test_bootstrap_interval_repeats_with_a_fixed_generator_and_brackets_the_estimate():
    g = torch.Generator().manual_seed(1)
    clean, adv = torch.randn(300, generator=g), torch.randn(300, generator=g) - 1.0
    first = bootstrap_interval(auroc, clean, adv, n_boot=200, generator=torch.Generator().manual_seed(5))
    again = bootstrap_interval(auroc, clean, adv, n_boot=200, generator=torch.Generator().manual_seed(5))
    assert first == again
    assert first[0] < auroc(clean, adv) < first[1]
    # the true AUROC of N(0,1) vs N(-1,1) is Phi(1/sqrt(2)) = 0.760
    assert first[0] < 0.760 < first[1]


def test_detection_metrics_carry_intervals_around_their_rates():
    g = torch.Generator().manual_seed(0)
    report = detection_metrics(torch.randn(400, generator=g), torch.randn(400, generator=g) - 2.0, -1.0, n_boot=100)
    for key in ("detection_rate", "false_positive_rate", "auroc"):
        low, high = report[f"{key}_ci"]
        assert low <= report[key] <= high
        assert high - low < 0.15
