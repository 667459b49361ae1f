"""The app's models: loaded once per process, moved to the GPU when there is one, Hub models when online.

    names = available_models(online=hub_reachable())
    attack_default, synthesis_default = default_models(names)   # what the tabs start on
    preload(names)                                           # at start-up, on the CPU
    model = cached_model("cifar10-resnet10-standard")      # in a handler: on CUDA when there is one

On a ZeroGPU Space every GPU call runs in a forked worker, so a model first
loaded inside one is lost when the call ends: `preload` every model the app
offers at start-up, outside the GPU calls.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from ..experiments.calibration import DETECTOR_FILE
from ..models import list_models, load_model
from ..models.checkpoint import model_folder
from ..models.state import model_device

# Hub models offered when the machine is online (downloaded and converted once, then cached). The Space
# preloads their files at build time (space.yaml's preload_from_hub); tests/test_space.py checks both agree.
HUB_MODELS = ["madrylab:resnet50_l2_eps3", "madrylab:resnet50_l2_eps0.05", "timm:inception_v3.tf_adv_in1k"]
# How robust a training mode makes a model (robgen.training's modes; MadryLab's models say "pgd" or "quasi").
ROBUSTNESS = {"standard": 0, "quasi": 1, "fast": 2, "pgd": 2, "reject": 2, "trades": 2, "weat": 2}  # per training mode

logger = logging.getLogger(__name__)
_load_lock = threading.Lock()


def _new_lock_in_child() -> None:
    """A forked worker (ZeroGPU runs each GPU call in one) gets a free lock, even if a thread of the parent
    held it at the moment of the fork."""
    global _load_lock
    _load_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether huggingface.co answers (False at once under HF_HUB_OFFLINE=1)."""
    import socket

    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    # read now (the app may set it after import) and as huggingface_hub reads it: "1", "ON", "YES", "TRUE"
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ENV_VARS_TRUE_VALUES:
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def available_models(online: bool = False) -> List[str]:
    """The shipped checkpoints, plus the ImageNet Hub models when `online`."""
    return list_models() + (HUB_MODELS if online else [])


@functools.lru_cache(maxsize=16)
def _load(name: str, stamp: tuple):
    return load_model(name)


def _stamp(name: str) -> tuple:
    """(time, size) of a local checkpoint's weights and config: a checkpoint rewritten on disk (retrained in place)
    is loaded again instead of served from the cache; () for a model that is no local folder (timm, the Hub)."""
    from pathlib import Path

    from ..models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, is_checkpoint_dir
    from ..models.loading import find_checkpoint

    folder = Path(name).expanduser()
    folder = folder if is_checkpoint_dir(folder) else find_checkpoint(name)
    if folder is None:
        return ()
    files = [Path(folder) / WEIGHTS_FILE, Path(folder) / CONFIG_FILE]
    return tuple((file.stat().st_mtime_ns, file.stat().st_size) for file in files if file.is_file())


def _cached(name: str):
    return _load(name, _stamp(name))


def cached_model(name: str, device: Optional[Union[str, torch.device]] = None):
    """`load_model(name)`, loaded once per process and moved to `device` (default: CUDA when present)."""
    with _load_lock:  # two requests for one new model load it once
        model = _cached(name)
        target = torch.device(device) if device is not None else default_device()
        if model_device(model) != target:
            model.to(target)
    return model


def model_spec(name: str):
    """The spec of a model (loaded once, left on whatever device it is on)."""
    with _load_lock:
        return _cached(name).spec


def same_classes(name: str, other: str) -> bool:
    """Whether two models label the same classes (the app's notion of "the same data set")."""
    return model_spec(name).class_labels == model_spec(other).class_labels


def has_detector(name: str) -> bool:
    """Whether the model ships the energy detector the Detect tab uses (`detector.json` next to its weights)."""
    with _load_lock:
        folder = model_folder(_cached(name))
    return folder is not None and (folder / DETECTOR_FILE).is_file()


def preload(names: Iterable[str]) -> Dict[str, str]:
    """Load each model once, on the CPU (at start-up, outside any GPU call). A model that fails to load
    is logged and left to load (and report its error) on first use; returns {name: error} for those."""
    failed = {}
    for name in names:
        try:
            cached_model(name, device="cpu")
        except (OSError, RuntimeError, ValueError) as error:
            failed[name] = f"{type(error).__name__}: {error}"
            logger.warning("could not preload %s (it will load on first use): %s", name, failed[name])
    return failed


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def robustness(spec) -> int:
    """0 for a standard model, 1 quasi-robust, 2 adversarially robust (from the training mode in its spec)."""
    training = spec.training or {}
    mode = training.get("mode") or (training.get("config") or {}).get("mode") or "standard"
    return ROBUSTNESS.get(str(mode), 0)


def most_robust(names: Iterable[str], like: Optional[str] = None) -> str:
    """Of `names`, the most robust model (the first on ties); with `like`, of `like` and the models with its
    classes (`like` itself on ties).

    The Synthesize tab's default: a standard model only draws adversarial noise.
    """
    names = list(names)
    if like is not None:
        labels = model_spec(like).class_labels
        names = [like] + [name for name in names if name != like and model_spec(name).class_labels == labels]
    if not names:
        raise ValueError("no models to choose from")
    return max(names, key=lambda name: robustness(model_spec(name)))  # max keeps the first of equals


def loadable(names: Iterable[str]) -> List[str]:
    """`names` without the local checkpoints that fail to load, each logged with its error: one broken folder on
    the search path (a checkpoint written by a newer robgen, a damaged file) must not stop the app. Models that
    are no local folder (the Hub's) are kept unloaded: they download when first used."""
    local = set(list_models())
    kept = []
    for name in names:
        if name in local:
            try:
                model_spec(name)
            except Exception as error:  # whatever the files raise (safetensors has its own error type)
                logger.warning("not offering %s: it does not load (%s: %s)", name, type(error).__name__, error)
                continue
        kept.append(name)
    return kept


def default_models(names: Iterable[str]) -> Tuple[str, str]:
    """(the Attack and Detect tabs' model, the Synthesize tab's model) out of the app's `names`.

    Only shipped checkpoints (`list_models()`) compete: Hub models download when first used. Attack and
    Detect start on a standard model with a shipped detector, the one with the largest input (photos are
    what people upload: a 128-px Imagenette model before a 32-px CIFAR-10 one), then the project's chosen
    standard model of its data set (the name ending in `-standard`, as `cifar10-resnet10-standard`: kept
    variants and judges carry a suffix), then the one most accurate on its validation images (as recorded
    after training: the test set does not choose), the first of `names` on ties; without any such model,
    the first shipped one. Synthesize starts on the most robust model of the same classes (`most_robust`).
    The one place the app's defaults are chosen.
    """
    names = list(names)
    if not names:
        raise ValueError("no models to offer: put a checkpoint in checkpoints/ or name a folder in $ROBGEN_CHECKPOINTS")
    shipped = set(list_models())
    candidates = [name for name in names if name in shipped] or names[:1]

    def suits_attack_and_detect(name: str) -> tuple:
        spec = model_spec(name)
        validation_accuracy = float((spec.metrics or {}).get("val_clean_accuracy") or 0.0)
        size = spec.input_size[1] * spec.input_size[2]
        return robustness(spec) == 0, has_detector(name), size, name.endswith("-standard"), validation_accuracy

    attack_default = max(candidates, key=suits_attack_and_detect)  # max keeps the first of equals
    return attack_default, most_robust(candidates, like=attack_default)
