import pytest
import torch

from robgen.detection.baselines import LIDScorer, MahalanobisScorer, lid_estimates, penultimate_features
from robgen.metrics import auroc
from tests.conftest import tiny_model


def rotation(n, seed=0):
    """A random n x n orthonormal basis (rows), so that no manifold below lies along the axes."""
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


@pytest.mark.parametrize("dimension", [2, 5])
def test_lid_estimates_the_intrinsic_dimension(dimension):
    """Points of a d-dimensional cube placed at a slant in 10-D: the estimate is d, not 10."""
    g = torch.Generator().manual_seed(dimension)
    basis = rotation(10)[:dimension]
    reference = torch.rand(5000, dimension, generator=g, dtype=torch.float64) @ basis
    queries = (0.25 + 0.5 * torch.rand(200, dimension, generator=g, dtype=torch.float64)) @ basis  # away from the faces
    assert float(lid_estimates(queries, reference, k=20).mean()) == pytest.approx(dimension, rel=0.15)


def test_mahalanobis_distance_is_chi_square_on_gaussian_classes():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3000,), generator=g)
    features = torch.randn(3000, 5, generator=g) + 4.0 * labels[:, None]
    scorer = MahalanobisScorer().fit(features, labels, 3)
    assert float(scorer.score(features).mean()) == pytest.approx(5.0, rel=0.1)  # E[chi2(5)] = 5
    assert (scorer.score(features + 30) > 100).all()


class ManifoldData:
    """Clean penultimate features on a 2-D plane and logits on a 3-D subspace, both slanted in 10-D;
    adversarial ones are clean points pushed a distance `off` out of those subspaces."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.basis = rotation(10, seed).float()

    def clean(self, n):
        features = torch.rand(n, 2, generator=self.g) @ self.basis[:2]
        logits = 5 * torch.rand(n, 3, generator=self.g) @ self.basis[:3]
        return features, logits

    def adversarial(self, n, off=0.2):
        features, logits = self.clean(n)
        return features + self._away(n, 2, off), logits + self._away(n, 3, 5 * off)

    def _away(self, n, inside, length):
        step = torch.randn(n, 10 - inside, generator=self.g) @ self.basis[inside:]
        return length * step / step.norm(dim=1, keepdim=True)


def test_lid_of_adversarial_features_off_the_clean_manifold_is_high_and_the_scorer_detects_them():
    data = ManifoldData()
    scorer = LIDScorer(k=20, reference_size=100).fit_reference(*data.clean(100))
    clean_val, adv_val = scorer.lid_features(*data.clean(200)), scorer.lid_features(*data.adversarial(200))
    assert float(clean_val[:, 0].mean()) == pytest.approx(2, rel=0.25), "clean features: the plane's dimension"
    assert (adv_val.mean(0) > clean_val.mean(0) + 1).all(), "off the manifold, both LID estimates rise"
    scorer.fit(clean_val, adv_val)
    clean_test, adv_test = scorer.lid_features(*data.clean(200)), scorer.lid_features(*data.adversarial(200))
    assert auroc(-scorer.score(clean_test), -scorer.score(adv_test)) > 0.95  # held-out points; low = adversarial


def test_lid_scorer_cannot_separate_points_that_stay_on_the_manifold():
    data = ManifoldData(seed=1)
    scorer = LIDScorer(k=20, reference_size=100).fit_reference(*data.clean(100))
    scorer.fit(scorer.lid_features(*data.clean(200)), scorer.lid_features(*data.adversarial(200, off=0.0)))
    clean_test = scorer.lid_features(*data.clean(300))
    on_manifold = scorer.lid_features(*data.adversarial(300, off=0.0))
    assert auroc(-scorer.score(clean_test), -scorer.score(on_manifold)) == pytest.approx(0.5, abs=0.1)


def test_penultimate_features_are_the_input_of_the_head():
    model = tiny_model()
    x = torch.rand(5, 3, 32, 32)
    features, logits = penultimate_features(model, x, batch_size=2)
    with torch.no_grad():
        expected = model.net.forward_features((x - model.mean) / model.std)
        assert torch.allclose(features, expected, atol=1e-5)
        assert torch.allclose(logits, model(x), atol=1e-5)


def test_penultimate_features_of_a_model_in_train_mode_are_its_eval_mode_features():
    model = tiny_model()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = penultimate_features(model, x, batch_size=3)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    features, logits = penultimate_features(model, x, batch_size=3)
    assert model.training, "the caller's mode comes back"
    assert torch.equal(features, expected[0]) and torch.equal(logits, expected[1]), "batch norm used running statistics"
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), f"{name}: no running statistic was updated"
