"""A classifier that takes [0, 1] pixels and carries its own spec.

Everything outside the model works on [0, 1] NCHW pixels. `Classifier` holds
the mean/std as registered buffers (so `.to(device)` moves them) and applies
them before the wrapped network, and `model.spec` says what the model is.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

# Resampling filters an eval transform may name (timm's names; PIL has all of them).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash")  # timm's eval crops robgen reads images with (`images.resize_and_crop`)


@dataclass
class ModelSpec:
    """What a model is: enough to rebuild it, feed it and label its outputs."""

    architecture: str  # a timm model name, e.g. "resnet10_cifar"
    num_classes: int
    class_labels: List[str]
    mean: Tuple[float, ...] = (0.0, 0.0, 0.0)
    std: Tuple[float, ...] = (1.0, 1.0, 1.0)
    input_size: Tuple[int, int, int] = (3, 32, 32)  # (C, H, W)
    arch_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments, e.g. width
    training: Dict[str, Any] = field(default_factory=dict)  # the recipe and data it was trained on
    metrics: Dict[str, Any] = field(default_factory=dict)  # accuracies measured after training
    crop_pct: float = 1.0  # eval transform (timm's): resize the short side to size / crop_pct, centre-crop size
    interpolation: str = "bicubic"  # resampling filter of that resize
    crop_mode: str = "center"  # timm's: "center" keeps the aspect ratio; "squash" resizes each side to size / crop_pct
    source: str = ""  # what it was loaded as, for display: "hf-hub:org/repo", "madrylab:...", a path
    folder: str = ""  # the local checkpoint folder it was read from (runtime only, never saved)

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral):
            raise ValueError(f"num_classes must be a whole number, got {self.num_classes!r}")
        self.num_classes = int(self.num_classes)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.input_size = tuple(int(v) for v in self.input_size)
        self.class_labels = distinct_labels([str(label) for label in self.class_labels])
        for name in ("arch_kwargs", "training", "metrics"):  # a config written with null for "none"
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping (or null), got {value!r}")
        if len(self.input_size) != 3:
            raise ValueError(f"input_size must be (C, H, W), got {self.input_size}")
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values each, got {self.mean} and {self.std}")
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"mean must be finite and std finite and positive, got {self.mean} and {self.std}")
        if any(side < 1 for side in self.input_size):
            raise ValueError(f"input_size must be positive (C, H, W), got {self.input_size}")
        if len(self.class_labels) != self.num_classes:
            raise ValueError(f"{self.num_classes} classes but {len(self.class_labels)} class labels")
        self.crop_pct = float(self.crop_pct)
        if not 0 < self.crop_pct <= 2:  # timm's run to 1.15 (a margin of black around the image above 1)
            raise ValueError(f"crop_pct must be a fraction in (0, 2] (1.0: no crop margin, 0.875: ImageNet's), not a "
                             f"percentage; got {self.crop_pct}")
        self.interpolation = str(self.interpolation).lower()
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        self.crop_mode = str(self.crop_mode).lower()
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"unknown crop_mode {self.crop_mode!r}; use one of {', '.join(CROP_MODES)}")

    def to_dict(self) -> Dict[str, Any]:
        """The spec as JSON-ready data, without the local `folder` (a property of this machine)."""
        data = asdict(self)
        data.pop("folder")
        data["mean"], data["std"], data["input_size"] = list(self.mean), list(self.std), list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelSpec":
        """A spec from `to_dict` data or a `config.json`; fields added later keep their defaults."""
        known = set(cls.__dataclass_fields__) - {"folder"}
        return cls(**{key: value for key, value in data.items() if key in known})

    def class_index(self, label) -> int:
        """The index of a class given as an index or a label, any case: the whole label, or one of the synonyms
        an ImageNet label lists ("tench" for "tench, Tinca tinca") where it names one class only. A string that
        is a label is that label, digits or not (an ImageFolder of classes "1" ... "10" sorts "10" second); other
        digit strings are indices."""
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError("no class given: pick a class (a label or an index)")
        lowered = [" ".join(name.split()).lower() for name in self.class_labels]  # "golf  ball" is "golf ball"
        if isinstance(label, str) and label.strip() in self.class_labels:  # exactly, before any case is ignored
            return self.class_labels.index(label.strip())
        if isinstance(label, str) and " ".join(label.split()).lower() in lowered:
            same = [i for i, name in enumerate(lowered) if name == " ".join(label.split()).lower()]
            if len(same) > 1:  # "Cat" and "cat"
                raise ValueError(f"{label!r} names several classes but for their case: "
                                 f"{'; '.join(f'{i} ({self.class_labels[i]})' for i in same)}: give the label as "
                                 "written, or the index")
            return same[0]
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            wanted = " ".join(label.split()).lower()
            named = [i for i, name in enumerate(lowered)  # a synonym, or a repeated label without its "(class i)"
                     if wanted in (part.strip() for part in re.sub(r" \(class \d+\)$", "", name).split(","))]
            if len(named) == 1:
                return named[0]
            if named:
                raise ValueError(f"{label!r} names several classes: "
                                 f"{'; '.join(f'{i} ({self.class_labels[i]})' for i in named)}: give the index")
            raise ValueError(f"unknown class {label!r}; {self._classes_hint(wanted)}")
        if not isinstance(label, str):  # a number of any kind (numpy, torch): whole, and not a truth value
            kind = getattr(label, "dtype", type(label))
            if isinstance(label, bool) or str(kind) in ("bool", "torch.bool") or not float(label).is_integer():
                raise ValueError(f"class {label!r} is neither a label nor a whole index: give a label or an index")
        index = int(label)
        if not 0 <= index < self.num_classes:
            raise ValueError(f"class index {index} is out of range: this model has classes 0..{self.num_classes - 1}")
        return index

    def class_indices(self, classes, n: int) -> List[int]:
        """n class indices from one class (an index or a label, as `class_index` reads it) for all n images, or a
        flat sequence (a list, a range, a tensor or an array) of n of them."""
        if hasattr(classes, "tolist") and not isinstance(classes, (str, bytes)):  # a tensor or an array
            if getattr(classes, "ndim", 0) > 1:
                raise ValueError(f"classes must be one class or a flat sequence of n, got shape "
                                 f"{tuple(classes.shape)}")
            classes = classes.tolist()
        if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__"):
            return [self.class_index(classes)] * n
        if len(classes) != n:
            raise ValueError(f"{len(classes)} classes given for {n} images; give one class or {n}")
        return [self.class_index(c) for c in classes]

    def _classes_hint(self, wanted: str) -> str:
        if self.num_classes <= 20:
            return f"this model's classes are: {', '.join(self.class_labels)}"
        close = difflib.get_close_matches(wanted, [name.lower() for name in self.class_labels], n=3, cutoff=0.5)
        near = f" (close: {'; '.join(close)})" if close else ""
        return f"give one of this model's {self.num_classes} labels or an index 0..{self.num_classes - 1}{near}"


def distinct_labels(labels: List[str]) -> List[str]:
    """The labels, each one that occurs more than once told apart by its index ("crane (class 134)" and "crane
    (class 517)" in ImageNet's table), so that a label names one class wherever it is shown or picked."""
    counts: Dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    named = [f"{label} (class {i})" if counts[label] > 1 else label for i, label in enumerate(labels)]
    while len(set(named)) < len(named):  # a label that reads like another's new name: ["x", "x", "x (class 1)"]
        named = [f"{name} (class {i})" if named.count(name) > 1 and not name.endswith(f"(class {i})") else name
                 for i, name in enumerate(named)]
    return named


class Classifier(nn.Module):
    """`net((x - mean) / std)` for x in [0, 1]; `spec` describes the model."""

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        channels = spec.input_size[0]
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images of shape (N, {self.mean.shape[1]}, H, W) with pixels in [0, 1], got {tuple(x.shape)}"
            )
        if not x.is_floating_point():  # 0-255 bytes read as pixels: logits of a white image, with no word
            raise TypeError(f"expected float pixels in [0, 1], got a {x.dtype} tensor: for 8-bit images give "
                            "x.float() / 255")
        return self.net((x - self.mean) / self.std)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def extra_repr(self) -> str:
        return f"architecture={self.spec.architecture!r}, num_classes={self.spec.num_classes}, source={self.spec.source!r}"
