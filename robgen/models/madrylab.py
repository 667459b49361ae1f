"""MadryLab's robust ImageNet ResNets (Salman et al. 2020), converted once to robgen checkpoints.

The Hub repo `madrylab/robust-imagenet-models` holds PyTorch files such as
`resnet50_l2_eps3.ckpt` (robust) and `resnet50_l2_eps0.05.ckpt` (the
quasi-robust model MAGIC inverts), written by the `robustness` library: the
network under `model` with keys `module.model.*` (plus a copy under
`module.attacker.model.*` and the normaliser). `load_madrylab("resnet50_l2_eps3")`
downloads one, reads it with `weights_only=True` (nothing is unpickled), and
writes a safetensors checkpoint to the cache, so later loads are plain
checkpoint loads that work offline.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import timm
import torch

from .checkpoint import is_checkpoint_dir, load_checkpoint, load_weights, save_checkpoint
from .classifier import Classifier, ModelSpec

REPO_ID = "madrylab/robust-imagenet-models"
NAME = re.compile(r"^(?P<arch>resnet18|resnet50|wide_resnet50_2|wide_resnet50_4)_(?P<norm>l2|linf)_eps(?P<eps>[0-9.]+)$")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cache_dir() -> Path:
    return Path(os.environ.get("ROBGEN_CACHE", Path.home() / ".cache" / "robgen")) / "madrylab"


def convert_state_dict(checkpoint: dict) -> dict:
    """The classifier's weights from a `robustness` checkpoint, with timm/torchvision key names."""
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint)) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError("not a robustness-library checkpoint: no 'model' state dict inside")
    converted = {key[len("module.model."):]: value for key, value in state.items() if key.startswith("module.model.")}
    if not converted:
        raise ValueError("not a robustness-library checkpoint: no 'module.model.*' weights inside")
    return converted


def load_madrylab(name: str, ckpt_path: Optional[Union[str, Path]] = None) -> Classifier:
    """A robust ImageNet model by file stem (e.g. "resnet50_l2_eps3"), from the cache or converted now.

    `ckpt_path` converts a local `.ckpt` file instead of downloading it.
    """
    match = NAME.match(name)
    if match is None:
        raise ValueError(f"unknown MadryLab model {name!r}: use a file stem of {REPO_ID} such as "
                         "'resnet50_l2_eps3', 'resnet50_l2_eps0.05' or 'resnet50_linf_eps4.0'")
    folder = cache_dir() / name
    if not is_checkpoint_dir(folder):
        if ckpt_path is None:
            from huggingface_hub import hf_hub_download

            try:
                ckpt_path = hf_hub_download(REPO_ID, f"{name}.ckpt")
            except Exception as error:
                raise RuntimeError(f"could not download {name}.ckpt from {REPO_ID} ({type(error).__name__}: {error}); "
                                   "are you online?") from error
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        arch = match["arch"]
        eps = float(match["eps"])
        spec = ModelSpec(
            architecture=arch, num_classes=1000, class_labels=_labels(), mean=IMAGENET_MEAN, std=IMAGENET_STD,
            input_size=(3, 224, 224),
            training={"source": f"hf-hub:{REPO_ID}/{name}.ckpt", "mode": "pgd" if eps > 0.1 else "quasi",
                      "norm": match["norm"], "eps": eps / 255 if match["norm"] == "linf" else eps,
                      "paper": "Salman et al. 2020, Do Adversarially Robust ImageNet Models Transfer Better?"},
        )
        net = timm.create_model(arch, pretrained=False, num_classes=1000)
        load_weights(net, convert_state_dict(checkpoint), str(ckpt_path))
        save_checkpoint(Classifier(net, spec), folder)
    model = load_checkpoint(folder)
    model.spec.source = f"madrylab:{name}"
    return model


def _labels():
    from .loading import _imagenet_labels

    return _imagenet_labels()
