"""The training recipe (`TrainConfig`) and the learning-rate schedules it names.

A recipe is everything that decides the trained model: data and split, architecture, mode and threat model,
optimiser, schedule, augmentation, seeds. It is stored whole in the checkpoint's config.json, so a run can be
resumed, compared or repeated from its checkpoint alone.
"""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Sequence, Tuple

from .. import data as datasets
from ..models.checkpoint import check_architecture

MODES = ("standard", "pgd", "fast", "quasi", "reject", "trades", "weat")
MULTI_STEP_MODES = ("pgd", "reject", "trades", "weat")  # the modes whose training attack takes `attack_steps` steps
DIVERGENCE_MODES = ("trades", "weat")  # TRADES and WEAT: DivergencePGD's point, the KL term (losses.py)
REJECT_ATTACKS = ("confident", "pgd")  # what makes "reject" mode's x*: ConfidentPGD, or PGD on the cross-entropy
SCHEDULES = ("onecycle", "cosine", "multistep")
OPTIMIZERS = ("sgd", "adam")
# Quasi-robust budget. MAGIC (AAAI 2023) uses L2 eps 0.05 on ImageNet, 1/60 of the usual robust
# radius 3.0 there; we keep 0.05, which on 32x32 CIFAR is 1/10 of the usual robust L2 radius 0.5
# (per-pixel RMS 0.05/sqrt(3072) = 0.23/255, below 8-bit quantisation): small enough that clean
# accuracy stays near standard, large enough to change the gradients on a small model.
QUASI_NORM, QUASI_EPS = "l2", 0.05
# the largest seed: its derived seeds (seed * 1000 + epoch, for the data order) stay far inside the 64 bits torch
# takes, and a JSON reader's float holds it exactly
MAX_SEED = 2**53
# Per data set defaults of the recipe. Imagenette: 128-px inputs (random resized crops in training; at eval time the short side resized to
# 128 / 0.875 = 146 and the centre 128 cropped), so that a CPU can train it (checkpoints/README.md).
DATA_DEFAULTS = {
    "imagenette": dict(image_size=128, crop_pct=0.875),
}


def data_defaults(data) -> dict:
    """The recipe's defaults for the data set `data` names, however spelled ("imagenette", or its folder under the
    data root: the same data set, read the same way)."""
    return DATA_DEFAULTS.get(datasets.canonical_data(data), {})


def unused_settings(mode: str, schedule: str, optimizer: str = "sgd") -> Tuple[str, ...]:
    """The recipe settings that a run of `mode`, `schedule` and `optimizer` does not use: the milestones of another
    schedule than multistep, SGD's momentum with Adam, TRADES' beta outside trades and weat, the reject_ settings
    outside reject, a number of attack steps outside the multi-step modes, an attack step size in standard training
    (which runs no attack)."""
    return tuple(name for name, used in (
        ("milestones", schedule == "multistep"), ("momentum", optimizer == "sgd"),
        ("trades_beta", mode in DIVERGENCE_MODES),
        ("attack_steps", mode in MULTI_STEP_MODES), ("attack_step_size", mode != "standard"),
        *((name, mode == "reject") for name in ("reject_cap", "reject_weight", "reject_adversarial_share",
                                               "reject_attack"))) if not used)


@dataclass
class TrainConfig:
    """The full training recipe; it is stored in the checkpoint's config.json."""

    data: str = "cifar10"
    architecture: str = "resnet10_cifar"
    width: Optional[int] = None  # for robgen's CIFAR ResNets; None = the architecture's default
    mode: str = "standard"
    # threat model for training (adversarial modes) and per-epoch evaluation. None: L-inf 8/255, or for the "quasi"
    # mode with neither set L2 `QUASI_EPS`; a budget set explicitly is kept in every mode, an eps alone is L-inf
    norm: Optional[str] = None
    eps: Optional[float] = None
    attack_steps: int = 7  # "pgd", "reject", "trades" and "weat" modes
    attack_step_size: Optional[float] = None  # default: 2.5·eps/steps (those four), 1.25·eps ("fast", "quasi")
    # "reject" mode (losses.py): at the attack's point, the most likely wrong class is trained below probability
    # `reject_cap`, with weight `reject_weight` beside the cross-entropy; `reject_adversarial_share` of that
    # cross-entropy is taken at the attack's point instead of the clean image (0: all clean; 1: adversarial training)
    reject_cap: float = 0.25
    reject_weight: float = 1.0
    reject_adversarial_share: float = 0.0
    # the attack that makes x*: "confident" (ConfidentPGD, toward the most confident mistake: what the reject option
    # must hold down) or "pgd" (PGD on the cross-entropy: adversarial training's own point, the cap then at it)
    reject_attack: str = "confident"
    # "trades" and "weat" modes (losses.py): the clean cross-entropy plus `trades_beta` times KL(p(x) || p(x*)), x*
    # the point of the ball farthest from the clean prediction (Zhang et al. 2019; their CIFAR-10 beta is 6)
    trades_beta: float = 6.0
    epochs: int = 30
    batch_size: int = 128  # per process
    optimizer: str = "sgd"  # "sgd": SGD with Nesterov momentum; "adam": Adam (weight decay as an L2 term, as torch's)
    lr: float = 0.1
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    # "onecycle" / "cosine" are stepped every iteration; "multistep" multiplies the rate by 0.1 at the start of each
    # epoch in `milestones` (torch's MultiStepLR stepped per epoch; the official CIFAR-10 recipe: 30, 80)
    schedule: str = "onecycle"
    milestones: Tuple[int, ...] = (30, 80)
    # Training-time augmentation: "crop-flip" (reflect-padded random crop, or random resized crop above 64 px, and
    # a horizontal flip), "flip" (horizontal flip only: the official CIFAR-10 recipe), "none"
    augment: str = "crop-flip"
    label_smoothing: float = 0.0
    # held out of train; None: data.default_val_size (Imagenette 500, else 5000), or, fine-tuning a model trained
    # on this data, the base's split (its size and seed: preparation.inherit_validation_split)
    val_size: Optional[int] = None
    eval_subset: int = 500  # first N validation images for the per-epoch PGD accuracy
    eval_steps: int = 10
    train_limit: Optional[int] = None  # first N training images only (tests, smoke runs)
    # The input transform. None: fine-tuning (init_from) keeps the base model's; otherwise the data set's default
    # (DATA_DEFAULTS), else the images' own size, crop_pct 1 and bilinear.
    image_size: Optional[int] = None  # input side
    crop_pct: Optional[float] = None  # eval transform: resize the short side to image_size / crop_pct, centre-crop
    interpolation: Optional[str] = None  # resampling filter of the eval resize and of the training crops
    seed: int = 0  # weights' initialisation, data order, attacks' random starts
    split_seed: Optional[int] = None  # the held-out validation split's seed; None: `seed` (fine-tuning: the base's).
    # Give 0 to a second seed's run to hold out the split every robgen evaluation uses (data.train_val_split(..., seed=0))
    workers: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA
    # None: on CUDA only. On the CPU (torch 2.14, 2 cores shared with another job) channels-last train steps
    # took 0.62-0.86x the time at widths 4, 16 and 32; measure on a quiet machine before making it the default
    channels_last: Optional[bool] = None
    # "pgd" / "fast" only: also keep the epoch with the best PGD accuracy on the validation subset in
    # <out>/best/ (the guard against catastrophic overfitting of fast adversarial training, Wong et al. 2020)
    keep_best: bool = True
    # Every N epochs also keep that epoch's checkpoint in <out>/epochs/epoch-NNN/ (0: none), e.g. to measure a
    # detector along one run
    snapshot_every: int = 0
    init_from: Optional[str] = None  # start from this checkpoint's weights and spec (fine-tuning), not at random
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._plain_numbers()
        if self.init_from is None:  # fine-tuning fills these from the base model (inherit_input_transform)
            defaults = {"crop_pct": 1.0, "interpolation": "bilinear", **data_defaults(self.data)}
            for name, value in defaults.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        if self.val_size is None and self.init_from is None:  # fine-tuning holds out its base's (see preparation)
            self.val_size = datasets.default_val_size(self.data)
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1] (1: no margin, 0.875: ImageNet's), got {self.crop_pct}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):  # before any image is read (CLI: --image-size)
            raise ValueError(f"image_size (the input side in pixels) must be a whole number >= 1, got "
                             f"{self.image_size!r}")
        if self.train_limit is not None and (isinstance(self.train_limit, bool) or not isinstance(self.train_limit, int)
                                             or self.train_limit < 1):
            raise ValueError(f"train_limit (the first N training images) must be a whole number >= 1, got "
                             f"{self.train_limit!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown training mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.init_from is None:  # before the data load (channel statistics over 5,000 images), not after it
            check_architecture(self.architecture, {"width": self.width} if self.width is not None else None)
        quasi = self.mode == "quasi"
        if self.norm is None:  # an eps alone is L-inf, as it always was (the shipped quasi models: L-inf 2/255)
            self.norm = QUASI_NORM if quasi and self.eps is None else "linf"
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}: choose linf or l2")
        if self.eps is None:
            if quasi and self.norm != QUASI_NORM:
                raise ValueError(f"the quasi mode's default budget is {QUASI_NORM.upper()} {QUASI_EPS}: give an "
                                 f"{self.norm} eps for it (e.g. --eps 1/255), or leave --norm out")
            if not quasi and self.norm != "linf":  # 8/255 is an L-inf radius (standard mode: its per-epoch check's)
                whose = "the per-epoch check's" if self.mode == "standard" else f"the {self.mode} mode's"
                raise ValueError(f"{whose} default budget is L-inf 8/255, a tiny {self.norm.upper()} radius (the "
                                 "usual CIFAR-10 L2 one is 0.5): give an eps for it (e.g. --eps 0.5)")
            self.eps = QUASI_EPS if quasi else 8 / 255
        for name in ("eps", "attack_step_size"):
            value = getattr(self, name)
            if self.norm == "linf" and value is not None and value > 1:  # 300/255 is no 0-255 value to divide again
                fix = f"use {value:g}/255" if float(value).is_integer() else "give at most 1 (= 255/255)"
                raise ValueError(f"L-inf {name}={value:g} is above the whole pixel range; pixels are in [0, 1]: {fix}")
        if self.attack_step_size is not None and not self.attack_step_size > 0:
            raise ValueError(f"attack_step_size must be > 0, got {self.attack_step_size}")
        if not 0 <= self.seed <= MAX_SEED:  # (see MAX_SEED)
            raise ValueError(f"seed must be a whole number in [0, 2**53], got {self.seed}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.augment not in datasets.AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augment!r}: choose from {', '.join(datasets.AUGMENTATIONS)}")
        self.milestones = tuple(int(m) for m in self.milestones)
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {list(self.milestones)}")
        for name in ("epochs", "batch_size", "attack_steps", "eval_steps", "eval_subset"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.reject_cap < 1:
            raise ValueError(f"reject_cap is a probability in (0, 1), e.g. 0.25, got {self.reject_cap}")
        if self.reject_weight < 0:
            raise ValueError(f"reject_weight must be >= 0, got {self.reject_weight}")
        if not 0 <= self.reject_adversarial_share <= 1:
            raise ValueError(f"reject_adversarial_share is a share in [0, 1], got {self.reject_adversarial_share}")
        if self.reject_attack not in REJECT_ATTACKS:
            raise ValueError(f"unknown reject attack {self.reject_attack!r}: choose from {', '.join(REJECT_ATTACKS)}")
        not_finite = [f"{name}={value}" for name, value in vars(self).items()
                      if isinstance(value, float) and not math.isfinite(value)]
        if not_finite:  # NaN passes every "< 0" check below and ends an epoch later as "the loss became nan"
            raise ValueError(f"{', '.join(not_finite)}: every number of a recipe must be finite")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ValueError(f"weight_decay and momentum must be >= 0, got {self.weight_decay} and {self.momentum}")
        if self.trades_beta < 0:
            raise ValueError(f"trades_beta must be >= 0 (TRADES' CIFAR-10 value: 6), got {self.trades_beta}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing is a probability in [0, 1), e.g. 0.1, got {self.label_smoothing}")
        # a setting of another mode or schedule, set away from its default, would be ignored yet recorded in the
        # recipe as if used: refused
        unused = [name for name in unused_settings(self.mode, self.schedule, self.optimizer)
                  if getattr(self, name) != type(self).__dataclass_fields__[name].default]
        if unused:
            raise ValueError(f"{', '.join(unused)} would be ignored by --mode {self.mode} --schedule {self.schedule} "
                             f"--optimizer {self.optimizer} (milestones belong to --schedule multistep, momentum to "
                             "--optimizer sgd, trades_beta to --mode trades or weat, the "
                             "reject_ settings to --mode reject, attack_steps to --mode pgd, reject, trades or weat, "
                             "attack_step_size to every mode but standard): leave them out")

    def _plain_numbers(self) -> None:
        """numpy's and torch's numbers (a sweep's values) as Python's own: accepted as they were, they trained an
        epoch and then stopped the run where its recipe is written as JSON ("Object of type float32 is not JSON
        serializable"). A whole-number setting given a fraction is refused."""
        for name, kind in (("float", float), ("int", int)):
            for field_ in fields(self):
                value = getattr(self, field_.name)
                if field_.type not in (name, f"Optional[{name}]") or value is None or type(value) is kind:
                    continue
                if isinstance(value, bool) or isinstance(value, str):
                    raise ValueError(f"{field_.name} must be a number, got {value!r}")
                try:
                    setattr(self, field_.name, float(value) if kind is float else operator.index(value))
                except (TypeError, ValueError):
                    raise ValueError(f"{field_.name} must be a {'number' if kind is float else 'whole number'}, "
                                     f"got {value!r}") from None
        for name in ("data", "init_from"):  # a pathlib.Path, as load_dataset and load_model take one: as text
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as error:
            raise ValueError(f"extra is written into the checkpoint's config.json, so it must hold what JSON can "
                             f"(text, numbers, lists, dicts): {error}") from None

    @property
    def step_size(self) -> float:
        if self.attack_step_size is not None:
            return self.attack_step_size
        return 2.5 * self.eps / self.attack_steps if self.mode in MULTI_STEP_MODES else 1.25 * self.eps


def lr_factor(schedule: str, total: int, steps_per_epoch: int = 1,
              milestones: Sequence[int] = ()) -> Callable[[int], float]:
    """Learning-rate multiplier per iteration (`total` iterations in all).

    - "onecycle": rises linearly over the first quarter and falls linearly to 0 (the triangle of Wong et al. 2020);
    - "cosine": decays from 1 to 0;
    - "multistep": 0.1 ** (the milestones reached), a milestone m taking effect from epoch m + 1 on (iteration
      m · steps_per_epoch), as torch's MultiStepLR stepped once per epoch.
    """
    if schedule == "multistep":
        boundaries = [m * steps_per_epoch for m in milestones]
        return lambda step: 0.1 ** sum(step >= b for b in boundaries)
    warm = max(1, total // 4)
    if schedule == "onecycle":
        return lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
