"""Input checks that refuse silent mistakes, with messages that say what to fix.

Every public entry point of robgen runs its inputs through these before doing
any work, so that a wrong shape, a pixel range of [0, 255] or a softmax output
passed as logits fails at once instead of producing plausible-looking numbers.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch

# Pixels may leave [0, 1] by float rounding only.
PIXEL_TOLERANCE = 1e-5


def check_pixels(x: torch.Tensor, channels: Optional[int] = None, name: str = "x") -> None:
    """Require a float NCHW batch of pixels in [0, 1] (with `channels` channels if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of pixels, got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{name} must be a batch of images of shape (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if channels is not None and x.shape[1] != channels:
        hint = " (channels-last input? use x.permute(0, 3, 1, 2))" if x.shape[-1] == channels else ""
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model expects {channels}; shape {tuple(x.shape)}{hint}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with pixels in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN pixels")
    if math.isinf(lo) or math.isinf(hi):  # not 0-255 pixels, nor normalised ones: say what it is
        raise ValueError(f"{name} contains infinite pixels")
    if lo < -PIXEL_TOLERANCE or hi > 1 + PIXEL_TOLERANCE:
        hint = " (pixels look like 0-255: divide by 255)" if hi > 1.5 else ""
        hint = hint or (" (pixels look normalised: pass raw [0, 1] pixels, the model normalises them)" if lo < 0 else "")
        raise ValueError(f"{name} must hold pixels in [0, 1], found values in [{lo:.4g}, {hi:.4g}]{hint}")


def check_labels(y: torch.Tensor, n: int, num_classes: int, name: str = "y") -> None:
    """Require a 1-D integer tensor of `n` class indices in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():  # any integer type is indices
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    low, high = (int(y.long().min()), int(y.long().max())) if n else (0, 0)  # (torch has no min of uint16)
    if n and (low < 0 or high >= num_classes):
        raise ValueError(f"{name} holds class indices in [{low}, {high}] but the model has {num_classes} classes")


def labels_for(y, n: int, num_classes: int, device=None, name: str = "y") -> torch.Tensor:
    """`y` as (n,) long class indices on `device`, from a tensor, a list, a NumPy array or one int for all n
    images; `check_labels` says what is wrong with anything else (a shorter y, float labels, a class past K)."""
    y = torch.as_tensor(y, device=device)
    if y.ndim == 0:
        y = y.expand(n)  # one class for every image
    check_labels(y, n, num_classes, name=name)
    return y.long()


def check_logits(logits: torch.Tensor, name: str = "logits", energy: bool = True) -> None:
    """Require (N, K) finite logits, and (`energy`: for a statistic that reads the energy) refuse probabilities
    or log-probabilities.

    A row of non-negative numbers summing to 1 is a softmax output; a row of
    non-positive numbers whose exponentials sum to 1 is a log-softmax output.
    Both make E(x) constant (0 for log-probabilities), so they are refused.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"{name} must have shape (N, num_classes), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():  # class indices or counts, not a model's outputs (and -inf has no integer)
        raise TypeError(f"{name} must be a float tensor of a model's outputs, got dtype {logits.dtype}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if logits.shape[0] == 0 or not energy:
        return
    work = logits.detach().double()
    if bool((work >= 0).all()) and bool(torch.allclose(work.sum(1), torch.ones_like(work[:, 0]), atol=1e-4)):
        raise ValueError(
            f"{name} look like probabilities (non-negative rows that sum to 1): pass the raw logits, "
            "the model output before softmax"
        )
    if bool((work <= 0).all()) and bool(torch.allclose(torch.logsumexp(work, 1), torch.zeros_like(work[:, 0]), atol=1e-4)):
        raise ValueError(
            f"{name} look like log-probabilities (rows whose exponentials sum to 1): pass the raw logits, "
            "the model output before log_softmax"
        )


def check_positive(value: float, name: str) -> float:
    """Require a finite number > 0 and return it as a float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number > 0, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_steps(steps: int, name: str = "steps") -> int:
    """Require an integer >= 1 (a Python, numpy or 0-d tensor integer, or a whole float): steps, counts, sizes."""
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)
    try:
        if isinstance(steps, bool) or (isinstance(steps, torch.Tensor) and (
                steps.ndim or steps.is_floating_point() or steps.dtype == torch.bool)):
            raise TypeError
        steps = operator.index(steps)
    except TypeError:
        raise TypeError(f"{name} must be an integer >= 1, got {steps!r}") from None
    if int(steps) < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return int(steps)
