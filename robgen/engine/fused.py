"""The fused inference graph that attacks and synthesis run: batch norm folded into the convolutions.

    graph = inference_graph(model)    # model in eval mode: its fused copy (made once, cached)
    logits = graph(x)                 # same [0, 1] pixels, normalisation and spec; same logits and
                                      # input gradients as model(x), up to float rounding

An attack or a synthesis run makes `steps` forward and backward passes through
a model whose weights do not change, so every batch-norm layer after a
convolution is an affine map that can be folded into that convolution's
weights and bias. The fused copy is made with PyTorch's own fusion utilities
(`torch.fx.experimental.optimization.fuse`, which applies
`torch.nn.utils.fusion.fuse_conv_bn_eval` to every conv → BN pair it traces),
its weights are stored channels-last (the layout oneDNN and cuDNN convolve
fastest) and frozen (`requires_grad=False`: only input gradients are wanted).

For a robgen `Classifier` only the wrapped network is traced; the copy keeps
the normalisation buffers, takes [0, 1] pixels and carries the same `spec`
object. Another module is traced whole; one that torch.fx cannot trace (data-
dependent control flow) is run as it is.

When no fused copy is made (the model itself runs):
- the caller left the model in train mode (training attacks its model in train
  mode; its weights change every step, and its batch norm is not an affine map);
- the model or one of its modules has forward or backward hooks (a copy could
  not honour them: the caller watches or changes what the model computes);
- fusion is switched off: `set_fusion(False)`, `with fusion(False): ...`, the
  environment variable ROBGEN_FUSION=0, or `fused=False` for one attack.

The copy is cached per model (weakly: a model that is garbage collected takes
its copy with it) and made again when the weights change: the cache compares
each parameter's and buffer's identity, storage address, shape, dtype and
autograd version counter, which every in-place update through PyTorch
(optimiser steps, `load_state_dict`, `.copy_()` under `no_grad`, running
statistics of a train-mode forward) bumps. Writes through `.data` bypass the
version counter; call `clear_fusion_cache(model)` after them.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

FUSION_ENV = "ROBGEN_FUSION"
_OFF = ("0", "false", "no", "off")

_enabled = os.environ.get(FUSION_ENV, "1").strip().lower() not in _OFF


def fusion_enabled() -> bool:
    """Whether attacks and synthesis run fused copies of eval-mode models by default."""
    return _enabled


def set_fusion(enabled: bool) -> bool:
    """Switch fused graphs on or off for every later call that does not choose; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


@contextmanager
def fusion(enabled: bool) -> Iterator[None]:
    """Fused graphs on or off inside the block (e.g. `with fusion(False):` for bit-exact comparisons)."""
    previous = set_fusion(enabled)
    try:
        yield
    finally:
        set_fusion(previous)


@dataclass
class _Entry:
    signature: Tuple
    graph: Optional[nn.Module]  # None: the model cannot be fused and runs as it is (never the model itself:
    # a value that referenced its weak key would keep the model alive)


_cache: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def weights_signature(model: nn.Module) -> Optional[Tuple]:
    """What identifies the current network: (id, address, shape, dtype, device, version) of every tensor,
    and every module's name, type, identity and plain settings (a swapped activation, a BN `eps`).

    None for a model whose tensors keep no version counter (made under
    `torch.inference_mode`): its changes cannot be seen, so it is not fused.
    """
    rows = []
    try:
        for tensor in list(model.parameters()) + list(model.buffers()):
            rows.append((id(tensor), tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device,
                         tensor._version))
    except RuntimeError:  # inference tensors have no version counter
        return None
    for name, module in model.named_modules():  # the structure and each module's plain settings
        settings = tuple(sorted((key, value) for key, value in vars(module).items()
                                if not key.startswith("_") and isinstance(value, (bool, int, float, str, tuple))))
        rows.append((name, type(module), id(module), settings))
    return tuple(rows)


def has_hooks(model: nn.Module) -> bool:
    """Whether any module of `model` has forward, forward-pre or backward hooks."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for module in model.modules() for name in names)


def fused_copy(model: nn.Module) -> nn.Module:
    """A new eval-mode copy of `model` with conv → BN pairs folded, channels-last and frozen weights.

    Raises whatever torch.fx raises for a model it cannot trace.
    """
    from torch.fx.experimental.optimization import fuse

    from ..models.classifier import Classifier

    fused = copy.deepcopy(model).eval()
    if isinstance(fused, Classifier):
        fused.net = fuse(fused.net, inplace=True)
        fused.spec = model.spec  # the same object, not a copy
    else:
        spec = getattr(model, "spec", None)
        fused = fuse(fused, inplace=True)
        if spec is not None:
            fused.spec = spec
    fused.requires_grad_(False)
    return fused.to(memory_format=torch.channels_last).eval()


def inference_graph(model: nn.Module, fused: Optional[bool] = None) -> nn.Module:
    """The module to run attack or synthesis steps on: the cached fused copy of `model`, or `model` itself.

    Call it *before* putting the model in eval mode: a model the caller left
    in train mode is returned as it is. `fused` overrides the module setting
    (None: `fusion_enabled()`).
    """
    if not (fusion_enabled() if fused is None else fused) or model.training or has_hooks(model):
        return model
    signature = weights_signature(model)
    if signature is None:
        return model
    with _lock:
        entry = _cache.get(model)
        if entry is None or entry.signature != signature:
            entry = _Entry(signature, _build(model))
            _cache[model] = entry
    return entry.graph if entry.graph is not None else model


def _build(model: nn.Module) -> Optional[nn.Module]:
    started = time.perf_counter()
    try:
        graph = fused_copy(model)
    except Exception as error:  # torch.fx cannot trace every model; such a model runs unfused
        logger.info("%s cannot be fused (%s: %s); attacks run it unfused", type(model).__name__,
                    type(error).__name__, error)
        return None
    logger.debug("fused copy of %s made in %.3f s", type(model).__name__, time.perf_counter() - started)
    return graph


def clear_fusion_cache(model: Optional[nn.Module] = None) -> None:
    """Forget the fused copy of `model` (of every model without one), e.g. after writes through `.data`."""
    with _lock:
        if model is None:
            _cache.clear()
        else:
            _cache.pop(model, None)


def cached_graphs() -> int:
    """How many models have a cached entry (fused or not fusable); for tests and diagnostics."""
    return len(_cache)
