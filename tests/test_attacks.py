import pytest
import torch
import torch.nn.functional as F
import torchattacks

import robgen.engine.random
from robgen import APGD, FGSM, HEPGD, PGD, HighEnergyPGD, energy, make_attack
from robgen.attacks.objectives import high_energy_loss
from robgen.energy import class_energy
from robgen.engine import L2Ball, LinfBall, projected_gradient_ascent
from tests.conftest import tiny_model


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_the_eps_ball_and_pixel_range(model, batch, norm, eps):
    x, y = batch
    x_adv = PGD(model, eps=eps, step_size=eps / 4, steps=5, norm=norm, generator=torch.Generator().manual_seed(0))(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert (size > eps / 2).all(), "the attack moved"


def test_pgd_raises_the_loss(model, batch):
    x, y = batch
    x_adv = PGD(model, eps=8 / 255, step_size=2 / 255, steps=5, random_start=False)(x, y)
    assert (ce(model, x_adv, y) > ce(model, x, y)).all()


def test_pgd_without_random_start_equals_torchattacks(model, batch):
    x, y = batch
    ours = PGD(model, eps=8 / 255, step_size=2 / 255, steps=7, random_start=False, fused=False)(x, y)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=7, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_l2_pgd_without_random_start_equals_torchattacks(model, batch):
    x, y = batch
    ours = PGD(model, eps=0.5, step_size=0.1, steps=5, norm="l2", random_start=False, fused=False)(x, y)
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=5, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("length", [1.0, 1e-9, 1e-12, 1e-20])
def test_an_l2_step_has_its_length_however_short_the_gradient(length):
    """A confident image's float32 gradient can be 1e-12 long; grad / (|grad| + 1e-10) made its step 1% long."""
    from robgen.engine import L2Ball, Unconstrained

    grad = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grad = grad * length / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    grad[2] = 0  # no gradient: no step
    for constraint in (L2Ball(0.5), Unconstrained()):
        lengths = constraint.direction(grad).flatten(1).norm(dim=1)
        assert torch.allclose(lengths[:2], torch.ones(2), atol=1e-5) and lengths[2] == 0


def test_hepgd_with_zero_lambda_is_pgd(model, batch):
    x, y = batch
    pgd = PGD(model, eps=8 / 255, step_size=1 / 255, steps=5, generator=torch.Generator().manual_seed(3))(x, y)
    he = HEPGD(model, eps=8 / 255, step_size=1 / 255, steps=5, lam=0.0, generator=torch.Generator().manual_seed(3))(x, y)
    assert torch.equal(pgd, he)
    assert HEPGD is HighEnergyPGD
    for lam in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
            HighEnergyPGD(torch.nn.Linear(2, 2), lam=lam)


@pytest.mark.parametrize("lam", [0.5, 1.0, 1.2, 3.0])
def test_hepgd_objective_is_ce_plus_lambda_energy(lam):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(16, 10, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(0, 10, (16,), generator=g)
    value = high_energy_loss(logits, y, lam)
    assert torch.allclose(value, F.cross_entropy(logits, y, reduction="none") + lam * energy(logits))
    # CE = -f_y + logsumexp f = -f_y - E, so CE + lam E = -f_y + (lam - 1) E (at lam = 1: the true logit alone)
    rewritten = class_energy(logits, y) + (lam - 1) * energy(logits)
    assert torch.allclose(value, rewritten)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    (expected,) = torch.autograd.grad(rewritten.sum(), logits)
    assert torch.allclose(grad, expected)
    T = 5.0
    assert torch.allclose(high_energy_loss(logits, y, lam, temperature=T),
                          F.cross_entropy(logits, y, reduction="none") - lam * T * torch.logsumexp(logits / T, dim=1))


def test_hepgd_steps_along_the_gradient_of_its_formula(model, batch):
    x, y = batch
    lam = 2.0
    x_in = x.clone().requires_grad_(True)
    logits = model(x_in)
    (grad,) = torch.autograd.grad((class_energy(logits, y) + (lam - 1) * energy(logits)).sum(), x_in)
    expected = (x + 1 / 255 * grad.sign()).clamp(0, 1)
    one_step = HEPGD(model, eps=8 / 255, step_size=1 / 255, steps=1, lam=lam, random_start=False)(x, y)
    assert torch.allclose(one_step, expected, atol=1e-6)
    assert not torch.equal(one_step, PGD(model, eps=8 / 255, step_size=1 / 255, steps=1, random_start=False)(x, y))


def test_hepgd_raises_energy_relative_to_pgd(model, batch):
    x, y = batch
    pgd = PGD(model, eps=8 / 255, step_size=1 / 255, steps=10, random_start=False)(x, y)
    he = HEPGD(model, eps=8 / 255, step_size=1 / 255, steps=10, lam=5.0, random_start=False)(x, y)
    with torch.no_grad():
        assert energy(model(he)).mean() > energy(model(pgd)).mean()


def test_targeted_pgd_raises_the_target_probability(model, batch):
    x, y = batch
    target = (y + 1) % 10
    x_adv, trace = PGD(model, eps=16 / 255, step_size=2 / 255, steps=10)(x, y, target=target, return_trace=True)
    with torch.no_grad():
        before = model(x).softmax(1).gather(1, target.view(-1, 1))
        after = model(x_adv).softmax(1).gather(1, target.view(-1, 1))
    assert (after > before).all()
    assert len(trace.target_prob) == 11 and trace.target_prob[-1] > trace.target_prob[0]


@pytest.mark.parametrize(
    "norm, ours_settings, theirs",
    [
        ("linf", dict(eps=8 / 255, step_size=2 / 255, steps=7),
         lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=7, random_start=False)),
        ("l2", dict(eps=0.5, step_size=0.1, steps=5),
         lambda m: torchattacks.PGDL2(m, eps=0.5, alpha=0.1, steps=5, random_start=False)),
    ],
)
def test_targeted_pgd_without_random_start_equals_torchattacks(model, batch, norm, ours_settings, theirs):
    x, y = batch
    target = (y + 3) % 10
    attack = PGD(model, norm=norm, random_start=False, fused=False, **ours_settings)  # the exact path: unfused
    ours = attack(x, y, target=target)
    reference = theirs(model)
    reference.set_mode_targeted_by_label(quiet=True)  # torchattacks then reads its second argument as the target
    theirs = reference(x, target)
    if norm == "linf":  # sign steps: bit for bit
        assert torch.equal(ours, theirs)
    else:  # torchattacks' mean-reduced loss scales the gradient by 1/N before normalising: 1 ulp apart
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert not torch.equal(ours, attack(x, y)), "targeted and untargeted runs differ"


def test_trace_records_every_iterate(model, batch):
    x, y = batch
    x_adv, trace = PGD(model, eps=8 / 255, step_size=1 / 255, steps=4, random_start=False)(x, y, return_trace=True)
    assert trace.step == [0, 1, 2, 3, 4]
    with torch.no_grad():
        clean_logits, adv_logits = model(x), model(x_adv)
    assert trace.energy_mean[0] == pytest.approx(float(energy(clean_logits).mean()), abs=1e-5)
    assert trace.energy_mean[-1] == pytest.approx(float(energy(adv_logits).mean()), abs=1e-5)
    assert trace.accuracy[-1] == pytest.approx(float((adv_logits.argmax(1) == y).float().mean()))
    assert trace.loss[-1] == pytest.approx(float(ce(model, x_adv, y).mean()), abs=1e-5)
    assert trace.loss[-1] > trace.loss[0]
    assert trace.target_prob == []


def test_watch_sees_every_iterate_the_attack_steps_from_and_changes_nothing(model, batch):
    """`attack(x, y, watch=fn)`: fn sees x_0 (the start) to x_{steps-1} with their logits, and the attack runs to
    its end whatever fn returns (a caller judging every iterate still gets the final point)."""
    x, y = batch
    plain = PGD(model, eps=8 / 255, step_size=2 / 255, steps=4, generator=torch.Generator().manual_seed(1))(x, y)
    seen = []

    def watch(step, points, logits):
        seen.append((step, points.clone(), logits.detach().clone()))
        return True  # "stop": ignored

    watched = PGD(model, eps=8 / 255, step_size=2 / 255, steps=4,
                  generator=torch.Generator().manual_seed(1))(x, y, watch=watch)
    assert torch.equal(watched, plain)
    assert [step for step, _, _ in seen] == [0, 1, 2, 3]
    assert not torch.equal(seen[0][1], x) and (seen[0][1] - x).abs().max() <= 8 / 255 + 1e-6, "x_0: the random start"
    with torch.no_grad():
        assert torch.allclose(seen[-1][2], model(seen[-1][1]), atol=1e-4)


def test_fgsm_is_one_step_of_size_eps(model, batch):
    x, y = batch
    x.requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)[0]
    x = x.detach()
    expected = (x + 8 / 255 * grad.sign()).clamp(0, 1)
    assert torch.allclose(FGSM(model, eps=8 / 255)(x, y), expected, atol=1e-6)


def test_model_mode_is_restored_and_global_rng_untouched(model, batch):
    x, y = batch
    model.train()
    state = torch.random.get_rng_state()
    PGD(model, steps=2, generator=torch.Generator().manual_seed(0))(x, y)
    APGD(model, steps=2, generator=torch.Generator().manual_seed(0))(x, y)
    assert model.training
    assert torch.equal(state, torch.random.get_rng_state())


def test_generator_makes_random_starts_reproducible(model, batch):
    x, y = batch
    runs = [PGD(model, steps=2, generator=torch.Generator().manual_seed(s))(x, y) for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_apgd_stays_in_the_ball_and_fools_the_model(model, batch):
    x, _ = batch
    with torch.no_grad():
        y = model(x).argmax(1)  # APGD leaves already-misclassified points alone: start from correct ones
    eps = 16 / 255  # the random model is too flat to fool at 8/255
    x_adv, trace = APGD(model, eps=eps, steps=5, generator=torch.Generator().manual_seed(0))(x, y, return_trace=True)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert ce(model, x_adv, y).mean() > ce(model, x, y).mean()
    assert trace.step == [0, 5] and trace.accuracy[0] == 1.0 and trace.accuracy[1] < 1.0


def test_apgd_reports_progress_while_it_runs_and_gives_the_same_result(model, batch):
    """It reported once, at the end (torchattacks shows no steps), so the app's bar sat at 0 through the attack;
    now it counts the model's passes, and watching them changes nothing."""
    x, _ = batch
    with torch.no_grad():
        y = model(x).argmax(1)
    seen = []
    attack = lambda: APGD(model, eps=16 / 255, steps=8, generator=torch.Generator().manual_seed(0))
    watched = attack()(x, y, progress=lambda fraction, desc="": seen.append(fraction))
    assert torch.equal(watched, attack()(x, y))
    assert len(seen) >= 8 and seen == sorted(seen) and 0 < seen[0] < 0.5 and seen[-1] == 1.0
    # the watcher, a new module, was in train mode: torchattacks left the model's cached fused copy in train mode
    # after the attack (batch statistics for every later attack wherever batch norm was not folded)
    from robgen.engine.fused import inference_graph

    assert not inference_graph(model, None, example=x).training


def test_apgd_draws_its_seed_on_the_generators_device(model, batch, monkeypatch):
    x, y = batch
    generator = torch.Generator().manual_seed(0)
    seen = []
    original = torch.randint

    def spy(*args, **kwargs):
        if kwargs.get("generator") is generator:
            seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(robgen.engine.random.torch, "randint", spy)
    APGD(model, steps=1, generator=generator)(x, y)
    assert len(seen) == 1, "APGD seeds torchattacks from its generator"
    assert "device" in seen[0] and torch.device(seen[0]["device"]) == generator.device, (
        "a draw from a CUDA generator without device=... raises, so the device must be passed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to draw from a CUDA generator for real")
def test_apgd_runs_with_a_cuda_generator(batch):
    x, y = batch
    model = tiny_model().cuda()
    x, y = x.cuda(), y.cuda()
    runs = [APGD(model, steps=2, generator=torch.Generator(device="cuda").manual_seed(1))(x, y) for _ in range(2)]
    assert runs[0].device.type == "cuda" and torch.equal(runs[0], runs[1])
    assert (runs[0] - x).abs().max() <= 8 / 255 + 1e-6


def test_l2_random_start_is_uniform_in_the_ball():
    eps = 0.5
    x = torch.full((400, 3, 32, 32), 0.5)  # far from the pixel bounds: the clip changes nothing
    radius = (L2Ball(eps).random_start(x, torch.Generator().manual_seed(0)) - x).flatten(1).norm(dim=1)
    assert float(radius.max()) <= eps * (1 + 1e-5)
    # uniform in a ball of d = 3072 dimensions: P(r < eps/2) = 2^-3072, P(r < 0.99 eps) = 0.99^3072 ~ 4e-14;
    # a uniform radius (torchattacks' PGDL2) would put half of the starts below eps/2
    assert float((radius < eps / 2).double().mean()) == 0.0
    assert float(radius.min()) > 0.99 * eps
    # in few dimensions the radius law P(r <= t eps) = t^d can be seen directly
    g = torch.Generator().manual_seed(1)
    for shape in ((1, 1, 2), (3, 1, 1)):
        d = shape[0] * shape[1] * shape[2]
        x = torch.full((20000, *shape), 0.5)
        r = (L2Ball(0.1).random_start(x, g) - x).flatten(1).norm(dim=1) / 0.1
        for t in (0.25, 0.5, 0.75, 0.9):
            assert float((r <= t).double().mean()) == pytest.approx(t**d, abs=0.012), (d, t)


def test_one_loop_with_pluggable_objective(model, batch):
    """A new attack is an objective: here, lowering the energy directly."""
    x, _ = batch
    x_low = projected_gradient_ascent(
        model, x, lambda logits: -energy(logits, check=False), LinfBall(8 / 255), steps=5, step_size=2 / 255
    )
    with torch.no_grad():
        assert (energy(model(x_low)) < energy(model(x))).all()
    ball = L2Ball(1.0)
    projected = ball.project(x + torch.randn_like(x), x)
    assert ((projected - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()


def test_loop_keeps_no_graph_between_steps(model, batch):
    x, y = batch
    x_adv = PGD(model, steps=3)(x, y)
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients are accumulated"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(eps=0), "eps must be > 0"),
        (dict(eps=-0.1), "eps must be > 0"),
        (dict(eps=8), "8/255"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(step_size=0), "step_size must be > 0"),
        (dict(norm="l3"), "unknown norm"),
    ],
)
def test_bad_settings_are_refused(model, settings, message):
    with pytest.raises(ValueError, match=message):
        PGD(model, **settings)


def test_bad_data_is_refused(model, batch):
    x, y = batch
    attack = PGD(model, steps=1)
    with pytest.raises(ValueError, match="divide by 255"):
        attack(x * 255, y)
    with pytest.raises(ValueError, match="channels"):
        attack(x[:, :1], y)
    with pytest.raises(ValueError, match="10 classes"):
        attack(x, y + 10)
    with pytest.raises(ValueError, match="untargeted"):
        HEPGD(model, steps=1)(x, y, target=y)
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("cw", model)


def test_attack_works_inside_no_grad(model, batch):
    x, y = batch
    with torch.no_grad():
        inside = PGD(model, steps=2, random_start=False)(x, y)
    assert torch.equal(inside, PGD(model, steps=2, random_start=False)(x, y))


def test_traces_of_batches_combine_into_the_trace_of_the_whole(model, batch):
    from robgen.engine import Trace

    x, y = batch
    attack = PGD(model, steps=3, random_start=False)
    _, whole = attack(x, y, return_trace=True)
    _, first = attack(x[:4], y[:4], return_trace=True)
    _, second = attack(x[4:], y[4:], return_trace=True)
    combined = Trace.combine([first, second], [4, 2])
    for name in ("energy_mean", "energy_std", "accuracy", "loss", "true_prob"):
        assert getattr(combined, name) == pytest.approx(getattr(whole, name), abs=1e-5), name
    # traces of other settings: torch's "expected sequence of length 4 at dim 1 (got 3)", or, for the same length,
    # the steps of the first trace and the others' numbers averaged with no word
    _, shorter = PGD(model, steps=2, random_start=False)(x[4:], y[4:], return_trace=True)
    with pytest.raises(ValueError, match=r"different steps or temperatures.*0\.\.3 \(4 entries\) at T = 1 and "
                                         r"0\.\.2 \(3 entries\)"):
        Trace.combine([first, shorter], [4, 2])
    hotter = Trace(**{**second.to_dict(), "temperature": 2.0})
    with pytest.raises(ValueError, match="at T = 1 and 0..3 .4 entries. at T = 2"):
        Trace.combine([first, hotter], [4, 2])
    with pytest.raises(ValueError, match="one batch size per trace: 2 traces and 1 sizes"):
        Trace.combine([first, second], [6])


def test_make_attack_gives_each_attack_the_settings_it_uses(model):
    from robgen.attacks import make_attack as attack_from_settings

    common = dict(eps=4 / 255, step_size=2 / 255, steps=3, lam=0.7, random_start=False)
    pgd = attack_from_settings("pgd", model, **common)
    assert (pgd.step_size, pgd.steps, pgd.random_start) == (2 / 255, 3, False)
    assert attack_from_settings("he-pgd", model, **common).lam == 0.7
    assert attack_from_settings("apgd", model, **common).steps == 3
    assert attack_from_settings("fgsm", model, **common).eps == 4 / 255


def test_without_a_generator_the_torchattacks_seed_follows_the_global_rng():
    from robgen.engine import random_seed

    torch.manual_seed(0)  # tests only
    first, second = random_seed(None, torch.device("cpu")), random_seed(None, torch.device("cpu"))
    assert first != second, "repeated calls are not all seeded alike"
    torch.manual_seed(0)
    assert random_seed(None, torch.device("cpu")) == first


def test_an_l2_attack_without_a_step_size_steps_across_its_ball(model, batch):
    """The default step was 1/255 whatever the norm: in L2 that is the length of a whole step, so 10 steps moved
    0.04 in a ball of 0.5 and robust accuracy under L2 PGD was the random start's."""
    from robgen.attacks.base import default_step_size

    x, y = batch
    assert PGD(model, eps=0.5, steps=10, norm="l2").step_size == pytest.approx(2.5 * 0.5 / 10)
    assert PGD(model, eps=8 / 255, steps=10).step_size == pytest.approx(1 / 255)  # L-inf: the paper's step
    assert HighEnergyPGD(model, eps=1.0, steps=5, norm="l2").step_size == default_step_size("l2", 1.0, 5) == 0.5
    assert PGD(model, steps=5, norm="none").step_size == pytest.approx(1 / 255)  # no ball: eps is inf
    start = torch.Generator().manual_seed(0)
    x_adv = PGD(model, eps=0.5, steps=10, norm="l2", random_start=False, generator=start)(x, y)
    assert (x_adv - x).flatten(1).norm(dim=1).max() > 0.4  # it reaches the ball's edge from the clean image


def _confident_linear(dtype: torch.dtype) -> torch.nn.Module:
    """A plain module (no robgen spec) on 3x4x4 images whose class 0 leads by 24 logits at grey (0.5) and by 9 at
    0.25, and loses to class 1 at black: at 24 every other class's probability, and so every entry of
    dCE/dlogits, lies below float16's smallest number (6e-8)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0], net[1].weight[1] = 0.625, -0.625
        net[1].bias.copy_(torch.tensor([-3.0, 3.0, -30.0]))
    return net.to(dtype).eval()


def test_a_float16_model_is_attacked_where_its_cross_entropy_gradient_lies_below_float16s_range():
    """PGD stood still on a float16 model's confident images: the gradient of the cross-entropy, under 6e-8 in
    every entry, was exactly 0 once cast to float16, where the same model in float32 gives 2e-11 and flips the
    label (per-image loss scaling in `CastInputs`). A plain float16 module, without robgen's spec, also failed
    before any step ("mat1 and mat2 must have the same dtype"): the attack asked it for its classes on float32
    pixels."""
    from robgen.engine.fused import inference_graph

    x = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 0.25)])
    y = torch.tensor([0, 0])
    gradients = {}
    for dtype in (torch.float32, torch.float16):
        model = _confident_linear(dtype)
        for train in (False, True):  # train mode: one factor for the batch (batch norm would mix the images)
            graph = inference_graph(model.train(train), example=x)
            point = x.clone().requires_grad_(True)
            (gradients[dtype, train],) = torch.autograd.grad(F.cross_entropy(graph(point), y, reduction="sum"), point)
        model.eval()
        points = PGD(model, eps=0.5, step_size=0.05, steps=20, random_start=False)(x, y)
        with torch.no_grad():
            assert int(model(points[:1].to(dtype)).argmax(1)) != 0, dtype  # the confident image flips
    assert float(gradients[torch.float32, False][0].abs().max()) < 1e-9  # the case: far below float16's range
    wide, narrow = gradients[torch.float32, False], gradients[torch.float16, False]
    assert narrow.dtype == torch.float32
    assert torch.allclose(narrow, wide, rtol=2e-3, atol=0)  # the loss's own gradient, each image at its own scale
    wide, narrow = gradients[torch.float32, True], gradients[torch.float16, True]
    assert torch.allclose(narrow[1], wide[1], rtol=2e-3, atol=0)  # the batch's factor fits its largest gradient;
    assert torch.allclose(narrow[0], wide[0], rtol=0.1, atol=0)  # 1e7 times smaller, it lands among float16's
    # subnormals (a few bits), but no longer on 0


def test_a_float16_gradient_further_below_float32s_normal_range_is_not_made_nan():
    """The per-image factor is a power of 2 up to 2**126: a cross-entropy gradient below 2**-127 (a logit margin
    near 90) made it infinite, and 0 * inf made the whole gradient NaN where float32 gives a number or 0."""
    from robgen.engine.fused import inference_graph

    x = torch.full((1, 3, 4, 4), 0.5)
    y = torch.tensor([0])
    for margin in (90.0, 120.0):  # float32: a subnormal gradient, then exactly 0
        found = {}
        for dtype in (torch.float32, torch.float16):
            model = _confident_linear(dtype)
            with torch.no_grad():
                model[1].bias.copy_(torch.tensor([margin / 2 - 15.0, 15.0 - margin / 2, -200.0], dtype=dtype))
            point = x.clone().requires_grad_(True)
            logits = inference_graph(model, example=x)(point)
            (found[dtype],) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), point)
        assert bool(torch.isfinite(found[torch.float16]).all()), margin
        assert torch.allclose(found[torch.float16], found[torch.float32], rtol=2e-3, atol=1e-44), margin


def test_a_float16_pass_with_a_forward_hook_is_not_scaled():
    """A tensor a forward hook catches inside the float16 network (the penultimate features a detector reads)
    brings its gradient in unscaled; the per-image factor then divided it on the way out (to ~1e-11 of itself).
    Such a pass now runs unscaled."""
    from robgen.engine.fused import inference_graph

    x = torch.full((1, 3, 4, 4), 0.5)
    found = {}
    for dtype in (torch.float32, torch.float16):
        model = _confident_linear(dtype)
        caught = []
        hook = model[1].register_forward_hook(lambda module, inputs, output: caught.append(inputs[0]))
        try:
            point = x.clone().requires_grad_(True)
            logits = inference_graph(model, example=x)(point)
            loss = F.cross_entropy(logits, torch.tensor([0]), reduction="sum") + (caught[0].float() ** 2).sum()
            (found[dtype],) = torch.autograd.grad(loss, point)
        finally:
            hook.remove()
    assert torch.allclose(found[torch.float16], found[torch.float32], rtol=1e-3)  # 2x: the features' own term


def test_a_half_precision_models_fused_copy_stays_in_eval_mode_after_a_torchattacks_attack():
    """The float16/bfloat16 model's cached fused copy is wrapped in CastInputs, a new module and so in train mode:
    torchattacks (APGD, the zoo) read that and put the copy back in train mode after its attack, and every later
    attack on the model ran it so (dropout on, batch statistics): PGD on the same images stopped repeating itself."""
    from robgen.attacks import PGD
    from robgen.attacks.apgd import APGD

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(8 * 6 * 6, 5))
    torch.manual_seed(0)  # tests only: the layers' initialisation
    net = net.to(torch.bfloat16).eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    before = PGD(net, eps=8 / 255, steps=5, random_start=False)(x, y)
    APGD(net, eps=8 / 255, steps=2, generator=torch.Generator().manual_seed(0))(x, y)
    after = PGD(net, eps=8 / 255, steps=5, random_start=False)(x, y)
    assert torch.equal(before, after)
    assert not net.training and not any(module.training for module in net.modules())


def test_an_linf_eps_above_1_is_told_the_fix_that_fits_it():
    """--eps 300/255 was asked whether it meant 1.17647/255; a whole number such as 8 is on the 0-255 scale."""
    from robgen.engine import LinfBall

    with pytest.raises(ValueError, match=r"did you mean 8/255 = 0\.0314\?"):
        LinfBall(8)
    with pytest.raises(ValueError, match=r"give at most 1 \(= 255/255\)$"):
        LinfBall(300 / 255)


def test_float64_images_get_float64_results_inside_the_ball(model, batch):
    """float64 pixels (torch.from_numpy of numpy's arrays) for a float32 model came back float32, up to 4e-8
    outside the eps ball of the images given (the ball was kept around their float32 rounding)."""
    from robgen import FGSM, PGD, HighEnergyPGD

    _, y = batch  # mid-gray images: no pixel reaches 0 or 1, so the ball's edge is reached (in L2 too)
    x = 0.5 + 0.1 * torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for attack in (PGD(model, eps=8 / 255, steps=3), FGSM(model, eps=8 / 255), HighEnergyPGD(model, eps=8 / 255, steps=3),
                   PGD(model, eps=0.5, steps=3, norm="l2")):
        x_adv = attack(x, y)
        assert x_adv.dtype == torch.float64
        if attack.norm == "linf":
            assert (x_adv - x).abs().max() <= attack.eps
        else:
            assert (x_adv - x).flatten(1).norm(dim=1).max() <= attack.eps * (1 + 1e-12)  # float64's rounding
        assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-4, 1e-2, 0.5])
@pytest.mark.parametrize("random_start", [False, True])
def test_l2_points_stay_in_the_ball_after_their_rounding_to_float32(eps, random_start):
    """Each pixel of x + delta rounded to float32 moves up to half an ulp: over 3,072 pixels the L2 distance came
    out 22% over eps at 1e-6, 0.75% at 1e-5 and a few ulps at 1e-2 (measured exactly, in float64)."""
    model = tiny_model()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2, 3])
    x_adv = PGD(model, eps=eps, norm="l2", steps=2, random_start=random_start,
                generator=torch.Generator().manual_seed(0))(x, y)
    distance = (x_adv.double() - x.double()).flatten(1).norm(dim=1)
    assert (distance <= eps * (1 + 1e-12)).all(), (distance / eps).max()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if eps >= 1e-4:
        assert (distance > 0.9 * eps).all(), "the rounding toward x costs the attack next to nothing"
    projected = L2Ball(eps).project(x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)), x)
    assert ((projected.double() - x.double()).flatten(1).norm(dim=1) <= eps * (1 + 1e-12)).all()


@pytest.mark.parametrize("make", [lambda m: APGD(m, steps=2), lambda m: PGD(m, steps=2), lambda m: FGSM(m)])
def test_an_attack_on_images_that_require_grad_returns_points_cut_from_their_graph(model, batch, make):
    """APGD and the zoo's attacks returned a tensor attached to the caller's x through the projection: a backward
    pass through anything computed from it sent gradients into x, and the graph was kept alive."""
    x, y = batch
    given = x.clone().requires_grad_(True)
    x_adv = make(model)(given, y)
    assert x_adv.grad_fn is None and not x_adv.requires_grad


def test_a_targeted_attack_takes_class_labels_and_one_class_for_every_image(model, batch):
    """A label as target failed inside torch ("new(): invalid data type 'str'"), and one class for all images was
    refused, though the energy functions take both."""
    from robgen.models import ModelSpec

    x, y = batch
    attack = PGD(model, steps=2, random_start=False)
    names = [model.spec.class_labels[3]] * len(x)
    expected = attack(x, y, target=torch.full_like(y, 3))
    for target in (3, model.spec.class_labels[3], names):
        assert torch.equal(attack(x, y, target=target), expected), target
    with pytest.raises(ValueError, match="unknown class 'no such class'"):
        attack(x, y, target="no such class")
    assert isinstance(model.spec, ModelSpec)
    import numpy as np

    from robgen.attacks.zoo import RandomTarget

    assert torch.equal(attack(x, y, target=np.array(names)), expected)  # a NumPy array of labels too
    labels = [model.spec.class_labels[int(k)] for k in y]
    drawn = RandomTarget(attack, 10, torch.Generator().manual_seed(0))
    again = RandomTarget(attack, 10, torch.Generator().manual_seed(0))
    assert torch.equal(drawn(x, labels), again(x, y)), "labels by name aimed at the same random other classes"


def test_a_target_equal_to_the_label_is_named_in_a_warning(model, batch, caplog):
    x, y = batch
    with caplog.at_level("WARNING", logger="robgen.attacks.base"):
        PGD(model, steps=1)(x, y, target=y)
    assert f"{len(y)} of {len(y)} images' target class is their own label" in caplog.text


def test_a_model_that_returns_a_tuple_is_refused_saying_so(batch):
    """A timm- or Hugging Face-style output gave "'tuple' object has no attribute 'shape'"."""
    net = tiny_model()

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x), None

    x, y = batch
    with pytest.raises(TypeError, match="the model returned tuple, not logits"):
        PGD(Pair(), steps=1)(x, y)
