import math

import pytest
import torch

from robgen import class_energy, energy, log_prob_given_x, model_outputs


def test_energy_matches_formula_and_temperature():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = -torch.log(torch.exp(logits).sum(1))
    assert torch.allclose(energy(logits), expected)
    assert energy(logits).shape == (2,)
    T = 5.0
    assert torch.allclose(energy(logits, temperature=T), -T * torch.log(torch.exp(logits / T).sum(1)))


def test_energy_properties_that_do_not_restate_the_formula():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(64, 10, generator=g, dtype=torch.float64)
    top = logits.max(1).values
    for T in (0.5, 1.0, 5.0):
        e = energy(logits, temperature=T)
        # -max f - T log K <= E <= -max f: softmax mass sits between 1/K and 1 on the top logit
        assert (e <= -top + 1e-12).all() and (e >= -top - T * math.log(10) - 1e-12).all()
        assert torch.allclose(energy(logits + 2.5, temperature=T), e - 2.5), "a shift of every logit shifts E"
        assert torch.allclose(e, T * energy(logits / T)), "E_T(f) = T E_1(f / T)"
    # large logits: logsumexp must not overflow where exp would
    assert energy(torch.tensor([[1000.0, 1000.0]])).item() == pytest.approx(-1000 - math.log(2))


def test_low_temperature_tends_to_minus_max_logit():
    logits = torch.randn(5, 10)
    assert torch.allclose(energy(logits, temperature=1e-3), -logits.max(1).values, atol=1e-2)


def test_class_energy_and_log_prob_are_consistent():
    logits = torch.randn(7, 10)
    y = torch.randint(0, 10, (7,))
    assert torch.equal(class_energy(logits, y), -logits[torch.arange(7), y])
    # log p(y|x) = -E(x, y) + E(x)
    assert torch.allclose(log_prob_given_x(logits, y), -class_energy(logits, y) + energy(logits), atol=1e-6)


def test_energy_refuses_probabilities_and_bad_temperature():
    with pytest.raises(ValueError, match="probabilities"):
        energy(torch.randn(3, 10).softmax(1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        energy(torch.randn(3, 10), temperature=0)


def test_model_outputs_over_batches_in_order(model, batch):
    x, y = batch
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    model.train()
    record = model_outputs(model, loader, progress=False)
    assert model.training, "the caller's mode is restored"
    with torch.no_grad():
        logits = model.eval()(x)
    assert torch.allclose(record.logits, logits, atol=1e-5)
    assert torch.allclose(record.energy(), energy(logits), atol=1e-5)
    assert torch.equal(record.labels, y)
    assert torch.equal(record.predictions, logits.argmax(1))


def test_model_outputs_reports_progress_through_a_callback(model, batch):
    x, y = batch
    seen = []
    model_outputs(model, [(x, y), (x, y)], progress=lambda fraction, desc="": seen.append(fraction))
    assert seen[0] == 0.0 and seen[-1] == 1.0


def test_eval_mode_restores_each_modules_own_mode():
    from robgen.models.state import eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).train()
    model[1].eval()  # fine-tuning with frozen batch norm
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_half_precision_logits_at_a_small_temperature_do_not_overflow():
    """logits / T in float16 overflowed to inf at T = 1e-3 (energy -inf or +inf where the limit is -max logit)."""
    from robgen.energy import energy

    for row, expected in (([70.0, 3.0], -70.0), ([-70.0, -80.0], 70.0), ([20.0, 3.0, -5.0], -20.0)):
        for dtype in (torch.float16, torch.bfloat16):
            value = energy(torch.tensor([row], dtype=dtype), temperature=1e-3, check=False)
            assert value.dtype == torch.float32 and float(value) == pytest.approx(expected, abs=0.1), (row, dtype)


def test_labels_that_do_not_fit_the_logits_are_refused_saying_why():
    """y was never checked: 2 labels for 4 rows gave 2 energies, float labels were truncated, an int raised an
    AttributeError and a label past the classes torch's index error."""
    from robgen.energy import classification_margin

    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    for function in (class_energy, log_prob_given_x, classification_margin):
        with pytest.raises(ValueError, match=r"shape \(4,\) to match the images"):
            function(logits, torch.tensor([0, 1]))
        with pytest.raises(TypeError, match="integer class indices"):
            function(logits, torch.tensor([0.9, 1.9, 2.9, 3.9]))
        with pytest.raises(ValueError, match="the model has 5 classes"):
            function(logits, torch.tensor([0, 1, 2, 5]))
        assert torch.equal(function(logits, 3), function(logits, torch.full((4,), 3)))  # one class for every row
        assert torch.equal(function(logits, [0, 1, 2, 3]), function(logits, torch.arange(4)))


def test_a_temperature_below_float32s_range_for_logits_over_it_gives_the_limit():
    """logits / T overflowed float32 to inf at T = 1e-40 (energy -inf where the limit is minus the largest logit),
    and at T = 1e-37 for logits of 100; the gradient is still -softmax(logits / T)."""
    from robgen.energy import energy

    for temperature in (1e-37, 1e-40, 1e-45, 1e-46, 1e-300):  # below 1.4e-45, 0 in float32: 0 / 0 gave NaN
        logits = torch.tensor([[100.0, 2.0, -3.0], [1.0, 1.0, 0.0]], requires_grad=True)
        value = energy(logits, temperature=temperature)
        assert torch.isfinite(value).all()
        assert float(value[0].detach()) == -100.0 and float(value[1].detach()) == pytest.approx(-1.0, abs=1e-30)
        value.sum().backward()
        assert torch.allclose(logits.grad, torch.tensor([[-1.0, 0.0, 0.0], [-0.5, -0.5, 0.0]]))
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    for temperature in (0.5, 1.0, 3.0):
        value = energy(logits, temperature=temperature)
        assert torch.allclose(value, -temperature * torch.logsumexp(logits / temperature, dim=1))
        (gradient,) = torch.autograd.grad(value.sum(), logits)
        assert torch.allclose(gradient, -torch.softmax(logits / temperature, dim=1))
