"""Which weights a model has: a SHA-256 of its parameters and buffers, so that a file fitted to a model knows it.

    fingerprint = model_fingerprint(model)   # 64 hex digits; equal weights give equal fingerprints
    weights_fingerprint(model)               # the same, read as float32 (an energy detector's)

Things fitted to one model's outputs (a reject option's thresholds, an energy detector's threshold, an
experiment's stages) record this
fingerprint and refuse another model's. It lives with the models (layer 1), so the detection methods can use
it without importing from the experiments above them (`robgen.experiments.stages` re-exports it).
"""

from __future__ import annotations

import hashlib

import torch

from .subnormals import FLOAT_BITS, subnormal_mask


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, shapes, dtypes and values), on any device.

    A subnormal weight counts as the +0 that `load_model` makes of it (robgen.models.subnormals): the same file
    read by `load_checkpoint`, which keeps them, or by `load_model`, which zeroes them, is the same model. The
    names are read without torch.compile's and DDP's prefixes: the compiled or wrapped model is the same model."""
    return _digest((_unwrapped(name), tensor) for name, tensor in model.state_dict().items())


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DistributedDataParallel's


def _unwrapped(name: str) -> str:
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def weights_fingerprint(model: torch.nn.Module) -> str:
    """`model_fingerprint` of the weights whatever holds them: float tensors read as float32 (a float64 copy of a
    float32 model is the same model; a float16 one is not, its values being rounded). Equal to `model_fingerprint`
    for a float32 model."""
    items = []
    for name, tensor in model.state_dict().items():
        items.append((_unwrapped(name), tensor.float() if tensor.is_floating_point() else tensor))
    return _digest(items)


def _digest(items) -> str:
    digest = hashlib.sha256()
    for name, tensor in items:
        shape = tuple(tensor.shape)  # before flattening: a (4, 3, 1, 3) and a (4, 3, 3, 1) kernel are other models
        tensor = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN counters) too
        if tensor.dtype in FLOAT_BITS:
            tensor = tensor.masked_fill(subnormal_mask(tensor), 0.0)
        digest.update(f"{name}:{shape}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
