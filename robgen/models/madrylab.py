"""MadryLab's robust ImageNet ResNets (Salman et al. 2020), converted once to robgen checkpoints.

The Hub repo `madrylab/robust-imagenet-models` holds PyTorch files such as
`resnet50_l2_eps3.ckpt` (robust) and `resnet50_l2_eps0.05.ckpt` (the
quasi-robust model MAGIC inverts), written by the `robustness` library: the
network under `model` with keys `module.model.*` (plus a copy under
`module.attacker.model.*` and the normaliser buffers `module.normalizer.new_mean`
/ `new_std`), next to `optimizer`, `schedule`, `epoch` and accuracies.
`load_madrylab("resnet50_l2_eps3")` downloads one, reads it with
`weights_only=True` (nothing is unpickled), and writes a safetensors checkpoint
to the cache, so later loads are plain checkpoint loads that work offline.

Only architectures timm can build are accepted (resnet18, resnet50,
wide_resnet50_2: torchvision's key names, which timm shares); the repo's
`wide_resnet50_4` is refused before its download. `*_eps0` files are the
standard (non-adversarially trained) baselines. The eval transform is
torchvision's ImageNet convention, which the robustness library evaluates
with: resize the short side to 256 (bilinear), centre-crop 224 (crop_pct 0.875).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import timm
import torch

from .. import global_rng
from .checkpoint import is_checkpoint_dir, load_checkpoint, load_weights, read_config, save_checkpoint
from .classifier import Classifier, ModelSpec

REPO_ID = "madrylab/robust-imagenet-models"
NAME = re.compile(
    r"^(?P<arch>resnet18|resnet50|wide_resnet50_2|wide_resnet50_4)_(?P<norm>l2|linf)_eps(?P<eps>\d+(?:\.\d+)?)$"
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's ImageNet eval transform (Resize(256) + CenterCrop(224), bilinear), used by the robustness library
CROP_PCT, INTERPOLATION = 0.875, "bilinear"
QUASI_ROBUST_MAX_EPS = 0.1  # L2 budgets up to this (MAGIC uses 0.05) count as quasi-robust training


def cache_dir() -> Path:
    return Path(os.environ.get("ROBGEN_CACHE", Path.home() / ".cache" / "robgen")).expanduser() / "madrylab"


def convert_state_dict(checkpoint: dict) -> dict:
    """The classifier's weights from a `robustness` checkpoint, with timm/torchvision key names."""
    state = _state(checkpoint)
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
    arch = match["arch"]
    if not timm.is_model(arch):
        raise ValueError(f"madrylab:{name} is a {arch}, which timm cannot build, so robgen cannot convert it; "
                         "use a resnet18, resnet50 or wide_resnet50_2 model (e.g. 'wide_resnet50_2_l2_eps3')")
    folder = cache_dir() / name
    # convert again a file the caller names, and a cached conversion from before robgen recorded the eval transform
    # (it would load with no crop and another resampling filter)
    stale = is_checkpoint_dir(folder) and "crop_pct" not in read_config(folder)
    if ckpt_path is not None or stale or not is_checkpoint_dir(folder):
        ckpt_path = Path(ckpt_path).expanduser() if ckpt_path is not None else None  # `~`: the home folder
        source = f"file:{ckpt_path.resolve()}" if ckpt_path is not None else \
            f"hf-hub:{REPO_ID}/{name}.ckpt"
        if ckpt_path is None:
            from huggingface_hub import hf_hub_download

            try:
                ckpt_path = hf_hub_download(REPO_ID, f"{name}.ckpt")
            except Exception as error:
                raise RuntimeError(f"could not download {name}.ckpt from {REPO_ID} ({type(error).__name__}: {error}); "
                                   "are you online?") from error
        checkpoint = read_checkpoint(ckpt_path)
        mean, std = _normaliser(checkpoint)
        spec = ModelSpec(
            architecture=arch, num_classes=1000, class_labels=_labels(), mean=mean, std=std,
            input_size=(3, 224, 224), crop_pct=CROP_PCT, interpolation=INTERPOLATION,
            training={"source": source, **training_recipe(match["norm"], float(match["eps"])),
                      "paper": "Salman et al. 2020, Do Adversarially Robust ImageNet Models Transfer Better?"},
        )
        with global_rng.untouched():  # the random initialisation its weights replace
            net = timm.create_model(arch, pretrained=False, num_classes=1000)
        load_weights(net, convert_state_dict(checkpoint), str(ckpt_path))
        save_checkpoint(Classifier(net, spec), folder)
    model = load_checkpoint(folder)
    model.spec.source = f"madrylab:{name}"
    return model


def training_recipe(norm: str, eps: float) -> dict:
    """How a model of file stem `..._{norm}_eps{eps}` was trained (eps in the stem: L-inf in 1/255 units)."""
    if eps == 0:
        return {"mode": "standard", "norm": norm, "eps": 0.0}
    mode = "pgd" if norm == "linf" or eps > QUASI_ROBUST_MAX_EPS else "quasi"
    return {"mode": mode, "norm": norm, "eps": eps / 255 if norm == "linf" else eps}


def read_checkpoint(path: Union[str, Path]) -> dict:
    """A `robustness` checkpoint read with `weights_only=True`, with errors that say what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds Python objects besides tensors, numbers and containers, and robgen never unpickles "
            f"them (torch.load with weights_only=True refused: {str(error).splitlines()[0]}). If you trust the file, "
            "keep only its weights: `ckpt = torch.load(path, weights_only=False); torch.save({'model': ckpt['model']}, "
            "'clean.ckpt')`, then load_madrylab(name, ckpt_path='clean.ckpt')"
        ) from None
    except (RuntimeError, OSError, EOFError) as error:
        raise ValueError(f"{path} could not be read as a PyTorch checkpoint ({type(error).__name__}: {error}); "
                         "an incomplete download? Delete it and load the model again") from None


def _normaliser(checkpoint: dict) -> tuple:
    """The mean and std of the checkpoint's `InputNormalize` (ImageNet's when it has none)."""
    state = _state(checkpoint) or {}
    mean, std = state.get("module.normalizer.new_mean"), state.get("module.normalizer.new_std")
    if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.numel() == std.numel() == 3):
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(round(v, 6) for v in mean.flatten().tolist()), tuple(round(v, 6) for v in std.flatten().tolist())


def _state(checkpoint) -> Optional[dict]:
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint)) if isinstance(checkpoint, dict) else None
    return state if isinstance(state, dict) else None


def _labels():
    from .loading import _imagenet_labels

    return _imagenet_labels()
