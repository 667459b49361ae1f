import math

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


def test_mahalanobis_refuses_a_class_without_reference_features_and_fits_one_image_per_class():
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"classes \[2\] have none: use more reference images"):
        MahalanobisScorer().fit(features[:4], torch.tensor([0, 1, 0, 1]), 3)  # NaN class means before
    one_each = MahalanobisScorer().fit(features[:3], torch.tensor([0, 1, 2]), 3)  # no spread: singular before
    scores = one_each.score(features)
    assert torch.isfinite(scores).all() and (scores[:3] == 0).all() and (scores[3:] > 0).all()
    with pytest.raises(ValueError, match=r"labels must be classes 0-2, got \[-1\]"):  # -1: the last class's mean
        MahalanobisScorer().fit(features, torch.tensor([0, 1, 2, 0, 1, -1]), 3)


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


def _two_clusters(n: int, generator: torch.Generator):
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0]])
    labels = torch.arange(n) % 2
    return centres[labels] + 0.5 * torch.randn(n, 2, generator=generator), labels


def test_kernel_density_is_the_gaussian_kernel_mean_by_hand():
    from robgen.detection import KDBUScorer

    reference = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    scorer = KDBUScorer(bandwidth=1.5).fit_reference(reference, torch.tensor([0, 0, 1]), 2)
    query = torch.tensor([[1.0, 1.0]])
    expected = math.log((math.exp(-2 / 1.5**2) + math.exp(-2 / 1.5**2)) / 2)  # both class-0 points are sqrt(2) away
    assert float(scorer.log_density(query, torch.tensor([0]))) == pytest.approx(expected)
    far = float(scorer.log_density(torch.tensor([[30.0, -30.0]]), torch.tensor([0])))
    assert far < expected - 100  # off the class's manifold: next to no density


def test_bayesian_uncertainty_is_high_at_the_boundary_and_zero_for_a_fixed_prediction():
    from robgen.detection import KDBUScorer

    scorer = KDBUScorer(passes=200, dropout=0.5)
    # 100 features all voting for class 0: whichever half dropout keeps, class 0 wins by a mile: no spread
    wide = torch.nn.Linear(100, 2, bias=False)
    with torch.no_grad():
        wide.weight.copy_(torch.stack([torch.ones(100), -torch.ones(100)]))
    assert float(scorer.uncertainty(torch.ones(1, 100), wide)[0]) == pytest.approx(0.0, abs=1e-12)
    # one feature at the boundary: dropped -> p = (.5, .5), ||p||² = .5; kept (x2) -> p ≈ (1, 0), ||p||² ≈ 1
    narrow = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        narrow.weight.copy_(torch.tensor([[4.0, 0.0], [-4.0, 0.0]]))
    bu = scorer.uncertainty(torch.tensor([[1.0, 0.0]]), narrow, torch.Generator().manual_seed(0))
    # mean ||p||² ≈ .75 and mean p ≈ (.75, .25): BU ≈ .75 - (.5625 + .0625) = .125
    assert float(bu[0]) == pytest.approx(0.125, abs=0.02)
    assert torch.equal(narrow.weight, torch.tensor([[4.0, 0.0], [-4.0, 0.0]])), "the model's head is left as it was"


def test_kdbu_separates_off_manifold_features_and_needs_adversarial_examples_to_fit():
    from robgen.detection import KDBUScorer
    from robgen.metrics import auroc

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    train, train_labels = _two_clusters(400, g)
    scorer = KDBUScorer().fit_reference(train, train_labels, 2)

    def features(split_clean, split_adv):
        return [scorer.kdbu_features(x, head(x), head, torch.Generator().manual_seed(1)) for x in (split_clean, split_adv)]

    clean_val, _ = _two_clusters(200, g)
    adv_val = torch.randn(200, 2, generator=g) * 0.5 + torch.tensor([0.0, 3.0])  # between the classes, off both
    clean_test, _ = _two_clusters(200, g)
    adv_test = torch.randn(200, 2, generator=g) * 0.5 + torch.tensor([0.0, 3.0])
    scorer.fit(*features(clean_val, adv_val))
    clean_scores, adv_scores = (scorer.score(f) for f in features(clean_test, adv_test))
    assert auroc(-clean_scores, -adv_scores) > 0.95  # higher score = more adversarial


def test_fitting_on_features_that_carry_a_graph_keeps_none_of_it():
    """Features computed outside no_grad: the logistic regression's L-BFGS went back through their graph on its
    second closure call (RuntimeError), and Mahalanobis kept statistics that required a gradient."""
    from robgen.detection.baselines import LogisticRegression

    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(4, 2, requires_grad=True)
    features = torch.randn(40, 4, generator=g) @ mixing
    regression = LogisticRegression().fit(features[:20], features[20:] + 1)
    assert not regression.weights.requires_grad and not regression.mean.requires_grad
    scorer = MahalanobisScorer().fit(features, torch.arange(40) % 2, 2)
    assert not scorer.means.requires_grad and not scorer.precision.requires_grad


def test_lid_leaves_out_reference_points_at_distance_zero():
    """A duplicate of a query in the reference set (log 0): its LID was 1e12 with all k at 0, near 0 with one."""
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(200, 5, generator=g, dtype=torch.float64)
    query = reference[:3].clone()
    with_duplicates = lid_estimates(query, reference, k=20)  # each query's twin is in the reference set
    alone = torch.cat([lid_estimates(query[i:i + 1], torch.cat([reference[:i], reference[i + 1:]]), k=20)
                       for i in range(3)])
    assert torch.isfinite(with_duplicates).all() and (with_duplicates > 0).all()
    assert torch.allclose(with_duplicates, alone), "the twin is left out: the estimate of the other points"
    with pytest.raises(ValueError, match="distance > 0"):
        lid_estimates(query[:1], torch.cat([query[:1]] * 30), k=20)  # nothing but twins
    for k in (0, 1):  # all NaN, and 1e12 for every query: the estimate needs two distances (a review, 2026-12-07)
        with pytest.raises(ValueError, match="at least 2 nearest neighbours"):
            lid_estimates(query, reference, k=k)


def test_mahalanobis_warns_of_a_rank_deficient_covariance_and_scores_in_batches(caplog, monkeypatch):
    """2,000 reference images of 2,048 features (the Imagenette model's defaults) gave a singular covariance, ridge
    1e-6: scores led by what the references do not span; and scoring built an (N, K, D) array at once (8 GB for
    CIFAR-100's test set)."""
    import robgen.detection.baselines as baselines

    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(30, 40, generator=g), torch.arange(30) % 3
    with caplog.at_level("WARNING"):
        MahalanobisScorer().fit(features, labels, 3)
    assert "rank at most 27 for 40 features" in caplog.text
    scorer = MahalanobisScorer().fit(torch.randn(300, 8, generator=g), torch.arange(300) % 3, 3)
    queries = torch.randn(50, 8, generator=g)
    whole = scorer.score(queries)
    monkeypatch.setattr(baselines, "SCORE_ELEMENTS", 3 * 8 * 7)  # seven rows a batch
    assert torch.allclose(scorer.score(queries), whole, rtol=1e-12)


def test_kernel_density_refuses_a_prediction_outside_the_classes():
    from robgen.detection.baselines import KDBUScorer

    kd = KDBUScorer().fit_reference(torch.randn(20, 4), torch.arange(20) % 2, 2)
    with pytest.raises(ValueError, match="classes 0..1"):  # an uninitialised value came back
        kd.log_density(torch.randn(3, 4), torch.tensor([0, 1, 2]))


def test_lids_k_may_be_numpys_integer_and_kds_labels_must_be_classes():
    """A numpy integer k (from a config or a sweep) was refused as not whole; KD dropped reference labels outside
    the classes without a word, which Mahalanobis refuses."""
    import numpy as np

    from robgen.detection.baselines import KDBUScorer, lid_estimates

    reference = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lid_estimates(reference[:3], reference, k=np.int64(5)), lid_estimates(reference[:3], reference, k=5))
    for k in (True, 2.0, 1):
        with pytest.raises(ValueError, match="whole number of at least 2"):
            lid_estimates(reference[:3], reference, k=k)
    with pytest.raises(ValueError, match=r"reference labels must be classes 0-1, got \[-1, 7\]"):
        KDBUScorer().fit_reference(reference[:6], torch.tensor([0, 1, -1, 7, 0, 1]), 2)


def test_kd_refuses_reference_features_that_are_one_point_saying_what_to_give():
    """The bandwidth was the median of the distances above 0: of none, a bare torch error."""
    from robgen.detection.baselines import KDBUScorer

    with pytest.raises(ValueError, match="all the same point.*give bandwidth="):
        KDBUScorer().fit_reference(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), 2)
    assert KDBUScorer(bandwidth=1.0).fit_reference(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), 2).bandwidth == 1.0
