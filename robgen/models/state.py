"""Where a model lives, in which floating-point type, and which mode it is in: the one place robgen asks.

    device, dtype = model_device(model), model_dtype(model)
    with eval_mode(model):      # batch norm and dropout frozen; the caller's mode comes back after
        logits = model(x)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..checks import check_pixels


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def widened(outputs: torch.Tensor) -> torch.Tensor:
    """A model's outputs for keeping: float32, or float64 where they are float64 (a float64 model's logits and
    features keep their precision, so thresholds fitted on them hold when the model scores the same images)."""
    return outputs if outputs.dtype == torch.float64 else outputs.float()


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating-point type of the model's first float parameter (or buffer), which its inputs must have;
    float32 for a model with neither."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


LOW_PRECISION = (torch.float16, torch.bfloat16)


def has_hooks(model: torch.nn.Module) -> bool:
    """Whether any module of `model` has forward, forward-pre or backward hooks."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for module in model.modules() for name in names)


def working_dtype(model: torch.nn.Module) -> torch.dtype:
    """The type an attack's iterates are kept in: the model's, but float32 for a float16 or bfloat16 model, whose
    pixel grid (bfloat16: 1/256 apart in [0.5, 1)) would round a step of 2.5 eps / steps away and let the ball's
    projection overshoot (the model is run on the iterates cast to its own type: `CastInputs`)."""
    dtype = model_dtype(model)
    return torch.float32 if dtype in LOW_PRECISION else dtype


class _Scales:
    """The factors one call of `CastInputs` scaled its output gradient by, handed from the backward of the output's
    cast (which runs first) to the backward of the input's."""

    def __init__(self) -> None:
        self.factors = None


class _NarrowInputs(torch.autograd.Function):
    """x cast to the model's float16; backward: the gradient widened and divided by the factors `_WidenOutputs`
    multiplied the output's gradient by, which gives back the gradient of the loss itself."""

    @staticmethod
    def forward(ctx, x, dtype, scales):
        ctx.wide, ctx.scales = x.dtype, scales
        return x.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.to(ctx.wide)
        factors = ctx.scales.factors
        if factors is not None:
            grad = grad / factors.reshape(factors.shape + (1,) * (grad.dim() - 1))
        return grad, None, None


class _WidenOutputs(torch.autograd.Function):
    """The float16 model's outputs widened; backward: each image's gradient multiplied by a power of 2 that brings
    its largest entry to between 1/2 and 1 before it enters float16 (per-image loss scaling)."""

    @staticmethod
    def forward(ctx, out, wide, scales, per_image):
        ctx.narrow, ctx.scales, ctx.per_image = out.dtype, scales, per_image
        return out.to(wide)

    @staticmethod
    def backward(ctx, grad):
        per_image = ctx.per_image and grad.dim() > 0
        largest = grad.abs().amax(dim=tuple(range(1, grad.dim()))) if per_image else grad.abs().amax()
        usable = torch.isfinite(largest) & (largest > 0)  # a zero or non-finite gradient is passed on as it is
        exponent = torch.where(usable, -torch.floor(torch.log2(torch.where(usable, largest, 1.0))), 0.0)
        exponent = exponent.clamp(max=126)  # 2**128 is infinite in float32 (a largest entry below 2**-127)
        factors = torch.exp2(exponent)  # a power of 2: multiplying and dividing by it is exact
        ctx.scales.factors = factors if per_image else factors.expand(1)
        scaled = grad * (factors.reshape(factors.shape + (1,) * (grad.dim() - 1)) if per_image else factors)
        return scaled.to(ctx.narrow), None, None, None


class CastInputs(torch.nn.Module):
    """`network` run on its inputs cast to `dtype` (the model's), so that an attack keeps its iterates in
    `working_dtype` and its gradient comes back in that type; its outputs come back in the inputs' type too (the
    same values, widened: torchattacks' APGD reads its losses through numpy, which has no bfloat16).

    A float16 network's gradient is loss-scaled per image: float16 holds nothing below 6e-8, so the gradient of a
    cross-entropy on an image the model classifies with a logit margin above about 17 (every other class's
    probability, and so every entry of dCE/dlogits, under 6e-8) was exactly 0 in it, and PGD stood still where
    the same model in float32 moves. Each image's output gradient is scaled by a power of 2 to a largest entry
    of about 1 before it enters float16 and scaled back after, so the gradient that comes back is the loss's own.
    Per image in eval mode, where the images do not interact; one factor for the batch in train mode, where batch
    norm mixes them. For gradients with respect to the inputs only, what attacks take: a parameter's gradient
    taken through it comes back scaled. Not while a module of the network has hooks: a tensor a forward hook
    catches inside it (the penultimate features a detector reads) would bring its gradient in unscaled and have it
    divided on the way out, so such a pass runs unscaled, as float16 gives it. bfloat16 has float32's range and is
    left as it is."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network, self.dtype = network, dtype
        self.training = network.training  # a new module says True: torchattacks read it and called train() after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.dtype != torch.float16 or not torch.is_grad_enabled() or not x.requires_grad
                or has_hooks(self.network)):
            out = self.network(x.to(self.dtype))
            return out.to(x.dtype) if isinstance(out, torch.Tensor) and out.is_floating_point() else out
        scales = _Scales()
        out = self.network(_NarrowInputs.apply(x, self.dtype, scales))
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            return out
        per_image = not self.network.training and out.dim() > 0 and out.shape[0] == x.shape[0]
        return _WidenOutputs.apply(out, x.dtype, scales, per_image)


def pixels_for(model: torch.nn.Module, x: torch.Tensor, name: str = "x", model_size: bool = False,
               working: bool = False) -> torch.Tensor:
    """`x` checked as a batch of [0, 1] pixels of the model's channels (`checks.check_pixels`: 0-255 pixels and
    normalised ones are refused, saying so) and in the model's floating-point type (float64 tensors, e.g.
    torch.from_numpy of numpy's arrays, for a float32 model are cast, where torch said "expected scalar type Double").
    `model_size`: the images must also have the model's input size (synthesis, whose budget and seeds are that
    size's; and wherever a detector judges them: its thresholds, fitted at that size, say nothing of another).
    `working`: in `working_dtype` instead (an attack's iterates: float32 for a float16 or bfloat16 model)."""
    spec = getattr(model, "spec", None)
    check_pixels(x, spec.input_size[0] if spec is not None else None, name=name)
    if model_size and spec is not None and tuple(x.shape[2:]) != tuple(spec.input_size[1:]):
        height, width = spec.input_size[1:]
        raise ValueError(f"{name} is {x.shape[2]}x{x.shape[3]} pixels but the model takes {height}x{width}: resize it "
                         f"first (robgen.load_image(path, size=({height}, {width})), or "
                         "robgen.images.load_model_input(path, model.spec) for the model's eval transform)")
    dtype = working_dtype(model) if working else model_dtype(model)
    return x if x.dtype == dtype else x.to(dtype)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put `model` in eval mode for the block and restore every module's own mode after.

    Modes are restored module by module, so a caller fine-tuning with frozen batch norm (model in
    train mode, its BN layers in eval mode) gets exactly that back.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
