"""Autograd where robgen differentiates, whatever mode the caller is in.

Attacks, synthesis and gradient maps take input gradients, so they need autograd even when called inside
`torch.no_grad()` or `torch.inference_mode()` (an app serving requests often runs in the latter).
`torch.enable_grad()` alone is not enough for inference mode: it stays on, and tensors made in it
("inference tensors") cannot be recorded by autograd, nor saved for a backward pass (labels an objective
reads included). So every entry point that differentiates is wrapped in `outside_inference_mode` (the whole
call runs with the mode off, its tensor arguments copied where they are inference tensors), `gradient_mode()`
turns autograd on for a block, and `recordable(x)` gives a tensor autograd can record: `x` detached, or a
normal copy of an inference tensor.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import torch

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def gradient_mode() -> Iterator[None]:
    """Autograd on for the block: also inside the caller's `torch.no_grad()` or `torch.inference_mode()`."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def recordable(x: torch.Tensor) -> torch.Tensor:
    """`x` detached, as a tensor autograd can record: one made under `torch.inference_mode()` is copied (outside
    that mode, so that the copy is a normal tensor)."""
    if x.is_inference():
        with torch.inference_mode(False):
            return x.clone()
    return x.detach()


def outside_inference_mode(function: F) -> F:
    """`function` run with inference mode off, each tensor argument made in that mode given as a normal copy (what
    it computes is the same; the tensors it returns are normal ones): also when the caller has left the mode since
    it made them (labels from `model(x).argmax(1)` under `torch.inference_mode()`, attacked after it)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        given = (*args, *kwargs.values())
        if not torch.is_inference_mode_enabled() and not any(
                isinstance(value, torch.Tensor) and value.is_inference() for value in given):
            return function(*args, **kwargs)
        with torch.inference_mode(False):
            args = tuple(_normal(value) for value in args)
            kwargs = {name: _normal(value) for name, value in kwargs.items()}
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _normal(value):
    return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value
