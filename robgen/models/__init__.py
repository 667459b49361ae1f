"""Classifiers: the pixel-space wrapper, the checkpoint format and the loader."""

from .checkpoint import load_checkpoint, save_checkpoint
from .classifier import Classifier, ModelSpec
from .loading import checkpoint_search_path, checkpoints_dir, list_models, load_model

__all__ = [
    "Classifier", "ModelSpec", "load_model", "list_models", "load_checkpoint", "save_checkpoint", "checkpoints_dir",
    "checkpoint_search_path",
]
