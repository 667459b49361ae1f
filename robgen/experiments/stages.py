"""Finished stages of a long experiment, kept on disk so that an interrupted run continues where it stopped.

    key = {"settings": ..., "model": model_fingerprint(model), **run_environment(model)}
    stages = StageStore(out_dir / ".stages", key)
    clean = stages.run("clean-test", lambda: model_outputs(model, loader))   # computed, or read back

A full-size reproduction on a CPU takes hours, more than a working session
holds. Each attack over a split is a stage: its `ModelOutputs` (logits,
labels, penultimate features, the attack's trace, which images it changed)
and the seconds it took are written to `<folder>/<name>.safetensors` as soon
as it finishes. Run the same command again and every finished stage is read
back instead of recomputed.
The outputs, and so the results, are those of an uninterrupted run because a
stage's randomness depends on the stage alone: its attack's generator is
seeded from (the run's seed, the stage's name), `stage_seed`, not from what
earlier stages drew (a stage read back draws nothing), and each batch's random
start from that and the batch's index (`distributed.per_batch_seeds`).

The folder records the `key` it was made for: the settings, the data, the
model's weights, and what else decides the outputs (`run_environment`: the
eval transform, fusion, the device type, the versions of robgen, torch and
torchattacks, the code that computes the stages). A store opened with another
key refuses, saying what differs, to mix its stages into a different
experiment; opened with `replace_stale=True` (the commands' --overwrite) it
removes those stale stages instead and starts afresh, while stages of this
very run are still read back: a run started with --overwrite and interrupted
continues when the same command, --overwrite included, is run again. Under
torchrun only rank 0 writes; every rank reads. `clear()` removes the folder
(after the run has written its results).

A stage longer than a working session would never finish, so a stage may
also keep its batches as it goes (`parts(name)`, a `StageParts`): each
finished batch is written to `<folder>/<stage>.parts/` at once, read back
when the stage runs again, and removed once the whole stage is written.
Exact for the same reason: a batch draws from a seed of its index alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import distributed
from ..engine.fused import fusion_enabled
from ..engine.trace import Trace
from ..files import write_atomically
from ..models.fingerprint import model_fingerprint  # noqa: F401  (a stage key's "model"; re-exported)
from ..models.state import model_device
from .pipeline import ModelOutputs

logger = logging.getLogger(__name__)
T = TypeVar("T")

KEY_FILE = "key.json"
PACKAGE = Path(__file__).resolve().parents[1]  # robgen/
# robgen's code that computes a stage's outputs (attacks, the model's forward pass, the data's pixels, the loop
# over batches and their seeds, the stage files): an edit here changes the outputs without changing the version
STAGE_CODE = ("attacks", "engine", "models", "checks.py", "data.py", "distributed.py", "energy.py", "images.py",
              "image_folder.py",  # which files a folder holds, in which order
              "detection/baselines.py",  # the penultimate features stages keep
              "experiments/pipeline.py", "experiments/stages.py", "experiments/reproduce.py")  # (it builds the attacks)
VERSIONED = ("robgen", "torch", "torchattacks", "timm")  # the packages whose versions a key records (timm's code
# runs in the forward of its own architectures: timm: names, the MadryLab models)


def stage_seed(seed: int, name: str) -> int:
    """The seed of stage `name`'s random draws in a run seeded with `seed`: a hash of the two, in [0, 2**63).

    Depends on nothing else, so a stage computed after earlier ones were read
    back from disk draws what it draws in an uninterrupted run.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def installed_version(package: str) -> Optional[str]:
    """The version of `package` as this process runs it (robgen: its `__version__`); None if not installed.

    Read from the package's metadata, so that torchattacks is not imported for it.
    """
    if package == "robgen":
        from .. import __version__

        return __version__
    if package == "torch":
        return str(torch.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def code_fingerprint(package: Path = PACKAGE, parts: Sequence[str] = STAGE_CODE) -> str:
    """SHA-256 of the Python files under `parts` of `package` (folders searched through), names and contents."""
    files = []
    for part in parts:
        path = package / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def same_name(values: Sequence[float], name: Callable[[float], str]) -> Optional[Tuple[str, List[float]]]:
    """The first name two different `values` share (eps 8/255 and 0.03137255 are both "8/255"), with those
    values; None when every value has its own name. Stages are named by such names: two values of one name
    would share a stage, and the second would read back the first's."""
    named: Dict[str, List[float]] = {}
    for value in values:
        named.setdefault(name(value), []).append(value)
    return next(((label, group) for label, group in named.items() if len(group) > 1), None)


def data_location(data, data_root=None) -> str:
    """Where a run's images come from, for a store's key: the resolved folder of a data set named by path, else the
    resolved data root a known data set ("cifar10", "imagenette") is read from. Two copies of a data set with
    the same name and sizes (exact PNGs, JPEG copies) then never share stages."""
    from ..data import KNOWN, default_data_root

    if str(data).lower() in KNOWN:  # as `load_dataset` reads it: from the data root, whatever folder is here
        return str(default_data_root(data_root).resolve())
    return str(Path(str(data)).expanduser().resolve())


def run_environment(model: torch.nn.Module, fused: Optional[bool] = None) -> dict:
    """What decides a stage's outputs besides the settings, the data and the weights, for a store's key.

    The model's eval transform (its spec's input size, crop_pct and
    interpolation: not in the weights, and an edited config.json changes them);
    the network the weights are loaded into (architecture, its arguments, classes);
    whether attacks run the fused graph (`fused`, the run's own setting; None:
    `engine.fused.fusion_enabled()`), which changes the float rounding; the device
    type; the versions of robgen, torch and torchattacks; and `code_fingerprint`,
    since a bug fix in an attack changes its outputs, not robgen's version number.
    """
    spec = model.spec
    return {
        "eval_transform": {"input_size": list(spec.input_size), "crop_pct": float(spec.crop_pct),
                           "interpolation": spec.interpolation,
                           # a squashing model's only (the stages of the centre crop's keep their keys)
                           **({"crop_mode": spec.crop_mode} if spec.crop_mode != "center" else {})},
        # the network the weights are loaded into (an edited config.json's stem or width changes the outputs)
        "network": {"architecture": spec.architecture, "arch_kwargs": dict(spec.arch_kwargs or {}),
                    "num_classes": int(spec.num_classes)},
        "fusion": fusion_enabled() if fused is None else bool(fused),
        "device": model_device(model).type,
        **{package: installed_version(package) for package in VERSIONED},
        "code": code_fingerprint(),
    }


def read_key(path: Path):
    """The key a stage folder's `key.json` records: None where there is none, False where it is damaged."""
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    return recorded if isinstance(recorded, dict) else False


def stage_file(folder: Path, name: str) -> Path:
    """Where the stage `name` is kept in `folder` (its name with every character but letters, digits and -_.= as _)."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)
    return Path(folder) / f"{safe}.safetensors"


def refuse_another_commands(folder: Path, recorded: dict, key: dict) -> None:
    """Refuse stages that another command made (reproduce's and adaptive's share the folder name): --overwrite,
    which a differing run's refusal offers, would remove that command's resumable work."""
    if not recorded.get("command") or recorded.get("command") == key.get("command"):  # older keys name none
        return
    raise ValueError(f"{folder} holds the stages of a `python -m robgen {recorded['command']}` run, not of "
                     f"`python -m robgen {key.get('command')}`: choose another --out (--overwrite would remove them)")


class StageStore:
    """Stages of one experiment in `folder` (None: nothing is kept, every stage is computed)."""

    def __init__(self, folder: Optional[Path], key: dict, replace_stale: bool = False) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from JSON
        self.reused = 0  # stages read back in this run
        self.reused_batches = 0  # batches of unfinished stages read back (`parts`)
        self.reused_seconds = 0.0  # what they (stages and batches) took when they were computed
        self._parts: Dict[str, StageParts] = {}  # the batch stores handed out, by stage
        self.replaced: List[str] = []  # how the key of the stale stages removed (replace_stale) differed
        if distributed.is_distributed():  # every rank must read back (or compute) the same stages
            main_folder = distributed.broadcast_from_main(None if self.folder is None else str(self.folder))
            if main_folder != (None if self.folder is None else str(self.folder)):
                raise ValueError(f"under torchrun every rank must keep its stages in one folder: rank 0 has "
                                 f"{main_folder}, rank {distributed.rank()} {self.folder} (pass the same stage_dir)")
        if self.folder is None:
            return
        key_file = self.folder / KEY_FILE
        recorded = read_key(key_file)
        if recorded is False:  # written half (a full disk, a copy cut short): nothing says what its stages are
            if not replace_stale:
                raise ValueError(f"{key_file} is damaged (not the JSON object robgen writes): nothing says which run "
                                 "the stages beside it belong to; pass --overwrite to start again")
            if distributed.is_main():  # one rank removes it (the others' unlink would find it gone)
                key_file.unlink(missing_ok=True)
            recorded = None
        # a finished stage, or the kept batches of one under way
        orphaned = recorded is None and (any(self.folder.glob("*.safetensors")) or any(self.folder.glob("*.parts")))
        if distributed.is_distributed():  # what rank 0 found decides for all (a rank must not see it half removed)
            recorded, orphaned = distributed.broadcast_from_main((recorded, orphaned))
        if orphaned:
            # stages whose key is gone (a removal cut short after key.json went): nothing says what they belong to
            if not replace_stale:
                raise ValueError(f"{self.folder} holds stages without their {KEY_FILE} (a removal cut short?): nothing "
                                 "says which run they belong to; pass --overwrite to start again")
            logger.warning("%s held stages without their %s: removed, starting afresh", self.folder, KEY_FILE)
            self.replaced = [f"stages without a {KEY_FILE}"]
            self.clear()
        if recorded is not None and recorded != self.key:
            differences = key_differences(recorded, self.key)
            # an attempt cut before any stage finished left its key alone: nothing to lose, nothing to refuse
            key_alone = all(path.name == KEY_FILE for path in self.folder.iterdir())
            if distributed.is_distributed():
                key_alone = distributed.broadcast_from_main(key_alone)
            if not replace_stale and not key_alone:
                refuse_another_commands(self.folder, recorded, self.key)
                differ = sorted(k for k in set(recorded) | set(self.key) if recorded.get(k) != self.key.get(k))
                raise ValueError(f"{self.folder} holds the finished stages of another run (its {', '.join(differ)} "
                                 f"differ: {'; '.join(differences)}): run the same command "
                                 "with the same software to continue it, or pass --overwrite to start again")
            logger.warning("%s held the stages of another run (%s): removed, starting afresh", self.folder,
                           "; ".join(differences))
            self.replaced = differences
            distributed.barrier()  # every rank has read the old key before rank 0 removes it
            self.clear()
            recorded = None
        if recorded is None and distributed.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(key_file, lambda path: path.write_text(json.dumps(self.key, indent=2, sort_keys=True)))
        if self.replaced:
            distributed.barrier()  # no rank looks for a stage before rank 0 has removed the stale ones

    def path(self, name: str) -> Path:
        return stage_file(self.folder, name)

    def parts(self, name: str, write: Optional[Callable] = None, read: Optional[Callable] = None) -> "StageParts":
        """Where stage `name` keeps its finished batches while it runs (nothing kept when the store keeps
        nothing); the store removes them once the stage is written, and counts those read back. `write` / `read`:
        how a batch's value is kept (default: a dict of tensors; `write_stage` / `read_stage` for `ModelOutputs`)."""
        folder = None if self.folder is None else parts_folder(self.folder, name)
        self._parts[name] = parts = StageParts(folder, write or write_tensors, read or read_tensors)
        return parts

    def run(self, name: str, compute: Callable[[], ModelOutputs]) -> ModelOutputs:
        """The stage's outputs: read back when an earlier run finished it, else computed (and kept)."""
        kept = self.read(name, read_stage)
        if kept is not None:
            return kept
        started = time.perf_counter()
        outputs = compute()
        self.finish(name, time.perf_counter() - started, lambda path, seconds: write_stage(outputs, seconds, path))
        return outputs

    def finish(self, name: str, seconds: float, write: Callable[[Path, float], None]) -> None:
        """Keep the just computed stage `name` (`write(path, seconds)`, rank 0; `seconds` its compute time
        here, plus what the batches read back from its parts took before), then remove its parts."""
        parts = self._parts.pop(name, None)
        if parts is not None:  # every rank has one (each ran `compute`); each read back its own batches
            reused, reused_seconds = distributed.sums_over_ranks([parts.reused, parts.reused_seconds])
            seconds += reused_seconds
            self.reused_batches += int(reused)
            self.reused_seconds += reused_seconds
        if self.folder is not None and distributed.is_main():
            write_atomically(self.path(name), lambda path: write(path, seconds))
            # every rank has its batches back (the stage's gather is collective): its parts are done with
            shutil.rmtree(parts_folder(self.folder, name), ignore_errors=True)

    def read(self, name: str, reader: Callable[[Path], Tuple[object, float]]):
        """Stage `name` as `reader(path) -> (outputs, seconds)` reads it, None when it is not kept or cannot be
        read (a file cut short by a crash or a full disk: it is computed again and replaced)."""
        if self.folder is None:
            return None
        outputs = None
        if self.path(name).exists():
            try:
                outputs, seconds = reader(self.path(name))
            except Exception as error:  # safetensors' errors, OSError, a missing tensor: every way a file can be bad
                logger.warning("stage %s could not be read (%s): computing it again", self.path(name), error)
        if not distributed.all_true(outputs is not None):  # a rank that computes it needs every other one to
            return None
        self.reused += 1
        self.reused_seconds += seconds
        if distributed.is_main():  # batches left behind by a run stopped between writing the stage and removing them
            shutil.rmtree(parts_folder(self.folder, name), ignore_errors=True)
        return outputs

    def clear(self) -> None:
        """Remove the folder and every stage in it (rank 0, once every rank is done with it); its key first, so that
        stages a removal interrupted leaves behind are never read as some run's."""
        distributed.barrier()
        if self.folder is not None and distributed.is_main():
            (self.folder / KEY_FILE).unlink(missing_ok=True)
            shutil.rmtree(self.folder, ignore_errors=True)


def read_back_words(continued: Optional[dict]) -> str:
    """What a continued run read back from an interrupted one (results.json's "continued"), in words: "3 finished
    stages and 2 batches of an unfinished one"; "" when it read back nothing."""
    continued = continued or {}
    stages, batches = continued.get("stages_read_back", 0), continued.get("batches_read_back", 0)
    words = [f"{stages} finished stage{'s' if stages != 1 else ''}"] if stages else []
    if batches:
        words.append(f"{batches} batch{'es' if batches != 1 else ''} of an unfinished one")
    return " and ".join(words)


def parts_folder(folder: Path, name: str) -> Path:
    """Where stage `name` of the store in `folder` keeps its finished batches: beside its file, `<stage>.parts/`."""
    path = stage_file(folder, name)
    return path.with_name(path.name[:-len(".safetensors")] + ".parts")


class StageParts:
    """The finished batches of one stage while it runs, one file each in `folder` (None: nothing is kept).

        parts = store.parts("robust-margin-eps4/255-k+1 pgd")
        row = parts.run(index, lambda: attack_batch(...))   # computed and written, or read back

    A batch's value is what `write(value, seconds, path)` keeps and `read(path) -> (value, seconds)` gives back
    (default: a dict of tensors). Every rank writes the batches it computes (their files are distinct) and reads
    back only those it runs; a file that cannot be read is computed again. Seeding each batch by its index
    (`distributed.per_batch_seeds`) is what makes a batch read back the one an uninterrupted run computes: the
    caller must reseed before each batch, read back or not.
    """

    def __init__(self, folder: Optional[Path], write: Optional[Callable] = None,
                 read: Optional[Callable] = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self.write, self.read = write or write_tensors, read or read_tensors
        self.reused = 0  # batches read back
        self.reused_seconds = 0.0  # what they took when they were computed

    def path(self, index: int) -> Path:
        return self.folder / f"batch-{index:06d}.safetensors"

    def run(self, index: int, compute: Callable[[], T]) -> T:
        if self.folder is not None and self.path(index).exists():
            try:
                value, seconds = self.read(self.path(index))
            except Exception as error:  # safetensors' errors, OSError: every way a file can be bad
                logger.warning("batch %s could not be read (%s): computing it again", self.path(index), error)
            else:
                self.reused += 1
                self.reused_seconds += seconds
                return value
        started = time.perf_counter()
        value = compute()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            seconds = time.perf_counter() - started
            write_atomically(self.path(index), lambda path: self.write(value, seconds, path))
        return value


def write_tensors(tensors: Dict[str, torch.Tensor], seconds: float, path: Path) -> None:
    """A dict of tensors and the seconds it took to compute, as a safetensors file (`read_tensors` reads it)."""
    save_file({key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}, str(path),
              metadata={"seconds": repr(float(seconds))})


def read_tensors(path: Path) -> Tuple[Dict[str, torch.Tensor], float]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, float((handle.metadata() or {}).get("seconds", 0.0))


def write_stage(outputs: ModelOutputs, seconds: float, path: Path) -> None:
    tensors = {"logits": outputs.logits.contiguous(), "labels": outputs.labels.contiguous()}
    if outputs.features is not None:
        tensors["features"] = outputs.features.contiguous()
    if outputs.perturbed is not None:
        tensors["perturbed"] = outputs.perturbed.contiguous()
    metadata = {"seconds": repr(float(seconds)),
                "trace": json.dumps(outputs.trace.to_dict()) if outputs.trace is not None else ""}
    save_file(tensors, str(path), metadata=metadata)


def read_stage(path: Path) -> Tuple[ModelOutputs, float]:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata() or {}
    trace = Trace(**json.loads(metadata["trace"])) if metadata.get("trace") else None
    outputs = ModelOutputs(tensors["logits"], tensors["labels"], tensors.get("features"), trace,
                           tensors.get("perturbed"))
    return outputs, float(metadata.get("seconds", 0.0))


def key_differences(recorded, current, name: str = "") -> List[str]:
    """Each leaf where two keys differ, as "name: then → now" (nested settings by their dotted names)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [line for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)
                for line in key_differences(recorded.get(k), current.get(k), f"{name}.{k}" if name else k)]
    return [f"{name}: {_shown(recorded)} → {_shown(current)}"]


def _shown(value) -> str:
    text = "not recorded" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:16] + "…"


