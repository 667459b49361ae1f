"""The training loop: epochs of optimiser steps, a validation check after each, a checkpoint after each.

`train(config, out_dir)` trains a classifier as the recipe (`TrainConfig`) says. Each epoch: the optimiser
steps over the training split (on clean images, or on the adversarial examples of `adversarial.py`, minimising
`losses.batch_loss`), then
clean and PGD accuracy are measured on the first `eval_subset` validation images, then everything is written
(`checkpointing.py`) so that `resume=True` continues a run that died as if it had not. Runs unchanged under
`torchrun --nproc_per_node N` (DistributedDataParallel).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from .. import data as datasets
from .. import distributed
from ..evaluation import evaluate_robustness
from ..files import unwritable_folder
from ..models import Classifier
from ..models.checkpoint import is_checkpoint_dir, load_checkpoint, read_config
from ..models.subnormals import flush_training_subnormals
from ..progress import progress_bar
from . import checkpointing
from .adversarial import training_attack
from .config import TrainConfig, lr_factor, unused_settings
from .losses import batch_loss
from .preparation import (
    fresh_model, inherit_input_transform, inherit_validation_split, load_data, model_to_fine_tune,
)

logger = logging.getLogger(__name__)

# Recipe fields a resumed run may set differently (they change no result). Not `workers`: augmentation draws from
# the workers' seeds with workers, from this process's generator without, so their number changes the weights.
RESUME_MAY_CHANGE = ("extra",)


@datasets.reads_data_root
def train(
    config: TrainConfig,
    out_dir: Union[str, Path],
    data_root: Optional[Union[str, Path]] = None,
    resume: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    progress=True,
    on_epoch: Optional[Callable[[dict], None]] = None,
    download: bool = False,
    overwrite: bool = False,
) -> Classifier:
    """Train a classifier as `config` says; checkpoints go to `out_dir` every epoch. `overwrite`: a run already in
    `out_dir` is removed (`checkpointing.clear_run`) once this one has checked its data and built its model.

    The caller's global RNG state is left untouched: the run seeds a forked
    RNG from `config.seed`, so the same config gives the same model.

    `data_root`: where named data sets are read from, for the whole call (`robgen.data.data_root_as`). A config
    fills its recipe defaults when it is built: for a named data set's folder under `data_root` given as a path
    (Imagenette's 128-px defaults), build it inside `with robgen.data.data_root_as(data_root):`, as the CLI does.
    """
    out_dir = Path(out_dir).expanduser()
    if resume and overwrite:
        raise ValueError("resume continues the run in the folder, overwrite removes it to start again: give one")
    problem = unwritable_folder(out_dir)
    if problem is not None:  # refused before the data is read, not at the first epoch's save
        raise ValueError(f"the run's folder {out_dir} {problem}: choose another")
    earlier = [] if resume or overwrite else checkpointing.earlier_run(out_dir)
    if earlier:  # the CLI's check, for Python callers too: a second run there kept the first's best/, snapshots
        # and log lines beside its own (a log.jsonl alone, without a checkpoint, had the new run's lines added)
        raise ValueError(f"{out_dir} already holds {', '.join(earlier)} of a training run: resume=True to continue "
                         "it, overwrite=True to start again, or another folder")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = distributed.setup(device)
    # With CUDA in use, torch.manual_seed seeds every device, so every one's state is kept and given back (not only
    # the run's); a CPU run where CUDA is not started seeds the CPU alone and never starts it.
    uses_cuda = device.type == "cuda" or (torch.cuda.is_available() and torch.cuda.is_initialized())
    devices = list(range(torch.cuda.device_count())) if uses_cuda else []
    benchmark = torch.backends.cudnn.benchmark  # set for the run (one input shape), given back after it
    try:
        with torch.random.fork_rng(devices=devices):
            (torch.manual_seed if uses_cuda else torch.default_generator.manual_seed)(config.seed)
            return _train(config, out_dir, data_root, download, resume, device, progress, on_epoch, overwrite)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser: SGD with Nesterov momentum (plain SGD with momentum 0), or Adam (weight decay added to
    the gradient, as torch's Adam and the official notebooks do)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.momentum > 0)  # (none without momentum)


def _check_channels_last_on_cpu(model: torch.nn.Module) -> None:
    """Refuse channels-last on the CPU for a network with a strided 1x1 convolution of fewer than 8 input channels
    (a narrow ResNet's shortcut): its backward pass in torch's CPU kernels (oneDNN, torch 2.14) writes past its
    buffer and ends the process ("double free or corruption"): seen on 1 and 4 to 7 channels (2 and 3 ran)."""
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
                and max(module.stride) > 1 and module.in_channels < 8):
            raise ValueError(f"channels-last on the CPU crashes torch's backward pass of {name} (a 1x1 convolution "
                             f"of stride {max(module.stride)} on {module.in_channels} channels, fewer than 8): train "
                             "without --channels-last, or a wider network")


def _check_resumable(config: TrainConfig, out_dir: Path) -> None:
    if not (is_checkpoint_dir(out_dir) and (out_dir / checkpointing.STATE_FILE).is_file()):
        raise FileNotFoundError(f"nothing to resume in {out_dir}: it needs config.json, model.safetensors and "
                                f"{checkpointing.STATE_FILE}")
    saved = read_config(out_dir)
    saved_recipe = saved.get("training", {}).get("config", {})
    processes = saved.get("training", {}).get("world_size")
    if processes is not None and int(processes) != distributed.world_size():
        # the schedule counts steps per process and the batch is per process: with another count the learning
        # rate would go on from the wrong step (0 for the rest of a one-cycle run) and the global batch would change
        raise ValueError(f"{out_dir} was trained by {processes} process(es) and this run has "
                         f"{distributed.world_size()}: resume it with the same number (torchrun --nproc_per_node "
                         f"{processes}{'' if int(processes) > 1 else ', or plain python'}), or fine-tune from its "
                         f"weights (--init-from {out_dir})")
    if saved.get("architecture") != config.architecture or saved_recipe.get("width") != config.width:
        raise ValueError(
            f"{out_dir} holds a {saved.get('architecture')} (width {saved_recipe.get('width')}) checkpoint, "
            f"but this run trains {config.architecture} (width {config.width}): resume with the same architecture"
        )
    # The rest of the recipe too: Adam's state loaded into SGD, another schedule or augmentation would go on silently
    wanted = json.loads(json.dumps(asdict(config), default=str))
    for recipe in (wanted, saved_recipe):  # the split used: an unset split seed is the run's seed (older fine-tunes
        if "split_seed" in recipe and recipe["split_seed"] is None:  # recorded None, which now reads as the base's)
            recipe["split_seed"] = recipe.get("seed")
    # the data set by what it names, not how it was spelled: "img" from another working directory is another folder,
    # and its absolute path the same one (the record holds it by name or absolute path since 2026-12-07)
    recorded_data = (saved.get("training", {}).get("data") or {}).get("name") or saved_recipe.get("data")
    if recorded_data is not None and not datasets.same_data(recorded_data, config.data):
        raise ValueError(f"{out_dir} was trained on {recorded_data} (this run: {config.data}, "
                         f"{datasets.canonical_data(config.data)}): resume on the data it was started with")
    unused = unused_settings(saved_recipe.get("mode", config.mode), saved_recipe.get("schedule", config.schedule),
                             saved_recipe.get("optimizer", config.optimizer))
    differ = sorted(name for name in wanted if name not in RESUME_MAY_CHANGE + ("data",) and name in saved_recipe
                    and name not in unused and saved_recipe[name] != wanted[name])  # (older runs recorded unused
    # settings as given: their run is resumed without them)
    if differ:
        told = ", ".join(f"{name} {saved_recipe[name]!r} (this run: {wanted[name]!r})" for name in differ)
        raise ValueError(f"{out_dir} was trained with {told}: resume with the recipe it was started with")


def _train(config, out_dir, data_root, download, resume, device, progress, on_epoch, overwrite) -> Classifier:
    base = resumed = None
    if resume and config.init_from is not None and is_checkpoint_dir(out_dir):
        # a fine-tune takes its input transform, validation split and channels from its base, and its checkpoint
        # recorded them: resumed, it reads them there, so that a base deleted or replaced since stops nothing
        base = resumed = load_checkpoint(out_dir, map_location=device)
    elif config.init_from is not None:
        from ..models import load_model

        base = load_model(config.init_from, device=device)
    if base is not None:
        config = inherit_validation_split(inherit_input_transform(config, base.spec), base.spec)
    train_set, val_set, classes, plain = load_data(
        config, data_root, download, channels=base.spec.input_size[0] if base is not None else 3,
        crop_mode=base.spec.crop_mode if base is not None else "center")
    if resume:
        _check_resumable(config, out_dir)
        model = resumed if resumed is not None else load_checkpoint(out_dir, map_location=device)
    elif base is not None:
        model = model_to_fine_tune(config, base, classes, input_size=tuple(plain[0][0].shape))
    else:
        model = fresh_model(config, plain, classes).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape for the whole run: let cuDNN pick its fastest kernels
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last and device.type == "cpu":
        _check_channels_last_on_cpu(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    net = model
    if distributed.is_distributed():
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if distributed.rank() > 0:  # every rank drew the same stream from the same seed, so the k-th image of each
            # rank got the same crop and flip (and the loader workers the same seeds): each rank its own from here,
            # after the weights (rank 0's, which DDP gives every rank); rank 0, and a run alone, keep the seed's
            seed = config.seed + 1_000_003 * distributed.rank()
            torch.default_generator.manual_seed(seed)
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)

    if distributed.is_distributed():
        sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        drop_last=True, pin_memory=device.type == "cuda", collate_fn=datasets.collate_examples,
                        persistent_workers=False)  # each epoch's workers seeded from the saved generator state:
    # kept across epochs, their random streams (the augmentation's) were not in the trainer state, and a resumed
    # run augmented differently from one that was not stopped
    if len(loader) == 0:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than one batch of {config.batch_size}")
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config.schedule, config.epochs * len(loader), len(loader), config.milestones))
    start_epoch, wall_before, history = 0, 0.0, []
    attack = training_attack(config, model, device)
    if resume:
        state = checkpointing.read_trainer_state(out_dir, device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, wall_before = int(state["epoch"]), float(state["wall_seconds"])
        weights_epoch = (model.spec.training or {}).get("epochs_done")
        if "model" in state:  # the weights of the state's own epoch: a run stopped between writing model.safetensors
            model.load_state_dict(state["model"])  # and trainer_state.pt goes on from the last complete state
        elif weights_epoch is not None and int(weights_epoch) != start_epoch:  # (files from before it kept them)
            raise ValueError(f"{out_dir} holds the weights of epoch {weights_epoch} but the optimiser, schedule and "
                             f"random state of epoch {start_epoch} ({checkpointing.STATE_FILE}): the run was stopped "
                             "while writing an epoch, so it cannot continue exactly; start it again (--overwrite), "
                             f"or fine-tune from its weights (--init-from {out_dir})")
        history = json.loads(state["history"])
        if distributed.is_main():
            checkpointing.restore_log(out_dir, history)  # one line per epoch of the state, none lost or half
        checkpointing.restore_random_states(state, device, attack, sampler, out_dir)
        logger.info("resuming %s at epoch %d", out_dir, start_epoch + 1)

    eval_set = datasets.first(val_set, min(config.eval_subset, len(val_set)), "validation split")
    distributed.check_shareable(len(eval_set), "or raise --eval-subset")  # now, not after the first epoch trained
    old_run_left = overwrite and not resume  # removed when the first epoch is written, not before: a run that
    # fails or is stopped in its first epoch (a setting, a diverging loss, Ctrl-C) leaves the old one as it was
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        else:
            sampler.generator.manual_seed(config.seed * 1000 + epoch)
        # loss sum, correct, count: kept on the device, so a step never waits for the GPU to finish the last one
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for x, y in progress_bar(loader, desc=f"epoch {epoch + 1}/{config.epochs} ({config.mode})",
                                 progress=progress and distributed.is_main()):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x_attacked = attack(x, y) if attack is not None else x  # eval-mode attack; train mode is restored
            with autocast:
                loss, logits = batch_loss(config, net, x, x_attacked, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cpu":
                flush_training_subnormals(model, optimizer)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler sets the next one)
            scheduler.step()
            totals += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                   totals.new_tensor(len(y))])
        loss_sum, correct, count = distributed.reduce_sums(totals.tolist(), device)
        _share_buffers(model)
        check = evaluate_robustness(model, eval_set, eps=config.eps, norm=config.norm, steps=config.eval_steps,
                                    batch_size=256, progress=False)
        model.train()
        row = {
            "epoch": epoch + 1, "loss": loss_sum / count, "train_accuracy": correct / count,
            "val_clean_accuracy": check["clean_accuracy"], "val_pgd_accuracy": check["pgd_accuracy"],
            "lr": lr, "seconds": time.perf_counter() - started + wall_before,
        }
        if not math.isfinite(row["loss"]):
            raise ValueError(f"the training loss became {row['loss']} at epoch {epoch + 1}: lower the learning rate")
        history.append(row)
        best = _is_best(config, history)
        states = checkpointing.gather_random_states(checkpointing.random_states(device, attack, sampler))
        if distributed.is_main():
            if old_run_left:
                checkpointing.clear_run(out_dir)
                old_run_left = False
            checkpointing.write_epoch(model, config, out_dir, classes, history, device, optimizer, scheduler, epoch,
                                      row, eval_set, states, best, train_images=len(val_set.dataset))  # the whole train split
            logger.info("epoch %d: %s", epoch + 1, json.dumps(row))
        if on_epoch is not None:  # with the run's random streams set aside: a caller's draws would change them
            with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if device.type == "cuda" else []):
                on_epoch(row)
        distributed.barrier()
    if is_checkpoint_dir(out_dir):  # the model returned is the one in out_dir: its companion files live there (found
        # again from another working directory, as `load_checkpoint` records its folder)
        model.spec.source, model.spec.folder = str(out_dir), str(out_dir.resolve())
    return model.eval()


def _is_best(config: TrainConfig, history: list) -> bool:
    """Whether the last epoch of `history` has the best validation PGD accuracy so far (ties: the later)."""
    if not (config.keep_best and config.mode in ("pgd", "fast")):
        return False
    return history[-1]["val_pgd_accuracy"] >= max(row["val_pgd_accuracy"] for row in history)


def _share_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics) at the end of an epoch.

    DDP broadcasts them before each training forward, but each rank's last forward then updates its own
    copy, and the next epoch's first eval-mode attack runs on it. Sharing rank 0's makes every replica the
    model that the checkpoint holds, so a resumed run attacks with the statistics the interrupted one had.
    """
    if distributed.is_distributed():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
