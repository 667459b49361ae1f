"""Data-parallel helpers: the same code runs alone or under `torchrun --nproc_per_node N`.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; `setup()` then joins the process
group (NCCL on CUDA, gloo on the CPU). Metrics are reduced as sums across ranks.
"""

from __future__ import annotations

import os
import platform
from typing import Sequence

import torch
import torch.distributed as dist


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


def barrier() -> None:
    if is_distributed():
        dist.barrier()
