"""robgen's checkpoint format: a folder with `model.safetensors` and `config.json`.

`config.json` holds the `ModelSpec` (architecture, classes, normalisation,
input size, eval transform, training recipe, measured accuracies) plus a
format tag. The weights are the wrapped network's state dict; nothing is
pickled. The folder may also hold companion files fitted to the model
(`COMPANION_FILES`: the synthesis seeds and the shipped detector), found
through `model_folder(model)`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import global_rng
from ..files import write_together
from .classifier import Classifier, ModelSpec

logger = logging.getLogger(__name__)

FORMAT = "robgen-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Files fitted to a model that live next to its weights; their formats belong to
# robgen.synthesis.seeds (SEEDS_FILE) and robgen.experiments.calibration (DETECTOR_FILE).
COMPANION_FILES = ("seeds.safetensors", "detector.json")


def is_checkpoint_dir(path: Union[str, Path]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def model_folder(model) -> Optional[Path]:
    """The local checkpoint folder a model was loaded from (where its seeds and detector live), or None.

    That is `model.spec.folder`, set by `load_checkpoint` (also for Hub and
    MadryLab models, whose checkpoint is a local snapshot or cache folder);
    `model.spec.source` is only the name to show.
    """
    folder = getattr(getattr(model, "spec", None), "folder", "")
    return Path(folder) if folder and is_checkpoint_dir(folder) else None


def companion_file(model, name: str, fit_command: str, alternative: str = "") -> Path:
    """The file `name` kept next to the model's checkpoint (detector.json, seeds.safetensors).

    A missing file is an error that names the command writing it: `python -m
    robgen FIT_COMMAND --model MODEL --data DATASET` (and `alternative`, if any).
    """
    folder = model_folder(model)
    path = folder / name if folder is not None else None
    if path is None or not path.is_file():
        if folder is None:  # a fitted file would have nowhere to live that this model is found by: the alternative
            raise FileNotFoundError(f"no {name} for this model: it has no checkpoint folder to keep one in (save it "
                                    "with robgen.save_checkpoint and fit one there)" +
                                    (f"; {alternative}" if alternative else ""))
        source = getattr(getattr(model, "spec", None), "source", "") or "MODEL"
        raise FileNotFoundError(f"no {name} in {folder} for this model: fit one with `python -m robgen {fit_command} "
                                f"--model {source} --data DATASET`" + (f", {alternative}" if alternative else ""))
    return path


def save_checkpoint(model: Classifier, folder: Union[str, Path], dtype: torch.dtype = None) -> Path:
    """Write `model` to `folder` (created); `dtype=torch.float16` halves the size.

    The files are written under temporary names and renamed into place, so a
    run that dies mid-write keeps the previous complete checkpoint. Saved over other weights,
    the files fitted to those (`COMPANION_FILES`: a detector.json, synthesis seeds) are removed.
    """
    folder = Path(folder).expanduser()  # `~` the home folder, as `load_model` reads it
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.net.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if dtype is not None and tensor.is_floating_point():
            narrow = tensor.to(dtype)
            if bool(torch.isinf(narrow).any()) and not bool(torch.isinf(tensor).any()):
                raise ValueError(f"{key} holds values up to {float(tensor.abs().max()):.3g}, beyond {dtype}'s range "
                                 f"(they would load back as infinity): save this model without dtype=")
            tensor = narrow
        state[key] = tensor
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.spec.to_dict()}
    config.pop("source", None)  # how it was loaded this time; `folder` is never in to_dict()
    text = json.dumps(config, indent=2) + "\n"
    same = _same_weights(folder / WEIGHTS_FILE, state) and _same_reading(folder, json.loads(text))  # as saved
    stale = [folder / name for name in COMPANION_FILES if (folder / name).is_file()] if not same else []

    def remove_stale() -> None:  # fitted to the model replaced: read as the new model's, they would be wrong; removed
        for path in stale:  # once the new files are written (a failed write keeps them) and before they replace it
            logger.warning("removed %s: it was fitted to the model whose weights or input transform were just "
                           "replaced in %s", path.name, folder)
            path.unlink()

    write_together({folder / WEIGHTS_FILE: lambda temporary: save_file(state, str(temporary)),
                    folder / CONFIG_FILE: lambda temporary: temporary.write_text(text)}, before_renaming=remove_stale)
    return folder


# What a checkpoint's config says about how the network reads pixels and names classes: a detector or seeds fitted
# with other values (another normalisation, crop, size) were fitted to another model, even with the same weights.
READING_FIELDS = ("architecture", "arch_kwargs", "num_classes", "class_labels", "mean", "std", "input_size",
                  "crop_pct", "interpolation", "crop_mode")


def _same_reading(folder: Path, config: dict) -> bool:
    """Whether the config already in `folder` (if any) reads pixels as `config` does (`READING_FIELDS`); True when
    there is none to compare."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and all(old.get(name) == config.get(name) for name in READING_FIELDS if name in old)


def _same_weights(path: Path, state: dict) -> bool:
    """Whether the weights file at `path` (if any) holds exactly `state`; True when there is none to compare."""
    if not path.is_file():
        return True
    try:
        old = load_file(str(path))
    except (SafetensorError, OSError):
        return False
    def same(a: torch.Tensor, b: torch.Tensor) -> bool:  # by value: fp16 weights loaded as fp32 are the same weights
        if a.shape != b.shape or a.is_floating_point() != b.is_floating_point():
            return False
        return torch.equal(a.double(), b.double()) if a.is_floating_point() else torch.equal(a, b)

    return old.keys() == state.keys() and all(same(old[key], state[key]) for key in state)


def read_config(folder: Union[str, Path]) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the checkpoint is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a robgen checkpoint config (no \"format\": \"{FORMAT}\")")
    return config


def load_checkpoint(folder: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Classifier:
    """Rebuild the model saved in `folder` by `save_checkpoint`, in eval mode."""
    folder = Path(folder).expanduser()
    if not is_checkpoint_dir(folder):
        raise FileNotFoundError(f"{folder} is not a robgen checkpoint: it needs {WEIGHTS_FILE} and {CONFIG_FILE}")
    config = read_config(folder)
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, (int, float)) or not float(version).is_integer():
        raise ValueError(f"{folder / CONFIG_FILE}'s format_version must be a whole number (this robgen writes "
                         f"{FORMAT_VERSION}), got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer robgen (format {config['format_version']}); upgrade robgen")
    try:
        spec = ModelSpec.from_dict(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{folder / CONFIG_FILE} does not describe a model: {error}") from None
    spec.source, spec.folder = str(folder), str(folder.resolve())  # shown as given; found again from any working
    # directory (its detector and seeds)
    unrecorded = [name for name in ("crop_pct", "interpolation") if name not in config]
    if unrecorded:  # written before robgen recorded the eval transform (the format version did not change then)
        logger.warning("%s records no %s (written by an older robgen): images are read with crop_pct %g and %s "
                       "resampling; add the model's own to its config if it was trained otherwise",
                       folder / CONFIG_FILE, " or ".join(unrecorded), spec.crop_pct, spec.interpolation)
    unnormalised = [name for name in ("mean", "std") if name not in config]
    if unnormalised:  # robgen always writes them: a config written by hand, whose model may expect normalised pixels
        logger.warning("%s records no %s: the model normalises its [0, 1] pixels with mean %s, std %s; add the "
                       "channel statistics it was trained with", folder / CONFIG_FILE, " or ".join(unnormalised),
                       list(spec.mean), list(spec.std))
    try:
        with global_rng.untouched():  # its random initialisation, replaced by the weights below
            net = build_network(spec)
    except TypeError as error:  # an architecture that takes other arguments than the config gives it
        raise ValueError(f"{folder / CONFIG_FILE} names architecture {spec.architecture!r} with arguments "
                         f"{spec.arch_kwargs} that it does not take ({error}); the config belongs to another "
                         "model") from None
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{folder / WEIGHTS_FILE} cannot be read ({error}); the checkpoint is corrupt") from None
    load_weights(net, state, str(folder / WEIGHTS_FILE))
    model = Classifier(net, spec).to(map_location)
    return model.eval()


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """An untrained network of the spec's architecture (from timm's registry)."""
    check_architecture(spec.architecture)  # its settings: a TypeError, which each caller words (`load_checkpoint`)
    return timm.create_model(spec.architecture, pretrained=False, num_classes=spec.num_classes,
                             in_chans=spec.input_size[0], **spec.arch_kwargs)


def check_architecture(architecture: str, arch_kwargs: Optional[dict] = None) -> None:
    """Refuse, before any work, an architecture not in timm's registry or settings it does not take (`width`, which
    robgen's CIFAR and Imagenette ResNets take and timm's own do not): built on the meta device, no memory."""
    from . import resnets  # noqa: F401  (registers robgen's architectures with timm)

    if not timm.is_model(architecture):
        raise ValueError(f"unknown architecture {architecture!r}: it is not in timm's registry")
    if not arch_kwargs:
        return
    try:
        with torch.device("meta"):
            timm.create_model(architecture, pretrained=False, **arch_kwargs)
    except TypeError as error:
        given = ", ".join(f"{name}={value!r}" for name, value in arch_kwargs.items())
        raise ValueError(f"the architecture {architecture!r} does not take {given} ({error}): leave it out (--width "
                         "sizes robgen's ResNets, e.g. resnet10_cifar and resnet10_imagenette)") from None
    except Exception:  # anything else the meta device cannot build: the real build will say
        pass


def load_weights(net: torch.nn.Module, state: dict, where: str) -> None:
    """Load `state` into `net` strictly, casting dtypes, with a readable error on mismatch."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if wrong_shape:
            key = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} tensors of the wrong shape (e.g. {key}: {tuple(state[key].shape)} in the file, "
                f"{tuple(expected[key].shape)} in the model)"
            )
        raise ValueError(
            f"the weights in {where} do not match the architecture: {'; '.join(details)}. "
            "Is the config's architecture (or width / num_classes) the one these weights were trained with?"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
