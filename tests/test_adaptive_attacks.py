"""Adaptive attacks on a defended classifier (robgen/attacks/adaptive.py, evasion.py, suite.py, ...).

Two tiny models: the random `tiny_model()` (10 classes; its labels are its own predictions, so
every clean image is correct) with a reject option reading only its logits, and a tiny model
trained for a second on colour-coded images (4 classes that it separates; for logit matching,
which needs natural targets of other classes).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from robgen.attacks import PGD, HighEnergyPGD
from robgen.attacks.adaptive import (KPlusOneAPGD, KPlusOnePGD, KPlusOneTargetedAPGD, PenaltyPGD,
                                     classification_margin, kplusone_cross_entropy, kplusone_dlr,
                                     kplusone_targeted_margin, kplusone_margin)
from robgen.attacks.evasion import DefendedOutputs, EvasionTracker, Outputs
from robgen.attacks.matching import LogitMatching
from robgen.attacks.orthogonal import OrthogonalPGD, remove_component
from robgen.attacks.suite import run_suite
from robgen.detection.defended import DefendedClassifier
from robgen.detection.reject import EnergyReject, make_reject_option
from robgen.engine import LinfBall, make_constraint, projected_gradient_ascent
from robgen.engine.apgd import _checkpoint_windows, auto_projected_gradient_ascent
from tests.conftest import tiny_model


EPS_FEW = 12 / 255  # a ball in which the tiny random model's images evade over several restarts, not all at once


def images(n, seed, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def seeded(seed=1):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def random_model():
    return tiny_model()


@pytest.fixture(scope="module")
def logit_detector(random_model):
    """The random tiny model with the two-sided energy band (reads only the logits) at 5% FPR."""
    band = make_reject_option("band", target_fpr=0.05).calibrate(random_model, images(64, 0))
    return DefendedClassifier(random_model, band)


@pytest.fixture(scope="module")
def batch(random_model):
    x = images(16, 1)
    with torch.no_grad():
        return x, random_model(x).argmax(1)


def colour_images(n, seed):
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
    y = torch.arange(n) % 4
    return (colours[y].view(n, 3, 1, 1) * 0.5 + 0.25 + 0.25 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """A tiny 4-class model trained for 30 steps on colour-coded images, with an energy reject option."""
    model = tiny_model(num_classes=4).train()
    x, y = colour_images(256, 0)
    optimiser, g = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), seeded(0)
    for _ in range(30):
        i = torch.randint(0, 256, (64,), generator=g)
        optimiser.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        optimiser.step()
    model.eval()
    return DefendedClassifier(model, EnergyReject(target_fpr=0.05).calibrate(model, colour_images(64, 2)[0]))


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


# ---- the engine's watch hook ----------------------------------------------------------------------
def test_watch_sees_every_differentiated_iterate_with_its_logits_and_costs_no_forward_pass(random_model):
    counting, x, steps = CountingModel(random_model), images(3, 2), 5
    seen, after_step = [], {}
    result = projected_gradient_ascent(
        counting, x, lambda logits: F.cross_entropy(logits, torch.zeros(3, dtype=torch.long), reduction="none"),
        LinfBall(8 / 255), steps, 2 / 255, random_start=True, generator=seeded(),
        on_step=lambda k, x_k: after_step.__setitem__(k, x_k.clone()),
        watch=lambda k, x_k, logits: seen.append((k, x_k.clone(), logits.detach().clone())))
    assert counting.calls == steps  # exactly one forward per step: the watch reuses the step's own pass
    assert [k for k, _, _ in seen] == list(range(steps))
    start = LinfBall(8 / 255).random_start(x, seeded())
    assert torch.equal(seen[0][1], start)
    for k, x_k, logits in seen[1:]:
        assert torch.equal(x_k, after_step[k])  # x_k is the iterate step k differentiates
    for _, x_k, logits in seen:
        with torch.no_grad():
            assert torch.allclose(logits, random_model(x_k), atol=1e-5)
    assert torch.equal(result, after_step[steps])  # the returned point is the one the watch did not see


@pytest.mark.parametrize("loop", ["pgd", "apgd", "orthogonal"])
def test_a_watch_that_returns_true_stops_the_loop_at_the_point_it_watched(random_model, logit_detector, loop):
    x, y, steps, stop_at = images(3, 2), torch.tensor([0, 1, 2]), 10, 4
    seen = []

    def watch(k, x_k, outputs):
        seen.append(x_k.clone())
        return k == stop_at

    counting = CountingModel(random_model)
    objective = lambda logits: F.cross_entropy(logits, y, reduction="none")
    if loop == "pgd":
        result = projected_gradient_ascent(counting, x, objective, LinfBall(8 / 255), steps, 2 / 255,
                                           random_start=True, generator=seeded(), watch=watch)
    elif loop == "apgd":
        result = auto_projected_gradient_ascent(counting, x, objective, LinfBall(8 / 255), steps, generator=seeded(),
                                                watch=watch)
    else:
        handle = random_model.register_forward_hook(lambda *args: setattr(counting, "calls", counting.calls + 1))
        try:
            result = OrthogonalPGD(logit_detector, eps=8 / 255, steps=steps, generator=seeded())._once(
                x, y, 0, watch, torch.arange(3), random_model)
        finally:
            handle.remove()
    assert len(seen) == stop_at + 1 and counting.calls == stop_at + 1  # no step, no pass after the stop
    assert torch.equal(result, seen[-1])


def test_the_suite_stops_a_batch_once_all_of_it_evaded_and_finds_the_same_first_evasions(logit_detector, batch):
    x, y = batch
    model, saved = logit_detector.model, []
    for name in attack_builders(logit_detector):
        runs = {}
        for stop in (False, True):
            build = attack_builders(logit_detector, eps=64 / 255, steps=30, generator=seeded())[name]  # same draws
            calls = []
            handle = model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
            try:
                tracker = EvasionTracker(logit_detector, x, y, stop_when_all_evaded=stop)
                build().run(x, y, tracker)
            finally:
                handle.remove()
            runs[stop] = tracker, sum(calls)
        (full, full_passes), (stopped, stopped_passes) = runs[False], runs[True]
        assert torch.equal(stopped.evaded, full.evaded) and torch.equal(stopped.images, full.images), name
        if full.evaded.all():  # a large ball: every image evades, early in the run, and the steps after are saved
            assert stopped_passes < full_passes, name
            saved.append(name)
        else:  # an image that never evades keeps its batch running to the end
            assert stopped_passes == full_passes, name
    assert {"k+1 pgd margin", "k+1 apgd dlr", "penalty"} <= set(saved), saved  # both engine loops


# ---- the tracker ----------------------------------------------------------------------------------
def test_tracker_keeps_the_first_evading_iterate_even_when_later_ones_drift_back(logit_detector):
    y = torch.tensor([0, 1])
    tracker = EvasionTracker(logit_detector, torch.zeros(2, 3, 4, 4), y)
    x = [torch.full((2, 3, 4, 4), float(k + 1) / 10) for k in range(4)]

    def outputs(top, score):  # logits with class `top` on top, per image
        return torch.nn.functional.one_hot(torch.tensor(top), 3).float(), torch.tensor(score)

    assert not tracker.observe(x[0], outputs([0, 1], [-1.0, -1.0])).any()  # correct and accepted
    assert not tracker.observe(x[1], outputs([2, 2], [0.5, 0.5])).any()  # misclassified but rejected
    assert tracker.observe(x[2], outputs([2, 1], [0.0, -1.0])).tolist() == [True, False]  # score 0 is accepted
    tracker.observe(x[3], outputs([2, 2], [0.5, -1.0]))  # image 0 drifts back into rejection; image 1 evades now
    tracker.observe(x[0], outputs([0, 0], [-1.0, -1.0]))  # image 0 correct again; image 1 evades again (kept: x[3])
    assert tracker.evaded.tolist() == [True, True]
    assert torch.equal(tracker.images[0], x[2][0]) and torch.equal(tracker.images[1], x[3][1])
    assert tracker.observed.tolist() == [5, 5]


def test_tracker_check_judges_by_the_defended_classifier_and_cannot_undo_a_success(logit_detector, batch):
    x, y = batch
    tracker = EvasionTracker(logit_detector, x, y)
    misclassified, rejected = tracker.check(x)
    logits, score = logit_detector.outputs(x)
    assert torch.equal(misclassified, logits.argmax(1) != y) and torch.equal(rejected, score > 0)
    assert not tracker.evaded.any()  # the labels are the model's own predictions
    fake = (torch.nn.functional.one_hot((y + 1) % 10, 10).float(), torch.full((len(y),), -1.0))
    tracker.observe(x[:2] * 0.5, (fake[0][[3, 7]], fake[1][[3, 7]]), index=torch.tensor([3, 7]))
    tracker.check(x)  # correct again: changes nothing
    assert tracker.evaded.nonzero()[:, 0].tolist() == [3, 7]
    assert torch.equal(tracker.images[[3, 7]], x[:2] * 0.5)


# ---- objectives -----------------------------------------------------------------------------------
def test_kplusone_margin_is_positive_exactly_where_misclassified_and_accepted():
    g = seeded(3)
    logits, score = torch.randn(500, 5, generator=g) * 3, torch.randn(500, generator=g)
    labels = torch.randint(0, 5, (500,), generator=g)
    combined = Outputs(logits, score).combined
    evades = (logits.argmax(1) != labels) & (score <= 0)
    assert 0 < int(evades.sum()) < 500
    assert torch.equal(kplusone_margin(combined, labels) > 0, evades)
    assert torch.equal(kplusone_dlr(combined, labels) > 0, evades)
    assert torch.equal(classification_margin(logits, labels) > 0, logits.argmax(1) != labels)


def test_kplusone_cross_entropy_is_the_plain_cross_entropy_while_the_detector_is_silent():
    """It was log p of the best other class, a target that moves with the logits: with the detector off, (K+1)
    APGD-CE then missed images of the robust CIFAR-10 model that plain PGD on the cross-entropy broke (4 of the
    first 100, 2026-12-06). -log(p_y + p_K) is the plain cross-entropy whenever p_K = 0."""
    g = seeded(4)
    logits = torch.randn(200, 10, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (200,), generator=g)
    silent = torch.cat([logits, torch.full((200, 1), float("-inf"), dtype=torch.float64)], 1)
    assert torch.allclose(kplusone_cross_entropy(silent, labels), F.cross_entropy(logits, labels, reduction="none"))
    combined = torch.cat([logits, torch.randn(200, 1, generator=g, dtype=torch.float64) * 3], 1)
    p = combined.softmax(1)
    expected = -torch.log(p.gather(1, labels[:, None])[:, 0] + p[:, -1])
    assert torch.allclose(kplusone_cross_entropy(combined, labels), expected)
    louder = combined.clone()
    louder[:, -1] += 1  # the detector leans further toward rejecting: the attacker's loss falls
    assert (kplusone_cross_entropy(louder, labels) < kplusone_cross_entropy(combined, labels)).all()


def test_kplusone_cross_entropy_keeps_the_detectors_gradient_on_a_strongly_rejected_point():
    """logsumexp(G) - logsumexp(G_y, G_K) cancelled to exactly 0, value and gradient, once the detector's logit led
    by about 17 in float32: (K+1) APGD-CE then ignored the detector there (a review, 2026-12-06)."""
    for dtype, lead in ((torch.float32, 20.0), (torch.float32, 60.0), (torch.float64, 40.0)):
        combined = torch.tensor([[0.0, -3.0, -6.0, -9.0, lead]], dtype=dtype, requires_grad=True)
        loss = kplusone_cross_entropy(combined, torch.tensor([0]))
        (grad,) = torch.autograd.grad(loss.sum(), combined)
        assert loss.item() > 0, (dtype, lead)
        assert grad[0, -1] < 0, (dtype, lead)  # to climb the loss, lower the detector's logit: be accepted
        assert (grad[0, 1:4] > 0).all(), (dtype, lead)  # and raise the other classes


def test_kplusone_dlr_is_not_stuck_at_minus_one_when_the_label_and_the_detector_lead():
    # y and the detector class K are the top two: DLR's usual pi1 - pi3 scale would give exactly -1 here
    combined = torch.tensor([[0.0, -5.0, -7.0, -9.0, -1.0]], requires_grad=True)
    value = kplusone_dlr(combined, torch.tensor([0]))
    (grad,) = torch.autograd.grad(value.sum(), combined)
    assert value.item() != pytest.approx(-1.0) and grad[0, 1] > 0


def test_on_two_classes_the_kplusone_dlr_is_refused_and_the_suites_dlr_member_climbs_the_margin():
    # with K = 2 the (K+1) DLR's scale is pi1 - pi3, and it is -1 with no gradient wherever y and K lead: the
    # suite's DLR member never left its random start on a binary model and reported every image defended
    from robgen.experiments.adaptive import AdaptiveSettings
    from robgen.experiments.adaptive_suite import make_suite_attack

    binary = tiny_model(num_classes=2)
    defended = DefendedClassifier(binary, make_reject_option("energy").calibrate(binary, images(64, 0)))
    for attack in (KPlusOneAPGD, KPlusOnePGD):
        with pytest.raises(ValueError, match="DLR loss needs at least 3 classes"):
            attack(defended, loss="dlr")
    member = make_suite_attack("k+1 apgd-dlr", defended, 16 / 255, AdaptiveSettings(steps=10, restarts=1),
                               seeded(3), None)
    assert member.loss == "margin"
    x = images(8, 1)
    with torch.no_grad():
        y = binary(x).argmax(1)
    assert (member(x, y) - x).abs().amax() > 1 / 255  # it moves


def test_remove_component_leaves_a_gradient_orthogonal_to_the_other():
    g = seeded(4)
    a, b = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    out = remove_component(a, b)
    assert torch.allclose((out * b).flatten(1).sum(1), torch.zeros(3), atol=1e-4)
    assert torch.equal(remove_component(a, torch.zeros_like(b)), a)

    tiny = b * 1e-18 / b.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # |a|^2 = 1e-36 underflows float32's squares
    assert remove_component(3 * tiny, tiny).abs().max() <= 1e-24  # the whole component goes, however short a is


# ---- the attacks ----------------------------------------------------------------------------------
def attack_builders(defended, targets=None, eps=8 / 255, norm="linf", steps=4, generator=None):
    g = generator if generator is not None else seeded()
    builders = {
        "k+1 pgd margin": lambda: KPlusOnePGD(defended, eps=eps, steps=steps, norm=norm, generator=g),
        "k+1 pgd ce": lambda: KPlusOnePGD(defended, eps=eps, steps=steps, norm=norm, loss="ce", generator=g),
        "k+1 apgd ce": lambda: KPlusOneAPGD(defended, eps=eps, steps=steps, norm=norm, loss="ce", generator=g),
        "k+1 apgd dlr": lambda: KPlusOneAPGD(defended, eps=eps, steps=steps, norm=norm, loss="dlr", generator=g),
        "orthogonal": lambda: OrthogonalPGD(defended, eps=eps, steps=steps, norm=norm, generator=g),
        "penalty": lambda: PenaltyPGD(defended, eps=eps, steps=steps, norm=norm, restarts=2, generator=g),
        "k+1 apgd-t": lambda: KPlusOneTargetedAPGD(defended, eps=eps, steps=steps, norm=norm, restarts=2, generator=g),
    }
    if targets is not None:
        builders["logit matching"] = lambda: LogitMatching(defended, *targets, eps=eps, steps=steps, norm=norm,
                                                           restarts=2, generator=g)
    return builders


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_adaptive_attacks_stay_in_the_ball_and_the_pixel_range(trained, norm, eps):
    x, y = colour_images(8, 3)
    targets = colour_images(8, 4)
    for name, build in attack_builders(trained, targets, eps=eps, norm=norm, steps=3).items():
        x_adv = build()(x, y)
        assert x_adv.shape == x.shape, name
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1, name
        delta = (x_adv - x).flatten(1)
        size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5) + 1e-7, name


def test_each_step_costs_one_forward_pass_and_each_run_one_more_check(logit_detector, batch):
    x, y = batch
    model, steps = logit_detector.model, 3
    for name, build in attack_builders(logit_detector, steps=steps).items():
        calls = []
        handle = model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
        try:
            attack = build()
            attack(x[:4], y[:4])
        finally:
            handle.remove()
        per_run = steps + 1 + (1 if isinstance(attack, KPlusOneAPGD) else 0)  # APGD also evaluates its start
        if isinstance(attack, KPlusOneTargetedAPGD):  # one clean pass first, which orders the target classes
            assert calls[0] == 4, name
            calls = calls[1:]
        runs = [calls[i:i + per_run] for i in range(0, len(calls), per_run)]
        assert 1 <= len(runs) <= attack.restarts and len(calls) == len(runs) * per_run, name
        for run in runs:  # one pass per step and one check, all on the run's images (later runs: those not yet evaded)
            assert run == [run[0]] * per_run, name


def test_logit_matching_reaches_the_targets_and_evades_with_a_large_ball(trained):
    x, y = colour_images(8, 3)
    targets = colour_images(8, 4)
    attack = LogitMatching(trained, *targets, eps=1.0, steps=60, step_size=0.02, restarts=1, generator=seeded())
    tracker = EvasionTracker(trained, x, y)
    attack.run(x, y, tracker)
    assert tracker.evaded.all()  # the whole pixel range: natural images of other classes are reachable


def test_logit_matching_takes_targets_of_another_float_type(trained):
    """float64 targets (numpy's) for a float32 model failed with "expected scalar type Double"."""
    from robgen.experiments.adaptive_suite import matching_skip_reason

    x, y = colour_images(4, 3)
    targets, labels = colour_images(8, 4)
    attack = LogitMatching(trained, targets.double(), labels, eps=8 / 255, steps=2, restarts=1, generator=seeded())
    assert attack(x, y).dtype == x.dtype
    assert matching_skip_reason(trained, targets.double(), labels) == matching_skip_reason(trained, targets, labels)


def test_logit_matching_refuses_a_pool_without_another_class(trained):
    x, y = colour_images(4, 3)  # classes 0, 1, 2, 3
    pool, labels = colour_images(8, 4)
    attack = LogitMatching(trained, pool[labels == 0], labels[labels == 0], eps=8 / 255, steps=2)
    with pytest.raises(ValueError, match=r"another class for images of class\(es\) \[0\]"):
        attack(x, y)


def test_penalty_refuses_a_negative_confidence_or_score_margin(logit_detector):
    """Below 0 the objective stops pushing while the point is still correct (or still rejected): evaded 8 of 16
    where 0 evaded all 16, with no error."""
    for setting in ("confidence", "score_margin"):
        with pytest.raises(ValueError, match=f"{setting} must be a finite number >= 0"):
            PenaltyPGD(logit_detector, **{setting: -1.0})


def test_penalty_doubles_lam_where_rejected_and_halves_it_where_still_correct(logit_detector, batch):
    x, y = batch
    attack = PenaltyPGD(logit_detector, eps=4 / 255, steps=3, restarts=1, lam=1.0, generator=seeded())
    tracker = EvasionTracker(logit_detector, x, y)
    final = attack.run(x, y, tracker)
    misclassified, rejected = tracker.check(final)
    expected = torch.where(rejected, 2.0, torch.where(misclassified, 1.0, 0.5))
    assert torch.equal(attack.lams, expected)
    assert bool(rejected.any()) and bool((~misclassified & ~rejected).any())  # both rules were exercised


# ---- the suite and the sanity checks of Carlini et al. (2019) ---------------------------------------
def test_adaptive_suite_evades_a_logit_detector_far_more_than_pgd_on_the_bare_model(logit_detector, batch):
    x, y = batch
    model, eps, steps = logit_detector.model, 16 / 255, 20
    result = run_suite(logit_detector, x, y, {
        "pgd (bare model)": PGD(model, eps=eps, step_size=2.5 * eps / steps, steps=steps, generator=seeded(),
                                fused=False),
        "hepgd 1.2 (bare model)": HighEnergyPGD(model, eps=eps, step_size=2.5 * eps / steps, steps=steps, lam=1.2,
                                                generator=seeded(), fused=False),
        "k+1 pgd": KPlusOnePGD(logit_detector, eps=eps, steps=steps, generator=seeded()),
        "penalty": PenaltyPGD(logit_detector, eps=eps, steps=steps, restarts=2, generator=seeded()),
    }, eps=eps)
    for name in ("pgd (bare model)", "hepgd 1.2 (bare model)"):  # non-adaptive: judged on the point returned
        outcome = result.attacks[name]
        assert torch.equal(outcome.evaded, outcome.misclassified & ~outcome.rejected), name
    bare = result.attacks["pgd (bare model)"]
    assert bare.misclassified.float().mean() >= 0.9  # PGD fools the bare model ...
    assert bare.evaded.float().mean() <= 0.1  # ... and the detector catches it
    assert result.evaded.float().mean() >= 0.8  # the adaptive attacks get through
    assert torch.equal(result.evaded, torch.stack([o.evaded for o in result.attacks.values()]).any(0))
    for i in result.evaded.nonzero()[:, 0].tolist():  # every kept image really evades, inside the ball
        assert result.found_by[i] is not None
    logits, score = logit_detector.outputs(result.images[result.evaded])
    assert bool((logits.argmax(1) != y[result.evaded]).all()) and bool((score <= 0).all())
    assert float((result.images - x).abs().max()) <= eps + 1e-6
    report = result.report(eps)
    assert result.report() == report  # the suite knows the eps and norm it ran at
    with pytest.raises(ValueError, match="ran at eps"):  # another eps put in the Tramèr note went unnoticed
        result.report(2 * eps)
    with pytest.raises(ValueError, match="ran in the linf norm"):
        result.report(eps, norm="L2")
    assert result.report(eps, norm="inf") == result.report(eps, norm="L-inf") == report  # run_suite's spellings
    assert result.clean_correct.all()  # the labels are the model's predictions
    assert report["dara"]["rate"] == pytest.approx((result.clean_accepted & ~result.evaded).float().mean().item())
    assert report["detection_rate"]["pgd (bare model)"]["rate"] >= 0.9
    # only the attacks that do not know the detector speak for the bare model: an adaptive one stops on a batch
    # once all of it evaded, so its final points depend on the batch (an evaded image may end correct again)
    assert set(report["detection_rate"]) == {"pgd (bare model)", "hepgd 1.2 (bare model)"}
    assert not result.attacks["pgd (bare model)"].adaptive and result.attacks["k+1 pgd"].adaptive


def test_with_the_detector_off_the_suite_equals_the_bare_attack(random_model, batch):
    x, y = batch
    off = EnergyReject().calibrate(random_model, images(16, 0))
    off.tau = -math.inf  # rejects nothing: score = -inf - E(x)
    defended = DefendedClassifier(random_model, off)
    eps, steps = 8 / 255, 10
    result = run_suite(defended, x, y, {
        "k+1 pgd": KPlusOnePGD(defended, eps=eps, steps=steps, generator=seeded()),
        "pgd (bare model)": PGD(random_model, eps=eps, step_size=2.5 * eps / steps, steps=steps, generator=seeded(),
                                fused=False),
    })
    # the same margin attack on the bare model, every iterate counted: misclassified somewhere on the path
    misclassified = torch.zeros(len(y), dtype=torch.bool)

    def watch(k, x_k, logits):
        misclassified.logical_or_(logits.argmax(1) != y)

    final = projected_gradient_ascent(random_model, x, lambda logits: classification_margin(logits, y),
                                      make_constraint("linf", eps), steps, 2.5 * eps / steps, random_start=True,
                                      generator=seeded(), watch=watch)
    with torch.no_grad():
        misclassified |= random_model(final).argmax(1) != y
    assert 0 < int(misclassified.sum()) < len(y)
    assert torch.equal(result.attacks["k+1 pgd"].evaded, misclassified)
    bare = result.attacks["pgd (bare model)"]
    assert not bare.rejected.any() and torch.equal(bare.evaded, bare.misclassified)


def test_an_attack_built_for_another_defended_classifier_is_judged_by_the_suites(random_model, batch):
    """An adaptive attack built against the detector switched off, run in a suite of a strict detector: its iterates
    carried the other classifier's scores, so the suite counted points its own detector rejects as evasions."""
    x, y = batch
    strict = DefendedClassifier(random_model, make_reject_option("band", target_fpr=0.25).calibrate(
        random_model, images(40, 0)))
    from robgen.experiments.adaptive_suite import DetectorOff

    with torch.no_grad():
        other = DefendedClassifier(random_model, DetectorOff(target_fpr=0.0).fit(random_model(images(8, 0)),
                                                                                 model=random_model))
    def attack():  # on the model itself (a fused copy's first evasions are checked by the tracker's classifier)
        made = KPlusOnePGD(other, eps=64 / 255, steps=10, restarts=1, generator=seeded())
        made.fused = False
        return made

    outcome = run_suite(strict, x, y, {"built for another": attack()}, eps=64 / 255).attacks["built for another"]
    with torch.no_grad():
        logits, score = strict.outputs(outcome.images)
    assert torch.equal(outcome.evaded, outcome.evaded & (logits.argmax(1) != y) & (score <= 0)), \
        "every evasion counted is misclassified and accepted by the suite's own detector"
    # the same iterates judged by the suite's classifier, replayed: the suite found exactly those
    tracker = EvasionTracker(strict, x, y, judge_itself=True)
    attack().run(x, y, tracker)
    assert torch.equal(outcome.evaded, tracker.evaded)
    loose = EvasionTracker(strict, x, y)  # the outputs the attack shows: the other classifier's acceptance
    attack().run(x, y, loose)
    assert not torch.equal(loose.evaded, tracker.evaded), "judged by the other classifier, the count differed"


def test_a_large_ball_lets_every_image_evade(logit_detector, batch):
    x, y = batch
    eps = 64 / 255
    result = run_suite(logit_detector, x, y, {
        "k+1 pgd": KPlusOnePGD(logit_detector, eps=eps, steps=20, generator=seeded()),
        "penalty": PenaltyPGD(logit_detector, eps=eps, steps=20, restarts=2, generator=seeded())})
    assert result.evaded.all()


@pytest.mark.parametrize("attack_class", [KPlusOnePGD, PenaltyPGD, OrthogonalPGD])
def test_a_longer_run_from_the_same_start_contains_the_shorter_one_so_never_evades_less(logit_detector, batch,
                                                                                        attack_class):
    x, y = batch
    eps, step_size = 12 / 255, 1.5 / 255
    runs = {}
    for steps in (4, 12):
        seen = []
        attack = attack_class(logit_detector, eps=eps, step_size=step_size, steps=steps, restarts=1, generator=seeded())
        tracker = EvasionTracker(logit_detector, x, y)
        original = tracker.observe

        def observe(points, outputs, index=None, verify=False, original=original, seen=seen):
            seen.append(points.clone())
            return original(points, outputs, index, verify)

        tracker.observe = observe
        attack.run(x, y, tracker)
        runs[steps] = seen, tracker.evaded.clone()
    (short, short_evaded), (long, long_evaded) = runs[4], runs[12]
    assert len(short) == 4 + 1 and len(long) == 12 + 1  # every step's iterate, and the final point
    for k in range(5):  # the short run's iterates, its final point included, are the long run's first five
        assert torch.equal(short[k], long[k])
    assert bool((long_evaded | ~short_evaded).all())  # every evasion of the short run is one of the long run
    assert int(long_evaded.sum()) > int(short_evaded.sum())  # and here the longer run finds more


@pytest.mark.parametrize("attack_class", [KPlusOnePGD, PenaltyPGD])
def test_an_attack_with_r_restarts_finds_exactly_the_evasions_of_the_first_r_restarts_of_a_longer_one(
        logit_detector, batch, attack_class):
    x, y = batch
    runs = {}
    for restarts in (1, 2, 4):
        tracker = EvasionTracker(logit_detector, x, y, stop_when_all_evaded=True)
        attack_class(logit_detector, eps=EPS_FEW, steps=10, restarts=restarts, generator=seeded()).run(x, y, tracker)
        runs[restarts] = tracker
    longest = runs[4]
    assert {1, 2} <= set(longest.first_run[longest.evaded].tolist()), "here more restarts should find more"
    assert not longest.first_run[~longest.evaded].any() and not longest.evaded.all()
    for restarts in (1, 2):  # what robgen's report reads as "DARA after r restarts"
        assert torch.equal(runs[restarts].evaded, longest.evaded & (longest.first_run <= restarts)), restarts
        assert torch.equal(runs[restarts].first_run, torch.where(longest.first_run <= restarts, longest.first_run, 0))


def test_run_suite_refuses_an_attack_outside_its_ball(logit_detector, batch):
    x, y = batch
    with pytest.raises(ValueError, match="left the linf ball"):  # a plain function: its points are checked
        run_suite(logit_detector, x, y, {"too big": lambda x, y: (x + 16 / 255).clamp(0, 1)}, eps=4 / 255)
    # an attack built for a smaller ball passed that check and was reported at the suite's eps; a larger one or
    # another norm is refused before it runs
    for attack in (KPlusOnePGD(logit_detector, eps=1 / 255, steps=2), KPlusOnePGD(logit_detector, eps=16 / 255, steps=2),
                   KPlusOnePGD(logit_detector, eps=4 / 255, steps=2, norm="l2")):
        with pytest.raises(ValueError, match="was built for the"):
            run_suite(logit_detector, x, y, {"other ball": attack}, eps=4 / 255)
    run_suite(logit_detector, x, y, {"same": KPlusOnePGD(logit_detector, eps=4 / 255, steps=2, norm="Linf")},
              eps=4 / 255)


def test_run_suite_in_batches_equals_one_batch(logit_detector, batch):
    x, y = batch
    build = lambda: {"k+1 pgd": KPlusOnePGD(logit_detector, eps=16 / 255, steps=4, random_start=False)}
    whole, parts = run_suite(logit_detector, x, y, build()), run_suite(logit_detector, x, y, build(), batch_size=5)
    assert torch.equal(whole.evaded, parts.evaded) and whole.found_by == parts.found_by
    assert torch.allclose(whole.images, parts.images, atol=1e-6)
    assert torch.equal(whole.attacks["k+1 pgd"].rejected, parts.attacks["k+1 pgd"].rejected)


# ---- APGD on the engine ---------------------------------------------------------------------------
def test_apgd_checkpoints_follow_croce_and_hein():
    windows = _checkpoint_windows(100)
    assert [next(windows) for _ in range(7)] == [22, 19, 16, 13, 10, 7, 6]  # p_j: 0.22, then -0.03 down to 0.06


def test_apgd_returns_the_best_iterate_it_saw_and_watches_every_pass(random_model):
    x, y = images(4, 5), torch.tensor([0, 1, 2, 3])
    seen, steps = [], 12
    objective = lambda logits: F.cross_entropy(logits, y, reduction="none")
    best = auto_projected_gradient_ascent(
        random_model, x, objective, LinfBall(8 / 255), steps, generator=seeded(),
        watch=lambda k, x_k, logits: seen.append((k, x_k, objective(logits).detach())))
    assert [k for k, _, _ in seen] == list(range(steps + 1))
    values = torch.stack([v for _, _, v in seen])  # (steps + 1, N)
    with torch.no_grad():
        assert torch.allclose(objective(random_model(best)), values.max(0).values, atol=1e-5)
    assert values.max(0).values.ge(values[0]).all() and values.max(0).values.gt(values[0]).any()
    assert float((best - x).abs().max()) <= 8 / 255 + 1e-6


class Pixels(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_apgd_halves_its_step_until_it_settles_on_the_maximum():
    # f(x) = -(x - 0.6)^2 on one pixel at 0.5, eps 0.25: sign steps of the first size, 2 eps, jump across
    # the maximum from edge to edge of the ball; only the halvings at the checkpoints let the iterates settle
    x, seen = torch.full((1, 1, 1, 1), 0.5), []
    best = auto_projected_gradient_ascent(Pixels(), x, lambda out: -(out[:, 0] - 0.6) ** 2, LinfBall(0.25), 60,
                                          random_start=False, watch=lambda k, x_k, out: seen.append(float(x_k)))
    moves = [abs(b - a) for a, b in zip(seen, seen[1:])]
    assert max(moves[:3]) >= 0.25 and max(moves[-10:]) < 0.03  # five halvings in 60 steps: 2 eps / 32
    assert float(best) == pytest.approx(0.6, abs=0.01)


def test_defended_outputs_give_the_features_from_the_same_pass(trained):
    x = colour_images(4, 3)[0]
    calls = []
    handle = trained.model.register_forward_hook(lambda module, inputs, output: calls.append(1))
    try:
        outputs = DefendedOutputs(trained, features=True)(x)
    finally:
        handle.remove()
    assert len(calls) == 1 and outputs.features.shape[0] == 4
    head = [m for m in trained.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert torch.allclose(head(outputs.features), outputs.logits, atol=1e-5)


def test_logit_matching_tries_each_other_class_in_turn_runner_up_first(trained):
    x, y = colour_images(4, 3)
    pool, labels = colour_images(16, 4)  # 4 targets of each of the 4 classes
    attack = LogitMatching(trained, pool, labels, eps=8 / 255, steps=2, restarts=3)
    attack._begin(x, y)
    with torch.no_grad():
        ranked = trained(x).argsort(1, descending=True)
    for image in range(len(y)):
        first = attack._goal_labels[attack._order[image, :3]].tolist()
        others = [c for c in ranked[image].tolist() if c != int(y[image])]
        assert first == others, (first, others)  # one target of each other class, in the image's logit order


def test_evade_detector_gives_8bit_images_the_shipped_detector_accepts_and_the_model_misclassifies():
    """The app's adaptive attack on the shipped CIFAR-10 standard model and its detector, judged independently:
    every result is an 8-bit image within 8/255 of the photo, another class, and not flagged, where plain PGD of
    the same budget is flagged on some of the same photos (so the detector is no pushover)."""
    import robgen
    from robgen.experiments.calibration import load_shipped_detector
    from robgen.experiments.single_image import attack_own_predictions, evade_detector
    from robgen.images import load_model_input
    from tests.conftest import REPO

    model = robgen.load_model("cifar10-resnet10-standard")
    detector = load_shipped_detector(model)
    x = torch.stack([load_model_input(photo, model.spec) for photo in sorted((REPO / "examples").glob("*.png"))])
    reports = []
    outcome = evade_detector(model, x, detector, eps=8 / 255, steps=10, generator=torch.Generator().manual_seed(0),
                             progress=lambda fraction, desc="": reports.append(fraction))
    with torch.no_grad():
        clean, adversarial = model(x), model(outcome.adversarial)
    assert torch.allclose(outcome.adversarial * 255, (outcome.adversarial * 255).round(), rtol=0, atol=1e-3)
    assert float((outcome.adversarial - x).abs().max()) <= 8 / 255 + 1e-6
    assert (adversarial.argmax(1) != clean.argmax(1)).all()
    assert not detector.predict(adversarial).any() and outcome.evaded.all() and not outcome.flagged.any()
    assert reports[-1] == 1.0 and outcome.trace.temperature == detector.temperature
    assert len(outcome.trace.step) == len(outcome.trace.energy_mean) >= 11  # x_0 .. x_10 of the first run at least
    pgd = attack_own_predictions(model, x, robgen.PGD(model, eps=8 / 255, step_size=1 / 255, steps=10,
                                                      generator=torch.Generator().manual_seed(0)))
    assert detector.predict(pgd.adversarial_logits).any()
    # a budget too small to fool the model is reported as such, not dressed up
    tiny = evade_detector(model, x, detector, eps=0.5 / 255, steps=1, restarts=1)
    with torch.no_grad():
        still = model(tiny.adversarial).argmax(1) == clean.argmax(1)
    assert torch.equal(tiny.evaded, ~still & ~detector.predict(model(tiny.adversarial)))
    assert still.any()


def test_adaptive_attacks_step_through_the_fused_copy_and_find_what_the_model_itself_finds(trained, monkeypatch):
    """With fusion on, every step runs the model's fused copy, and every attack evades on the same images as with
    fusion off: the copy is the same function up to float rounding. Each evasion holds on the model itself."""
    import robgen.attacks.adaptive as adaptive
    from robgen.engine.fused import fusion

    steps_seen, handles = [], []

    def spy(model, fused=None, *, example=None, real=adaptive.inference_graph):
        network = real(model, fused, example=example)
        if network is not model and not handles:  # a hook on the copy: the model itself stays hook-free, so it fuses
            handles.append(network.register_forward_pre_hook(lambda module, inputs: steps_seen.append(len(inputs[0]))))
        return network

    monkeypatch.setattr(adaptive, "inference_graph", spy)
    x, y = colour_images(12, 7)
    targets = colour_images(16, 8)
    for name, build in attack_builders(trained, targets=targets, eps=16 / 255, steps=6).items():
        found = {}
        for fused in (True, False):
            steps_seen.clear()
            with fusion(fused):
                attack = build()
                tracker = EvasionTracker(trained, x, y)
                attack.run(x, y, tracker)
            found[fused] = tracker.evaded.clone(), tracker.images.clone(), len(steps_seen)
        (evaded, points, copy_passes), (evaded_unfused, _, copy_passes_unfused) = found[True], found[False]
        assert torch.equal(evaded, evaded_unfused), name
        assert copy_passes >= 6 and copy_passes_unfused == 0, name
        with torch.no_grad():
            logits, score = trained.outputs(points[evaded])
        assert ((logits.argmax(1) != y[evaded]) & (score <= 0)).all(), name
    for handle in handles:  # the cached copy outlives this test
        handle.remove()


def test_a_first_evasion_seen_through_another_network_counts_only_if_the_model_confirms_it(trained):
    """`observe(verify=True)`: outputs that claim an evasion (from a copy that disagrees) are checked by the defended
    classifier itself; the claim is dropped where the model finds the point classified correctly."""
    x, y = colour_images(8, 9)
    with torch.no_grad():
        logits, score = trained.outputs(x)
    correct = (logits.argmax(1) == y) & (score <= 0)
    assert correct.any()
    claimed = torch.nn.functional.one_hot((y + 1) % 4, 4).float() * 10  # "misclassified", by a lying network
    tracker = EvasionTracker(trained, x, y)
    evading = tracker.observe(x, (claimed, torch.full_like(score, -1.0)), verify=True)
    assert not evading[correct].any() and not tracker.evaded[correct].any()
    unverified = EvasionTracker(trained, x, y)
    assert unverified.observe(x, (claimed, torch.full_like(score, -1.0))).all()  # without verify: taken at its word


def test_kplusone_targeted_margin_is_positive_exactly_where_the_target_leads_class_and_detector():
    g = seeded(4)
    logits, score = torch.randn(500, 5, generator=g) * 3, torch.randn(500, generator=g)
    targets = torch.randint(0, 5, (500,), generator=g)
    combined = Outputs(logits, score).combined
    leads = (logits.argmax(1) == targets) & (score <= 0)
    assert 0 < int(leads.sum()) < 500
    margin = kplusone_targeted_margin(combined, targets)
    assert torch.equal(margin[margin != 0] > 0, leads[margin != 0])  # (a tie at 0 is neither)


def test_targeted_apgd_takes_the_other_classes_in_turn_runner_up_first_and_reaches_them(trained):
    x, y = colour_images(8, 3)
    attack = KPlusOneTargetedAPGD(trained, eps=1.0, steps=30, restarts=3, generator=seeded())
    with torch.no_grad():
        ranked = trained.model(x).argsort(1, descending=True)
    attack._begin(x, y)
    for image in range(len(y)):
        others = [c for c in ranked[image].tolist() if c != int(y[image])]
        assert attack.targets[image].tolist() == others
    # with the whole pixel range, one run toward the runner-up makes it the class, accepted
    one = KPlusOneTargetedAPGD(trained, eps=1.0, steps=30, restarts=1, generator=seeded())
    tracker = EvasionTracker(trained, x, y)
    final = one.run(x, y, tracker)
    assert tracker.evaded.all()
    with torch.no_grad():
        reached = trained.model(final).argmax(1) == one.targets[:, 0]
    assert int(reached.sum()) >= 6, reached


def test_adaptive_and_zoo_attacks_on_a_module_without_a_spec_check_its_classes_from_its_logits():
    """A defended plain module (no robgen spec) failed (K+1) APGD-DLR with "no attribute 'num_classes'"; torchattacks'
    APGD-T on 3 classes failed deep inside with an IndexError, the class check being skipped without a spec."""
    from robgen.attacks.zoo import TorchAttacksAttack

    def mlp(classes):
        torch.manual_seed(0)  # tests only
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, classes)).eval()

    x = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    four = mlp(4)
    defended = DefendedClassifier(four, make_reject_option("band", target_fpr=0.1).calibrate(four, torch.rand(64, 3, 4, 4)))
    y = four(x).argmax(1)
    x_adv = KPlusOneAPGD(defended, steps=3, loss="dlr", generator=seeded())(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    two = mlp(2)
    defended2 = DefendedClassifier(two, make_reject_option("band", target_fpr=0.1).calibrate(two, torch.rand(64, 3, 4, 4)))
    with pytest.raises(ValueError, match="DLR loss needs at least 3 classes"):  # read from the logits at the call
        KPlusOneAPGD(defended2, steps=2, loss="dlr")(x, two(x).argmax(1))
    with pytest.raises(ValueError, match="no robgen spec"):
        defended.num_classes
    with pytest.raises(ValueError, match="needs at least 4 classes"):
        TorchAttacksAttack(mlp(3), "APGDT", eps=8 / 255, steps=2)(x, mlp(3)(x).argmax(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_attacked_with_float32_iterates(dtype):
    """Iterates kept in bfloat16 rounded a step of 2.5 eps / steps away on bright pixels (1/256 apart in [0.5, 1)):
    the (K+1) PGD evaded 0 of 16 images where the float32 model gave 8, and projected points left the ball by up
    to 3e-3. Now the iterates are float32 (the model runs on them cast to its type), and the attack finds what it
    finds on the float32 model."""
    from robgen.attacks import PGD
    from robgen.attacks.apgd import APGD

    found = {}
    for kind in (torch.float32, dtype):
        model = tiny_model().to(kind)
        val = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        defended = DefendedClassifier(model, make_reject_option("energy", target_fpr=0.05).calibrate(model, val))
        x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = model(x.to(kind)).argmax(1)
        result = run_suite(defended, x, y, {"pgd": KPlusOnePGD(defended, eps=8 / 255, steps=100, random_start=False)},
                           eps=8 / 255)
        found[kind] = int(result.evaded.sum())
        points = PGD(model, eps=8 / 255, steps=20)(x, y)
        assert points.dtype == torch.float32 and float((points - x).abs().max()) <= 8 / 255 + 1e-6
        assert float((points != x).float().mean()) > 0.9  # the steps move the pixels
        points = APGD(model, eps=8 / 255, steps=5)(x, y)  # torchattacks' loss went through numpy: no bfloat16 there
        assert float((points - x).abs().max()) <= 8 / 255 + 1e-6
    assert found[torch.float32] > 0 and abs(found[dtype] - found[torch.float32]) <= 2, found


def test_a_plain_float16_module_is_attacked_adaptively():
    """A float16 module without robgen's spec failed before the first step ("mat1 and mat2 must have the same
    dtype"): the attack asked it for its number of classes on the float32 pixels it keeps its iterates in."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    torch.nn.init.normal_(net[1].weight, std=0.2, generator=torch.Generator().manual_seed(0))
    net = net.half().eval()
    val = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    defended = DefendedClassifier(net, make_reject_option("energy", target_fpr=0.05).calibrate(net, val))
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x.half()).argmax(1)
    points = KPlusOnePGD(defended, eps=8 / 255, steps=10)(x, y)
    assert points.dtype == torch.float32 and float((points - x).abs().max()) <= 8 / 255 + 1e-6
    assert float((points != x).float().mean()) > 0.9  # it steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_targeted_adaptive_apgd_attacks_a_half_precision_model(dtype):
    """KPlusOneTargetedAPGD ordered its target classes with the model run on its float32 iterates as they were:
    "mat1 and mat2 must have the same dtype, but got Float and Half" before its first step."""
    from robgen.attacks.adaptive import KPlusOneTargetedAPGD

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    torch.nn.init.normal_(net[1].weight, std=0.2, generator=torch.Generator().manual_seed(0))
    net = net.to(dtype).eval()
    val = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    defended = DefendedClassifier(net, make_reject_option("energy", target_fpr=0.05).calibrate(net, val))
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x.to(dtype)).argmax(1)
    result = run_suite(defended, x, y, {"apgd-t": KPlusOneTargetedAPGD(defended, eps=8 / 255, steps=5, restarts=2,
                                                                       generator=torch.Generator().manual_seed(2))},
                       eps=8 / 255)
    assert int(result.evaded.sum()) > 0  # a linear model at 8/255: it moves, and finds some


@pytest.mark.parametrize("norm, eps", [("l2", 1.0), ("linf", 8 / 255)])
def test_a_detector_undefined_in_part_of_the_ball_leaves_the_iterates_finite(norm, eps, caplog):
    """A user's detector that is NaN at some points (the square root of a negative number) gave a NaN gradient
    there; under L2 the step's normalisation spread it to every pixel, and the image's iterate stayed NaN for the
    rest of the attack (7 of 8 final iterates here): its later steps, and its restarts' judgement of it, were
    lost. A NaN gradient entry now gives no direction, as `sign` already read it under L-inf, and a warning says
    that such a region can mask the detector's gradient."""
    from robgen.detection.reject import CallableReject

    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    val = 0.53 + 0.04 * torch.rand(64, 3, 32, 32, generator=g)  # image means about 0.550
    x = 0.535 + 0.04 * torch.rand(8, 3, 32, 32, generator=g)  # about 0.555: rejected, close to the NaN region
    option = CallableReject(lambda images: torch.sqrt(images.mean((1, 2, 3)) - 0.548), on="input")
    defended = DefendedClassifier(model, option.calibrate(model, val))
    with torch.no_grad():
        y = model(x).argmax(1)
        assert bool((defended.score(x) > 0).all())
    tracker = EvasionTracker(defended, x, y)
    final = KPlusOnePGD(defended, eps=eps, steps=20, norm=norm).run(x, y, tracker)
    assert bool(torch.isfinite(final).all())
    assert float((final.mean((1, 2, 3)) - 0.548).min()) < 0  # the attack did reach the detector's NaN region
    # and the user hears of it: a region where the score is NaN is rejected with no gradient out of it
    said = [record.getMessage() for record in caplog.records if "score is NaN" in record.getMessage()]
    assert len(said) == 1 and "'custom' detector" in said[0] and "overstate" in said[0]
    distance = (final - x).flatten(1).norm(dim=1) if norm == "l2" else (final - x).flatten(1).abs().amax(1)
    assert float(distance.max()) <= eps + 1e-5


def test_the_adaptive_attacks_get_a_float16_models_gradient_on_confident_images():
    """The defended classifier cast an attack's float32 iterates to float16 itself before the network that casts
    them (and scales the gradient for float16), so (K+1) attacks still got 0 on an image classified with a margin
    above about 17: the loss's gradient, scaled on the way out, came back through a float16 input and flushed."""
    from robgen.attacks.adaptive import kplusone_cross_entropy
    from robgen.detection.baselines import last_linear
    from robgen.detection.defended import combine_logits
    from robgen.engine.fused import inference_graph

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    val = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    found = {}
    for dtype in (torch.float32, torch.float16):
        model = tiny_model()
        with torch.no_grad():
            last_linear(model).bias[0] += 25.0  # class 0 by a margin above 20 on every image
        model = model.to(dtype).eval()
        defended = DefendedClassifier(model, make_reject_option("energy", target_fpr=0.05).calibrate(model, val))
        y = torch.zeros(4, dtype=torch.long)
        point = x.clone().requires_grad_(True)
        outputs = DefendedOutputs(defended, network=inference_graph(model, example=x))(point)
        combined = combine_logits(outputs.logits, outputs.score)
        (found[dtype],) = torch.autograd.grad(kplusone_cross_entropy(combined, y).sum(), point)
    wide, narrow = found[torch.float32].flatten(1), found[torch.float16].flatten(1)
    assert bool((wide.abs().amax(1) < 1e-8).all())  # the case: below float16's smallest number
    assert bool((narrow.abs().amax(1) > 0).all())  # was exactly 0
    cosine = (F.normalize(narrow * 1e12, dim=1) * F.normalize(wide * 1e12, dim=1)).sum(1)  # (F's eps: 1e-8)
    assert float(cosine.min()) > 0.95  # the same direction, float16's rounding of the forward pass aside


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_apps_adaptive_attack_takes_float32_pixels_for_a_half_precision_model(dtype):
    """The Attack tab now gives its attacks the 8-bit pixels in float32 (in the model's type, bfloat16 moved them:
    the clean image and the result were 8.5/255 apart at 8/255); the adaptive attack ran the model on them uncast
    ("Input type (torch.FloatTensor) and weight type ... should be the same")."""
    from robgen import EnergyDetector
    from robgen.experiments.single_image import evade_detector

    model = tiny_model().to(dtype)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x.to(dtype)).float()
    detector = EnergyDetector().fit(logits, logits - 1).bind(model)
    outcome = evade_detector(model, x, detector, steps=3, restarts=1)
    assert float((outcome.adversarial.float() - outcome.clean.float()).abs().max()) <= 8 / 255 + 1e-6


def test_float64_images_get_float64_points_inside_the_ball(logit_detector, batch):
    """As robgen's other attacks: float64 pixels for a float32 model came back float32, up to 5e-9 outside the
    eps ball of the images given (the ball was kept around their float32 rounding)."""
    _, y = batch
    x = 0.5 + 0.1 * torch.rand(16, 3, 32, 32, generator=seeded(3), dtype=torch.float64)  # no pixel reaches 0 or 1
    for attack in (KPlusOnePGD(logit_detector, eps=EPS_FEW, steps=3, generator=seeded()),
                   PenaltyPGD(logit_detector, eps=0.5, norm="l2", steps=3, generator=seeded())):
        found = attack(x, y)
        assert found.dtype == torch.float64
        if attack.norm == "linf":  # float64's rounding of x + delta - x (a float32 result was 5e-9 outside)
            assert (found - x).abs().max() <= attack.eps * (1 + 1e-12)
        else:
            assert (found - x).flatten(1).norm(dim=1).max() <= attack.eps * (1 + 1e-12)
        assert found.min() >= 0 and found.max() <= 1


def test_the_suite_gives_float64_images_float64_points_inside_the_ball(logit_detector, batch):
    """run_suite returned float32 points for float64 images, up to 3e-8 outside the ball around them (hidden by its
    own check's tolerance of 1e-5), where each attack alone returns float64 points inside it."""
    x, y = batch
    x = x.double()  # the model's own labels: every clean image correct
    result = run_suite(logit_detector, x, y, {"pgd": KPlusOnePGD(logit_detector, eps=EPS_FEW, steps=10,
                                                                 generator=seeded())}, eps=EPS_FEW)
    for points in (result.images, result.attacks["pgd"].images):
        assert points.dtype == torch.float64
        assert (points - x).abs().max() <= EPS_FEW * (1 + 1e-12) and points.min() >= 0 and points.max() <= 1
    assert 0 < int(result.evaded.sum()) < 16 and torch.equal(result.images[~result.evaded], x[~result.evaded])


def test_the_suite_an_attacks_run_and_a_tracker_work_inside_inference_mode_as_outside_it(logit_detector, batch):
    """Inside torch.inference_mode() (as an app may serve requests) run_suite failed with torch's "Inference tensors
    cannot be saved for backward" ((K+1) PGD, Orthogonal PGD) or "Inplace update to inference tensor outside
    InferenceMode" (APGD, PGD: the tracker's counters), and so did an adaptive attack's `run` with a tracker made
    there; the attacks' own calls were already wrapped."""
    x, y = batch
    x, y = x[:6], y[:6]

    def suite():
        return run_suite(logit_detector, x, y, {
            "k+1 pgd": KPlusOnePGD(logit_detector, eps=EPS_FEW, steps=4, generator=seeded()),
            "orthogonal": OrthogonalPGD(logit_detector, eps=EPS_FEW, steps=4, generator=seeded()),
            "k+1 apgd": KPlusOneAPGD(logit_detector, eps=EPS_FEW, steps=4, generator=seeded()),
            "pgd": PGD(logit_detector.model, eps=EPS_FEW, steps=4, generator=seeded())}, eps=EPS_FEW)

    outside = suite()
    with torch.inference_mode():
        inside = suite()
        tracker = EvasionTracker(logit_detector, x, y)
        KPlusOnePGD(logit_detector, eps=EPS_FEW, steps=4, generator=seeded()).run(x, y, tracker)
    assert torch.equal(inside.evaded, outside.evaded) and torch.equal(inside.images, outside.images)
    assert not inside.images.is_inference() and int(tracker.observed.min()) > 0


def test_the_class_first_guard_leaves_the_detector_out_only_while_the_class_is_not_won():
    """For a detector that scores the prediction (robust-margin), the (K+1) margins' guard took the detector's logit
    while the model still predicted y, and lowering it made y surer: (K+1) PGD evaded none of 40 Imagenette images
    that plain PGD evaded 8 of (scripts/probe_kplusone_margin.py). With `class_first` the guard is G_y there; the
    value is the plain margin's wherever y is not predicted, so an evasion is still exactly a positive value."""
    combined = torch.tensor([[0.0, -1.0, -2.0, 3.0],    # predicts y = 0, rejected (G_K = 3): guard G_y = 0
                             [-0.5, 0.0, -2.0, 3.0],    # predicts 1 != y, rejected: guard G_K, as before
                             [0.0, -1.0, -2.0, -4.0],   # predicts y, accepted: the plain margin both ways
                             [-0.5, 0.0, -2.0, -1.0]])  # predicts 1, accepted: an evasion both ways
    labels = torch.zeros(4, dtype=torch.long)
    assert kplusone_margin(combined, labels).tolist() == [-4.0, -3.0, -1.0, 0.5]
    assert kplusone_margin(combined, labels, class_first=True).tolist() == [-1.0, -3.0, -1.0, 0.5]
    assert torch.equal(kplusone_dlr(combined, labels, class_first=True) > 0, kplusone_dlr(combined, labels) > 0)
    targets = torch.tensor([2, 2, 2, 1])  # APGD-T: the detector left out of the max until t is predicted
    assert kplusone_targeted_margin(combined, targets).tolist() == [-5.0, -5.0, -2.0, 0.5]
    assert kplusone_targeted_margin(combined, targets, class_first=True).tolist() == [-2.0, -2.0, -2.0, 0.5]
    from robgen.detection.reject import make_reject_option

    assert make_reject_option("robust-margin").scores_the_prediction
    assert not any(make_reject_option(kind).scores_the_prediction for kind in ("energy", "band", "energy-gap"))
