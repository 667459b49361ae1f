"""The fused inference graph that attacks and synthesis run: batch norm folded into the convolutions.

    graph = inference_graph(model, example=x)  # model in eval mode: its fused copy (made once, cached)
    logits = graph(x)                          # same [0, 1] pixels, normalisation and spec; same logits and
                                               # input gradients as model(x), up to float rounding

An attack or a synthesis run makes `steps` forward and backward passes through
a model whose weights do not change, so every batch-norm layer after a
convolution is an affine map that can be folded into that convolution's
weights and bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`). The copy's
weights are stored channels-last (the layout oneDNN and cuDNN convolve
fastest) and frozen (`requires_grad=False`: only input gradients are wanted).

Which convolution feeds which batch norm is found by running the copy once on
an example batch with hooks on the copy's own modules: a batch norm whose
input *is* the output tensor of a convolution (each called once) is folded
into it. Nothing global is touched, so a copy can be made while other threads
run the model (torch.fx tracing, the usual route, patches
`torch.nn.Module.__call__` for the whole process while it traces and breaks
every forward pass that runs beside it: a web app serving several visitors).
The folded copy is then checked against the model on that example and on
random pixels; a copy that disagrees (a convolution whose output is also used
elsewhere, or changed in place before its batch norm reads it) is dropped and
the model runs as it is. The check runs a copy of the model (never the
caller's own: a forward that counts or records its inputs would see pixels no
attack gave it) as attacks and synthesis run it, every module in eval mode
(`eval_mode`): a model in eval mode with a submodule left in train mode (a
batch norm, a dropout, a module appended after `.eval()`) is attacked as that
eval-mode function, fused or not. These forward passes leave the global random
streams as they were. The fusion machinery leaves the caller's model as it
found it (modes, weights, buffers, attributes).

When no fused copy is made (the model itself runs):
- the caller left the model in train mode (training attacks its model in train
  mode; its weights change every step, and its batch norm is not an affine map);
- the model or one of its modules has forward or backward hooks (a copy could
  not honour them: the caller watches or changes what the model computes);
- no example batch is known: none was given and the model has no
  `spec.input_size` (a robgen `Classifier` has one);
- fusion is switched off: `set_fusion(False)`, `with fusion(False): ...`, the
  environment variable ROBGEN_FUSION=0, or `fused=False` for one attack.

The copy is cached per model (weakly: a model that is garbage collected takes
its copy with it) and made again when the network changes. Every call compares
(`weights_signature`) each parameter's and buffer's identity, storage address,
shape, dtype and autograd version counter, every module's plain settings, and a
fingerprint of the tensors' contents: per tensor, in float64, the sum, the sum
of squares and the sum weighted by a fixed pseudo-random vector. The version
counter sees every in-place update through PyTorch (`load_state_dict`,
`.copy_()` under `no_grad`, running statistics of a train-mode forward); the
fingerprint sees the updates that bypass it: fused optimiser steps
(`torch.optim.SGD(..., fused=True)`, Adam's too) and writes through `.data`,
a permutation of a tensor's values included (for a tensor holding infinite or NaN values, also of its finite
values, beside where the others are). It costs a few passes over the weights, O(parameters), where one forward pass costs O(parameters x pixels). An attribute
that is neither a tensor nor a plain value is compared by which object it is: one changed in place (an
object's field, a numpy array) is not seen.
A change it could miss is below float64 rounding of those sums, far below
what the model's float32 forward pass resolves.

Making a copy runs the model's forward (to find and check the folding), so a
model whose forward itself runs an attack or a synthesis (a purification
defence, BPDA) asks for further copies while its own is being made. The
global lock guards only the short dictionary look-ups; each model's copy is
built under that model's own lock (two threads wanting one model's copy make
it once), and a model whose forward asks for its *own* copy while this thread
builds it gets the model itself for that inner call. (Two models whose
forwards attack each other, built at once by two threads, would still wait on
each other's locks.)
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .. import global_rng
from ..models.state import LOW_PRECISION, CastInputs, eval_mode, has_hooks, model_dtype
from .autograd import recordable

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


_lock = threading.Lock()  # guards the dictionaries below; held for look-ups and stores only, never for a build
_cache: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()
_build_locks: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_this_thread = threading.local()  # .building: ids of the models this thread is making copies of


def weights_signature(model: nn.Module) -> Optional[Tuple]:
    """What identifies the current network: (id, address, shape, dtype, device, version) of every tensor,
    every module's name, type, identity and plain settings (a BN `eps`, a private `_temperature`, and what its
    small tuples, lists and dicts of plain values hold: `_setting`), which object each of its other attributes
    is (a swapped activation function), tensors kept as plain attributes (alone or in a small tuple) like the
    registered ones, and `content_fingerprint` of the tensors (the updates that bump no version counter).

    None for a model whose tensors keep no version counter (made under
    `torch.inference_mode`) or whose contents cannot be read (meta tensors):
    it is not fused.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    rows = []
    try:
        for tensor in tensors:
            rows.append((id(tensor), tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device,
                         tensor._version))
        rows.append(content_fingerprint(tensors))
    except (RuntimeError, NotImplementedError):  # inference tensors have no version counter; meta ones no values
        return None
    loose: List[torch.Tensor] = []  # tensors kept as plain attributes, not registered (a wrapper's temperature)
    for name, module in model.named_modules():  # the structure and each module's plain settings
        settings = tuple((key, _setting(value, loose)) for key, value in sorted(vars(module).items())
                         if key not in _MODULE_INTERNALS)
        rows.append((name, type(module), id(module), settings))
    try:
        rows.extend((id(t), t.data_ptr(), tuple(t.shape), t.dtype, t.device, t._version) for t in loose)
        rows.append(content_fingerprint(loose))
    except (RuntimeError, NotImplementedError):
        return None
    return tuple(rows)


_PLAIN = (type(None), bool, int, float, str)
# What every nn.Module keeps for itself (its parameters, buffers and children, read above; its hooks; its mode):
# every other attribute, a private `_temperature` too, is a setting its forward may read.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SMALL = 64  # items of a container read by content; a larger one (a label list) is recorded by which one it is


def _setting(value, loose: List[torch.Tensor]):
    """A module attribute as the signature records it. A plain value as itself; a small tuple, list or dict of
    plain values by what it holds (a wrapper's `cfg["temperature"]` changed in place is another network); a
    tensor, and a small tuple of tensors and plain values (`stats = (mean, std)`), as places in `loose`, compared
    by content below (never with ==, which a tensor answers element-wise); anything else (a function, a class, a
    dict of activations a forward writes into) by which object it is, so a forward that refills its own dict does
    not make a new copy every call."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        loose.append(value)
        return "tensor"
    if isinstance(value, (tuple, list, dict)) and len(value) <= _SMALL:
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        if all(isinstance(key, _PLAIN) and isinstance(item, _PLAIN) for key, item in items):
            return (type(value).__name__,) + tuple(items)
        if isinstance(value, tuple) and all(isinstance(item, (torch.Tensor, *_PLAIN)) for item in value):
            return ("tuple",) + tuple(_setting(item, loose) for item in value)
    return ("object", _SameObject(value))


class _SameObject:
    """An attribute recorded by which object it is: equal to another exactly when both hold the same living object.
    Not its id alone, which Python gives to a new object once the old one is gone (a setting replaced twice could
    come back with the first one's id and leave a stale copy in use): a weak reference where the object takes one
    (a dead one equals nothing), else the object itself (a dict or list: kept alive by the cache while its model
    is)."""

    __slots__ = ("ref",)

    def __init__(self, value) -> None:
        try:
            self.ref = weakref.ref(value)
        except TypeError:  # no weak references to it
            self.ref = lambda: value

    def __eq__(self, other) -> bool:
        if not isinstance(other, _SameObject):
            return False
        mine, theirs = self.ref(), other.ref()
        return mine is not None and mine is theirs

    def __hash__(self) -> int:
        return id(self.ref())


def content_fingerprint(tensors: List[torch.Tensor]) -> bytes:
    """Per tensor, in float64: the sum of its values, the sum of their squares and their sum weighted by
    `fingerprint_weights` (sees a permutation, and a zero-sum update such as a softmax bias step); as bytes,
    so that NaNs compare equal to themselves. A tensor holding infinite or NaN values (a mask's -inf) makes those
    sums inf or NaN whatever else is written into it, so for such a tensor the same sums of its finite values and
    where its infinite and NaN ones are are added. (A huge finite value, a -1e30 sentinel, still absorbs a change
    below its rounding.)

    A few passes over each tensor and one transfer per device: far cheaper than a forward pass.
    """
    sums: Dict[torch.device, List[torch.Tensor]] = {}
    flat: Dict[torch.device, List[torch.Tensor]] = {}
    with torch.no_grad():
        for tensor in tensors:
            values = tensor.detach()
            if values.is_complex():
                values = torch.view_as_real(values)
            values = values.to(torch.float64, memory_format=torch.contiguous_format).view(-1)
            sums.setdefault(values.device, []).append(_sums(values))
            flat.setdefault(values.device, []).append(values)
        rows = []
        for device, device_sums in sums.items():
            table = torch.stack(device_sums).cpu()  # one transfer per device
            rows.append(table.numpy().tobytes())
            for index in (~torch.isfinite(table).all(1)).nonzero()[:, 0].tolist():  # rare: masks
                values = flat[device][index]
                finite = torch.isfinite(values)
                weights = fingerprint_weights(values.numel(), values.device)
                where = [kind(values).double().dot(weights) for kind in (torch.isnan, torch.isposinf, torch.isneginf)]
                detail = torch.cat([_sums(torch.where(finite, values, torch.zeros_like(values))), torch.stack(where)])
                rows.append(detail.cpu().numpy().tobytes())
    return b"".join(rows)


def _sums(values: torch.Tensor) -> torch.Tensor:
    weights = fingerprint_weights(values.numel(), values.device)
    return torch.stack([values.sum(), values.dot(values), values.dot(weights)])


_FINGERPRINT_CHUNK = 1 << 16
_weights_by_device: Dict[torch.device, torch.Tensor] = {}


def fingerprint_weights(n: int, device: torch.device) -> torch.Tensor:
    """The first `n` numbers (float64, in [0.5, 1.5)) of one fixed pseudo-random sequence, on `device`.

    Drawn in chunks, chunk k from seed k, so a longer sequence begins with a
    shorter one; kept per device, as long as the largest tensor seen.
    """
    have = _weights_by_device.get(device)
    if have is None or have.numel() < n:
        start = 0 if have is None else have.numel() // _FINGERPRINT_CHUNK
        chunks = [torch.rand(_FINGERPRINT_CHUNK, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
                  for k in range(start, -(-n // _FINGERPRINT_CHUNK))]
        grown = torch.cat(chunks).add_(0.5).to(device)
        have = grown if have is None else torch.cat([have, grown])
        _weights_by_device[device] = have
    return have[:n]


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> List[Tuple[str, str]]:
    """(convolution name, batch-norm name) for every batch norm that reads a convolution's output directly.

    Found by one forward pass of `model` on `example` with hooks on its own
    modules (call it on a copy: the hooks are removed afterwards, but the pass
    runs). Modules called more than once, or registered under two names, are
    left out: folding them would change their other uses.
    """
    names: Dict[nn.Module, List[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, []).append(name)
    calls: Dict[nn.Module, int] = {}
    made_by: Dict[int, Tuple[nn.Module, torch.Tensor]] = {}  # id(output) -> (conv, output): kept alive, ids stay unique
    read: List[Tuple[nn.Module, nn.Module]] = []

    def after_conv(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        made_by[id(output)] = (module, output, output._version)

    def before_norm(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        source = made_by.get(id(inputs[0])) if inputs and isinstance(inputs[0], torch.Tensor) else None
        # the same tensor, unchanged since the convolution wrote it: an in-place op in between (ReLU(inplace=True),
        # `out += shortcut`) returns that very tensor, changed, and the norm then reads op(conv x), not conv x
        if source is not None and source[1] is inputs[0] and inputs[0]._version == source[2]:
            read.append((source[0], module))

    handles = []
    for module in names:
        if type(module) in _CONVS:
            handles.append(module.register_forward_hook(after_conv))
        elif type(module) in _NORMS and module.track_running_stats and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad(), _random_streams_untouched(example):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [(names[conv][0], names[norm][0]) for conv, norm in read
            if calls[conv] == 1 and calls[norm] == 1 and len(names[conv]) == 1 and len(names[norm]) == 1]


def example_batch(model: nn.Module, example: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Up to two images to find and check the folding on: from `example`, else random pixels of
    `model.spec.input_size`; None when neither is known."""
    if example is not None:
        return example[:2].detach()
    size = getattr(getattr(model, "spec", None), "input_size", None)
    if size is None:
        return None
    reference = next(iter(model.parameters()), None)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand((2, *size), generator=generator)
    return pixels if reference is None else pixels.to(device=reference.device, dtype=reference.dtype)


def fused_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A new eval-mode copy of `model` with conv → BN pairs folded, channels-last and frozen weights.

    `example`: a batch the model takes (one or two images are used). Raises
    ValueError when the folded copy does not compute what the model computes.
    """
    fused = copy.deepcopy(model).eval()
    for conv_name, norm_name in conv_bn_pairs(fused, example):
        conv, norm = fused.get_submodule(conv_name), fused.get_submodule(norm_name)
        fused.set_submodule(conv_name, fuse_conv_bn_eval(conv, norm))
        fused.set_submodule(norm_name, nn.Identity())
    spec = getattr(model, "spec", None)
    if spec is not None:
        fused.spec = spec  # the same object, not a copy
    fused.requires_grad_(False)
    fused = fused.to(memory_format=torch.channels_last).eval()
    check_agrees(model, fused, example)
    return fused


def check_agrees(model: nn.Module, fused: nn.Module, example: torch.Tensor) -> None:
    """ValueError unless `fused` gives `model`'s logits on `example` and on random pixels (float tolerance).

    `model` runs under `eval_mode`, as attacks and synthesis run it: a batch
    norm the caller left in train mode neither normalises by the batch here nor
    updates its running statistics.
    """
    generator = torch.Generator().manual_seed(1)
    noise = torch.rand(example.shape, generator=generator).to(device=example.device, dtype=example.dtype)
    reference = copy.deepcopy(model)  # the caller's model is not run: its forward may count, record or draw
    with torch.no_grad(), eval_mode(reference), _random_streams_untouched(example):
        for x in (example, noise):
            want, got = reference(x), fused(x)
            if want.shape != got.shape or not _close(got, want):
                finite = torch.isfinite(want) & torch.isfinite(got)
                raise ValueError(f"the folded copy differs from the model (max |difference| "
                                 f"{(got - want)[finite].abs().max().item() if finite.any() else math.inf:.3g}): "
                                 "a convolution's output is used elsewhere too, or changed in place, or the model "
                                 "draws random numbers")


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to float rounding: the same non-finite entries (a masked class's -inf), and the finite ones within
    1e-3 of each or 1e-4 of the logits' median size (a masked class's -inf, or a fill of -1e9, set the tolerance
    when it was the largest logit, and every copy passed)."""
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(got)) or not torch.equal(want[~finite], got[~finite]):
        return False
    if not finite.any():
        return True
    scale = want[finite].abs().median().item() + 1e-6
    return torch.allclose(got[finite], want[finite], rtol=1e-3, atol=1e-4 * scale)


def _random_streams_untouched(example: torch.Tensor):
    """The global random streams (the CPU's, and CUDA's for an example there) as they were before the block, one
    such block at a time (`robgen.global_rng`): a forward pass made to build or check the copy leaves the caller's
    random numbers alone."""
    return global_rng.untouched(cuda=example.device.type == "cuda")


def inference_graph(model: nn.Module, fused: Optional[bool] = None, *,
                    example: Optional[torch.Tensor] = None) -> nn.Module:
    """The module to run attack or synthesis steps on: the cached fused copy of `model`, or `model` itself.

    Call it *before* putting the model in eval mode: a model the caller left
    in train mode is returned as it is; one in eval mode gets a copy that
    computes what the model computes under `eval_mode` (every module in eval
    mode), as attacks and synthesis run it. `example`: the batch about to be
    run (finds and checks the folding; None: random pixels of
    `model.spec.input_size`).
    `fused` overrides the module setting (None: `fusion_enabled()`).
    An `example` in a wider type than a float16 or bfloat16 model's (an attack's iterates, kept in
    `working_dtype`) gets the module wrapped so that it runs on them cast to the model's type (`CastInputs`).
    """
    dtype = model_dtype(model)
    if example is not None and example.is_floating_point() and example.dtype != dtype and dtype in LOW_PRECISION:
        return CastInputs(inference_graph(model, fused, example=example.to(dtype)), dtype)
    if not (fusion_enabled() if fused is None else fused) or model.training or has_hooks(model):
        return model
    signature = weights_signature(model)
    if signature is None:
        return model
    # and what it is run on: a build that fails on one batch (float64 pixels for a float32 model) must not keep
    # the model unfused for the batches it takes
    reference = example if example is not None else next(iter(model.parameters()), None)
    signature = (signature, None if reference is None else (reference.dtype, reference.device,
                                                            tuple(reference.shape[1:]) if example is not None else ()))
    entry = _cached(model, signature)
    if entry is None:
        building = _building()
        if id(model) in building:  # the model's forward asks for its own copy while this thread makes it
            return model
        with _lock:
            build_lock = _build_locks.setdefault(model, threading.Lock())
        with build_lock:  # not the global lock: the build runs the forward, which may need other copies
            entry = _cached(model, signature)  # made by another thread while this one waited
            if entry is None:
                batch = example_batch(model, example)
                if batch is None:
                    return model
                building.add(id(model))
                try:
                    entry = _Entry(signature, _build(model, batch))
                finally:
                    building.discard(id(model))
                with _lock:
                    _cache[model] = entry
    return entry.graph if entry.graph is not None else model


def _cached(model: nn.Module, signature: Tuple) -> Optional[_Entry]:
    with _lock:
        entry = _cache.get(model)
    return entry if entry is not None and entry.signature == signature else None


def _building() -> set:
    if not hasattr(_this_thread, "building"):
        _this_thread.building = set()
    return _this_thread.building


def _build(model: nn.Module, example: torch.Tensor) -> Optional[nn.Module]:
    started = time.perf_counter()
    try:
        with torch.inference_mode(False):  # a copy made in the caller's inference mode would hold inference
            graph = fused_copy(model, recordable(example))  # tensors: no later attack could differentiate it
    except Exception as error:  # a model that cannot be run on the example, or a folding that changes it
        logger.info("%s cannot be fused (%s: %s); attacks run it unfused", type(model).__name__,
                    type(error).__name__, error)
        return None
    logger.debug("fused copy of %s made in %.3f s", type(model).__name__, time.perf_counter() - started)
    return graph


def clear_fusion_cache(model: Optional[nn.Module] = None) -> None:
    """Forget the fused copy of `model` (of every model without one) to free its memory, or after changing in
    place a tensor held in a list or dict attribute its forward reads (those containers are recorded by which
    object they are, `_setting`, so that a forward refilling one does not make a new copy at every call). Every
    other change is seen by the next call: the weights, `.data` writes and fused optimiser steps included."""
    with _lock:
        if model is None:
            _cache.clear()
        else:
            _cache.pop(model, None)


def cached_graphs() -> int:
    """How many models have a cached entry (fused or not fusable); for tests and diagnostics."""
    return len(_cache)
