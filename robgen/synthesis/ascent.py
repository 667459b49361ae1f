"""Class-conditional synthesis, masked synthesis and image-to-class translation by gradient ascent.

All three ascend the target class's log-probability log p(t | x) (or its
negative class energy -E(x, t) = f(x)[t]) with the same projected-gradient
loop as the attacks, under an L2 budget around the starting image:

    x_{k+1} = Project_{||x - x_0||_2 <= eps, [0, 1]}( x_k + step_size * g / ||g||_2 ),   g = ∇ₓ objective

On a robust or quasi-robust model the gradient points toward features of the
class, so the image turns into an object (Santurkar et al. 2019; MAGIC,
Rouhsedaghat et al. 2023); on a standard model it is an adversarial
perturbation that changes the prediction and little else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch

from ..engine import L2Ball, Masked, Trace, TraceRecorder, projected_gradient_ascent
from ..engine.autograd import outside_inference_mode
from ..engine.fused import inference_graph
from ..models.state import eval_mode, model_device, model_dtype, pixels_for
from ..checks import check_positive, check_steps
from ..energy import class_energy, energy, log_prob_given_x
from ..progress import step_reporter
from .seeds import SeedDistribution, initial_images, load_seeds

OBJECTIVES = ("log_prob", "class_energy")
DEFAULT_STEPS = 60


def default_budget(input_size: Tuple[int, int, int]) -> float:
    """An L2 radius of 0.1·sqrt(C·H·W): Santurkar et al.'s 40 on 224x224 ImageNet, scaled by image size.

    That is an RMS change of 0.1 per pixel (5.5 for 32x32 CIFAR images).
    """
    channels, height, width = input_size
    return 0.1 * float(channels * height * width) ** 0.5


def target_objective(target: torch.Tensor, objective: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits -> per-image value to ascend: log p(t | x) or -E(x, t)."""
    if objective == "log_prob":
        return lambda logits: log_prob_given_x(logits, target, check=False)
    if objective == "class_energy":
        return lambda logits: -class_energy(logits, target, check=False)
    raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")


def class_indices(model, target_class, n: int, device: torch.device) -> torch.Tensor:
    """(n,) class indices from one class (index or label name) or a sequence of n of them
    (`ModelSpec.class_indices`)."""
    return torch.tensor(model.spec.class_indices(target_class, n), device=device, dtype=torch.long)


def model_images(images: torch.Tensor, model, name: str = "image") -> torch.Tensor:
    """`images` as synthesis steps them: (N, C, H, W) (one image may come as (C, H, W)), on the model's device and
    in its floating-point type (numpy's float64 too; float32 for a float16 or bfloat16 model, whose pixel grid
    would round small steps away, as the attacks keep their iterates: `working_dtype`), checked as [0, 1] pixels
    of its channels and size (the L2 budget and the seeds are the model's size's); detached, so that what comes
    back holds pixels, not the graph of an input that requires grad."""
    x = images.detach().to(model_device(model))
    if x.ndim == 3:
        x = x.unsqueeze(0)
    return pixels_for(model, x, name=name, model_size=True, working=True)


def check_mask(mask: torch.Tensor, n: int, size: Tuple[int, int], device: torch.device) -> torch.Tensor:
    """A boolean (n or 1, 1, H, W) mask from an (H, W), (1, H, W) or (N, 1, H, W) tensor of 0/1 or bools; every
    image's mask marks a pixel."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape (H, W), got {type(mask).__name__}")
    shaped = mask
    if shaped.ndim == 2:
        shaped = shaped[None, None]
    elif shaped.ndim == 3 and shaped.shape[0] == 1:
        shaped = shaped[None]
    elif shaped.ndim == 3:  # (K, H, W): K images' masks, or a mask per channel (zeros_like(image)) read as them
        raise ValueError(f"mask has shape {tuple(mask.shape)}, which could be masks of {shaped.shape[0]} images or "
                         f"of {shaped.shape[0]} channels: give one mask as (H, W), or one per image as (N, 1, H, W) "
                         "(a mask covers every channel of its pixels)")
    if shaped.ndim == 4 and shaped.shape[1] != 1 and tuple(shaped.shape[2:]) == tuple(size):
        raise ValueError(f"mask has shape {tuple(mask.shape)}: a mask covers every channel of its pixels, so give "
                         "one channel, (N, 1, H, W)")
    if shaped.ndim != 4 or tuple(shaped.shape[2:]) != tuple(size) or shaped.shape[1] != 1:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the images are {size[0]}x{size[1]}: give an (H, W) = "
            f"{tuple(size)} mask (or (N, 1, H, W) masks)"
        )
    if shaped.shape[0] not in (1, n):
        raise ValueError(f"{shaped.shape[0]} masks for {n} images: give one mask for all or one per image")
    if shaped.dtype != torch.bool:
        values = shaped.unique()
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError("mask must hold only 0 and 1 (or booleans): 1 = pixels to synthesise")
        shaped = shaped == 1
    if not bool(shaped.any()):
        raise ValueError("mask is empty: mark at least one pixel to synthesise with 1")
    empty = (~shaped.flatten(1).any(1)).nonzero()[:, 0].tolist()
    if empty:  # those images would come back as they went in, counted as synthesised
        raise ValueError(f"the mask{'s' if len(empty) > 1 else ''} of image{'s' if len(empty) > 1 else ''} "
                         f"{', '.join(map(str, empty))} mark{'' if len(empty) > 1 else 's'} no pixel: mark at least "
                         "one pixel of every image to synthesise with 1")
    return shaped.to(device)


@dataclass
class SynthesisSettings:
    """Checked settings of one synthesis run; `eps` and `step_size` filled in from the model when None."""

    steps: int
    step_size: float
    eps: float

    @classmethod
    def resolve(cls, model, steps, step_size, eps) -> "SynthesisSettings":
        steps = check_steps(steps)
        eps = default_budget(model.spec.input_size) if eps is None else check_positive(eps, "eps")
        step_size = 2.5 * eps / steps if step_size is None else check_positive(step_size, "step_size")
        return cls(steps, step_size, eps)


@outside_inference_mode
def synthesize(
    model,
    target_class,
    n: int = 8,
    *,
    steps: int = DEFAULT_STEPS,
    step_size: Optional[float] = None,
    eps: Optional[float] = None,
    init: Union[str, torch.Tensor] = "gaussian",
    mask: Optional[torch.Tensor] = None,
    objective: str = "log_prob",
    seeds: Optional[SeedDistribution] = None,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable] = None,
    return_trace: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, Trace]]:
    """Draw `n` images of `target_class` from a classifier by gradient ascent on the class.

    Args:
        model: a robgen classifier (takes [0, 1] pixels, has `model.spec`).
        target_class: a class index or label name, or a sequence of `n` of them.
        steps: gradient steps (default 60).
        step_size: L2 length of one step (default 2.5 * eps / steps).
        eps: L2 budget around the starting image (default 0.1 * sqrt(C*H*W)).
        init: "gaussian" (class-conditional seeds shipped next to the checkpoint,
            or `seeds`), "uniform" noise, "gray", or images (1 or n, C, H, W).
        mask: (H, W) of 0/1: only pixels where it is 1 change; the others keep
            `init`'s pixels (see `inpaint` for a ready-made version).
        objective: "log_prob" (log p(t | x)) or "class_energy" (-E(x, t)).
        generator: the source of all randomness (seeds, noise).
        progress: a callback fn(fraction, desc=...) or None.
        return_trace: also return a `Trace` with the mean target probability and
            energy after every step.

    Returns:
        images (n, C, H, W) in [0, 1] on the model's device (and the trace).

    Example:
        >>> images = synthesize(load_model("cifar10-resnet10-robust"), "dog", n=4)
    """
    device = model_device(model)
    n = check_steps(n, "n")
    settings = SynthesisSettings.resolve(model, steps, step_size, eps)
    target = class_indices(model, target_class, n, device)
    start = initial_images(init, target, model, generator, device, seeds)
    constraint = L2Ball(settings.eps)
    if mask is not None:
        constraint = Masked(constraint, check_mask(mask, n, model.spec.input_size[1:], device))
    recorder = TraceRecorder(target, target) if return_trace else None
    graph = inference_graph(model, example=start)  # the fused copy of an eval-mode model
    with eval_mode(model):
        images = projected_gradient_ascent(
            graph, start, target_objective(target, objective), constraint, settings.steps, settings.step_size,
            recorder=recorder, progress=step_reporter(progress, "synthesising"),
        )
    return (images, recorder.finish()) if return_trace else images


def inpaint(model, image: torch.Tensor, mask: torch.Tensor, target_class, n: int = 1, *,
            fill: str = "gaussian", generator: Optional[torch.Generator] = None, **settings):
    """Synthesise `target_class` inside `mask` (1 = redraw) and keep `image` everywhere else.

    The masked region starts from a `fill` seed ("gaussian", "uniform" or
    "gray"). Drawing into a plain canvas through a shape mask gives a
    mask-shaped object (MAGIC-style layout guidance). Keyword `settings` are
    those of `synthesize`.
    """
    if "init" in settings:
        raise TypeError("inpaint starts the masked region from `fill` (\"gaussian\", \"uniform\" or \"gray\"), "
                        "not `init`: pass fill=...")
    device = model_device(model)
    n = check_steps(n, "n")
    image = model_images(image, model)
    if image.shape[0] not in (1, n):
        raise ValueError(f"give one image (redrawn n = {n} times) or n images, not {image.shape[0]}")
    region = check_mask(mask, n, model.spec.input_size[1:], device)
    target = class_indices(model, target_class, n, device)
    seeds = settings.get("seeds")
    if fill == "gaussian" and seeds is None:  # the seeds beside the model; without them, say what `fill` takes
        seeds = load_seeds(model, instead="or use fill='uniform' or 'gray'")
    seed = initial_images(fill, target, model, generator, device, seeds)
    start = torch.where(region, seed, image.expand(n, -1, -1, -1))
    return synthesize(model, target_class, n, init=start, mask=region, generator=generator, **settings)


@dataclass
class Translation:
    """An image-to-class path: `path[k]` are the images after `steps_at[k]` steps (k = 0 is the input)."""

    path: torch.Tensor  # (S, N, C, H, W)
    steps_at: List[int]
    target_prob: torch.Tensor  # (S, N): p(target | path[k])
    energy: torch.Tensor  # (S, N): E(path[k])

    @property
    def images(self) -> torch.Tensor:
        """The end of the path: (N, C, H, W)."""
        return self.path[-1]


@outside_inference_mode
def translate(
    model,
    image: torch.Tensor,
    target_class,
    *,
    steps: int = DEFAULT_STEPS,
    step_size: Optional[float] = None,
    eps: Optional[float] = None,
    snapshots: int = 5,
    objective: str = "log_prob",
    progress: Optional[Callable] = None,
) -> Translation:
    """Move `image` toward `target_class` under an L2 budget, keeping `snapshots` points of the path.

    A counterfactual explanation: on a robust model the change is a visible
    edit that adds features of the target class; on a standard model it is
    an invisible adversarial perturbation.
    """
    device = model_device(model)
    x = model_images(image, model)
    settings = SynthesisSettings.resolve(model, steps, step_size, eps)
    snapshots = check_steps(snapshots, "snapshots")
    target = class_indices(model, target_class, x.shape[0], device)
    keep_at = sorted({round(settings.steps * (k + 1) / snapshots) for k in range(snapshots)})
    kept = {0: x.clone()}

    def keep(step: int, current: torch.Tensor) -> None:
        if step in keep_at:
            kept[step] = current.clone()

    graph = inference_graph(model, example=x)  # the fused copy of an eval-mode model
    with eval_mode(model):
        projected_gradient_ascent(
            graph, x, target_objective(target, objective), L2Ball(settings.eps), settings.steps,
            settings.step_size, progress=step_reporter(progress, "translating"), on_step=keep,
        )
        path = torch.stack([kept[step] for step in sorted(kept)])
        with torch.no_grad():
            logits = model(path.flatten(0, 1).to(model_dtype(model))).float()
    probs = logits.softmax(1).gather(1, target.repeat(len(path)).view(-1, 1)).view(len(path), -1)
    energies = energy(logits, check=False).view(len(path), -1)
    return Translation(path, sorted(kept), probs.cpu(), energies.cpu())

