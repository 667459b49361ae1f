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
    assert math.isclose(float(energy(logits)[1]), -math.log(3), rel_tol=1e-6)


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
