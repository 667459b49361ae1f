"""Randomness for the engine, always drawn from a `torch.Generator` the caller passes in.

A generator lives on one device (a CUDA generator cannot fill a CPU tensor, and
the other way round), so every draw is made on the generator's own device and
then moved to where it is needed. The global RNG is never touched when a
generator is given.

Third-party code that seeds and draws from the global RNG itself (torchattacks)
runs inside `seeded_global_rng`, which seeds it from a number drawn from the
generator and restores it afterwards. The global RNG belongs to the whole
process, so those blocks hold one process-wide lock: the web app serves requests
in threads, and two seeded blocks at once would reseed each other's stream and
restore each other's saved state.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Optional, Sequence

import torch

# Its lock is held for a whole `seeded_global_rng` block, and for every draw this module makes from the global RNG
# (no generator given), so that no such draw lands inside another thread's block.
from .. import global_rng


def _guard_global_draw(generator: Optional[torch.Generator]) -> ContextManager:
    """The process-wide lock when a draw falls back to the global RNG (not from inside another thread's
    `seeded_global_rng` block); nothing when it draws from a generator."""
    return global_rng.LOCK if generator is None else nullcontext()


def generator_device(generator: Optional[torch.Generator], fallback: torch.device) -> torch.device:
    """The device draws from `generator` must be made on (`fallback` without a generator)."""
    return generator.device if generator is not None else fallback


def random_uniform(shape: Sequence[int], like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """U[0, 1) noise of `like`'s dtype, drawn from `generator` and moved to `like`'s device."""
    device = generator_device(generator, like.device)
    with _guard_global_draw(generator):
        noise = torch.rand(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


def random_normal(shape: Sequence[int], like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """N(0, 1) noise of `like`'s dtype, drawn from `generator` and moved to `like`'s device."""
    device = generator_device(generator, like.device)
    with _guard_global_draw(generator):
        noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


def class_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of class `index`'s draws in a run seeded `seed` (seed * 1000 + index, within torch's 64 bits):
    a class's images do not depend on which other classes the run draws, or in what order."""
    return torch.Generator(device=device).manual_seed((int(seed) * 1000 + int(index)) % 2**64)


def random_seed(generator: Optional[torch.Generator], device: torch.device) -> int:
    """An integer seed drawn from `generator` (for code that seeds its own RNG, such as torchattacks).

    Without a generator the seed is drawn from the global RNG (not a constant, so that repeated calls
    stay random); the caller seeds nothing globally.
    """
    if generator is None:
        with _guard_global_draw(generator):
            return int(torch.randint(0, 2**31 - 1, (1,)))
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator_device(generator, device)))


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """The global RNG seeded with `seed` inside the block and restored after it, one block at a time per process.

    For code that draws from the global RNG or seeds it itself (torchattacks). `torch.manual_seed` seeds
    the CPU and every CUDA device, and so may the code inside, so the state of every CUDA device is saved
    and restored, not only the inputs' device. Other threads' blocks wait for this one to end.
    """
    with global_rng.untouched(cuda=True):
        torch.manual_seed(seed)
        yield
