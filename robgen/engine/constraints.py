"""Threat models for the projected-gradient loop: L-inf ball, L2 ball, none.

Each constraint knows three things about its set around the clean image x:
how to draw a random start inside it, which direction of steepest ascent a
gradient gives under its norm, and how to project back into it (and into the
valid pixel range [0, 1]).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..checks import check_positive
from .random import random_normal, random_uniform


def finite_gradient(grad: torch.Tensor) -> torch.Tensor:
    """`grad` with NaN entries set to 0 and infinite ones to the largest finite number of their sign. A NaN entry
    (a detector undefined at the point: a user's sqrt of a negative number) is no direction, as `torch.sign`
    already reads it; without this, one NaN made the L2 direction NaN in every pixel and the iterate NaN for the
    rest of the attack, which lost the image to the attacker."""
    return torch.nan_to_num(grad, nan=0.0)


def unit_direction(grad: torch.Tensor) -> torch.Tensor:
    """grad / ||grad||_2 per image, 0 where the gradient is 0. Not grad / (||grad|| + c): a confident image's
    float32 gradient can be 1e-12 long, and any constant c shortens its step (1e-10: to 1% of step_size). Scaled
    by its largest entry first, so that the squares of a still shorter one do not underflow. NaN entries count
    as 0 (`finite_gradient`)."""
    grad = finite_gradient(grad)
    tiny = torch.finfo(grad.dtype).tiny
    scaled = grad / grad.abs().flatten(1).amax(1).clamp_min(tiny).view(-1, *([1] * (grad.ndim - 1)))
    return scaled / _flat_norms(scaled).clamp_min(tiny)


def _flat_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms, shaped (N, 1, 1, 1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


class LinfBall:
    """{x' : ||x' - x||_inf <= eps} ∩ [0, 1]^d; steepest ascent is sign(grad)."""

    norm = "linf"

    def __init__(self, eps: float) -> None:
        self.eps = check_positive(eps, "eps")
        if self.eps > 1:
            hint = (f"so did you mean {self.eps:g}/255 = {self.eps / 255:.4f}?" if float(self.eps).is_integer() else
                    "so give at most 1 (= 255/255)")  # 300/255 is no 0-255 value to divide again
            raise ValueError(
                f"L-inf eps={self.eps:g} is larger than the whole pixel range [0, 1]; pixels are in [0, 1], {hint}"
            )

    def random_start(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        noise = random_uniform(x.shape, x, generator) * (2 * self.eps) - self.eps
        return (x + noise).clamp_(0, 1)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return finite_gradient(grad).sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = (x_adv - x).clamp_(-self.eps, self.eps)
        return (x + delta).clamp_(0, 1)


class L2Ball:
    """{x' : ||x' - x||_2 <= eps} ∩ [0, 1]^d; steepest ascent is grad / ||grad||."""

    norm = "l2"

    def __init__(self, eps: float) -> None:
        self.eps = check_positive(eps, "eps")

    def random_start(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """A point drawn uniformly from the L2 ball of radius eps around each image (then clipped to [0, 1]).

        Uniform in a d-dimensional ball (d = pixels per image, C*H*W) means a uniform
        direction and a radius eps * U^(1/d), U ~ U[0, 1): almost all of the ball's
        volume lies near its surface, so for d = 3072 nearly every start has radius
        above 0.99 * eps. torchattacks' PGDL2 instead draws the radius uniformly in
        [0, eps], which puts half of its starts within eps / 2; robgen's L2 starts
        therefore differ from torchattacks' in distribution, not only in the draws.
        """
        direction = random_normal(x.shape, x, generator)
        direction = direction / _flat_norms(direction).clamp_min(1e-12)
        dimension = x[0].numel()
        radius = random_uniform((x.shape[0],) + (1,) * (x.ndim - 1), x, generator).pow(1.0 / dimension) * self.eps
        return self.project(x + direction * radius, x)  # its pixels' rounding can carry it past eps: see project

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return unit_direction(grad)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + (x_adv - x) scaled into the ball, in [0, 1], at most eps from x in the images' own type.

        Worked out in float64, and each pixel then rounded no farther from x than the scaled difference: rounding
        x + delta to float32 moves each pixel up to half an ulp, and over 3,072 pixels those add up to about 1e-6 in
        L2 norm, so the nearest float32 images lay up to 22% outside a ball of 1e-6 (0.75% at 1e-5, a few ulps at
        1e-2). A pixel the nearest rounding carried past its share is moved one float back toward x."""
        wanted = x_adv.double() - x.double()
        wanted = wanted * (self.eps / _flat_norms(wanted).clamp_min(1e-300)).clamp_(max=1.0)
        rounded = (x.double() + wanted).to(torch.promote_types(x_adv.dtype, x.dtype))  # as x + delta was
        past = (rounded.double() - x.double()).abs() > wanted.abs()
        rounded = torch.where(past, torch.nextafter(rounded, x.to(rounded.dtype)), rounded)
        return rounded.clamp_(0, 1)  # x is in [0, 1]: the clamp only brings a pixel nearer to it


class Unconstrained:
    """Only the pixel range [0, 1]; steps along the L2-normalised gradient."""

    norm = "none"
    eps = float("inf")

    def random_start(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return x.clone()

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return unit_direction(grad)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x_adv.clamp_(0, 1)


class Masked:
    """Another constraint restricted to the pixels where `mask` is true; the rest stay exactly as x.

    `mask` is a boolean tensor broadcastable to the images, e.g. (N, 1, H, W).
    Masked synthesis (inpainting, shape-guided layouts) uses it: the gradient
    is zeroed outside the mask before the steepest-ascent direction is taken,
    so an L2 step spends its whole length inside the mask.
    """

    def __init__(self, inner, mask: torch.Tensor) -> None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
        self.inner, self.mask = inner, mask
        self.norm, self.eps = inner.norm, inner.eps

    def random_start(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return torch.where(self.mask, self.inner.random_start(x, generator), x)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return self.inner.direction(grad * self.mask)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.inner.project(x_adv, x), x)


def make_constraint(norm: str, eps: float):
    """The constraint for a norm name: "linf" / "inf", "l2" or "none"."""
    key = str(norm).lower().replace("-", "").replace("_", "")
    if key in ("linf", "inf"):
        return LinfBall(eps)
    if key == "l2":
        return L2Ball(eps)
    if key == "none":
        return Unconstrained()
    raise ValueError(f"unknown norm {norm!r}: use 'linf' or 'l2'")
