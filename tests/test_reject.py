import json
import math

import pytest
import torch

from robgen.detection.baselines import penultimate_features
from robgen.detection.defended import DefendedClassifier
from robgen.detection.reject import (
    KINDS, CallableReject, EnergyBandReject, EnergyReject, MultiTemperatureReject, RejectOption, allowed_rejections,
    lower_threshold, make_reject_option, upper_threshold,
)
from robgen.energy import energy
from robgen.metrics import wilson_interval
from robgen.models.fingerprint import model_fingerprint
from tests.conftest import tiny_model


def clean_logits(n=400, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g)


def adversarial_looking_logits(k=10):
    """A very confident wrong prediction: one huge logit, so E(x) and E(x, ŷ) are far below any clean value."""
    logits = torch.zeros(1, k)
    logits[0, 3] = 100.0
    return logits


def fitted(kind, logits, **settings):
    return make_reject_option(kind, **settings).fit(logits)


# ---- the calibration rule ------------------------------------------------------------------------

@pytest.mark.parametrize("n", [100, 101, 999])
@pytest.mark.parametrize("fpr", [0.0, 0.05, 0.1, 0.29])
def test_thresholds_reject_exactly_floor_of_target_fpr_times_n_distinct_values(n, fpr):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    m = math.floor(fpr * n + 1e-9)
    assert allowed_rejections(n, fpr) == m
    assert int((values > upper_threshold(values, fpr)).sum()) == m  # distinct values: the whole budget, no more
    assert int((values < lower_threshold(values, fpr)).sum()) == m


def test_thresholds_never_exceed_the_budget_with_ties():
    values = torch.arange(10).repeat_interleave(10).double()  # ten ties of each of 0..9, n = 100
    for fpr in (0.05, 0.1, 0.15, 0.5):
        assert int((values > upper_threshold(values, fpr)).sum()) <= fpr * 100
        assert int((values < lower_threshold(values, fpr)).sum()) <= fpr * 100
    assert int((values > upper_threshold(values, 0.15)).sum()) == 10  # the whole tie block of 9 fits in 15


@pytest.mark.parametrize("kind", ["energy", "band", "multi-t", "energy-gap"])
def test_thresholds_sit_between_calibration_values_so_last_bit_noise_moves_no_image(kind):
    """A threshold on a calibration value rejected that image as soon as a recomputation (another batch size,
    another device) came out a few ulps higher: one more than the budget. Halfway to the next value, it holds."""
    logits = torch.randn(400, 10, generator=torch.Generator().manual_seed(5)) * 3
    option = fitted(kind, logits)
    rejected = option.rejects(logits)
    assert int(rejected.sum()) == allowed_rejections(400, 0.05)  # continuous values: the whole budget
    for sign in (1, -1):
        nudged = logits * (1 + sign * 1e-6)  # every statistic moves by far less than the gap to its neighbours
        assert torch.equal(option.rejects(nudged), rejected)
    score = option.score_from(logits)
    assert (score.abs() > 0).all()  # no calibration image sits on a threshold


def test_energy_threshold_on_a_known_distribution_is_its_quantile():
    # E(x) of logits [a, 0] with a -> -inf is ~0 - log(1 + e^a); simpler: feed the statistic directly.
    energies = torch.randn(20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    option = EnergyReject(target_fpr=0.05).fit_values(energies)
    assert option.tau == pytest.approx(-1.6449, abs=0.03)  # the 5% quantile of N(0, 1)
    assert option.validation["rejected"] == 1000 and option.validation["false_positive_rate"] == 0.05
    assert option.validation["false_positive_rate_ci"] == list(wilson_interval(1000, 20000))
    assert option.validation["n"] == 20000


@pytest.mark.parametrize("kind", KINDS[:4])
def test_each_logit_kind_rejects_at_most_the_target_on_its_clean_validation_logits(kind):
    logits = clean_logits(n=500) * torch.linspace(0.2, 4, 500)[:, None]  # energies spread at every temperature
    option = fitted(kind, logits, target_fpr=0.05)
    rejected = option.score_from(logits) > 0
    assert int(rejected.sum()) <= 25 and option.validation["rejected"] == int(rejected.sum())
    assert int(rejected.sum()) >= 20  # and spends (nearly) the budget: it is a detector, not a no-op


def test_target_fpr_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="target_fpr"):
        EnergyReject(target_fpr=5)


# ---- the sign convention -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["energy", "class-energy", "multi-t", "band"])
def test_an_overconfident_input_is_rejected_and_a_typical_one_accepted(kind):
    logits = clean_logits()
    option = fitted(kind, logits)
    assert float(option.score_from(adversarial_looking_logits())[0]) > 0
    typical = torch.median(energy(logits)).item()
    middle = logits[(energy(logits) - typical).abs().argmin()][None]  # the clean image of median energy
    assert float(option.score_from(middle)[0]) <= 0


def test_energy_score_is_tau_minus_energy():
    logits = clean_logits()
    option = EnergyReject(temperature=2.0).fit(logits)
    assert torch.allclose(option.score_from(logits), option.tau - energy(logits, 2.0))


def test_class_energy_score_is_tau_plus_the_top_logit():
    logits = clean_logits()
    option = fitted("class-energy", logits)
    assert torch.allclose(option.score_from(logits), option.tau + logits.max(1).values)


def test_band_rejects_both_tails():
    logits = clean_logits()
    option = EnergyBandReject(target_fpr=0.1).fit(logits)
    e = energy(logits)
    assert option.lo < option.hi
    assert int((e < option.lo).sum()) <= 20 and int((e > option.hi).sum()) <= 20  # floor(0.1 * 400 / 2) each
    low_energy = adversarial_looking_logits()  # E ~ -100
    high_energy = torch.full((1, 10), -50.0)  # E ~ 50 - log 10: far above every clean energy
    assert float(option.score_from(low_energy)[0]) > 0 and float(option.score_from(high_energy)[0]) > 0
    assert EnergyReject().fit(logits).score_from(high_energy)[0] < 0  # the one-sided detector misses it


def test_multi_t_calibrates_the_joint_fpr_and_takes_the_largest_level():
    logits = clean_logits(n=600) * torch.linspace(0.1, 5, 600)[:, None]
    option = MultiTemperatureReject(temperatures=(0.1, 1.0, 10.0), target_fpr=0.05).fit(logits)
    values = option.values(logits)
    budget = allowed_rejections(600, 0.05)
    assert int((option.score_from(logits) > 0).sum()) <= budget
    assert option.level <= budget
    ordered = torch.sort(values, 0).values
    if option.level < budget:  # one level more would break the budget
        assert int((values < ordered[option.level + 1][None]).any(1).sum()) > budget
    assert torch.allclose(option.score_from(logits), (torch.tensor(option.taus)[None] - values).max(1).values)


# ---- the model it belongs to, JSON, errors -------------------------------------------------------

def test_the_fingerprint_tells_weights_apart():
    model = tiny_model(seed=0)
    assert model_fingerprint(model) == model_fingerprint(tiny_model(seed=0))  # equal weights, equal fingerprints
    assert model_fingerprint(model) != model_fingerprint(tiny_model(seed=1))


def test_the_fingerprint_tells_shapes_apart():
    """Two networks with the same tensor names and bytes, kernels (1, 3) and (3, 1): other functions, so other
    fingerprints (the shape was once recorded after flattening)."""
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 4, (1, 3)), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    tall = torch.nn.Sequential(torch.nn.Conv2d(3, 4, (3, 1)), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        tall[0].weight.copy_(wide[0].weight.reshape(4, 3, 3, 1))
        tall[0].bias.copy_(wide[0].bias)
        tall[2].load_state_dict(wide[2].state_dict())
    assert model_fingerprint(wide) != model_fingerprint(tall)


def images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small():
    """A tiny model, 40 training images with labels covering every class, 32 validation images."""
    model = tiny_model()
    labels = torch.arange(40) % 10
    return model, images(40, 1), labels, images(32, 2)


def calibrated(kind, small, **settings):
    model, train_x, train_y, val_x = small
    option = make_reject_option(kind, target_fpr=0.1, **settings)
    if kind == "mahalanobis":
        option.fit_reference_on(model, train_x, train_y)
    return option.calibrate(model, val_x)


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip_gives_equal_scores_and_refuses_another_model(kind, small, tmp_path):
    model, _, _, val_x = small
    option = calibrated(kind, small)
    assert option.validation["n"] == 32 and option.validation["rejected"] <= 3
    path = option.save(tmp_path / f"{kind}.json")
    loaded = RejectOption.load(path, model=model)
    assert type(loaded) is type(option) and loaded.thresholds() == option.thresholds()
    assert loaded.validation == option.validation and loaded.target_fpr == option.target_fpr
    as_json = lambda o: json.dumps(o.to_dict(), sort_keys=True, default=str)  # noqa: E731
    assert as_json(loaded) == as_json(option)  # the same detector in every field: a resumed run reads it back
    x = images(8, 5)
    a, b = DefendedClassifier(model, option).score(x), DefendedClassifier(model, loaded).score(x)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="calibrated for another model"):
        RejectOption.load(path, model=tiny_model(seed=1))


def test_unknown_kind_is_refused_listing_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown detector 'odds'") as error:
        make_reject_option("odds")
    for kind in KINDS:
        assert repr(kind) in str(error.value) or kind in str(error.value)
    assert "from_callable" in str(error.value)
    with pytest.raises(TypeError, match="its settings are temperature, target_fpr"):
        make_reject_option("energy", temprature=2.0)
    path = EnergyReject().fit(clean_logits()).save(tmp_path / "r.json")
    path.write_text(path.read_text().replace('"kind": "energy"', '"kind": "lid"'))
    with pytest.raises(ValueError, match="unknown detector 'lid'"):
        RejectOption.load(path)



def test_a_reject_option_of_a_newer_format_is_refused_not_read_as_this_one(tmp_path):
    path = EnergyReject().fit(clean_logits()).save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["version"] == 1
    path.write_text(json.dumps({**data, "version": 2}))
    with pytest.raises(ValueError, match="format version 2, by a newer robgen; this one reads versions up to 1"):
        RejectOption.load(path)


def test_an_unbound_or_unfitted_option_says_what_to_do():
    with pytest.raises(RuntimeError, match="call calibrate"):
        EnergyReject().score_from(clean_logits())
    with pytest.raises(ValueError, match="does not record which model"):
        EnergyReject().fit(clean_logits()).check_model(tiny_model())


def test_a_users_callable_detector_is_calibrated_saved_and_differentiable(small, tmp_path):
    model, _, _, val_x = small
    brightness = lambda x: x.mean(dim=(1, 2, 3))  # noqa: E731 - "too bright" is adversarial, say
    option = RejectOption.from_callable(brightness, name="brightness", target_fpr=0.1).calibrate(model, val_x)
    assert isinstance(option, CallableReject) and option.needs_inputs
    assert int((brightness(val_x) > option.threshold).sum()) <= 3
    defended = DefendedClassifier(model, option)
    bright, dark = torch.full((1, 3, 32, 32), 0.9), torch.full((1, 3, 32, 32), 0.1)
    assert defended.score(bright)[0] > 0 and defended.score(dark)[0] <= 0
    x = dark.clone().requires_grad_(True)
    defended.score(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 1 / x[0].numel()))
    path = option.save(tmp_path / "mine.json")
    with pytest.raises(ValueError, match="pass its function again"):
        RejectOption.load(path)
    assert RejectOption.load(path, model=model, fn=brightness).threshold == option.threshold
    with pytest.raises(ValueError, match=r"shape \(32,\)"):
        RejectOption.from_callable(lambda x: x.mean(1)).calibrate(model, val_x)


def test_a_callable_detector_without_a_gradient_is_refused_when_an_attack_differentiates_it(small):
    """Computed under no_grad (or in numpy), its score gave the adaptive attacks no gradient: they attacked the
    bare model, and the DARA credited the detector with what they never saw."""
    from robgen.attacks.adaptive import KPlusOnePGD

    model, _, _, val_x = small
    detached = lambda x: x.mean(dim=(1, 2, 3)).detach()  # noqa: E731
    option = RejectOption.from_callable(detached, name="detached", target_fpr=0.1).calibrate(model, val_x)  # fine
    defended = DefendedClassifier(model, option)
    assert defended.score(val_x[:2]).shape == (2,)  # scoring without a gradient is fine too
    with pytest.raises(ValueError, match="'detached' returned a score with no gradient"):
        KPlusOnePGD(defended, eps=8 / 255, steps=1)(val_x[:2], torch.zeros(2, dtype=torch.long))
    on_logits = RejectOption.from_callable(lambda logits: torch.as_tensor(logits.detach().numpy().max(1)),
                                           on="logits", name="numpy").calibrate(model, val_x)
    numpy_defended = DefendedClassifier(model, on_logits)
    assert numpy_defended.score(val_x[:2]).shape == (2,)  # the logits need a gradient, not the images: scored
    with pytest.raises(ValueError, match="'numpy' returned a score with no gradient"):
        KPlusOnePGD(numpy_defended, eps=8 / 255, steps=1)(val_x[:2], torch.zeros(2, dtype=torch.long))


def test_a_detector_network_that_reads_the_images_detached_is_refused_though_its_score_needs_a_gradient(small):
    """A detector with its own weights gives a score that requires a gradient (for those weights) even when it
    read the images detached: the guard must ask whether the gradient reaches the images."""
    from robgen.attacks.adaptive import KPlusOnePGD

    model, _, _, val_x = small
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(val_x[0].numel(), 1))
    option = RejectOption.from_callable(lambda x: head(x.detach()).squeeze(1), name="blind",
                                        target_fpr=0.1).calibrate(model, val_x)
    x = val_x[:2].clone().requires_grad_(True)
    assert head(x.detach()).requires_grad  # the old guard's test passed it
    with pytest.raises(ValueError, match="'blind' returned a score with no gradient"):
        KPlusOnePGD(DefendedClassifier(model, option), eps=8 / 255, steps=1)(val_x[:2],
                                                                          torch.zeros(2, dtype=torch.long))
    seeing = RejectOption.from_callable(lambda x: head(x).squeeze(1), name="seeing",
                                        target_fpr=0.1).calibrate(model, val_x)
    KPlusOnePGD(DefendedClassifier(model, seeing), eps=8 / 255, steps=1)(val_x[:2], torch.zeros(2, dtype=torch.long))


def _bn_detector(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(1)).train()


def test_a_callable_detector_runs_its_networks_in_eval_mode_and_refuses_other_weights_on_load(small, tmp_path):
    """A detector network in a closure, left in train mode: calibrating must not move its batch-norm statistics,
    and its scores must not depend on the batch; loading it with a network of other weights is refused."""
    model, _, _, val_x = small
    net = _bn_detector(0)
    net(val_x[:2])  # materialise the lazy layer
    before = net[1].running_mean.clone()
    option = RejectOption.from_callable(lambda x: net(x).squeeze(1), name="bn", target_fpr=0.1).calibrate(
        model, val_x, batch_size=3)
    assert torch.equal(net[1].running_mean, before) and net.training  # untouched, its mode given back
    defended = DefendedClassifier(model, option)
    whole = defended.score(val_x)
    pairs = torch.cat([defended.score(val_x[i:i + 2]) for i in range(0, len(val_x), 2)])
    assert torch.allclose(whole, pairs, atol=1e-5)
    path = option.save(tmp_path / "bn.json")
    assert RejectOption.load(path, model=model, fn=lambda x: net(x).squeeze(1)).threshold == option.threshold
    other = _bn_detector(1)
    other(val_x[:2])
    with pytest.raises(ValueError, match="calibrated with networks of other weights"):
        RejectOption.load(path, model=model, fn=lambda x: other(x).squeeze(1))
    # its network's weights changed after calibration, in memory: the defended classifier used the stale threshold
    # (rejecting 18 of 20 clean images in the review's example) where a load refuses it
    calibrated_weights = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.mul_(-3)
    with pytest.raises(ValueError, match="calibrated with networks of other weights"):
        DefendedClassifier(model, option)
    with torch.no_grad():
        net[0].weight.copy_(calibrated_weights)
    DefendedClassifier(model, option)  # its own weights again
    hidden = {"net": net}  # reached through a dict: robgen cannot find it, the caller names it
    option = RejectOption.from_callable(lambda x: hidden["net"](x).squeeze(1), modules=[net]).calibrate(model, val_x)
    assert option.modules == [net] and torch.equal(net[1].running_mean, before)


def test_a_callable_on_logits_reads_no_images():
    option = RejectOption.from_callable(lambda logits: logits.max(1).values, on="logits").fit(clean_logits())
    assert not option.needs_inputs
    assert option.score_from(adversarial_looking_logits())[0] > 0


def test_mahalanobis_score_is_differentiable_in_the_input_and_rejects_far_features(small):
    model, *_ = small
    option = calibrated("mahalanobis", small)
    x = images(4, 7).requires_grad_(True)
    score = DefendedClassifier(model, option).score(x)
    score.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    means = option.scorer.means.float()
    logits = torch.zeros(2, 10)
    at_a_mean, far = means[:1], means[:1] + 1e3
    assert option.score_from(logits[:1], at_a_mean)[0] <= 0  # distance 0
    assert option.score_from(logits[:1], far)[0] > 0
    with pytest.raises(ValueError, match="penultimate features"):
        option.score_from(logits)


def test_an_energy_detector_becomes_the_reject_option_that_rejects_exactly_what_it_flags():
    """`EnergyReject.from_detector`: the detector flags E <= threshold; the option rejects E < tau, tau the next float64
    up, so on float64 logits the two agree everywhere, also on an energy equal to the threshold."""
    from robgen.detection import EnergyDetector

    logits = clean_logits(300).double()
    detector = EnergyDetector(rule="youden", temperature=0.5).fit(logits[:150], logits[150:] * 3)
    at_threshold = energy(logits[:40], 0.5)
    detector.threshold = float(at_threshold[7])  # an energy that some input has exactly
    model = tiny_model()
    with pytest.raises(ValueError, match="does not record which model"):  # bound to this model, it would be trusted
        EnergyReject.from_detector(detector, model)
    detector.bind(model)
    option = EnergyReject.from_detector(detector, model)
    assert option.temperature == 0.5 and option.tau > detector.threshold
    assert torch.equal(option.rejects(logits), detector.predict(logits))
    assert bool(option.rejects(logits[7:8])) and bool(detector.predict(logits[7:8]))
    float32 = logits.float()  # what a model returns: the option still computes E_T in float64, as the detector does
    for i in range(40):
        detector.threshold = float(energy(float32[i:i + 1].double(), 0.5)[0])
        option = EnergyReject.from_detector(detector, model)
        assert torch.equal(option.rejects(float32), detector.predict(float32)), i
    assert option.calibration["threshold"] == detector.threshold and option.settings()["float64"]
    DefendedClassifier(model, option)  # bound to the model it was given
    with pytest.raises(ValueError, match="calibrated for another model"):
        DefendedClassifier(tiny_model(seed=1), option)
    with pytest.raises(RuntimeError, match="no threshold"):
        EnergyReject.from_detector(EnergyDetector(), model)


def test_the_adaptive_report_states_the_validation_fpr_of_an_option_made_from_a_detector():
    # such an option, saved and given back with --detector-file, reached results.md and failed there (no "n")
    from robgen.detection import EnergyDetector
    from robgen.experiments.adaptive_report import _thresholds, describe

    logits = clean_logits(300).double()
    detector = EnergyDetector(rule="youden", temperature=0.5).fit(logits[:150], logits[150:] * 3).bind(tiny_model())
    option = EnergyReject.from_detector(detector, tiny_model())
    fpr = detector.validation["false_positive_rate"]
    assert _thresholds(describe(option)).endswith(f"validation FPR {100 * fpr:.1f}% of 150")
    option.validation.pop("n")  # saved by an older robgen
    assert _thresholds(describe(option)).endswith(f"validation FPR {100 * fpr:.1f}%")


def test_energy_gap_is_minus_log_top_probability_and_rejects_doubt():
    logits = clean_logits(200)
    option = make_reject_option("energy-gap", target_fpr=0.1).fit(logits)
    gap = option.values(logits)
    assert torch.allclose(gap, -torch.log_softmax(logits, 1).max(1).values, atol=1e-5)
    assert torch.allclose(option.score_from(logits), gap - option.threshold)
    assert not bool(option.rejects(adversarial_looking_logits())[0])  # confident: accepted
    assert bool(option.rejects(torch.zeros(1, 10))[0])  # uniform doubt, -log 0.1: the largest gap there is
    hot = make_reject_option("energy-gap", temperature=2.0).values(logits)
    assert torch.allclose(hot, -logits.max(1).values + 2.0 * torch.logsumexp(logits / 2.0, 1), atol=1e-5)


# ---- robust-margin: the predicted class's worst class-energy margin in a small ball --------------

def linear_two_class(seed=0, pixels=12):
    """f(x) = W x + b with two classes: the worst margin in an L-inf ball has a closed form."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(pixels, 2)).eval()


def exact_worst_margin(model, x, radius):
    """max over ||z - x||_inf <= radius of f_other(z) - f_pred(z) = margin(x) + radius * ||w_other - w_pred||_1
    (x far enough inside [0, 1] that the ball needs no clipping)."""
    logits = model(x)
    pred = logits.argmax(1)
    weight = model[1].weight
    gap = logits.gather(1, (1 - pred)[:, None])[:, 0] - logits.gather(1, pred[:, None])[:, 0]
    return gap + radius * (weight[1 - pred] - weight[pred]).abs().sum(1), weight[1 - pred] - weight[pred]


def test_robust_margin_finds_the_exact_worst_point_of_a_linear_model_and_danskins_gradient():
    model = linear_two_class()
    x = (0.4 + 0.2 * torch.rand(16, 3, 2, 2, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    option = make_reject_option("robust-margin", radius=0.02, steps=3)
    values = option.values(model(x), inputs=x, network=model)
    exact, direction = exact_worst_margin(model, x, 0.02)
    assert torch.allclose(values, exact, atol=1e-5)
    (grad,) = torch.autograd.grad(values.sum(), x)  # the margin's gradient at the worst point: w_other - w_pred
    assert torch.allclose(grad.flatten(1), direction, atol=1e-6)
    assert option.passes_per_score == 4


def test_robust_margin_needs_the_network_and_refuses_a_radius_outside_the_pixel_range():
    model = linear_two_class()
    x = torch.rand(4, 3, 2, 2)
    option = make_reject_option("robust-margin").calibrate(model, torch.rand(20, 3, 2, 2))
    with pytest.raises(ValueError, match="network="):
        option.score_from(model(x), inputs=x)
    assert torch.equal(option.score_from(model(x), inputs=x, network=model), DefendedClassifier(model, option).score(x))
    with pytest.raises(ValueError, match="255"):
        make_reject_option("robust-margin", radius=8)


def test_an_exact_robust_margin_leaves_no_accepted_mistake_where_the_model_is_robust_at_eps_minus_radius():
    """The reduction behind the kind: a model right on the whole (eps - rho)-ball of x, with an exact inner max and
    t = 0, rejects every point of the eps-ball that it misclassifies, although the bare model is broken at eps."""
    from robgen.attacks.adaptive import KPlusOneAPGD, PenaltyPGD
    from robgen.attacks.pgd import PGD

    model = linear_two_class(seed=3)
    eps, radius = 0.03, 0.015
    x = 0.5 + 0.001 * torch.rand(16, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # class 1's margin over class 0 about -(eps - radius / 2) ||w_1 - w_0||_1 near x
        model[1].weight[0] = 0
        model[1].bias[0] = 0
        d = model[1].weight[1]
        model[1].bias[1] = -0.5 * d.sum() - (eps - radius / 2) * d.abs().sum()
    worst_small, _ = exact_worst_margin(model, x, eps - radius)
    worst_large, _ = exact_worst_margin(model, x, eps)
    assert bool((worst_small < 0).all() and (worst_large > 0).all())  # right on the smaller ball, broken at eps
    y = model(x).argmax(1)
    option = make_reject_option("robust-margin", radius=radius, steps=3).fit_values(torch.zeros(1)).bind(model)
    assert option.threshold == 0.0
    defended = DefendedClassifier(model, option)
    assert bool((model(PGD(model, eps=eps, steps=20)(x, y)).argmax(1) != y).all())  # the bare model falls
    for attack in (KPlusOneAPGD(defended, eps=eps, steps=50, loss="ce"), PenaltyPGD(defended, eps=eps, steps=50)):
        z = attack(x, y)
        assert bool((defended.predict(z) == y).logical_or(defended.predict(z) == -1).all())
    # too small a ball (the model is not right on the whole eps - rho ball): the same attack finds accepted mistakes
    small = make_reject_option("robust-margin", radius=radius / 3, steps=3).fit_values(torch.zeros(1)).bind(model)
    defended = DefendedClassifier(model, small)
    predicted = defended.predict(KPlusOneAPGD(defended, eps=eps, steps=50, loss="ce")(x, y))
    assert bool(((predicted != y) & (predicted != -1)).all())


def test_robust_margin_fit_runs_the_model_in_eval_mode_and_the_attacks_see_features_at_x():
    from robgen.attacks.evasion import DefendedOutputs
    from robgen.detection.baselines import penultimate_features

    model = tiny_model()
    x = images(12, 3)
    before, logits = model_fingerprint(model), model(x).detach()
    model.train()  # batch norm would update its running statistics on every pass of the inner steps
    option = make_reject_option("robust-margin", target_fpr=0.1).fit(logits, inputs=x, model=model)
    assert model.training and model_fingerprint(model.eval()) == before == option.model_fingerprint
    with pytest.raises(ValueError, match="model="):
        make_reject_option("robust-margin").fit(logits, inputs=x)
    features, logits = penultimate_features(model, x)
    outputs = DefendedOutputs(DefendedClassifier(model, option), features=True)(x)
    assert torch.allclose(outputs.features, features, atol=1e-5)  # the pass at x, not one of the inner steps'
    assert torch.allclose(outputs.logits, logits, atol=1e-5)


# ---- less common uses: refitting, a NaN score, a target FPR near 1 -------------------------------

def test_refitting_on_another_models_outputs_forgets_the_model_it_was_bound_to(small):
    model, _, _, val_x = small
    other = tiny_model(seed=1)
    option = make_reject_option("energy", target_fpr=0.1).calibrate(model, val_x)
    with torch.no_grad():
        option.fit(other(val_x))  # new thresholds, from the other model's outputs, no model= given
    with pytest.raises(ValueError, match="does not record which model"):
        DefendedClassifier(model, option)  # not the thresholds of `model`: refused, not silently accepted
    with torch.no_grad():
        option.fit(other(val_x), model=other)
    assert DefendedClassifier(other, option).reject is option


def test_a_new_mahalanobis_reference_drops_the_thresholds_fitted_on_the_old_statistic(small):
    model, train_x, train_y, val_x = small
    option = calibrated("mahalanobis", small)
    assert option.fitted and option.model_fingerprint is not None
    option.fit_reference_on(model, train_x[:30], train_y[:30])
    assert not option.fitted and option.validation == {} and option.model_fingerprint is None
    with pytest.raises(RuntimeError, match="no threshold yet"):
        DefendedClassifier(model, option).score(val_x[:2])
    assert option.calibrate(model, val_x).validation["rejected"] <= 3


def test_mahalanobis_statistics_from_one_model_are_not_calibrated_on_another(small):
    model, train_x, train_y, val_x = small
    other = tiny_model(seed=1)
    option = make_reject_option("mahalanobis", target_fpr=0.1).fit_reference_on(model, train_x, train_y)
    with pytest.raises(ValueError, match="class statistics come from another model"):
        option.calibrate(other, val_x)
    assert option.calibrate(model, val_x).fitted  # its own model is fine
    before = option.to_dict()
    with pytest.raises(ValueError, match="class statistics come from another model"):
        option.fit(other(val_x).detach(), penultimate_features(other, val_x)[0], model=other)
    assert option.to_dict() == before, "a refused fit leaves the calibrated option as it was"


def test_a_nan_score_is_rejected_by_every_part_that_asks(small):
    """A user's detector undefined at some inputs: those points are rejected (fail closed), by `rejects`, the
    defended classifier's predict and accepts, the (K+1)-logit model, and the attacks' evasion check."""
    from robgen.attacks import PGD
    from robgen.attacks.suite import run_suite

    model, _, _, val_x = small
    undefined_when_bright = lambda x: torch.where(x.mean((1, 2, 3)) > 0.8, torch.nan, x.mean((1, 2, 3)))  # noqa
    option = RejectOption.from_callable(undefined_when_bright, name="partial", target_fpr=0.1).calibrate(model, val_x)
    defended = DefendedClassifier(model, option)
    bright = torch.full((3, 3, 32, 32), 0.9)
    with torch.no_grad():
        logits = model(bright)
    assert torch.isinf(defended.score(bright)).all()
    assert option.rejects(logits, inputs=bright).all() and not defended.accepts(bright).any()
    assert (defended.predict(bright) == -1).all()
    assert (defended.combined_logits(bright).argmax(1) == logits.shape[1]).all()
    wrong = (logits.argmax(1) + 1) % logits.shape[1]  # every bright point is misclassified: only the score decides
    attack = PGD(model, eps=0.05, step_size=0.01, steps=2, random_start=False)
    result = run_suite(defended, bright, wrong, {"pgd": attack}, eps=0.05)
    assert not result.clean_accepted.any() and not result.attacks["pgd"].evaded.any()


@pytest.mark.parametrize("fpr", [0.999, 1 - 1e-12])
def test_a_target_fpr_just_below_one_keeps_one_validation_value_accepted(fpr):
    values = torch.arange(1000, dtype=torch.float64)
    assert allowed_rejections(1000, fpr) == 999 and allowed_rejections(1, fpr) == 0
    assert upper_threshold(values, fpr) == 0.5  # rejects v > 0.5: 999 of 1000, not none
    assert lower_threshold(values, fpr) == 998.5  # rejects v < 998.5


@pytest.mark.parametrize("kind", ["energy", "mahalanobis", "robust-margin"])
def test_calibration_casts_the_images_to_the_models_precision(small, kind):
    """float64 validation images for a float32 model failed with torch's raw 'mat1 and mat2' dtype error."""
    model, train_x, train_y, val_x = small
    option = make_reject_option(kind, target_fpr=0.1)
    if kind == "mahalanobis":
        option.fit_reference_on(model, train_x.double(), train_y)
    as_float64 = option.calibrate(model, val_x.double()).thresholds()
    reference = make_reject_option(kind, target_fpr=0.1)
    if kind == "mahalanobis":
        reference.fit_reference_on(model, train_x, train_y)
    assert as_float64 == reference.calibrate(model, val_x).thresholds()


def test_robust_margins_gradient_near_the_pixel_bounds_is_the_scores():
    """Where the ball reaches past 0 or 1 and the inner point sits on the bound, that coordinate does not move with
    x: passing the margin's gradient through it gave 3 of 8 directional derivatives the wrong sign."""
    model = tiny_model().double()
    g = torch.Generator().manual_seed(0)
    radius = 4 / 255
    option = make_reject_option("robust-margin", radius=radius, steps=3, target_fpr=0.1).calibrate(
        model, torch.rand(32, 3, 32, 32, generator=g, dtype=torch.float64))
    defended = DefendedClassifier(model, option)
    u = torch.rand(8, 3, 32, 32, generator=g, dtype=torch.float64)
    x = torch.where(u < 0.5, 0.005 + 0.01 * u, 0.995 - 0.01 * (u - 0.5)).requires_grad_(True)  # all near a bound
    (gradient,) = torch.autograd.grad(defended.score(x).sum(), x)
    direction = torch.randn(x.shape, generator=g, dtype=torch.float64)
    h = 1e-8
    with torch.no_grad():
        finite = (defended.score(x + h * direction) - defended.score(x - h * direction)) / (2 * h)
    analytic = (gradient * direction).flatten(1).sum(1)
    assert torch.equal(torch.sign(analytic), torch.sign(finite)), (analytic, finite)
    assert torch.allclose(analytic, finite, atol=1e-2)


def test_a_defended_model_left_in_train_mode_is_scored_in_eval_mode_and_left_as_it_was(small):
    """Scoring in train mode updated batch norm's running statistics (robust-margin: five times a call), changed the
    model's fingerprint and made a score depend on its batch."""
    model, _, _, val_x = small
    for kind in ("energy", "robust-margin"):
        option = make_reject_option(kind, target_fpr=0.1).calibrate(model, val_x)
        defended = DefendedClassifier(model, option)
        expected = defended.predict(val_x[:4])
        before = {name: value.clone() for name, value in model.state_dict().items()}
        model.train()
        try:
            assert torch.equal(defended.predict(val_x[:4]), expected), kind
            assert model.training, kind  # the caller's mode, given back
            assert all(torch.equal(before[name], value) for name, value in model.state_dict().items()), kind
        finally:
            model.eval()


def test_the_adaptive_report_writes_multi_ts_level_as_a_count():
    from robgen.experiments.adaptive_report import _thresholds
    entry = {"kind": "multi-t", "thresholds": {"taus": [-8.0, -12345.678], "level": 10000}, "validation": {}}
    assert _thresholds(entry).startswith("taus = [-8, -1.235e+04]; level = 10000;")


def test_a_detector_network_in_train_mode_scores_in_eval_mode_and_is_left_as_it_was(small):
    """A user's detector that is a module with batch norm, left in train mode, scored with batch statistics (a
    score that depends on the batch) and had its running statistics overwritten by calibration and every attack."""
    model, _, _, val_x = small
    torch.manual_seed(0)  # tests only
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(1),
                                  torch.nn.LazyLinear(1), torch.nn.Flatten(0))
    network(val_x[:2])  # the lazy layer's shape
    network.train()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    option = RejectOption.from_callable(network, name="net", target_fpr=0.1).calibrate(model, val_x)
    defended = DefendedClassifier(model, option)
    alone = torch.cat([defended.score(val_x[i:i + 1]) for i in range(4)])
    assert torch.allclose(defended.score(val_x[:4]), alone, atol=1e-5)  # no batch statistics
    assert network.training and all(torch.equal(v, before[k]) for k, v in network.state_dict().items())


def test_a_compiled_or_wrapped_model_is_the_model_its_options_were_calibrated_on(small):
    model, _, _, val_x = small
    option = calibrated("energy", small)
    DefendedClassifier(torch.compile(model), option)  # was refused: "calibrated for another model"
    assert model_fingerprint(torch.compile(model)) == model_fingerprint(model)


def test_kinds_that_do_not_read_the_energy_calibrate_on_a_model_that_outputs_log_probabilities(small):
    model, _, _, val_x = small
    log_probs = torch.nn.Sequential(model, torch.nn.LogSoftmax(dim=1)).eval()
    option = RejectOption.from_callable(lambda logits: -logits.max(1).values, on="logits", target_fpr=0.1)
    assert option.calibrate(log_probs, val_x).fitted  # refused before: "look like log-probabilities"
    with pytest.raises(ValueError, match="log-probabilities"):  # the energy of log-probabilities is 0 everywhere
        make_reject_option("energy").calibrate(log_probs, val_x)


def test_a_multi_t_file_without_its_level_scores_and_bad_calibration_settings_are_refused_before_any_pass(small):
    model, _, _, val_x = small
    option = calibrated("multi-t", small)
    data = option.to_dict()
    del data["thresholds"]["level"]
    again = RejectOption.from_dict(data)
    assert again.fitted and torch.equal(again.score_from(model(val_x)), option.score_from(model(val_x)))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a whole number"):
            make_reject_option("energy").calibrate(model, val_x, batch_size=bad)
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(RuntimeError, match="no class statistics yet"):
        make_reject_option("mahalanobis").calibrate(model, val_x)
    hook.remove()
    assert not calls  # refused before the model's passes


# ---- the stratified convention: the FPR counted among the correctly classified ----------------------

@pytest.mark.parametrize("kind", ["energy", "band", "energy-gap", "multi-t"])
def test_counted_among_the_correct_ones_the_thresholds_are_those_of_the_correct_images_alone(kind):
    logits = clean_logits(n=400)
    labels = torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(3))
    labels[:150] = logits[:150].argmax(1)  # 150 classified correctly, the rest mostly not
    correct = logits.argmax(1) == labels
    option = make_reject_option(kind, target_fpr=0.1).fit(logits, fpr_among="correct", labels=labels)
    alone = make_reject_option(kind, target_fpr=0.1).fit(logits[correct])
    assert option.thresholds() == alone.thresholds()
    rejected = option.rejects(logits)
    fit = option.validation
    assert fit["fpr_among"] == "correct" and fit["n"] == int(correct.sum()) and fit["n_all"] == 400
    assert fit["rejected"] == int(rejected[correct].sum()) <= allowed_rejections(int(correct.sum()), 0.1)
    assert fit["rejected_all"] == int(rejected.sum()) and fit["rejection_rate_all"] == pytest.approx(
        rejected.double().mean().item())
    assert make_reject_option(kind, target_fpr=0.1).fit(logits).validation["fpr_among"] == "all"


def test_misclassified_images_that_score_high_raise_the_share_of_all_clean_images_rejected():
    """The point of the convention and its price: the misclassified images' statistic does not move the threshold,
    so where they are the doubtful ones (a low top probability) more than the target of all images is rejected."""
    g = torch.Generator().manual_seed(0)
    confident = torch.randn(300, 10, generator=g)
    confident[:, 0] += 6.0  # classified correctly (label 0), confidently
    doubtful = torch.randn(100, 10, generator=g) * 0.1  # misclassified and doubtful
    logits = torch.cat([confident, doubtful])
    labels = torch.cat([torch.zeros(300, dtype=torch.long), (doubtful.argmax(1) + 1) % 10])
    stratified = make_reject_option("energy-gap", target_fpr=0.05).fit(logits, fpr_among="correct", labels=labels)
    plain = make_reject_option("energy-gap", target_fpr=0.05).fit(logits)
    assert stratified.validation["false_positive_rate"] <= 0.05 and plain.validation["false_positive_rate"] <= 0.05
    assert stratified.validation["rejection_rate_all"] > 0.2  # every doubtful misclassified one rejected
    assert stratified.thresholds()["threshold"] < plain.thresholds()["threshold"]


def test_the_convention_survives_saving_and_calibrate_takes_the_labels(small, tmp_path):
    model, _, _, val_x = small
    with torch.no_grad():
        predicted = model(val_x).argmax(1)
    labels = predicted.clone()
    labels[::2] = (labels[::2] + 1) % 10  # half misclassified
    option = make_reject_option("energy", target_fpr=0.1).calibrate(model, val_x, fpr_among="correct", labels=labels)
    assert option.validation["fpr_among"] == "correct" and option.validation["n"] == 16
    loaded = RejectOption.load(option.save(tmp_path / "stratified.json"), model=model)
    assert loaded.validation == option.validation


def test_bad_labels_for_the_stratified_count_are_refused_saying_what_to_give(small):
    model, _, _, val_x = small
    logits = clean_logits(n=32)

    def fit(labels, among="correct"):
        return make_reject_option("energy").fit(logits, fpr_among=among, labels=labels)

    with pytest.raises(ValueError, match="labels must be a tensor of 32 whole-number class indices"):
        fit(torch.zeros(31, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be a tensor of 32 whole-number"):
        fit(torch.zeros(32))
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\]"):
        fit(torch.full((32,), 10))
    with pytest.raises(ValueError, match="classifies none of the validation images correctly"):
        fit((logits.argmax(1) + 1) % 10)
    with pytest.raises(ValueError, match="pass their labels= too"):
        fit(None)
    with pytest.raises(ValueError, match="labels= are read only with fpr_among='correct'"):
        fit(logits.argmax(1), among="all")
    with pytest.raises(ValueError, match="fpr_among must be one of all, correct"):
        fit(logits.argmax(1), among="correctly")
    with pytest.raises(ValueError, match="labels must be a tensor of 32"):
        make_reject_option("energy").calibrate(model, val_x, fpr_among="correct", labels=[0] * 32)
    with pytest.raises(ValueError, match=r"correct must be a \(32,\) bool tensor"):
        make_reject_option("energy").fit_values(energy(logits), correct=[True] * 32)
    with pytest.raises(ValueError, match="no validation image is marked correctly classified"):
        make_reject_option("energy").fit_values(energy(logits), correct=torch.zeros(32, dtype=torch.bool))


def _saved(option, tmp_path, edit):
    """`option` saved, its JSON changed by `edit(data)`, written back: the path."""
    path = option.save(tmp_path / "reject.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("kind, name", [("energy", "tau"), ("energy-gap", "threshold"), ("band", "lo"),
                                        ("band", "hi"), ("multi-t", "taus")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_saved_threshold_no_calibration_gives_is_refused_on_load(tmp_path, kind, name, bad):
    """A NaN or infinite threshold in an edited file loaded, and the detector then rejected every point (or none),
    with a warning that blamed the score."""
    option = fitted(kind, clean_logits())

    def edit(data):
        value = data["thresholds"][name]
        data["thresholds"][name] = [bad] * len(value) if isinstance(value, list) else bad

    with pytest.raises(ValueError, match=f"threshold {name} = .*calibrate the detector again"):
        RejectOption.load(_saved(option, tmp_path, edit))
    assert RejectOption.load(option.save(tmp_path / "good.json")).thresholds() == option.thresholds()


def test_a_band_saved_with_its_edges_swapped_is_refused_on_load(tmp_path):
    option = fitted("band", clean_logits())

    def swap(data):
        data["thresholds"]["lo"], data["thresholds"]["hi"] = data["thresholds"]["hi"], data["thresholds"]["lo"]

    with pytest.raises(ValueError, match="lo .* is above its hi .*rejects every point"):
        RejectOption.load(_saved(option, tmp_path, swap))


def test_a_mahalanobis_file_without_or_with_damaged_class_statistics_is_refused_on_load(small, tmp_path):
    """It loaded, and DefendedClassifier took it: the first score then failed inside einsum or asked to call
    fit_reference_on."""
    model, train_x, train_y, val_x = small
    option = make_reject_option("mahalanobis", target_fpr=0.1).fit_reference_on(model, train_x, train_y)
    option.calibrate(model, val_x)
    edits = {
        "holds no class statistics": lambda data: data.pop("state"),
        "do not fit": lambda data: data["state"].update(precision=[row[:-1] for row in data["state"]["precision"][:-1]]),
        "NaN or infinite": lambda data: data["state"]["means"][0].__setitem__(0, float("nan")),
    }
    for message, edit in edits.items():
        with pytest.raises(ValueError, match=message):
            RejectOption.load(_saved(option, tmp_path, edit), model=model)
    assert RejectOption.load(option.save(tmp_path / "good.json"), model=model).fitted


def test_mahalanobis_refuses_reference_features_that_are_not_finite():
    """NaN features gave NaN means and precision, and the calibration after it blamed the validation images."""
    features = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
    features[3, 2] = float("nan")
    with pytest.raises(ValueError, match="reference features hold NaN or infinite"):
        make_reject_option("mahalanobis").fit_reference(features, torch.arange(60) % 3, 3)


@pytest.mark.parametrize("kind", ["energy", "band", "multi-t", "energy-gap", "class-energy"])
def test_a_point_with_an_infinite_logit_is_rejected_with_a_gradient_that_is_not_nan(kind):
    """A float16 model's overflowing logit: the score was +inf (rejected), but logsumexp's backward gave the
    input gradient NaN, so a signed-gradient attack's iterate became NaN and never moved again."""
    option = fitted(kind, clean_logits())
    logits = torch.tensor([[1.0, float("inf")] + [0.0] * 8, [1.0, 2.0] + [0.0] * 8], requires_grad=True)
    score = option.score_from(logits)
    assert torch.isinf(score[0]) and score[0] > 0 and torch.isfinite(score[1])
    (gradient,) = torch.autograd.grad(score[1] + score[0].clamp(max=1e6), logits)
    assert torch.isfinite(gradient).all() and bool((gradient[0] == 0).all())
    reference = fitted(kind, clean_logits()).score_from(logits[1:].detach().requires_grad_(True))
    assert torch.equal(score[1:].detach(), reference.detach())  # the finite row scored as before
