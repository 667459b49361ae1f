"""Finished stages of a long experiment, kept on disk so that an interrupted run continues where it stopped.

    stages = StageStore(out_dir / ".stages", key={"settings": ..., "model": model_fingerprint(model)})
    clean = stages.run("clean-test", lambda: model_outputs(model, loader))   # computed, or read back

A full-size reproduction on a CPU takes hours, more than a working session
holds. Each attack over a split is a stage: its `ModelOutputs` (logits,
labels, penultimate features, the attack's trace) and the seconds it took are
written to `<folder>/<name>.safetensors` as soon as it finishes. Run the same
command again and every finished stage is read back instead of recomputed;
because each batch's random start is seeded from the batch alone
(`distributed.per_batch_seeds`), the outputs, and so the results, are those of
an uninterrupted run.

The folder records the `key` it was made for (the settings, the data, the
model's weights): a store opened with another key refuses to mix its stages
into a different experiment. Under torchrun only rank 0 writes; every rank
reads. `clear()` removes the folder (after the run has written its results).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import distributed
from ..engine.trace import Trace
from .pipeline import ModelOutputs

KEY_FILE = "key.json"


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN counters) too
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class StageStore:
    """Stages of one experiment in `folder` (None: nothing is kept, every stage is computed)."""

    def __init__(self, folder: Optional[Path], key: dict) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from JSON
        self.reused = 0  # stages read back in this run
        self.reused_seconds = 0.0  # what they took when they were computed
        if self.folder is None:
            return
        key_file = self.folder / KEY_FILE
        if key_file.exists():
            recorded = json.loads(key_file.read_text())
            if recorded != self.key:
                differ = sorted(k for k in set(recorded) | set(self.key) if recorded.get(k) != self.key.get(k))
                raise ValueError(f"{self.folder} holds the finished stages of another run (its {', '.join(differ)} "
                                 "differ): run the same command to continue it, or pass --overwrite to start again")
        elif distributed.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(key_file, lambda path: path.write_text(json.dumps(self.key, indent=2, sort_keys=True)))

    def path(self, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)
        return self.folder / f"{safe}.safetensors"

    def run(self, name: str, compute: Callable[[], ModelOutputs]) -> ModelOutputs:
        """The stage's outputs: read back when an earlier run finished it, else computed (and kept)."""
        if self.folder is not None and self.path(name).exists():
            outputs, seconds = read_stage(self.path(name))
            self.reused += 1
            self.reused_seconds += seconds
            return outputs
        started = time.perf_counter()
        outputs = compute()
        if self.folder is not None and distributed.is_main():
            seconds = time.perf_counter() - started
            _write_atomically(self.path(name), lambda path: write_stage(outputs, seconds, path))
        return outputs

    def clear(self) -> None:
        """Remove the folder and every stage in it (rank 0)."""
        if self.folder is not None and distributed.is_main():
            shutil.rmtree(self.folder, ignore_errors=True)


def write_stage(outputs: ModelOutputs, seconds: float, path: Path) -> None:
    tensors = {"logits": outputs.logits.contiguous(), "labels": outputs.labels.contiguous()}
    if outputs.features is not None:
        tensors["features"] = outputs.features.contiguous()
    metadata = {"seconds": repr(float(seconds)),
                "trace": json.dumps(outputs.trace.to_dict()) if outputs.trace is not None else ""}
    save_file(tensors, str(path), metadata=metadata)


def read_stage(path: Path) -> Tuple[ModelOutputs, float]:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata() or {}
    trace = Trace(**json.loads(metadata["trace"])) if metadata.get("trace") else None
    outputs = ModelOutputs(tensors["logits"], tensors["labels"], tensors.get("features"), trace)
    return outputs, float(metadata.get("seconds", 0.0))


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename it, so that a run killed mid-write leaves no half file."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    os.replace(temporary, path)
