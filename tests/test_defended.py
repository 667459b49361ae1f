import pytest
import torch

from robgen.detection.defended import DefendedClassifier, combine_logits
from robgen.detection.reject import EnergyReject, make_reject_option
from tests.conftest import tiny_model


def images(n, seed):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_extra_logit_wins_exactly_when_the_score_is_positive(dtype):
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 10
    scale = 10.0 ** torch.randint(-3, 4, (n, 1), generator=g)  # tiny to huge logits, many rows all negative
    logits = (torch.randn(n, k, generator=g) * scale - scale * torch.rand(n, 1, generator=g) * 3).to(dtype)
    magnitude = 10.0 ** torch.randint(-40, 3, (n,), generator=g).double()  # down to 1e-40: below float32's ulp
    score = (torch.randn(n, generator=g, dtype=torch.float64).sign() * magnitude).to(dtype)
    score[:50] = 0.0  # a tie is accepted
    rejected = score > 0
    assert rejected.any() and (~rejected).any() and bool((logits.max(1).values < 0).any())
    combined = combine_logits(logits, score)
    assert combined.shape == (n, k + 1)
    assert torch.equal(combined.argmax(1) == k, rejected)
    accepted = ~rejected
    assert torch.equal(combined[accepted].argmax(1), logits[accepted].argmax(1))  # accepted: the model's class


def test_the_original_carlini_wagner_logit_fails_with_a_negative_top_logit_and_ours_does_not():
    logits, score = torch.tensor([[-2.0, -3.0]]), torch.tensor([0.5])  # rejected (d > 0), every logit negative
    naive = torch.cat([logits, (score + 1)[:, None] * logits.max(1, keepdim=True).values], 1)
    assert naive.argmax(1).item() != 2  # (d + 1) max f = -3 < -2: the rejected point reads as class 0
    assert combine_logits(logits, score).argmax(1).item() == 2


def test_combined_logits_are_the_shifted_max_plus_score_construction():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    score = torch.randn(5, generator=torch.Generator().manual_seed(2))
    unshifted = torch.cat([logits, (logits.max(1).values + score)[:, None]], 1)
    assert torch.allclose(torch.log_softmax(combine_logits(logits, score), 1), torch.log_softmax(unshifted, 1), atol=1e-6)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def energy_defended(model, fpr=0.5):
    return DefendedClassifier(model, EnergyReject(target_fpr=fpr).calibrate(model, images(32, 2)))


def mahalanobis_defended(model):
    option = make_reject_option("mahalanobis", target_fpr=0.5).fit_reference_on(model, images(40, 1), torch.arange(40) % 10)
    return DefendedClassifier(model, option.calibrate(model, images(32, 2)))


@pytest.mark.parametrize("build", [energy_defended, mahalanobis_defended])
def test_outputs_cost_one_forward_pass_and_match_separate_computation(model, build):
    defended = build(model)
    calls = []
    handle = model.register_forward_hook(lambda module, inputs, output: calls.append(1))
    try:
        x = images(6, 3)
        logits, score = defended.outputs(x)
        assert len(calls) == 1
        from robgen.detection.baselines import penultimate_features

        features, reference_logits = penultimate_features(model, x)
        assert torch.allclose(logits, reference_logits, atol=1e-5)
        expected = defended.reject.score_from(reference_logits, features)
        assert torch.allclose(score.double(), expected.double(), atol=1e-5)
    finally:
        handle.remove()


@pytest.mark.parametrize("build", [energy_defended, mahalanobis_defended])
def test_predict_is_minus_one_exactly_where_rejected(model, build):
    defended = build(model)
    x = images(64, 4)
    logits, score = defended.outputs(x)
    rejected = score > 0
    assert rejected.any() and (~rejected).any()  # a 50% budget: both kinds present
    prediction = defended.predict(x)
    assert torch.equal(prediction == -1, rejected)
    assert torch.equal(prediction[~rejected], logits.argmax(1)[~rejected])
    assert torch.equal(defended.accepts(x), ~rejected)
    assert torch.equal(defended.combined_logits(x).argmax(1) == model.spec.num_classes, rejected)


def test_forward_is_the_models_and_the_combined_logits_carry_gradients(model):
    defended = energy_defended(model)
    x = images(3, 5).requires_grad_(True)
    assert torch.equal(defended(x), model(x))
    defended.combined_logits(x)[:, -1].sum().backward()
    assert float(x.grad.abs().sum()) > 0
    assert defended.spec is model.spec and defended.num_classes == 10
    assert not defended.training and list(defended.parameters()) == list(model.parameters())


def test_a_reject_option_of_another_model_or_unfitted_is_refused_before_any_work(model):
    option = EnergyReject().calibrate(model, images(16, 2))
    with pytest.raises(ValueError, match="calibrated for another model"):
        DefendedClassifier(tiny_model(seed=1), option)
    with pytest.raises(RuntimeError, match="no threshold yet"):
        DefendedClassifier(model, EnergyReject())
    with pytest.raises(TypeError, match="must be a RejectOption"):
        DefendedClassifier(model, lambda x: x)


def test_training_mode_follows_the_model_without_touching_its_submodules():
    model = tiny_model().train()
    batch_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    batch_norm.eval()  # frozen batch norm inside a training model
    option = EnergyReject().fit(torch.randn(20, 10), model=model)
    defended = DefendedClassifier(model, option)
    assert defended.training and not batch_norm.training


def test_points_with_logits_that_are_not_all_finite_are_rejected_by_every_part_that_asks(model):
    """NaN or +inf logits made NaN in the (K+1)-logit model, which argmax read as a class; all -inf logits (an
    energy of +inf) were accepted by the energy detectors. Each is rejected now, by the score and the K+1 logits."""
    calibrated = {kind: make_reject_option(kind, target_fpr=0.5).calibrate(model, images(32, 2))
                  for kind in ("energy", "class-energy")}
    nan, inf = float("nan"), float("inf")
    broken = torch.tensor([[nan, 0.0, 1.0] + [0.0] * 7, [inf] + [0.0] * 9, [inf] * 10, [-inf] * 10])
    for kind, option in calibrated.items():
        score = option.score_from(broken)
        assert bool(option.rejects(broken).all()) and bool((score == inf).all()), kind
        assert torch.equal(combine_logits(broken, score).argmax(1), torch.full((4,), 10)), kind


def test_a_float64_models_mahalanobis_threshold_rejects_on_its_calibration_images_what_it_says():
    """Features rounded to float32 for calibration, then scored in float64, put the image at the threshold just
    above it about half the time: the defended model rejected 6 of 100 where its calibration said 5."""
    from robgen.detection.reject import MahalanobisReject

    class Tiny(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh())
            self.head = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.head(self.body(x))

    for seed in range(3):
        net = Tiny(seed).double().eval()
        train = torch.rand(90, 3, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        validation = torch.rand(100, 3, 2, 2, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
        option = MahalanobisReject(target_fpr=0.05).fit_reference_on(net, train, torch.arange(90) % 3)
        option.calibrate(net, validation)
        with torch.no_grad():
            rejected = int((DefendedClassifier(net, option).score(validation) > 0).sum())
        assert rejected == option.validation["rejected"] <= 5, seed


def test_pixels_of_0_to_255_are_refused_and_float64_ones_are_read_as_the_model_reads_float32(model):
    """model_outputs, calibrate and the defended classifier's predict/score took 0-255 pixels (accuracy near
    chance, energies near -1000, a threshold fitted on them) where the attacks refused them; float64 pixels, numpy's
    usual arrays, crashed the attacks, the suite, model_outputs and predict with "expected scalar type Double"."""
    from robgen import PGD
    from robgen.attacks.adaptive import KPlusOnePGD
    from robgen.attacks.suite import run_suite
    from robgen.experiments.pipeline import model_outputs, tensor_batches

    x, y = images(8, 3), torch.arange(8) % 10
    defended = energy_defended(model)
    bytes_like = (x * 255).round()
    for call in (lambda: model_outputs(model, tensor_batches(bytes_like, y, 4), progress=False),
                 lambda: EnergyReject(target_fpr=0.5).calibrate(model, bytes_like),
                 lambda: defended.predict(bytes_like), lambda: defended.score(bytes_like)):
        with pytest.raises(ValueError, match="divide by 255"):
            call()
    wide = x.double()
    assert torch.equal(defended.predict(wide), defended.predict(x))
    assert torch.equal(model_outputs(model, tensor_batches(wide, y, 4), progress=False).logits,
                       model_outputs(model, tensor_batches(x, y, 4), progress=False).logits)
    def pgd():
        return PGD(model, eps=8 / 255, steps=2, generator=torch.Generator().manual_seed(0))

    from_wide = pgd()(wide, y)  # in the caller's float64, projected onto the ball around the float64 images
    assert from_wide.dtype == torch.float64 and torch.allclose(from_wide.float(), pgd()(x, y), atol=1e-6)
    attack = KPlusOnePGD(defended, eps=8 / 255, steps=2, restarts=1)
    suite = run_suite(defended, wide, y, {"k+1 pgd": attack}, eps=8 / 255)
    assert suite.attacks["k+1 pgd"].images.dtype == torch.float64  # in the caller's type too, as the attack returns it


def test_images_of_another_size_than_the_models_are_refused_where_a_detector_judges_them(model):
    """A threshold fitted on 32 x 32 images judged 64 x 64 ones (another energy distribution) without a word."""
    from robgen.attacks.adaptive import KPlusOnePGD
    from robgen.attacks.suite import run_suite

    defended, big = energy_defended(model), torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(2, dtype=torch.long)
    for call in (lambda: defended.predict(big), lambda: defended.score(big),
                 lambda: EnergyReject(target_fpr=0.5).calibrate(model, big),
                 lambda: KPlusOnePGD(defended, eps=8 / 255, steps=1)(big, y),
                 lambda: run_suite(defended, big, y, {"k+1 pgd": KPlusOnePGD(defended, eps=8 / 255, steps=1)})):
        with pytest.raises(ValueError, match="64x64 pixels but the model takes 32x32"):
            call()


def test_a_reject_option_reading_the_images_gets_them_in_the_models_type():
    """The model got the attack's float32 iterates cast to its type, the reject option the iterates as they came:
    robust-margin (which runs the network on them) and a user's detector of a bfloat16 model failed with torch's
    'mat1 and mat2 must have the same dtype', as did robust-margin on a float32 model given a user's attack's
    float64 points in run_suite. Calibration gives them in the model's type."""
    from robgen.attacks.adaptive import KPlusOnePGD
    from robgen.attacks.suite import run_suite
    from robgen.detection.reject import RejectOption

    x = images(4, 9)
    for dtype in (torch.bfloat16, torch.float16):
        model = tiny_model().to(dtype)
        with torch.no_grad():
            y = model(x.to(dtype)).argmax(1)
        detector = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1)).to(dtype)
        for option in (make_reject_option("robust-margin", target_fpr=0.2, steps=2),
                       RejectOption.from_callable(lambda batch: detector(batch)[:, 0], target_fpr=0.2)):
            defended = DefendedClassifier(model, option.calibrate(model, images(20, 1)))
            found = KPlusOnePGD(defended, 8 / 255, steps=2, generator=torch.Generator().manual_seed(0))(x, y)
            assert found.dtype == torch.float32 and (found - x).abs().max() <= 8 / 255 + 1e-6
    model = tiny_model()
    defended = DefendedClassifier(model, make_reject_option("robust-margin", target_fpr=0.2, steps=2).calibrate(
        model, images(20, 1)))
    with torch.no_grad():
        y = model(x).argmax(1)
    outcome = run_suite(defended, x, y, {"mine": lambda x, y: (x.double() + 0.01).clamp(0, 1)}, eps=8 / 255)
    assert len(outcome.images) == 4
