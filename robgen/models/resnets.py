"""The paper's small ResNets (CIFAR-10 and Imagenette), registered with timm.

One network, `SmallResNet`: a stem, four stages of BasicBlocks (strides 1, 2,
2, 2) with widths `width * (1, 2, 4, 8)`, average pooling and a linear head.
The stems:
- "cifar": 3x3 stride-1 conv, for 32x32 images (the paper's CIFAR-10 ResNet10, width 64);
- "imagenet": 7x7 stride-2 conv and a 3x3 stride-2 max-pool, the ImageNet ResNet's stem:
  it divides the side by 4 before the first block, which is what makes a 128-px
  Imagenette model affordable on a CPU (robgen's shipped Imagenette models);
- "strided": 3x3 stride-2 conv and a 2x2 pooled map (the official Imagenette
  notebook's model on 150-px crops: 512 * 4 = 2048 features into the head, at width 64).
  The notebook pools with avg_pool2d(4), which on its 10x10 map drops the last two
  rows and columns; here the 2x2 map is an adaptive average over the whole map.

Registering with timm means every model in robgen comes from one factory:
`timm.create_model("resnet10_imagenette", num_classes=10, width=32)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

# Data configs timm reports for these architectures (no downloadable weights: trained ones are
# robgen checkpoints). CIFAR-10 / Imagenette channel statistics; crop_pct as robgen trains them.
_CIFAR_CFG = dict(
    num_classes=10, input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    pool_size=None, crop_pct=1.0, interpolation="bilinear", first_conv="stem.0", classifier="head",
)
_IMAGENETTE_CFG = dict(
    num_classes=10, input_size=(3, 128, 128), mean=(0.4610, 0.4539, 0.4250), std=(0.2695, 0.2665, 0.2884),
    pool_size=None, crop_pct=0.875, interpolation="bilinear", first_conv="stem.0", classifier="head",
)
default_cfgs = {
    **{name: dict(_CIFAR_CFG) for name in ("resnet10_cifar", "resnet10_cifar_w32", "resnet10_cifar_w16", "resnet18_cifar")},
    "resnet10_imagenette": dict(_IMAGENETTE_CFG),
    "resnet10_imagenette_official": dict(_IMAGENETTE_CFG, input_size=(3, 150, 150), crop_pct=150 / 160,
                                         mean=(0.491, 0.482, 0.446), std=(0.202, 0.199, 0.201)),
}
STEMS = ("cifar", "imagenet", "strided")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stem(kind: str, in_chans: int, width: int) -> nn.Sequential:
    if kind == "cifar":
        conv = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
    elif kind == "strided":
        conv = nn.Conv2d(in_chans, width, 3, 2, 1, bias=False)
    elif kind == "imagenet":
        conv = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
    else:
        raise ValueError(f"unknown stem {kind!r}: use one of {', '.join(STEMS)}")
    layers = [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    if kind == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    """A ResNet of BasicBlocks: `blocks` per stage, widths `width * (1, 2, 4, 8)`, a `stem` of `STEMS`,
    and a head on the `pool x pool` average-pooled map (8 * width * pool**2 features)."""

    def __init__(self, blocks=(1, 1, 1, 1), width: int = 64, num_classes: int = 10, in_chans: int = 3,
                 stem: str = "cifar", pool: int = 1) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.num_classes = num_classes
        self.pool = pool
        self.stem = _stem(stem, in_chans, width)
        stages, in_channels = [], width
        for index, (count, out_channels) in enumerate(zip(blocks, widths)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(count):
                layers.append(BasicBlock(in_channels, out_channels, stride if block == 0 else 1))
                in_channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels * pool * pool, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features, shape (N, 8 * width * pool**2)."""
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), self.pool).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _build(blocks, default_width: int, pretrained: bool, stem: str = "cifar", pool: int = 1, **kwargs) -> SmallResNet:
    if pretrained:
        raise ValueError(
            "timm has no pretrained weights for robgen's small ResNets: load a trained checkpoint by name "
            "or folder with robgen.load_model(...) instead"
        )
    for factory_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(factory_only, None)
    width = kwargs.pop("width", default_width)
    return SmallResNet(blocks=blocks, width=width, stem=stem, pool=pool, **kwargs)


@register_model
def resnet10_cifar(pretrained: bool = False, **kwargs) -> SmallResNet:
    """The paper's CIFAR-10 ResNet10 (width 64; pass width=... for another)."""
    return _build((1, 1, 1, 1), 64, pretrained, **kwargs)


@register_model
def resnet10_cifar_w32(pretrained: bool = False, **kwargs) -> SmallResNet:
    """CIFAR ResNet10 at half width (32/64/128/256)."""
    return _build((1, 1, 1, 1), 32, pretrained, **kwargs)


@register_model
def resnet10_cifar_w16(pretrained: bool = False, **kwargs) -> SmallResNet:
    """CIFAR ResNet10 at quarter width (16/32/64/128), trainable on a CPU."""
    return _build((1, 1, 1, 1), 16, pretrained, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> SmallResNet:
    """ResNet18 for 32x32 inputs (BasicBlock x [2, 2, 2, 2])."""
    return _build((2, 2, 2, 2), 64, pretrained, **kwargs)


@register_model
def resnet10_imagenette(pretrained: bool = False, **kwargs) -> SmallResNet:
    """ImageNet-style ResNet10 (7x7/max-pool stem) for Imagenette crops (robgen's: width 32 at 128 px)."""
    return _build((1, 1, 1, 1), 32, pretrained, stem="imagenet", **kwargs)


@register_model
def resnet10_imagenette_official(pretrained: bool = False, **kwargs) -> SmallResNet:
    """The official notebook's Imagenette ResNet10: 3x3 stride-2 stem, width 64, 2x2 pooled map (150-px crops)."""
    return _build((1, 1, 1, 1), 64, pretrained, stem="strided", pool=2, **kwargs)
