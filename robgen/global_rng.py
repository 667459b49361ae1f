"""torch's process-wide (global) random number generator, shared by every thread of a process.

`LOCK` is held by code that draws from it or saves and restores it (`untouched` blocks, and `robgen.engine.random`'s
draws without a generator), so that no thread's draw lands inside another thread's block. `untouched()` runs a
block that draws from it, such as a network's random initialisation before its weights are loaded, and leaves it
as it found it: loading a model does not change the random stream of the code that loads it. The engine's seeded
blocks for third-party code (`robgen.engine.random.seeded_global_rng`) are `untouched(cuda=True)` blocks.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

# Re-entrant, so that a seeded block may call code that takes it again (a draw without a generator, a nested block).
LOCK = threading.RLock()


@contextmanager
def untouched(cuda: bool = False) -> Iterator[None]:
    """The CPU's global RNG saved before the block and restored after it, one such block at a time per process.
    `cuda`: every CUDA device's too, for a block that seeds them all (`torch.manual_seed` does; see
    `robgen.engine.random.seeded_global_rng`). Networks are built on the CPU: loading one leaves `cuda` False."""
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    with LOCK:
        with torch.random.fork_rng(devices=devices):
            yield
