"""The paper's CIFAR ResNet10 and narrower variants, registered with timm.

ResNet10 for 32x32 inputs: a 3x3 stride-1 stem (no max-pool), four stages of
one BasicBlock each (strides 1, 2, 2, 2), global average pooling and a linear
head. Widths are `width * (1, 2, 4, 8)`; the paper's model has width 64.

Registering with timm means every model in robgen comes from one factory:
`timm.create_model("resnet10_cifar", num_classes=10)`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

# Data config timm reports for these architectures (no downloadable weights:
# trained ones are robgen checkpoints). CIFAR-10 channel statistics.
_CIFAR_CFG = dict(
    num_classes=10, input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    pool_size=None, crop_pct=1.0, interpolation="bilinear", first_conv="stem.0", classifier="head",
)
default_cfgs = {
    name: dict(_CIFAR_CFG) for name in ("resnet10_cifar", "resnet10_cifar_w32", "resnet10_cifar_w16", "resnet18_cifar")
}


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


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stem for small images; `blocks` BasicBlocks per stage."""

    def __init__(self, blocks=(1, 1, 1, 1), width: int = 64, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages, in_channels = [], width
        for index, (count, out_channels) in enumerate(zip(blocks, widths)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(count):
                layers.append(BasicBlock(in_channels, out_channels, stride if block == 0 else 1))
                in_channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features, shape (N, 8 * width)."""
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _build(blocks, default_width: int, pretrained: bool, **kwargs) -> CifarResNet:
    if pretrained:
        raise ValueError(
            "timm has no pretrained weights for robgen's CIFAR ResNets: load a trained checkpoint by name "
            "or folder with robgen.load_model(...) instead"
        )
    for factory_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(factory_only, None)
    width = kwargs.pop("width", default_width)
    return CifarResNet(blocks=blocks, width=width, **kwargs)


@register_model
def resnet10_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """The paper's ResNet10 (width 64; pass width=... for another)."""
    return _build((1, 1, 1, 1), 64, pretrained, **kwargs)


@register_model
def resnet10_cifar_w32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet10 at half width (32/64/128/256)."""
    return _build((1, 1, 1, 1), 32, pretrained, **kwargs)


@register_model
def resnet10_cifar_w16(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet10 at quarter width (16/32/64/128), trainable on a CPU."""
    return _build((1, 1, 1, 1), 16, pretrained, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet18 for 32x32 inputs (BasicBlock x [2, 2, 2, 2])."""
    return _build((2, 2, 2, 2), 64, pretrained, **kwargs)
