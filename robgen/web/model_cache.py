"""The app's models: loaded once per process, moved to the GPU when there is one, Hub models when online.

    model = cached_model("cifar10-resnet10-standard")
    names = available_models(online=hub_reachable())
"""

from __future__ import annotations

import functools
import threading
from typing import List, Optional, Union

import torch

from ..models import list_models, load_model
from ..models.state import model_device

# Hub models offered when the machine is online (downloaded and converted once, then cached).
HUB_MODELS = ["madrylab:resnet50_l2_eps3", "madrylab:resnet50_l2_eps0.05", "timm:inception_v3.tf_adv_in1k"]

_load_lock = threading.Lock()


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether huggingface.co answers (False at once under HF_HUB_OFFLINE=1)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def available_models(online: bool = False) -> List[str]:
    """The shipped checkpoints, plus the ImageNet Hub models when `online`."""
    return list_models() + (HUB_MODELS if online else [])


@functools.lru_cache(maxsize=8)
def _cached(name: str):
    return load_model(name)


def cached_model(name: str, device: Optional[Union[str, torch.device]] = None):
    """`load_model(name)`, loaded once per process and moved to `device` (default: CUDA when present)."""
    with _load_lock:  # two requests for one new model load it once
        model = _cached(name)
        target = torch.device(device) if device is not None else default_device()
        if model_device(model) != target:
            model.to(target)
    return model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
