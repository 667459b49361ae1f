"""What a training run writes every epoch, and how `resume=True` reads it back.

Every epoch writes, atomically, to the run's folder:
- a complete robgen checkpoint (`model.safetensors` + `config.json` with the recipe, data and measured
  accuracies), loadable by `robgen.load_model(folder)`;
- `trainer_state.pt`: the weights again, optimiser, schedule, epoch, history and every random state (the torch CPU RNG, the CUDA
  RNG, the attack's random-start generator and the sampler's generator, per rank), so a resumed run continues
  as if it had not stopped;
- a line of `log.jsonl`;
- adversarial runs: `best/`, the epoch with the best validation PGD accuracy; with `snapshot_every` N, every
  N-th epoch's checkpoint in `epochs/epoch-NNN/`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import torch

from .. import data as datasets
from .. import distributed
from ..files import remove_if_empty, write_atomically
from ..models import save_checkpoint
from ..models.checkpoint import COMPANION_FILES, CONFIG_FILE, WEIGHTS_FILE

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
BEST_DIR = "best"  # the best-PGD-epoch checkpoint of adversarial runs
SNAPSHOT_DIR = "epochs"  # every `snapshot_every`-th epoch's checkpoint: epochs/epoch-010/, ...
LOG_FILE = "log.jsonl"


def earlier_run(out_dir: Path) -> List[str]:
    """The files and folders of a training run that `out_dir` already holds (a new run there would mix its log
    lines, best/ and snapshots with them): empty where none."""
    return [name for name in (CONFIG_FILE, STATE_FILE, LOG_FILE, BEST_DIR, SNAPSHOT_DIR) if (Path(out_dir) / name).exists()]


def clear_run(out_dir: Path) -> None:
    """Remove what an earlier run left in `out_dir` (`train --overwrite`): its checkpoint, trainer state, log,
    best/ and epoch snapshots (epochs/epoch-NNN/), and the files fitted to its weights (detector.json,
    seeds.safetensors), which would otherwise be read as the new model's. Other files are left alone, in best/ and
    epochs/ too (those folders are removed only once empty)."""
    for name in (STATE_FILE, LOG_FILE):
        (out_dir / name).unlink(missing_ok=True)
    _remove_checkpoint(out_dir, keep_folder=True)
    _remove_checkpoint(out_dir / BEST_DIR)
    snapshots = out_dir / SNAPSHOT_DIR
    if snapshots.is_dir():
        for folder in snapshots.iterdir():
            if folder.is_dir() and re.fullmatch(r"epoch-\d{3,}", folder.name):
                _remove_checkpoint(folder)
        remove_if_empty(snapshots)


def _remove_checkpoint(folder: Path, keep_folder: bool = False) -> None:
    """A checkpoint's files in `folder` (weights, config and what was fitted to them); the folder too if that
    leaves it empty, unless `keep_folder`."""
    if not folder.is_dir():
        return
    for name in (CONFIG_FILE, WEIGHTS_FILE, *COMPANION_FILES):
        (folder / name).unlink(missing_ok=True)
    if not keep_folder:
        remove_if_empty(folder)


def snapshot_folder(out_dir: Path, epoch: int) -> Path:
    """Where the snapshot of `epoch` (counted from 1) is kept."""
    return Path(out_dir) / SNAPSHOT_DIR / f"epoch-{epoch:03d}"


def random_states(device: torch.device, attack, sampler) -> dict:
    """Every random state this process's next epoch depends on (CPU tensors, as trainer_state.pt stores them)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    if attack is not None and attack.generator is not None:
        states["attack"] = attack.generator.get_state()
    generator = getattr(sampler, "generator", None)
    if generator is not None:
        states["sampler"] = generator.get_state()
    return states


def gather_random_states(states: dict) -> list:
    """The random states of every rank, in rank order (a list of one when training alone)."""
    if not distributed.is_distributed():
        return [states]
    gathered = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def restore_random_states(state: dict, device: torch.device, attack, sampler, out_dir: Path) -> None:
    """Put back the random states of `random_states`, this rank's, from a trainer_state.pt.

    Files written before robgen saved every generator hold only "rng" (rank 0's CPU RNG): those resume
    with the CPU RNG restored and the others as a fresh run seeds them, which is exact for "standard"
    mode on the CPU and differs from the interrupted run in the attack's random starts (and on CUDA).
    """
    per_rank = state.get("random_states")
    if per_rank is None:
        torch.set_rng_state(state["rng"].cpu())
        if attack is not None or device.type == "cuda":
            logger.warning(
                "%s/%s predates saved generator states: the torch CPU RNG is restored, but the attack's random "
                "starts and the CUDA RNG restart from the seed, so this resumed run is not bit-identical to an "
                "uninterrupted one", out_dir, STATE_FILE)
        return
    if len(per_rank) != distributed.world_size():  # the training loop refuses this before it gets here
        raise ValueError(f"{out_dir}/{STATE_FILE} holds the random states of {len(per_rank)} process(es), and this "
                         f"run has {distributed.world_size()}: resume with the same number")
    mine = per_rank[distributed.rank()]
    torch.set_rng_state(mine["cpu"].cpu())
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
    if attack is not None and attack.generator is not None and "attack" in mine:
        if mine["attack"].numel() == attack.generator.get_state().numel():
            attack.generator.set_state(mine["attack"].cpu())
        else:  # a CUDA generator's state on a CPU run or the other way round (trained on a lent GPU, resumed here)
            logger.warning(
                "%s/%s holds the attack's random-start generator of another device (a %d-byte state, this run's "
                "takes %d): its random starts restart from the seed, so this resumed run is not bit-identical to "
                "an uninterrupted one", out_dir, STATE_FILE, mine["attack"].numel(),
                attack.generator.get_state().numel())
    generator = getattr(sampler, "generator", None)
    if generator is not None and "sampler" in mine:
        generator.set_state(mine["sampler"].cpu())


def read_trainer_state(out_dir: Path, device: torch.device) -> dict:
    """The trainer_state.pt of a run, read with weights_only=True (it holds tensors and plain data only)."""
    return torch.load(Path(out_dir) / STATE_FILE, map_location=device, weights_only=True)


def atomic_save(obj, path: Path) -> None:
    """`torch.save(obj)` to `path`, all or nothing (`robgen.files.write_atomically`)."""
    write_atomically(path, lambda temporary: torch.save(obj, temporary))


def write_epoch(model, config, out_dir: Path, classes, history, device, optimizer, scheduler, epoch: int, row: dict,
                eval_set, states: list, best: bool = False, train_images: Optional[int] = None) -> None:
    """Write epoch `epoch` (counted from 0) of a run: checkpoint, best/ and snapshot copies, trainer state, log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # the data set by name or absolute path: a relative folder would be read against a later working directory,
    # where the split it held out would not be found (and the validation images might be training images)
    model.spec.training = {
        "config": asdict(config), "data": {"name": datasets.canonical_data(config.data), "classes": classes, "split": "train minus val",
                                           "val_size": config.val_size, "train_limit": config.train_limit,
                                           # the images the split was drawn from: a copy with others draws others
                                           **({"train_images": train_images} if train_images is not None else {}),
                                           "split_seed": config.seed if config.split_seed is None else config.split_seed},
        "epochs_done": epoch + 1, "hardware": distributed.hardware(device), "wall_seconds": row["seconds"],
        "torch": torch.__version__, "world_size": distributed.world_size(),
    }
    model.spec.metrics = {
        "val_clean_accuracy": row["val_clean_accuracy"], "val_pgd_accuracy": row["val_pgd_accuracy"],
        "val_images": len(eval_set), "val_pgd": {"eps": config.eps, "norm": config.norm, "steps": config.eval_steps},
    }
    save_checkpoint(model, out_dir)
    if best:
        model.spec.training["best_epoch"] = epoch + 1
        save_checkpoint(model, out_dir / BEST_DIR)
        del model.spec.training["best_epoch"]
    if config.snapshot_every and (epoch + 1) % config.snapshot_every == 0:
        save_checkpoint(model, snapshot_folder(out_dir, epoch + 1))
    atomic_save({
        "model": model.state_dict(),  # this epoch's weights again: resume reads them from here, so a run stopped
        # after model.safetensors and before this file goes on from the epoch before, exactly
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
        "wall_seconds": row["seconds"], "history": json.dumps(history),
        "rng": states[0]["cpu"],  # the only random state of files from before "random_states"
        "random_states": states,  # per rank: cpu, cuda, attack and sampler generator states
    }, out_dir / STATE_FILE)
    with open(out_dir / LOG_FILE, "a") as log:
        log.write(json.dumps(row) + "\n")


def restore_log(out_dir: Path, history: list) -> None:
    """Write log.jsonl again from the trainer state's `history` (all or nothing): a run stopped after its state and
    before its log line (or part-way through it) lost that line for good, and the resumed log skipped an epoch."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    write_atomically(out_dir / LOG_FILE, lambda temporary: Path(temporary).write_text(text))
