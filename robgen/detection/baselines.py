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
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ..models.state import eval_mode, model_device


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
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].flatten(1).float().cpu()))
    logits = []
    device = model_device(model)
    try:
        with eval_mode(model):
            for start in range(0, len(x), batch_size):
                logits.append(model(x[start:start + batch_size].to(device)).float().cpu())
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(logits)


class MahalanobisScorer:
    """Distance of penultimate features to the nearest class mean under a tied covariance."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "MahalanobisScorer":
        features = features.double()
        means = torch.stack([features[labels == c].mean(0) for c in range(num_classes)])
        centred = features - means[labels]
        covariance = centred.T @ centred / len(features)
        covariance += 1e-6 * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
        self.means, self.precision = means, torch.linalg.inv(covariance)
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.double()[:, None, :] - self.means[None]  # (N, K, D)
        distances = torch.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return distances.min(1).values


def lid_estimates(queries: torch.Tensor, reference: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Maximum-likelihood LID: -1 / mean_i log(r_i / r_k) over the k nearest reference points.

    The reference points must not include the queries themselves (a zero distance).
    """
    distances = torch.cdist(queries.double(), reference.double())
    nearest = distances.topk(k, dim=1, largest=False).values.clamp_min(1e-12)
    return -1.0 / torch.log(nearest / nearest[:, -1:]).mean(1).clamp_max(-1e-12)


class LIDScorer:
    """Logistic regression over LID estimates of the penultimate features and the logits."""

    def __init__(self, k: int = 20, reference_size: int = 100) -> None:
        self.k, self.reference_size = k, reference_size

    def fit_reference(self, clean_features: torch.Tensor, clean_logits: torch.Tensor) -> "LIDScorer":
        n = min(self.reference_size, len(clean_features))
        if n <= self.k:
            raise ValueError(f"LID needs more than k={self.k} clean reference images, got {n}")
        self.reference = (clean_features[:n], clean_logits[:n])
        return self

    def lid_features(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([lid_estimates(features, self.reference[0], self.k),
                            lid_estimates(logits, self.reference[1], self.k)], dim=1)

    def fit(self, clean: torch.Tensor, adversarial: torch.Tensor, steps: int = 500) -> "LIDScorer":
        """Train the logistic regression on LID features of clean (0) and adversarial (1) examples."""
        x = torch.cat([clean, adversarial]).double()
        y = torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))]).double()
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

    def score(self, lid: torch.Tensor) -> torch.Tensor:
        x = (lid.double() - self.mean) / self.std
        return x @ self.weights[:-1] + self.weights[-1]

