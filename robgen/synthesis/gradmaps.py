"""Input-gradient maps (the paper's Fig. 4): what a small change of each pixel does to the loss.

A standard classifier's ∇ₓ CE(f(x), y) looks like noise; a robust or
quasi-robust one's looks like the object (Tsipras et al. 2019; Santurkar et
al. 2019), which is the visible side of the generative model inside it.

`input_gradient` computes the gradient; `magnitude_map` and `signed_map`
render it as images in [0, 1]; `robgen.plots.gradient_maps` draws several
models side by side.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..checks import labels_for
from ..engine.autograd import gradient_mode, outside_inference_mode, recordable
from ..engine.fused import inference_graph
from ..models.state import eval_mode, model_device, pixels_for


@outside_inference_mode
def input_gradient(model, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """∇ₓ CE(f(x), y) for each image (y: the given labels, or the model's own predictions).

    Taken as the attacks take theirs (`robgen.engine.fused.inference_graph`): a float16 or bfloat16 model is run on
    float32 pixels cast to its type with its gradient scaled per image (`CastInputs`), since in float16 alone the
    gradient of an image classified with a logit margin above about 17 is exactly 0 (a blank map)."""
    x = recordable(pixels_for(model, x.detach().to(model_device(model)), working=True))
    graph = inference_graph(model, example=x)  # before eval_mode: a model in train mode is run as it is
    with eval_mode(model), gradient_mode():
        x = recordable(x).requires_grad_(True)
        logits = graph(x)
        y = logits.argmax(1) if labels is None else labels_for(labels, len(x), logits.shape[1], x.device, "labels")
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _robust_scale(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per-image `quantile` of |values|, shaped for broadcasting; outliers beyond it saturate."""
    flat = values.abs().flatten(1).float()
    scale = torch.quantile(flat, quantile, dim=1).clamp_min(1e-12)
    return scale.view(-1, *([1] * (values.ndim - 1)))


def _batch(grad: torch.Tensor) -> torch.Tensor:
    """`grad` as (N, C, H, W): one (C, H, W) gradient was read as C images of one channel."""
    if not isinstance(grad, torch.Tensor) or grad.ndim != 4:
        shape = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
        hint = " (one image's: add a batch dimension with grad.unsqueeze(0))" if getattr(grad, "ndim", 0) == 3 else ""
        raise ValueError(f"grad must be a batch of input gradients of shape (N, C, H, W), got {shape}{hint}")
    return grad


def magnitude_map(grad: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: the L2 norm over channels, divided by its per-image `quantile`."""
    grad = _batch(grad)
    magnitude = grad.float().norm(dim=1, keepdim=True)
    return (magnitude / _robust_scale(magnitude, quantile)).clamp_(0, 1)


def signed_map(grad: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """(N, C, H, W) in [0, 1]: 0.5 + grad / (2 * per-image quantile of |grad|); gray = no change.

    Pass -input_gradient(...) to see the change that makes the class more
    likely: on robust models it shows the object's edges in its own colours.
    """
    grad = _batch(grad).float()
    return (0.5 + grad / (2 * _robust_scale(grad, quantile))).clamp_(0, 1)
