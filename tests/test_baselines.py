import pytest
import torch

from robgen.detection.baselines import LIDScorer, MahalanobisScorer, lid_estimates, penultimate_features
from tests.conftest import tiny_model


def test_lid_estimates_the_intrinsic_dimension():
    g = torch.Generator().manual_seed(0)
    for d in (2, 8):
        reference = torch.zeros(5000, 50)
        reference[:, :d] = torch.rand(5000, d, generator=g)
        queries = torch.zeros(200, 50)
        queries[:, :d] = 0.25 + 0.5 * torch.rand(200, d, generator=g)
        assert float(lid_estimates(queries, reference, k=20).mean()) == pytest.approx(d, rel=0.2)


def test_mahalanobis_distance_is_chi_square_on_gaussian_classes():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3000,), generator=g)
    features = torch.randn(3000, 5, generator=g) + 4.0 * labels[:, None]
    scorer = MahalanobisScorer().fit(features, labels, 3)
    assert float(scorer.score(features).mean()) == pytest.approx(5.0, rel=0.1)  # E[chi2(5)] = 5
    assert (scorer.score(features + 30) > 100).all()


def test_lid_scorer_separates_what_it_was_trained_on():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(200, 2, generator=g)
    adversarial = torch.randn(200, 2, generator=g) + 3
    scorer = LIDScorer().fit(clean, adversarial)
    assert scorer.score(adversarial).mean() > scorer.score(clean).mean()


def test_penultimate_features_are_the_input_of_the_head():
    model = tiny_model()
    x = torch.rand(5, 3, 32, 32)
    features, logits = penultimate_features(model, x, batch_size=2)
    with torch.no_grad():
        expected = model.net.forward_features((x - model.mean) / model.std)
        assert torch.allclose(features, expected, atol=1e-5)
        assert torch.allclose(logits, model(x), atol=1e-5)
