"""Subnormal numbers in weights: found from their bits and set to zero, for loaded checkpoints and for training.

Adam with weight decay parks the weights it no longer needs (and their moment estimates) at values like 1e-40,
below the smallest normal float32 (57% of the weights of the CIFAR-10 model trained with the paper's recipe). x86
CPUs compute on such numbers many times slower (that model's forward+backward: 7 times), while their share of any
logit is below 1e-30: zero changes no prediction, energy or gradient, and gives back the CPU's speed. robgen zeroes
them rather than switching the CPU's flush-to-zero mode on: that mode is a per-thread register which torch's
worker threads copy from the thread that starts them, so it would reach some threads of a run and outlive it in
others (`python benchmarks/subnormals.py` compares the two).
"""

from __future__ import annotations

from typing import Iterable

import torch

# per float type: the integer type of its bits, its mantissa bits and its exponent bits
FLOAT_BITS = {torch.float16: (torch.int16, 10, 5), torch.bfloat16: (torch.int16, 7, 8),
               torch.float32: (torch.int32, 23, 8), torch.float64: (torch.int64, 52, 11)}


def subnormal_mask(tensor: torch.Tensor) -> torch.Tensor:
    """Where `tensor` holds a subnormal number (exponent bits all 0, mantissa not), read from the bits: a float
    comparison would miss them while `torch.set_flush_denormal(True)` makes the CPU read them as 0."""
    int_type, mantissa, exponent = FLOAT_BITS[tensor.dtype]
    magnitude = tensor.detach().contiguous().view(int_type) & ((1 << (mantissa + exponent)) - 1)  # sign bit off
    return ((magnitude > 0) & (magnitude < (1 << mantissa))).view(tensor.shape)  # exponent bits 0, mantissa not


@torch.no_grad()
def zero_subnormals_(tensors: Iterable[object]) -> int:
    """Set the subnormal entries of the floating-point tensors among `tensors` to +0, in place; return how many.
    Anything else (integer tensors, optimiser step counts held as numbers) is left alone, and so are zeros of
    either sign."""
    zeroed = 0
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.dtype in FLOAT_BITS:
            subnormal = subnormal_mask(tensor)
            count = int(subnormal.sum())
            if count:
                tensor.masked_fill_(subnormal, 0.0)
                zeroed += count
    return zeroed


def flush_subnormals(module: torch.nn.Module) -> int:
    """Zero the subnormal numbers among `module`'s parameters and buffers; return how many (`load_model` does
    this once for every model it loads)."""
    return zero_subnormals_((*module.parameters(), *module.buffers()))


def flush_training_subnormals(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Zero the subnormal numbers among the model's parameters and buffers and the optimiser's state; return how
    many (training calls it after every optimiser step on the CPU; GPUs compute on them at full speed)."""
    state = (value for entry in optimizer.state.values() for value in entry.values())
    return zero_subnormals_((*model.parameters(), *model.buffers(), *state))
