"""Where synthesis starts: class-conditional Gaussian seeds, uniform noise, gray, or given images.

Santurkar et al. (2019, "Image Synthesis with a Single (Robust) Classifier")
start gradient ascent from a sample of a multivariate Gaussian fitted to the
(downsampled) training images of the target class: a blurry, class-coloured
blob that the robust model then sharpens into an object.

`SeedDistribution` fits that Gaussian per class at a low resolution (8x8 for
CIFAR) and keeps its top principal components plus an isotropic remainder
(probabilistic PCA), so the file that stores it next to a checkpoint is small
(`seeds.safetensors`, a few hundred KB) and the app needs no data set at run
time. `python -m robgen fit-seeds --model NAME --data cifar10` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..checks import check_pixels
from ..engine.random import random_normal, random_uniform
from ..files import write_atomically
from ..models.checkpoint import companion_file
from ..models.state import working_dtype
from ..progress import progress_bar

SEEDS_FILE = "seeds.safetensors"
INITS = ("gaussian", "uniform", "gray")


class SeedDistribution:
    """Per-class Gaussians over images downsampled to `resolution` (PPCA with `rank` components).

    A sample is  mean_k + factors_k @ z + sqrt(residual_k) * e,  z, e ~ N(0, I),
    reshaped to (C, r, r), upsampled bilinearly to the model's input size and
    clamped to [0, 1].
    """

    def __init__(self, means: torch.Tensor, factors: torch.Tensor, residual: torch.Tensor,
                 channels: int, resolution: int, class_labels: Sequence[str]) -> None:
        self.means, self.factors, self.residual = means.float(), factors.float(), residual.float()
        self.channels, self.resolution = int(channels), int(resolution)
        self.class_labels = [str(label) for label in class_labels]
        dim = self.channels * self.resolution**2
        if self.means.shape != (len(self.class_labels), dim) or self.factors.shape[:2] != (len(self.class_labels), dim):
            raise ValueError(
                f"seed statistics do not fit together: means {tuple(self.means.shape)}, factors "
                f"{tuple(self.factors.shape)} for {len(self.class_labels)} classes of {dim} values"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @classmethod
    def fit(cls, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], class_labels: Sequence[str],
            resolution: int = 8, rank: int = 64, progress=True) -> "SeedDistribution":
        """Fit on (images in [0, 1], labels) batches; every class needs at least 2 images."""
        num_classes = len(class_labels)
        sums = counts = outer = None
        for images, labels in progress_bar(batches, desc="fitting seed Gaussians", progress=progress):
            check_pixels(images, name="images")  # 0-255 or normalised images would make white or black seeds
            small = downsample(images, resolution).flatten(1).double().cpu()  # summed on the CPU: GPU batches too
            if sums is None:
                dim = small.shape[1]
                sums = torch.zeros(num_classes, dim, dtype=torch.float64)
                outer = torch.zeros(num_classes, dim, dim, dtype=torch.float64)
                counts = torch.zeros(num_classes, dtype=torch.float64)
                channels = images.shape[1]
            labels = torch.as_tensor(labels).long().cpu()
            if len(labels) != len(small) or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes):
                raise ValueError(f"labels must be one class index in 0..{num_classes - 1} per image; got "
                                 f"{len(labels)} for {len(small)} images, in {labels.min().item() if len(labels) else '-'}"
                                 f"..{labels.max().item() if len(labels) else '-'}")
            sums.index_add_(0, labels, small)
            counts += torch.bincount(labels, minlength=num_classes).double()
            for k in labels.unique().tolist():
                rows = small[labels == k]
                outer[k] += rows.T @ rows
        if sums is None:
            raise ValueError("no images to fit the seed distribution on")
        if bool((counts < 2).any()):
            missing = [class_labels[k] for k in range(num_classes) if counts[k] < 2]
            raise ValueError(f"every class needs at least 2 images to fit a Gaussian; too few for: {', '.join(missing)}")
        dim = sums.shape[1]
        rank = min(int(rank), dim)
        means = sums / counts[:, None]
        factors = torch.zeros(num_classes, dim, rank, dtype=torch.float64)
        residual = torch.zeros(num_classes, dtype=torch.float64)
        for k in range(num_classes):
            covariance = outer[k] / counts[k] - torch.outer(means[k], means[k])
            covariance = covariance * counts[k] / (counts[k] - 1)  # unbiased
            values, vectors = torch.linalg.eigh(covariance)  # ascending
            values = values.clamp_min(0).flip(0)
            vectors = vectors.flip(1)
            rest = values[rank:]
            residual[k] = rest.mean() if rest.numel() else 0.0  # PPCA: the discarded variance, spread evenly
            factors[k] = vectors[:, :rank] * (values[:rank] - residual[k]).clamp_min(0).sqrt()
        return cls(means, factors, residual, channels, resolution, class_labels)

    def sample(self, classes: torch.Tensor, size: Tuple[int, int], generator: Optional[torch.Generator] = None,
               device: Optional[torch.device] = None) -> torch.Tensor:
        """One seed per entry of `classes`, as (N, C, H, W) pixels in [0, 1] on `device`."""
        classes = torch.as_tensor(classes).long().cpu()
        like = torch.empty(0, device=device or "cpu")
        rank = self.factors.shape[2]
        z = random_normal((len(classes), rank), like, generator).cpu()
        e = random_normal((len(classes), self.means.shape[1]), like, generator).cpu()
        flat = (self.means[classes] + torch.einsum("ndr,nr->nd", self.factors[classes], z)
                + self.residual[classes].sqrt()[:, None] * e)
        small = flat.view(len(classes), self.channels, self.resolution, self.resolution)
        return F.interpolate(small, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0, 1).to(like.device)

    def save(self, path: Union[str, Path]) -> Path:
        """Write to a safetensors file (atomically), the labels and resolution in its metadata."""
        metadata = {"format": "robgen-seeds", "channels": str(self.channels), "resolution": str(self.resolution),
                    "class_labels": json.dumps(self.class_labels)}
        tensors = {"means": self.means.contiguous(), "factors": self.factors.half().contiguous(),
                   "residual": self.residual.contiguous()}
        path = Path(path).expanduser()
        return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SeedDistribution":
        from safetensors import safe_open

        path = Path(path).expanduser()
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != "robgen-seeds":
            raise ValueError(f"{path} is not a robgen seed file (write one with `python -m robgen fit-seeds`)")
        tensors = load_file(str(path))
        return cls(tensors["means"], tensors["factors"], tensors["residual"], int(metadata["channels"]),
                   int(metadata["resolution"]), json.loads(metadata["class_labels"]))


def downsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Area-average images to resolution x resolution."""
    return F.adaptive_avg_pool2d(images.float(), resolution)


def load_seeds(model, instead: str = "or use init='uniform' or 'gray'") -> SeedDistribution:
    """The seed distribution shipped next to the model's checkpoint, checked against its classes (`instead`: what
    the caller can do without one, for the error that says there is none)."""
    path = companion_file(model, SEEDS_FILE, "fit-seeds", instead)
    return check_seeds(SeedDistribution.load(path), model, str(path))


def check_seeds(seeds: SeedDistribution, model, what: str = "the seed distribution") -> SeedDistribution:
    """Refuse seeds fitted for other classes than the model's (class k would start from another class's
    Gaussian, or a class beyond them fail with an IndexError), or for images of another number of channels
    (grayscale seeds for a colour model failed inside the model, naming no seeds)."""
    if list(seeds.class_labels) != list(model.spec.class_labels):
        raise ValueError(f"{what} was fitted for the classes {list(seeds.class_labels)}, not this model's "
                         f"({list(model.spec.class_labels)}): fit seeds for it (`python -m robgen fit-seeds`)")
    channels = int(model.spec.input_size[0])
    if seeds.channels != channels:
        raise ValueError(f"{what} was fitted on images of {seeds.channels} channel(s), this model takes {channels}: "
                         "fit seeds for it (`python -m robgen fit-seeds`)")
    return seeds


def initial_images(init, classes: torch.Tensor, model, generator: Optional[torch.Generator],
                   device: torch.device, seeds: Optional[SeedDistribution] = None) -> torch.Tensor:
    """The starting images of synthesis for `init` ("gaussian", "uniform", "gray" or a tensor of images)."""
    channels, height, width = model.spec.input_size
    n = len(classes)
    if isinstance(init, torch.Tensor):
        if not init.is_floating_point():  # before the cast, which read uint8 or bool 0/1 as black and white
            raise TypeError(f"init must be a float tensor with pixels in [0, 1], got dtype {init.dtype} (divide uint8 "
                            "images by 255)")
        images = init.to(device=device, dtype=working_dtype(model))  # e.g. float64 images from numpy, float32 model
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.shape[0] == 1:
            images = images.expand(n, -1, -1, -1)
        if tuple(images.shape) != (n, channels, height, width):
            raise ValueError(
                f"init images have shape {tuple(init.shape)}; the model needs (1 or {n}, {channels}, {height}, {width}) "
                "(load them with robgen.load_image(path, size=model.spec.input_size[1:]))"
            )
        check_pixels(images, channels, name="init")  # 0-255 images, say, refused for every method
        return images.clone()
    dtype = working_dtype(model)  # the iterates' type: the model's, float32 for a float16 or bfloat16 model
    if init == "gaussian":
        seeds = check_seeds(seeds, model) if seeds is not None else load_seeds(model)
        return seeds.sample(classes, (height, width), generator, device).to(dtype)
    if init == "uniform":
        return random_uniform((n, channels, height, width), torch.empty(0, device=device), generator).to(dtype)
    if init == "gray":
        return torch.full((n, channels, height, width), 0.5, device=device, dtype=dtype)
    raise ValueError(f"unknown init {init!r}: use one of {', '.join(INITS)} or a tensor of images")
