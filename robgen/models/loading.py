"""`load_model(name)`: one entry point for every classifier robgen can use.

Names it understands:
- a shipped checkpoint, by bare name (`"cifar10-resnet10-robust"`), looked up
  on the checkpoint search path (below);
- a path to a checkpoint folder (`model.safetensors` + `config.json`), or to a folder holding a timm model
  as the Hub stores one (`config.json` with its "architecture", and `model.safetensors` or
  `pytorch_model.bin`: `hf download org/repo --local-dir DIR`, formerly `huggingface-cli download`);
- `timm:<name>`: any timm architecture, pretrained through timm / the Hugging
  Face Hub when online, or random weights with `pretrained=False`; only these names take `weights=`,
  `pretrained=` and timm's arguments (elsewhere they are refused, not ignored);
- `hf-hub:<org>/<repo>`: a robgen checkpoint (with its `seeds.safetensors` and
  `detector.json` when the repo has them) or a timm model on the Hub;
- `madrylab:<stem>`: a robust ImageNet ResNet of `madrylab/robust-imagenet-models`
  (e.g. `madrylab:resnet50_l2_eps3`), converted once to a cached checkpoint.

The checkpoint search path (`checkpoint_search_path()`), first match wins:
1. the folders in `$ROBGEN_CHECKPOINTS` (separated by `os.pathsep`, ":" on
   Linux and macOS, ";" on Windows);
2. `checkpoints/` of the source checkout, when robgen runs from one (a
   `pyproject.toml` next to the `robgen/` package);
3. `robgen/_checkpoints/` inside the installed package: `pip install .` copies
   the repository's `checkpoints/` there (pyproject.toml maps the data package
   `robgen._checkpoints` to `checkpoints/`). Installs must be unpacked on disk
   (no zip imports): a model's folder also holds its seeds and detector files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional, Union

import timm
import torch
from safetensors.torch import load_file

from .. import global_rng
from . import resnets  # noqa: F401  (registers robgen's architectures with timm)
from .checkpoint import (COMPANION_FILES, CONFIG_FILE, FORMAT, WEIGHTS_FILE, is_checkpoint_dir, load_checkpoint,
                         load_weights)
from .classifier import CROP_MODES, Classifier, ModelSpec, distinct_labels
from .subnormals import flush_subnormals

logger = logging.getLogger(__name__)

CHECKPOINTS_ENV = "ROBGEN_CHECKPOINTS"
_PACKAGE = Path(__file__).resolve().parents[1]  # the robgen/ package folder
SOURCE_CHECKPOINTS = _PACKAGE.parent / "checkpoints"  # in a source checkout
INSTALLED_CHECKPOINTS = _PACKAGE / "_checkpoints"  # in an installed package


def checkpoint_search_path() -> List[Path]:
    """The folders searched for checkpoints by bare name, in order (see the module docstring)."""
    folders = [Path(entry).expanduser() for entry in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if entry]
    if SOURCE_CHECKPOINTS.is_dir() and (_PACKAGE.parent / "pyproject.toml").is_file():
        folders.append(SOURCE_CHECKPOINTS)
    if INSTALLED_CHECKPOINTS.is_dir():
        folders.append(INSTALLED_CHECKPOINTS)
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def checkpoints_dir() -> Path:
    """The first existing folder of the search path (the shipped checkpoints unless overridden)."""
    existing = [folder for folder in checkpoint_search_path() if folder.is_dir()]
    return existing[0] if existing else INSTALLED_CHECKPOINTS


def find_checkpoint(name: str) -> Optional[Path]:
    """The folder of the checkpoint called `name` on the search path, or None."""
    if not name or name in (".", "..") or any(sep and sep in name for sep in ("/", os.sep, os.altsep)):
        return None
    for folder in checkpoint_search_path():
        if _loadable_folder(folder / name):
            return folder / name
    return None


def _loadable_folder(path: Path) -> bool:
    """A robgen checkpoint folder, or a timm model's folder as the Hub stores one (timm's `save_for_hf` writes its
    weights as pytorch_model.bin alone): what `load_model` loads from a folder."""
    return is_checkpoint_dir(path) or (path.is_dir() and _timm_folder_config(path) is not None)


def list_models() -> List[str]:
    """Names of the checkpoints on the search path, loadable with `load_model(name)`."""
    names = set()
    for folder in checkpoint_search_path():
        if folder.is_dir():
            names.update(entry.name for entry in folder.iterdir() if _loadable_folder(entry))
    return sorted(names)


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
    if not text.startswith("timm:"):  # what only a timm: name takes would be ignored: say so
        given = (["weights"] if weights is not None else []) + sorted(timm_kwargs) \
            + (["pretrained=False (CLI: --random-weights)"] if not pretrained else [])
        if given:
            raise ValueError(f"{', '.join(given)} apply to timm: names only; {text} is loaded as it was saved (to "
                             "load other weights into a timm architecture, name it timm:<architecture>)")
    if text.startswith("timm:"):
        model = _load_timm(text[len("timm:"):], pretrained, weights, timm_kwargs)
    elif text.startswith("hf-hub:"):
        model = _load_hub(text[len("hf-hub:"):])
    elif text.startswith("madrylab:"):
        from .madrylab import load_madrylab

        model = load_madrylab(text[len("madrylab:"):])
    elif _timm_folder_config(Path(text).expanduser()) is not None:  # a Hub repo of timm's, downloaded
        folder = Path(text).expanduser()
        model = _timm_pretrained(f"local-dir:{folder.resolve()}", _timm_folder_config(folder), str(folder))
    elif is_checkpoint_dir(Path(text).expanduser()):  # "~/models/mine" as a shell would read it
        folder = Path(text).expanduser()
        model = load_checkpoint(folder)
        shadowed = find_checkpoint(text)
        if shadowed is not None and shadowed.resolve() != folder.resolve():  # ./<a shipped name> is loaded, not it
            logger.warning("%s names both the folder %s and the checkpoint %s on the search path: loading the "
                           "folder (give ./%s or its full path to mean it, or move it to use the shipped model)",
                           text, folder.resolve(), shadowed, text)
            model.spec.source = str(folder.resolve())  # records name the folder, not the shipped model
    elif find_checkpoint(text) is not None:  # a name on the search path: a robgen checkpoint or a timm folder
        folder = find_checkpoint(text)
        config = _timm_folder_config(folder)
        model = _timm_pretrained(f"local-dir:{folder.resolve()}", config, text) if config is not None \
            else load_checkpoint(folder)
        model.spec.source = text  # a shipped name shows as itself, not as this machine's path to it
    else:
        raise ValueError(_unknown_model_message(text))
    flush_subnormals(model)
    return model.to(device).eval()


def _unknown_model_message(name: str) -> str:
    shipped = list_models()
    searched = os.pathsep.join(str(folder) for folder in checkpoint_search_path()) or "an empty search path"
    known = ", ".join(shipped) if shipped else f"none found in {searched}; set ${CHECKPOINTS_ENV} to a folder of them"
    hint = ""
    if Path(name).exists():
        hint = f" ({name} exists but is not a checkpoint folder with {WEIGHTS_FILE} and {CONFIG_FILE})"
    return (
        f"unknown model {name!r}{hint}. Use a shipped checkpoint ({known}), a checkpoint folder, "
        "'timm:<architecture>' (e.g. 'timm:resnet50') or 'hf-hub:<org>/<repo>'"
    )


def _similar_timm_names(architecture: str) -> str:
    """"; similar names: ..." for a name timm does not know ("ResNet18", "resnet-18", " resnet18"), or ""."""
    import difflib

    wanted = architecture.strip().lower()
    close = timm.list_models(f"*{wanted}*")[:10]
    if not close:
        spelled = wanted.replace("-", "").replace(" ", "")
        close = difflib.get_close_matches(spelled, timm.list_models(), n=5, cutoff=0.75)
    return f"; similar names: {', '.join(close)}" if close else ""


def _load_timm(architecture: str, pretrained: bool, weights, timm_kwargs: dict) -> Classifier:
    if not timm.is_model(architecture):
        raise ValueError(f"unknown timm architecture {architecture!r}{_similar_timm_names(architecture)}")
    if "checkpoint_path" in timm_kwargs:  # saved as an architecture argument, the file would be needed to load it
        raise ValueError("load weights from a file with weights=<file> (CLI: --weights), not timm's checkpoint_path: "
                         "robgen records where a model's weights came from and saves them in its checkpoint")
    use_download = pretrained and weights is None
    try:
        with global_rng.untouched() if use_download or weights is not None else nullcontext():  # random weights
            net = timm.create_model(architecture, pretrained=use_download, **timm_kwargs)  # draw, as asked
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


# timm.create_model arguments about where weights come from, not what the network is: not saved with the spec
TIMM_LOAD_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm_spec(architecture: str, net: torch.nn.Module, timm_kwargs: dict, weights_from: str) -> ModelSpec:
    cfg = dict(getattr(net, "pretrained_cfg", None) or timm.models.get_pretrained_cfg(architecture).to_dict())
    classes = getattr(net, "num_classes", None)  # 0 is timm's feature extractor, not "unset"
    num_classes = int(classes if classes is not None else cfg.get("num_classes") or 1000)
    if num_classes < 2:
        raise ValueError(f"timm:{architecture} with num_classes={num_classes} has no classifier head (it returns "
                         "features): robgen needs a classifier, num_classes 2 or more")
    input_size = tuple(cfg.get("input_size") or (3, 224, 224))
    if "in_chans" in timm_kwargs:
        input_size = (int(timm_kwargs["in_chans"]),) + input_size[1:]
    if "img_size" in timm_kwargs:  # a ViT built for another size takes only that size
        side = timm_kwargs["img_size"]
        height, width = (side, side) if isinstance(side, int) else tuple(side)
        input_size = (input_size[0], int(height), int(width))
    mean = tuple(cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN)
    std = tuple(cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD)
    if len(mean) != input_size[0]:  # in_chans=1: timm sums the first layer's RGB kernels, so the input it
        # expects is normalised as the channels' average (0.5 would halve the scale an ImageNet std of 0.226 sets)
        mean = (sum(mean) / len(mean),) * input_size[0]
        std = (sum(std) / len(std),) * input_size[0]
    # timm's eval transform for this model: crop_pct and interpolation, with timm's defaults where unset
    data_cfg = timm.data.resolve_data_config(pretrained_cfg=cfg) if cfg else {}
    crop_mode = data_cfg.get("crop_mode", "center")
    if crop_mode not in CROP_MODES:  # "border": the aspect ratio kept, the short side padded
        logger.warning("timm reads %s's images with crop_mode=%r; robgen resizes and centre-crops them (crop_pct "
                       "%g), so its inputs differ from timm's at the borders", architecture, crop_mode,
                       data_cfg.get("crop_pct", 1.0))
        crop_mode = "center"
    labels = _imagenet_labels() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    arch_kwargs = {k: v for k, v in timm_kwargs.items() if k not in ("num_classes", "in_chans") + TIMM_LOAD_ONLY}
    return ModelSpec(
        architecture=architecture, num_classes=num_classes, class_labels=labels, mean=mean, std=std,
        input_size=input_size, arch_kwargs=arch_kwargs,
        training={"source": "timm", "weights": weights_from, "pretrained_tag": cfg.get("tag")},
        crop_pct=data_cfg.get("crop_pct", 1.0), interpolation=data_cfg.get("interpolation", "bicubic"),
        crop_mode=crop_mode, source=f"timm:{architecture}",
    )


def _imagenet_labels() -> List[str]:
    try:
        return list(timm.data.ImageNetInfo().label_descriptions())
    except Exception:  # older timm: no label table shipped
        return [f"class {i}" for i in range(1000)]


def _read_state_dict(path: Union[str, Path]) -> dict:
    """A state dict from a `.safetensors` file or a PyTorch file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as error:  # safetensors' own error type, or an OSError
            raise ValueError(f"{path} cannot be read as safetensors ({error}); the file is corrupt or not "
                             "safetensors") from None
    else:
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
    # weights saved from a DistributedDataParallel wrapper, in either format
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _timm_folder_config(folder: Path) -> Optional[dict]:
    """The config.json of a folder that holds a timm model as the Hub stores one (its "architecture", no robgen
    "format", and its weights), else None."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    has_weights = any((folder / file).is_file() for file in ("model.safetensors", "pytorch_model.bin"))
    if not isinstance(config, dict) or config.get("format") == FORMAT or "architecture" not in config:
        return None
    return config if has_weights else None


def _timm_pretrained(timm_name: str, config: dict, source: str) -> Classifier:
    """A timm model from a Hub repo or a local copy of one (`timm_name`: "hf-hub:org/repo" or "local-dir:path"),
    with its config.json's classes: its label_names, by their label_descriptions where it has them (timm's
    export keeps ImageNet's WordNet ids in the first, the readable names in the second)."""
    try:
        with global_rng.untouched():  # the random initialisation its weights replace
            net = timm.create_model(timm_name, pretrained=True)
    except Exception as error:
        raise RuntimeError(f"could not load the timm model {timm_name} ({type(error).__name__}: {error}). From the "
                           "Hub: check the name and that you are online, or that its files are in the local cache "
                           "(HF_HUB_OFFLINE=1)") from error
    # the spec names the architecture timm builds (so that a saved copy rebuilds) and where it came from
    spec = _timm_spec(config["architecture"], net, config.get("model_args") or {}, "pretrained")
    spec.source = source
    labels = config.get("label_names")
    if isinstance(labels, dict):  # {"0": "tench", ...}
        labels = [labels.get(str(index), labels.get(index)) for index in range(len(labels))]
    descriptions = config.get("label_descriptions")
    if isinstance(labels, list) and isinstance(descriptions, dict):
        labels = [descriptions.get(label, label) for label in labels]
    if isinstance(labels, list) and len(labels) == spec.num_classes and None not in labels:
        spec.class_labels = distinct_labels([str(label) for label in labels])
    return Classifier(net, spec)


def _load_hub(name: str) -> Classifier:
    """A robgen checkpoint on the Hub (with its companion files), or else a timm model (`hf-hub:` in timm).
    `name` is `org/repo`, or `org/repo@revision` (a branch, tag or commit) as timm writes it."""
    from huggingface_hub import hf_hub_download

    repo_id, _, asked = name.partition("@")
    try:
        config_path = Path(hf_hub_download(repo_id, CONFIG_FILE, revision=asked or None))
    except Exception as error:
        raise RuntimeError(
            f"could not fetch {CONFIG_FILE} from the Hugging Face Hub repo {repo_id!r} ({type(error).__name__}: {error}). "
            "Check the name and that you are online (or set HF_HUB_OFFLINE=1 with the files in the local cache)."
        ) from error
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"hf-hub:{name}'s {CONFIG_FILE} is not valid JSON ({error}): fix the file in the repo, "
                         f"or delete it from the local cache ({config_path}) to fetch it again") from None
    if not isinstance(config, dict):
        raise ValueError(f"hf-hub:{name}'s {CONFIG_FILE} holds a JSON {type(config).__name__}, not the object of "
                         "settings a robgen checkpoint or a timm model has")
    if config.get("format") != FORMAT:
        if "architecture" not in config:
            raise ValueError(f"hf-hub:{name} is neither a robgen checkpoint (its config.json has no \"format\": "
                             f"\"{FORMAT}\") nor a timm model (no \"architecture\"); robgen loads those two kinds "
                             "(a transformers model is neither)")
        return _timm_pretrained(f"hf-hub:{name}", config, f"hf-hub:{name}")
    snapshot = config_path.parent
    # the cache's snapshot folder is named after the commit: pin the other files to that same commit
    revision = snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else None
    _download_into(snapshot, repo_id, WEIGHTS_FILE, revision)
    for filename in COMPANION_FILES:
        _download_into(snapshot, repo_id, filename, revision, optional=True)
    model = load_checkpoint(snapshot)
    model.spec.source = f"hf-hub:{name}"
    return model


def _download_into(snapshot: Path, repo_id: str, filename: str, revision: Optional[str], optional: bool = False) -> None:
    """Fetch `filename` of the Hub repo into the snapshot folder that holds its config.json."""
    from huggingface_hub import hf_hub_download

    try:
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.24
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as error:
        if isinstance(error, LocalEntryNotFoundError) and not optional:  # offline: the cache, not the repo, lacks it
            raise RuntimeError(f"{filename} of the Hugging Face Hub repo {repo_id!r} is not in the local cache and the "
                               "Hub cannot be reached (offline, or HF_HUB_OFFLINE is set): load it once online") from error
        missing = isinstance(error, EntryNotFoundError)  # not in the repo (or, offline, not in the cache)
        if optional and missing:
            logger.debug("hf-hub:%s has no %s", repo_id, filename)
            return
        if optional:
            logger.warning("could not fetch %s of hf-hub:%s (%s); loading the model without it", filename, repo_id, error)
            return
        reason = f"it has a robgen {CONFIG_FILE} but no {filename}" if missing else f"{type(error).__name__}: {error}"
        raise RuntimeError(f"could not fetch {filename} from the Hugging Face Hub repo {repo_id!r} ({reason})") from error
    if path.parent != snapshot:
        raise RuntimeError(
            f"the Hub cache for {repo_id} holds {CONFIG_FILE} and {filename} in different snapshots "
            f"({snapshot} and {path.parent}); clear the cache entry and load it again"
        )
