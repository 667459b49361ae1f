"""`load_model(name)`: one entry point for every classifier robgen can use.

Names it understands:
- a shipped checkpoint, by bare name (`"cifar10-resnet10-robust"`), found in
  the `checkpoints/` folder of the repository (or `$ROBGEN_CHECKPOINTS`);
- a path to a checkpoint folder (`model.safetensors` + `config.json`);
- `timm:<name>`: any timm architecture, pretrained through timm / the Hugging
  Face Hub when online, or random weights with `pretrained=False`;
- `hf-hub:<org>/<repo>`: a robgen checkpoint or a timm model on the Hub;
- `madrylab:<stem>`: a robust ImageNet ResNet of `madrylab/robust-imagenet-models`
  (e.g. `madrylab:resnet50_l2_eps3`), converted once to a cached checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

import timm
import torch
from safetensors.torch import load_file

from . import resnet_cifar  # noqa: F401  (registers robgen's architectures with timm)
from .checkpoint import CONFIG_FILE, FORMAT, WEIGHTS_FILE, is_checkpoint_dir, load_checkpoint, load_weights
from .classifier import Classifier, ModelSpec

CHECKPOINTS_ENV = "ROBGEN_CHECKPOINTS"


def checkpoints_dir() -> Path:
    """Where shipped checkpoints live: `$ROBGEN_CHECKPOINTS` or the repository's `checkpoints/`."""
    override = os.environ.get(CHECKPOINTS_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "checkpoints"


def list_models() -> List[str]:
    """Names of the shipped checkpoints, loadable with `load_model(name)`."""
    folder = checkpoints_dir()
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if is_checkpoint_dir(entry))


def load_model(
    name: Union[str, Path],
    *,
    pretrained: bool = True,
    weights: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    **timm_kwargs,
) -> Classifier:
    """A classifier taking [0, 1] NCHW pixels, in eval mode, with `model.spec`.

    Args:
        name: a shipped name, a checkpoint folder, `timm:<name>` or `hf-hub:<org>/<repo>`.
        pretrained: for `timm:` names, download pretrained weights (needs the
            internet); False gives random weights.
        weights: for `timm:` names, a local `.safetensors` or PyTorch state-dict
            file to load instead (read with `weights_only=True`, never unpickled).
        device: where to put the model (default CPU).
        timm_kwargs: extra `timm.create_model` arguments for `timm:` names
            (e.g. `num_classes=10`, `width=16`).

    Example:
        >>> model = load_model("timm:resnet10_cifar", pretrained=False)
        >>> model.spec.input_size
        (3, 32, 32)
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    text = str(name)
    if text.startswith("timm:"):
        model = _load_timm(text[len("timm:"):], pretrained, weights, timm_kwargs)
    elif text.startswith("hf-hub:"):
        model = _load_hub(text[len("hf-hub:"):])
    elif text.startswith("madrylab:"):
        from .madrylab import load_madrylab

        model = load_madrylab(text[len("madrylab:"):])
    elif is_checkpoint_dir(text):
        model = load_checkpoint(text)
    elif is_checkpoint_dir(checkpoints_dir() / text) and "/" not in text:
        model = load_checkpoint(checkpoints_dir() / text)
    else:
        raise ValueError(_unknown_model_message(text))
    return model.to(device).eval()


def _unknown_model_message(name: str) -> str:
    shipped = list_models()
    known = ", ".join(shipped) if shipped else f"none found in {checkpoints_dir()}"
    hint = ""
    if Path(name).exists():
        hint = f" ({name} exists but is not a checkpoint folder with {WEIGHTS_FILE} and {CONFIG_FILE})"
    return (
        f"unknown model {name!r}{hint}. Use a shipped checkpoint ({known}), a checkpoint folder, "
        "'timm:<architecture>' (e.g. 'timm:resnet50') or 'hf-hub:<org>/<repo>'"
    )


def _load_timm(architecture: str, pretrained: bool, weights, timm_kwargs: dict) -> Classifier:
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture}*")[:10]
        suggestion = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm architecture {architecture!r}{suggestion}")
    use_download = pretrained and weights is None
    try:
        net = timm.create_model(architecture, pretrained=use_download, **timm_kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        if not use_download:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for timm:{architecture} ({type(error).__name__}: {error}). "
            "Offline? Pass pretrained=False (CLI: --random-weights) for random weights, or weights=<file>."
        ) from error
    if weights is not None:
        load_weights(net, _read_state_dict(weights), str(weights))
    spec = _timm_spec(architecture, net, timm_kwargs, "pretrained" if use_download else ("file" if weights else "random"))
    return Classifier(net, spec)


def _timm_spec(architecture: str, net: torch.nn.Module, timm_kwargs: dict, weights_from: str) -> ModelSpec:
    cfg = dict(getattr(net, "pretrained_cfg", None) or timm.models.get_pretrained_cfg(architecture).to_dict())
    num_classes = int(getattr(net, "num_classes", 0) or cfg.get("num_classes") or 1000)
    input_size = tuple(cfg.get("input_size") or (3, 224, 224))
    if "in_chans" in timm_kwargs:
        input_size = (int(timm_kwargs["in_chans"]),) + input_size[1:]
    mean = tuple(cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN)
    std = tuple(cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD)
    if len(mean) != input_size[0]:
        mean, std = (0.5,) * input_size[0], (0.5,) * input_size[0]
    labels = _imagenet_labels() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    arch_kwargs = {k: v for k, v in timm_kwargs.items() if k not in ("num_classes", "in_chans")}
    return ModelSpec(
        architecture=architecture, num_classes=num_classes, class_labels=labels, mean=mean, std=std,
        input_size=input_size, arch_kwargs=arch_kwargs,
        training={"source": "timm", "weights": weights_from, "pretrained_tag": cfg.get("tag")},
        source=f"timm:{architecture}",
    )


def _imagenet_labels() -> List[str]:
    try:
        return list(timm.data.ImageNetInfo().label_descriptions())
    except Exception:  # older timm: no label table shipped
        return [f"class {i}" for i in range(1000)]


def _read_state_dict(path: Union[str, Path]) -> dict:
    """A state dict from a `.safetensors` file or a PyTorch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} could not be read as a plain PyTorch state dict with weights_only=True ({error}). "
            "robgen does not unpickle arbitrary objects; convert it to safetensors first"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _load_hub(repo_id: str) -> Classifier:
    """A robgen checkpoint on the Hub, or else a timm model (`hf-hub:` in timm)."""
    from huggingface_hub import hf_hub_download

    try:
        config_path = hf_hub_download(repo_id, CONFIG_FILE)
    except Exception as error:
        raise RuntimeError(
            f"could not fetch {CONFIG_FILE} from the Hugging Face Hub repo {repo_id!r} ({type(error).__name__}: {error}). "
            "Check the name and that you are online (or set HF_HUB_OFFLINE=1 with the files in the local cache)."
        ) from error
    import json

    config = json.loads(Path(config_path).read_text())
    if config.get("format") == FORMAT:
        folder = Path(hf_hub_download(repo_id, WEIGHTS_FILE)).parent
        if folder != Path(config_path).parent:
            raise RuntimeError(f"the Hub cache for {repo_id} holds the config and weights in different snapshots")
        model = load_checkpoint(folder)
        model.spec.source = f"hf-hub:{repo_id}"
        return model
    net = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    return Classifier(net, _timm_spec(repo_id, net, {}, "pretrained"))
