"""torch's process-wide (global) random number generator, shared by every thread of a process.

`LOCK` is held by code that draws from it or saves and restores it (`robgen.engine.random`'s seeded blocks and
draws without a generator), so that no thread's draw lands inside another thread's block. `untouched()` runs a
block that draws from it, such as a network's random initialisation before its weights are loaded, and leaves it
as it found it: loading a model does not change the random stream of the code that loads it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

# Re-entrant, so that a seeded block may call code that takes it again (a draw without a generator, a nested block).
LOCK = threading.RLock()


@contextmanager
def untouched() -> Iterator[None]:
    """The CPU's global RNG saved before the block and restored after it, one such block (or seeded block) at a
    time per process. (Networks are built on the CPU; a CUDA device's generator is not saved.)"""
    with LOCK:
        with torch.random.fork_rng(devices=[]):
            yield
