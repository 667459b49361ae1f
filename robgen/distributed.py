"""Data-parallel helpers: the same code runs alone or under `torchrun --nproc_per_node N`.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; `setup()` then joins the process
group (NCCL on CUDA, gloo on the CPU). Metrics are reduced as sums across ranks.

Evaluation (`eval`, `reproduce`) shares the work by whole batches, so that N
processes compute what one would, batch for batch:

    rows = []
    with per_batch_seeds(attack.generator) as reseed:
        for index, (x, y) in shard_batches(loader):    # this rank's batches and their indices
            reseed(index)
            rows.append((index, model(attack(x, y))))
    logits = torch.cat(gather_in_order(rows))         # every rank: every batch's result, in data order

- `shard_batches`: batches rank, rank + N, rank + 2N, ... of the single-process
  sequence (same images, same batch composition); a sequential DataLoader is
  re-cut so that each rank loads only its own images.
- `per_batch_seeds`: the random draws for a batch (an attack's random start)
  come from a seed derived from the batch's index, not from a stream that runs
  through the batches before it, which live on other ranks.
- `gather_in_order`: every rank's results, gathered on every rank and put back
  in batch order, so that whatever comes next (fitting thresholds, metrics,
  figures) runs on the same full outputs as in a single process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, SequentialSampler, Subset

logger = logging.getLogger(__name__)
T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group if launched by torchrun; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return device


def hardware(device: torch.device) -> str:
    """What ran the work, for reports: e.g. "1 x NVIDIA H100 80GB HBM3" or "1 x CPU (2 cores, x86_64)"."""
    if device.type == "cuda":
        return f"{world_size()} x {torch.cuda.get_device_name(device)}"
    return f"{world_size()} x CPU ({os.cpu_count()} cores, {platform.machine()})"


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def reduce_sums(values: Sequence[float], device: torch.device) -> list:
    """Element-wise sums of `values` over all ranks (the values themselves when alone)."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def sums_over_ranks(values: Sequence[float]) -> List[float]:
    """Element-wise sums of `values` over all ranks, exchanged as Python objects (so on no device: for
    bookkeeping, not for tensors); the values themselves when alone. Every rank must call it."""
    values = [float(value) for value in values]
    if not is_distributed():
        return values
    gathered: List[Optional[List[float]]] = [None] * world_size()
    dist.all_gather_object(gathered, values)
    return [sum(column) for column in zip(*gathered)]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` (picklable) on every rank; `value` itself when alone."""
    if not is_distributed():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every rank (every rank must call it); `flag` itself when alone."""
    if not is_distributed():
        return bool(flag)
    flags = [None] * world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def check_shareable(n_images: int, fix: str = "or give it more images") -> None:
    """Refuse, on every rank alike, to share fewer images than there are processes (a rank would get none)."""
    processes = world_size()
    if n_images < processes:
        raise ValueError(
            f"{n_images} image(s) cannot be shared among the {processes} processes torchrun started: "
            f"start at most {max(n_images, 1)} (torchrun --nproc_per_node {max(n_images, 1)}) {fix}")


class BatchShare:
    """This rank's batches as (index in the single-process sequence, batch) pairs; `len` is how many."""

    def __init__(self, pairs: Iterable[Tuple[int, object]], count: Optional[int]) -> None:
        self.pairs, self.count = pairs, count

    def __iter__(self) -> Iterator[Tuple[int, object]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("this share's length is unknown")
        return self.count


def _is_sequential(loader: DataLoader) -> bool:
    return isinstance(loader.sampler, SequentialSampler) and loader.batch_size is not None and not loader.drop_last


def shard_batches(batches: Iterable) -> BatchShare:
    """This rank's share of `batches` (a DataLoader or a list of (images, labels) batches).

    Alone: every batch. Under torchrun: batches rank, rank + N, rank + 2N, ... of
    the single-process sequence, each exactly the batch one process would see. A
    DataLoader over a sequential sampler (`data.make_loader(..., shuffle=False)`)
    is re-cut so that this rank loads only its own images; any other iterable is
    read whole on every rank. Fewer images than processes is refused on every
    rank (ValueError) before any batch is read; fewer batches than processes
    leaves some ranks idle, with a warning.
    """
    if not is_distributed():
        try:
            count: Optional[int] = len(batches)  # type: ignore[arg-type]
        except TypeError:
            count = None
        return BatchShare(enumerate(batches), count)
    processes, me = world_size(), rank()
    if isinstance(batches, DataLoader):
        if not _is_sequential(batches):
            raise ValueError("under torchrun, pass a DataLoader in data order (shuffle=False, drop_last=False, a "
                             "batch_size) or a list of batches, so that the ranks can share its batches")
        n_images, size = len(batches.dataset), batches.batch_size
        check_shareable(n_images)
        count = math.ceil(n_images / size)
        mine = range(me, count, processes)
        images = [i for b in mine for i in range(b * size, min((b + 1) * size, n_images))]
        # every batch of this rank but the data's last is full, so cutting its images by `size` gives its batches
        local = DataLoader(Subset(batches.dataset, images), batch_size=size, num_workers=batches.num_workers,
                           collate_fn=batches.collate_fn, pin_memory=batches.pin_memory,
                           worker_init_fn=batches.worker_init_fn)
    else:
        everything = list(batches)
        n_images, count = sum(len(batch[0]) for batch in everything), len(everything)
        check_shareable(n_images)
        mine = range(me, count, processes)
        local = [everything[b] for b in mine]
    _warn_idle_ranks(count, processes, n_images)
    return BatchShare(zip(mine, local), len(mine))


_warned = set()


def _warn_idle_ranks(batches: int, processes: int, n_images: int) -> None:
    if batches < processes and is_main() and (batches, processes) not in _warned:
        _warned.add((batches, processes))
        logger.warning("%d images make %d batch(es) for %d processes: %d rank(s) stay idle; a smaller batch size "
                       "puts them to work (and changes the random starts, which are drawn per batch)",
                       n_images, batches, processes, processes - batches)


def gather_in_order(rows: List[Tuple[int, T]]) -> List[T]:
    """Every rank's (index, item) rows, gathered on every rank, as the items in index order."""
    if is_distributed():
        everyone: List[Optional[List[Tuple[int, T]]]] = [None] * world_size()
        dist.all_gather_object(everyone, rows)
        rows = [row for part in everyone for row in part]
    return [item for _, item in sorted(rows, key=lambda row: row[0])]


def batch_seed(base: int, index: int) -> int:
    """The seed of batch `index`'s random draws: a hash of (base, index), well apart for neighbouring indices."""
    digest = hashlib.blake2b(f"{base}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def per_batch_seeds(generator: Optional[torch.Generator]) -> Iterator[Callable[[int], None]]:
    """Random draws that belong to a batch, not to the rank that runs it or the batches before it.

    Draws one base seed from `generator`; `reseed(index)` then seeds the generator
    with `batch_seed(base, index)` before batch `index`. On exit the generator is
    put back where the base draw left it, so every rank's generator moves on alike
    (one draw per use) whichever batches the rank ran. A None generator (the global
    RNG) is left alone: its draws then depend on how the batches are shared.
    """
    if generator is None:
        yield lambda index: None
        return
    base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    after_base = generator.get_state()

    def reseed(index: int) -> None:
        generator.manual_seed(batch_seed(base, index))

    try:
        yield reseed
    finally:
        generator.set_state(after_base)
