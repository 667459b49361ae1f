"""Training standard, adversarially robust and quasi-robust classifiers.

Modes (the `mode` of `TrainConfig`):
- "standard": cross-entropy on clean images;
- "pgd": Madry et al. 2018, training on PGD examples (`attack_steps` steps, L-inf or L2);
- "fast": Wong et al. 2020, "Fast is better than free": one FGSM step of size
  1.25·eps from a uniform random start (the cheap route to L-inf robustness);
- "quasi": quasi-robust training, adversarial training with a very small
  budget (default L2 eps 0.05, one random-start step); see `QUASI_EPS`.

Adversarial examples come from robgen's own attacks (the same loop as the
attacks and the synthesis), generated with the model in eval mode.

Adversarial runs ("pgd", "fast") also keep the epoch with the best PGD
accuracy on the fixed validation subset in `<out>/best/`: fast training can
collapse into catastrophic overfitting (PGD accuracy falls to ~0 within an
epoch while FGSM accuracy soars), and that copy is the model to use then.
`init_from` starts from a trained checkpoint instead of random weights (e.g.
fine-tuning a standard model at a quasi-robust budget).

Every epoch writes a complete robgen checkpoint (`model.safetensors` +
`config.json` with the recipe, data and measured accuracies) and a
`trainer_state.pt` (optimiser, schedule, epoch, and every random state: the
torch CPU RNG, the CUDA RNG, the attack's random-start generator and the
sampler's generator, per rank) to the output folder, atomically, so
`resume=True` continues a run that died as if it had not. Runs unchanged
under `torchrun --nproc_per_node N` (DistributedDataParallel).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from . import data as datasets
from . import distributed
from .attacks import PGD
from .evaluation import evaluate_robustness
from .models import Classifier, ModelSpec, save_checkpoint
from .models.checkpoint import build_network, is_checkpoint_dir, load_checkpoint, read_config
from .progress import progress_bar

logger = logging.getLogger(__name__)

MODES = ("standard", "pgd", "fast", "quasi")
# Quasi-robust budget. MAGIC (AAAI 2023) uses L2 eps 0.05 on ImageNet, 1/60 of the usual robust
# radius 3.0 there; we keep 0.05, which on 32x32 CIFAR is 1/10 of the usual robust L2 radius 0.5
# (per-pixel RMS 0.05/sqrt(3072) = 0.23/255, below 8-bit quantisation): small enough that clean
# accuracy stays near standard, large enough to change the gradients on a small model.
QUASI_NORM, QUASI_EPS = "l2", 0.05
# Per data set defaults of the recipe. Imagenette: 128-px inputs (random resized crops in training; at eval time the short side resized to
# 128 / 0.875 = 146 and the centre 128 cropped), so that a CPU can train it (checkpoints/README.md).
DATA_DEFAULTS = {
    "imagenette": dict(image_size=128, crop_pct=0.875),
}
STATE_FILE = "trainer_state.pt"
BEST_DIR = "best"  # the best-PGD-epoch checkpoint of adversarial runs
LOG_FILE = "log.jsonl"


@dataclass
class TrainConfig:
    """The full training recipe; it is stored in the checkpoint's config.json."""

    data: str = "cifar10"
    architecture: str = "resnet10_cifar"
    width: Optional[int] = None  # for robgen's CIFAR ResNets; None = the architecture's default
    mode: str = "standard"
    norm: str = "linf"  # threat model for training (adversarial modes) and per-epoch evaluation
    eps: float = 8 / 255
    attack_steps: int = 7  # "pgd" mode
    attack_step_size: Optional[float] = None  # default: 2.5·eps/steps ("pgd"), 1.25·eps ("fast", "quasi")
    epochs: int = 30
    batch_size: int = 128  # per process
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" or "cosine", stepped every iteration
    label_smoothing: float = 0.0
    val_size: Optional[int] = None  # held out of train; None: data.default_val_size (Imagenette 500, else 5000)
    eval_subset: int = 500  # first N validation images for the per-epoch PGD accuracy
    eval_steps: int = 10
    train_limit: Optional[int] = None  # first N training images only (tests, smoke runs)
    # The input transform. None: fine-tuning (init_from) keeps the base model's; otherwise the data set's default
    # (DATA_DEFAULTS), else the images' own size, crop_pct 1 and bilinear.
    image_size: Optional[int] = None  # input side
    crop_pct: Optional[float] = None  # eval transform: resize the short side to image_size / crop_pct, centre-crop
    interpolation: Optional[str] = None  # resampling filter of the eval resize and of the training crops
    seed: int = 0  # weights' initialisation, data order, attacks' random starts
    split_seed: Optional[int] = None  # the held-out validation split's seed; None: `seed`. Give 0 to a second
    # seed's run to hold out the split every robgen evaluation uses (data.train_val_split(..., seed=0))
    workers: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA
    # None: on CUDA only. On the CPU (torch 2.14, 2 cores shared with another job) channels-last train steps
    # took 0.62-0.86x the time at widths 4, 16 and 32; measure on a quiet machine before making it the default
    channels_last: Optional[bool] = None
    # "pgd" / "fast" only: also keep the epoch with the best PGD accuracy on the validation subset in
    # <out>/best/ (the guard against catastrophic overfitting of fast adversarial training, Wong et al. 2020)
    keep_best: bool = True
    init_from: Optional[str] = None  # start from this checkpoint's weights and spec (fine-tuning), not at random
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init_from is None:  # fine-tuning fills these from the base model (inherit_input_transform)
            defaults = {"crop_pct": 1.0, "interpolation": "bilinear", **DATA_DEFAULTS.get(str(self.data).lower(), {})}
            for name, value in defaults.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        if self.val_size is None:
            self.val_size = datasets.default_val_size(self.data)
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1] (1: no margin, 0.875: ImageNet's), got {self.crop_pct}")
        if self.mode not in MODES:
            raise ValueError(f"unknown training mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.mode == "quasi" and self.norm == "linf" and self.eps == 8 / 255:
            self.norm, self.eps = QUASI_NORM, QUASI_EPS
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"L-inf eps={self.eps:g} is on the 0-255 scale; pixels are in [0, 1]: use {self.eps:g}/255")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}: use 'onecycle' or 'cosine'")
        for name in ("epochs", "batch_size", "attack_steps", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def step_size(self) -> float:
        if self.attack_step_size is not None:
            return self.attack_step_size
        return 2.5 * self.eps / self.attack_steps if self.mode == "pgd" else 1.25 * self.eps


def lr_factor(schedule: str, total: int) -> Callable[[int], float]:
    """Learning-rate multiplier per iteration: "onecycle" rises linearly over the first quarter and
    falls linearly to 0 (the triangle of Wong et al. 2020); "cosine" decays from 1 to 0."""
    warm = max(1, total // 4)
    if schedule == "onecycle":
        return lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def channel_stats(dataset, n: int = 5000, batch_size: int = 500):
    """Per-channel mean and std of the first `n` images (for the model's normalisation)."""
    x, _ = datasets.load_tensors(dataset, min(n, len(dataset)), batch_size)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def _make_attack(config: TrainConfig, model, device):
    if config.mode == "standard":
        return None
    steps = config.attack_steps if config.mode == "pgd" else 1
    generator = torch.Generator(device=device).manual_seed(config.seed + 1 + distributed.rank())
    return PGD(model, eps=config.eps, step_size=config.step_size, steps=steps, norm=config.norm, random_start=True,
               generator=generator)


def _share_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics) at the end of an epoch.

    DDP broadcasts them before each training forward, but each rank's last forward then updates its own
    copy, and the next epoch's first eval-mode attack runs on it. Sharing rank 0's makes every replica the
    model that the checkpoint holds, so a resumed run attacks with the statistics the interrupted one had.
    """
    if distributed.is_distributed():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _random_states(device: torch.device, attack, sampler) -> dict:
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


def _gather_random_states(states: dict) -> list:
    """The random states of every rank, in rank order (a list of one when training alone)."""
    if not distributed.is_distributed():
        return [states]
    gathered = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def _restore_random_states(state: dict, device: torch.device, attack, sampler, out_dir: Path) -> None:
    """Put back the random states of `_random_states`, this rank's, from a trainer_state.pt.

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
    if len(per_rank) != distributed.world_size():
        torch.set_rng_state(per_rank[0]["cpu"].cpu())
        logger.warning(
            "%s/%s was written by %d process(es) but this run has %d: only rank 0's torch CPU RNG is restored and "
            "the other generators restart from the seed, so the run is not bit-identical to an uninterrupted one "
            "(resume with the same --nproc_per_node for that)", out_dir, STATE_FILE, len(per_rank),
            distributed.world_size())
        return
    mine = per_rank[distributed.rank()]
    torch.set_rng_state(mine["cpu"].cpu())
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
    if attack is not None and attack.generator is not None and "attack" in mine:
        attack.generator.set_state(mine["attack"].cpu())
    generator = getattr(sampler, "generator", None)
    if generator is not None and "sampler" in mine:
        generator.set_state(mine["sampler"].cpu())


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    config: TrainConfig,
    out_dir: Union[str, Path],
    data_root: Optional[Union[str, Path]] = None,
    resume: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    progress=True,
    on_epoch: Optional[Callable[[dict], None]] = None,
    download: bool = False,
) -> Classifier:
    """Train a classifier as `config` says; checkpoints go to `out_dir` every epoch.

    The caller's global RNG state is left untouched: the run seeds a forked
    RNG from `config.seed`, so the same config gives the same model.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = distributed.setup(device)
    out_dir = Path(out_dir)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return _train(config, out_dir, data_root, download, resume, device, progress, on_epoch)


def _load_data(config: TrainConfig, data_root, download: bool):
    size, how = config.image_size, dict(crop_pct=config.crop_pct, interpolation=config.interpolation)
    augmented = datasets.load_dataset(config.data, "train", root=data_root, download=download,
                                      transform=datasets.pixel_transform(size, train=True, **how))
    plain = datasets.load_dataset(config.data, "train", root=data_root, download=download,
                                  transform=datasets.pixel_transform(size, **how))
    split_seed = config.seed if config.split_seed is None else config.split_seed
    train_part, _ = datasets.train_val_split(augmented, config.val_size, seed=split_seed)
    _, val = datasets.train_val_split(plain, config.val_size, seed=split_seed)
    if config.train_limit is not None:
        train_part = datasets.first(train_part, config.train_limit, "training split")
    return train_part, val, datasets.class_names(plain), plain


def inherit_input_transform(config: TrainConfig, base_spec) -> TrainConfig:
    """A fine-tuning config whose unset input transform is the base model's: image side (where the data set
    is resized at all, as Imagenette is), crop_pct and interpolation. Set ones are kept: `--image-size 160`
    fine-tunes a 128-px model at 160 px."""
    resized = "image_size" in DATA_DEFAULTS.get(str(config.data).lower(), {})
    return replace(
        config,
        image_size=config.image_size or (base_spec.input_size[-1] if resized else None),
        crop_pct=config.crop_pct if config.crop_pct is not None else (base_spec.crop_pct or 1.0),
        interpolation=config.interpolation or base_spec.interpolation or "bilinear",
    )


def _initial_model(config: TrainConfig, model: Classifier, classes, input_size) -> Classifier:
    """`model`, the checkpoint `config.init_from` names, made ready to fine-tune: same classes and architecture
    as the run. Its spec takes this run's eval transform (`input_size`, crop_pct, interpolation): a model
    fine-tuned at another resolution (e.g. 128 -> 160 px) is fed as it was last trained.
    """
    if list(model.spec.class_labels) != list(classes):
        raise ValueError(f"{config.init_from} classifies {', '.join(model.spec.class_labels)}, but {config.data} has "
                         f"{', '.join(classes)}: fine-tune a model of this data set")
    width = model.spec.arch_kwargs.get("width")
    if model.spec.architecture != config.architecture or (config.width is not None and width != config.width):
        raise ValueError(f"{config.init_from} is a {model.spec.architecture} (width {width}), but this run trains "
                         f"{config.architecture} (width {config.width}): pass the same --arch and --width")
    model.spec.metrics = {}  # measured again every epoch; the recipe records init_from
    model.spec.input_size = input_size
    model.spec.crop_pct, model.spec.interpolation = config.crop_pct, config.interpolation
    return model


def _train(config, out_dir, data_root, download, resume, device, progress, on_epoch) -> Classifier:
    base = None
    if config.init_from is not None:
        from .models import load_model

        base = load_model(config.init_from, device=device)
        config = inherit_input_transform(config, base.spec)
    train_set, val_set, classes, plain = _load_data(config, data_root, download)
    state_path = out_dir / STATE_FILE
    if resume:
        if not (is_checkpoint_dir(out_dir) and state_path.is_file()):
            raise FileNotFoundError(f"nothing to resume in {out_dir}: it needs config.json, model.safetensors and {STATE_FILE}")
        saved = read_config(out_dir)
        saved_recipe = saved.get("training", {}).get("config", {})
        if saved.get("architecture") != config.architecture or saved_recipe.get("width") != config.width:
            raise ValueError(
                f"{out_dir} holds a {saved.get('architecture')} (width {saved_recipe.get('width')}) checkpoint, "
                f"but this run trains {config.architecture} (width {config.width}): resume with the same architecture"
            )
        model = load_checkpoint(out_dir, map_location=device)
    elif config.init_from is not None:
        model = _initial_model(config, base, classes, input_size=tuple(plain[0][0].shape))
    else:
        mean, std = channel_stats(plain, n=min(5000, config.train_limit or 5000))  # smoke runs: fewer
        sample, _ = plain[0]
        arch_kwargs = {"width": config.width} if config.width is not None else {}
        spec = ModelSpec(
            architecture=config.architecture, num_classes=len(classes), class_labels=classes, mean=mean, std=std,
            input_size=tuple(sample.shape), arch_kwargs=arch_kwargs, crop_pct=config.crop_pct,
            interpolation=config.interpolation,
        )
        model = Classifier(build_network(spec), spec).to(device)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    net = model
    if distributed.is_distributed():
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    if distributed.is_distributed():
        sampler = DistributedSampler(train_set, shuffle=True, seed=config.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
    if len(loader) == 0:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than one batch of {config.batch_size}")
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.schedule, config.epochs * len(loader)))
    start_epoch, wall_before, history = 0, 0.0, []
    attack = _make_attack(config, model, device)
    if resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, wall_before = int(state["epoch"]), float(state["wall_seconds"])
        history = json.loads(state["history"])
        _restore_random_states(state, device, attack, sampler, out_dir)
        logger.info("resuming %s at epoch %d", out_dir, start_epoch + 1)

    eval_set = datasets.first(val_set, min(config.eval_subset, len(val_set)), "validation split")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        else:
            sampler.generator.manual_seed(config.seed * 1000 + epoch)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        for x, y in progress_bar(loader, desc=f"epoch {epoch + 1}/{config.epochs} ({config.mode})",
                                 progress=progress and distributed.is_main()):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if attack is not None:
                x = attack(x, y)  # eval-mode attack; the model's train mode is restored
            with autocast:
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals += torch.tensor([float(loss.detach()) * len(y), float((logits.argmax(1) == y).sum()), len(y)], dtype=torch.float64)
        loss_sum, correct, count = distributed.reduce_sums(totals.tolist(), device)
        _share_buffers(model)
        check = evaluate_robustness(model, eval_set, eps=config.eps, norm=config.norm, steps=config.eval_steps,
                                    batch_size=256, progress=False)
        model.train()
        row = {
            "epoch": epoch + 1, "loss": loss_sum / count, "train_accuracy": correct / count,
            "val_clean_accuracy": check["clean_accuracy"], "val_pgd_accuracy": check["pgd_accuracy"],
            "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started + wall_before,
        }
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"the training loss became {row['loss']} at epoch {epoch + 1}: lower the learning rate")
        history.append(row)
        best = _is_best(config, history)
        random_states = _gather_random_states(_random_states(device, attack, sampler))
        if distributed.is_main():
            _write_epoch(model, config, out_dir, classes, history, device, optimizer, scheduler, epoch, row, eval_set,
                         random_states, best)
            logger.info("epoch %d: %s", epoch + 1, json.dumps(row))
        if on_epoch is not None:
            on_epoch(row)
        distributed.barrier()
    return model.eval()


def _is_best(config: TrainConfig, history: list) -> bool:
    """Whether the last epoch of `history` has the best validation PGD accuracy so far (ties: the later)."""
    if not (config.keep_best and config.mode in ("pgd", "fast")):
        return False
    return history[-1]["val_pgd_accuracy"] >= max(row["val_pgd_accuracy"] for row in history)


def _write_epoch(model, config, out_dir, classes, history, device, optimizer, scheduler, epoch, row, eval_set,
                 random_states, best: bool = False) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.spec.training = {
        "config": asdict(config), "data": {"name": str(config.data), "classes": classes, "split": "train minus val",
                                           "val_size": config.val_size, "train_limit": config.train_limit,
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
    _atomic_save({
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
        "wall_seconds": row["seconds"], "history": json.dumps(history),
        "rng": random_states[0]["cpu"],  # the only random state of files from before "random_states"
        "random_states": random_states,  # per rank: cpu, cuda, attack and sampler generator states
    }, out_dir / STATE_FILE)
    with open(out_dir / LOG_FILE, "a") as log:
        log.write(json.dumps(row) + "\n")
