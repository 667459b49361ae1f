"""Baseline detectors to set beside the energy detector, on the same examples.

Each turns inputs into one score per example, "higher = more adversarial",
and is thresholded like the energy detector (rules in metrics.py):

- `MahalanobisScorer` (Lee et al. 2018, "A Simple Unified Framework for
  Detecting Out-of-Distribution Samples and Adversarial Attacks"): class-
  conditional Gaussians with a tied covariance on the penultimate features of
  clean training images; score = the smallest Mahalanobis distance to a class
  mean. Simplified: one layer, no input pre-processing, no logistic
  regression over layers, so it needs no adversarial examples to train, only
  (like ours) to pick a threshold.
- `LIDScorer` (Ma et al. 2018, "Characterizing Adversarial Subspaces Using
  Local Intrinsic Dimensionality"): the maximum-likelihood LID estimate of each
  example's penultimate and logit features against a reference batch of clean
  images, combined by a logistic regression trained on validation clean and
  adversarial examples. It needs adversarial examples to train.
- `KDBUScorer` (Feinman et al. 2017, "Detecting Adversarial Samples from
  Artifacts"): kernel density of the penultimate features under the clean
  training features of the predicted class, plus Bayesian uncertainty from MC
  dropout, combined by a logistic regression trained on validation clean and
  adversarial examples. It needs adversarial examples to train. robgen's
  ResNets have no dropout layer, so the MC-dropout passes drop penultimate
  features (p = 0.5) and rerun only the final linear layer.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from typing import List, Optional

import torch
import torch.nn as nn

from ..engine.autograd import gradient_mode, recordable
from ..models.state import eval_mode, model_device, model_dtype, widened

logger = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear head, so its penultimate features cannot be found")
    return linears[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256):
    """(features, logits) of the model's final linear layer's input and output, on the CPU.

    The model runs in eval mode (batch norm on its running statistics, no dropout), so an example's
    features do not depend on the rest of its batch; the caller's mode comes back afterwards.
    """
    head = last_linear(model)
    captured: List[torch.Tensor] = []
    hook = head.register_forward_hook(
        lambda module, inputs, output: captured.append(widened(inputs[0].flatten(1)).cpu()))
    logits = []
    device, dtype = model_device(model), model_dtype(model)
    try:
        with eval_mode(model):
            for start in range(0, len(x), batch_size):
                logits.append(widened(model(x[start:start + batch_size].to(device, dtype))).cpu())
    finally:
        hook.remove()
    features, logits = torch.cat(captured), torch.cat(logits)
    if len(features) != len(logits):  # a model that runs its head more than once a pass: which rows are whose?
        raise ValueError(f"the model's last nn.Linear ran {len(features) // max(len(logits), 1)} times a pass "
                         f"({len(features)} feature rows for {len(logits)} images): its penultimate features are "
                         "not one row per image")
    return features, logits


SCORE_ELEMENTS = 2 ** 25  # float64 elements of one batch of (x - mean) differences: 256 MB (CIFAR-100's 10,000
# test images at once needed about 8 GB); CIFAR-10's and Imagenette's test sets fit in one batch, as before


class MahalanobisScorer:
    """Distance of penultimate features to the nearest class mean under a tied covariance."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "MahalanobisScorer":
        outside = sorted(set(labels.tolist()) - set(range(num_classes)))
        if outside:  # -1 would index the last class's mean, left out of that class's own mean
            raise ValueError(f"Mahalanobis' reference labels must be classes 0-{num_classes - 1}, got {outside}")
        missing = sorted(set(range(num_classes)) - set(labels.tolist()))
        if missing:  # a class without a mean would make every distance NaN
            raise ValueError(f"Mahalanobis needs clean reference features of every class; classes {missing} have none: "
                             "use more reference images")
        features, labels = features.detach().double(), labels.detach()  # statistics, not part of any graph
        if not torch.isfinite(features).all():  # NaN means and precision would reject every point later, blaming those
            raise ValueError("Mahalanobis' reference features hold NaN or infinite values: check the model's "
                             "outputs on the reference images (or the features given)")
        if len(features) - num_classes < features.shape[1]:
            logger.warning("Mahalanobis: %d reference images of %d classes give a tied covariance of rank at most %d "
                           "for %d features: the distances are then led by the directions the references do not "
                           "span (tiny ridge), and the scores say little; use more than %d reference images",
                           len(features), num_classes, len(features) - num_classes, features.shape[1],
                           features.shape[1] + num_classes)
        means = torch.stack([features[labels == c].mean(0) for c in range(num_classes)])
        centred = features - means[labels]
        covariance = centred.T @ centred / len(features)
        ridge = 1e-6 * float(covariance.diagonal().mean())
        if not ridge > 0:  # no spread at all (e.g. one image per class): an absolute ridge keeps it invertible
            ridge = 1e-6
        # A ridge, not Lee et al.'s pseudo-inverse: a direction the references never span then counts heavily
        # instead of not at all (the shipped models' covariances have full rank, smallest eigenvalue ~1e4 x ridge)
        covariance += ridge * torch.eye(len(covariance), dtype=covariance.dtype)
        # contiguous: linalg.inv gives a column-major matrix, and the scores a saved scorer computes from its
        # row-major copy then differed in the last bits from the fitted one's
        self.means, self.precision = means.contiguous(), torch.linalg.inv(covariance).contiguous()
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        features = features.double()
        classes, dimensions = self.means.shape
        rows = max(1, SCORE_ELEMENTS // (classes * dimensions))  # an (N, K, D) difference per batch of rows
        parts = []
        for start in range(0, len(features), rows):
            diff = features[start:start + rows, None, :] - self.means[None]
            parts.append(torch.einsum("nkd,de,nke->nk", diff, self.precision, diff).min(1).values)
        return torch.cat(parts) if parts else features.new_zeros(0)


def lid_estimates(queries: torch.Tensor, reference: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Maximum-likelihood LID: -1 / mean_i log(r_i / r_k) over the k nearest reference points.

    A reference point at distance 0 (the query itself, or a duplicate of it) is left out, as Ma et al. leave the
    point itself out: log 0 would put the estimate at 0 or, all k at 0, at 1e12.
    """
    given = k
    try:  # any integer type (numpy's too); not a bool, a float or text
        k = None if isinstance(k, bool) else operator.index(k)
    except TypeError:
        k = None
    if k is None or k < 2:  # the estimate needs 2 distances: k=1 gives 1e12
        raise ValueError(f"LID's k must be a whole number of at least 2 nearest neighbours (Ma et al.: 20), "
                         f"got {given!r}")
    # exact differences (the matrix-product shortcut leaves a twin 1e-8 away, not at 0)
    distances = torch.cdist(queries.double(), reference.double(), compute_mode="donot_use_mm_for_euclid_dist")
    distances = distances.masked_fill(distances == 0, math.inf)
    if k > len(reference) or bool(torch.isinf(distances.topk(k, dim=1, largest=False).values).any()):
        raise ValueError(f"LID needs more than k={k} clean reference images at a distance > 0 from every query, "
                         f"got {len(reference)} (duplicates of a query do not count)")
    nearest = distances.topk(k, dim=1, largest=False).values
    return -1.0 / torch.log(nearest / nearest[:, -1:]).mean(1).clamp_max(-1e-12)


class LIDScorer:
    """Logistic regression over LID estimates of the penultimate features and the logits."""

    def __init__(self, k: int = 20, reference_size: int = 100) -> None:
        self.k, self.reference_size = k, reference_size

    def fit_reference(self, clean_features: torch.Tensor, clean_logits: torch.Tensor) -> "LIDScorer":
        n = min(self.reference_size, len(clean_features))
        if n <= self.k:
            raise ValueError(f"LID needs more than k={self.k} clean reference images, got {n}")
        self.reference = (clean_features[:n].detach(), clean_logits[:n].detach())
        return self

    def lid_features(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([lid_estimates(features, self.reference[0], self.k),
                            lid_estimates(logits, self.reference[1], self.k)], dim=1)

    def fit(self, clean: torch.Tensor, adversarial: torch.Tensor) -> "LIDScorer":
        """Train the logistic regression on LID features of clean (0) and adversarial (1) examples."""
        self.regression = LogisticRegression().fit(clean, adversarial)
        return self

    def score(self, lid: torch.Tensor) -> torch.Tensor:
        return self.regression.score(lid)


class LogisticRegression:
    """Standardised features, an L2-regularised logistic regression fitted by L-BFGS; score = its logit."""

    def fit(self, negatives: torch.Tensor, positives: torch.Tensor, steps: int = 500) -> "LogisticRegression":
        """Fit on feature rows of negatives (label 0: clean) and positives (label 1: adversarial)."""
        with gradient_mode():  # also inside the caller's torch.no_grad() or torch.inference_mode()
            return self._fit(recordable(negatives), recordable(positives), steps)

    def _fit(self, negatives: torch.Tensor, positives: torch.Tensor, steps: int) -> "LogisticRegression":
        x = torch.cat([negatives, positives]).double()  # the fit differentiates its weights only
        y = torch.cat([torch.zeros(len(negatives)), torch.ones(len(positives))]).double()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-12)
        x = (x - self.mean) / self.std
        weights = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = x @ weights[:-1] + weights[-1]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 1e-4 * weights[:-1].pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weights = weights.detach()
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.std
        return x @ self.weights[:-1] + self.weights[-1]


class KDBUScorer:
    """Kernel density (KD) and Bayesian uncertainty (BU), combined by a logistic regression (Feinman et al. 2017).

    - KD(x) = mean over clean training features z_i of the predicted class of
      exp(-||z(x) - z_i||² / σ²); kept as its logarithm (adversarial examples
      sit in low-density regions: low KD).
    - BU(x) = mean_t ||p_t||² - ||mean_t p_t||², the variance of the softmax
      p_t over `passes` MC-dropout passes (high near decision boundaries).
    `bandwidth` σ defaults to the median distance between reference features.
    """

    def __init__(self, bandwidth: Optional[float] = None, passes: int = 50, dropout: float = 0.5) -> None:
        if not 0 < dropout < 1:
            raise ValueError(f"dropout must be between 0 and 1, got {dropout}")
        self.bandwidth, self.passes, self.dropout = bandwidth, int(passes), float(dropout)

    def fit_reference(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "KDBUScorer":
        """Store the clean training features of each class (and pick σ if not given)."""
        features = features.double()
        outside = sorted(set(torch.as_tensor(labels).tolist()) - set(range(num_classes)))
        if outside:  # left out of every class's reference without a word
            raise ValueError(f"KD's reference labels must be classes 0-{num_classes - 1}, got {outside}")
        self.reference = [features[labels == c] for c in range(num_classes)]
        missing = [c for c, rows in enumerate(self.reference) if len(rows) == 0]
        if missing:
            raise ValueError(f"KD needs clean reference features of every class; classes {missing} have none")
        if self.bandwidth is None:
            sample = features[: min(len(features), 1000)]
            distances = torch.cdist(sample, sample)
            apart = distances[distances > 0]
            if apart.numel() == 0:  # the median of nothing failed inside torch
                raise ValueError("KD's reference features are all the same point, so no bandwidth can be read off "
                                 "their distances: use reference images that differ, or give bandwidth=")
            self.bandwidth = float(apart.median())
        return self

    def log_density(self, features: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        """log KD(x) under the reference features of each example's predicted class."""
        features = features.double()
        if len(predictions) and not 0 <= int(predictions.min()) <= int(predictions.max()) < len(self.reference):
            raise ValueError(f"predictions must be classes 0..{len(self.reference) - 1}, got "
                             f"{int(predictions.min())}..{int(predictions.max())}")
        out = torch.full((len(features),), math.nan, dtype=torch.float64)
        for c, reference in enumerate(self.reference):
            rows = predictions == c
            if rows.any():
                squared = torch.cdist(features[rows], reference).pow(2)
                out[rows] = torch.logsumexp(-squared / self.bandwidth**2, dim=1) - math.log(len(reference))
        return out

    def uncertainty(self, features: torch.Tensor, head: nn.Linear, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """BU(x): the variance of the softmax over MC-dropout passes through the final linear layer."""
        head = copy.deepcopy(head).to("cpu").double()  # the model's own head stays as it is
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        features = features.double()
        keep = 1 - self.dropout
        with torch.no_grad():
            probs = torch.stack([
                torch.softmax(head(features * (torch.rand(features.shape, generator=generator, dtype=torch.float64) < keep)
                                   / keep), dim=1)
                for _ in range(self.passes)
            ])  # (passes, N, K)
        return probs.pow(2).sum(2).mean(0) - probs.mean(0).pow(2).sum(1)

    def kdbu_features(self, features: torch.Tensor, logits: torch.Tensor, head: nn.Linear,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(N, 2): log KD and BU of each example."""
        return torch.stack([self.log_density(features, logits.argmax(1)), self.uncertainty(features, head, generator)], 1)

    def fit(self, clean: torch.Tensor, adversarial: torch.Tensor) -> "KDBUScorer":
        """Train the logistic regression on KD/BU features of clean (0) and adversarial (1) validation examples."""
        self.regression = LogisticRegression().fit(clean, adversarial)
        return self

    def score(self, kdbu: torch.Tensor) -> torch.Tensor:
        """Higher = more adversarial."""
        return self.regression.score(kdbu)
