"""Randomness for the engine, always drawn from a `torch.Generator` the caller passes in.

A generator lives on one device (a CUDA generator cannot fill a CPU tensor, and
the other way round), so every draw is made on the generator's own device and
then moved to where it is needed. The global RNG is never touched when a
generator is given.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def generator_device(generator: Optional[torch.Generator], fallback: torch.device) -> torch.device:
    """The device draws from `generator` must be made on (`fallback` without a generator)."""
    return generator.device if generator is not None else fallback


def random_uniform(shape: Sequence[int], like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """U[0, 1) noise of `like`'s dtype, drawn from `generator` and moved to `like`'s device."""
    device = generator_device(generator, like.device)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def random_normal(shape: Sequence[int], like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """N(0, 1) noise of `like`'s dtype, drawn from `generator` and moved to `like`'s device."""
    device = generator_device(generator, like.device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def random_seed(generator: Optional[torch.Generator], device: torch.device) -> int:
    """An integer seed drawn from `generator` (for code that seeds its own RNG, such as torchattacks).

    Without a generator the seed is drawn from the global RNG (not a constant, so that repeated calls
    stay random); the caller seeds nothing globally.
    """
    if generator is None:
        return int(torch.randint(0, 2**31 - 1, (1,)))
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator_device(generator, device)))
