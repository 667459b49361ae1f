"""Training standard, adversarially robust and quasi-robust classifiers.

    from robgen.training import TrainConfig, train
    model = train(TrainConfig(data="cifar10", mode="fast", eps=8/255, epochs=20), "runs/robust")

One concern a module:
- `config.py`: the recipe (`TrainConfig`: modes "standard", "pgd", "fast", "quasi", "reject", "trades",
  "weat"; optimiser,
  schedule, augmentation) and the learning-rate schedules;
- `preparation.py`: the data splits and the initial model (fresh, or a checkpoint to fine-tune);
- `adversarial.py`: the adversarial examples the robust, quasi-robust, reject and TRADES / WEAT modes train on;
- `losses.py`: what a training step minimises (the cross-entropy; "reject": a reject option's objective;
  "trades": TRADES' clean cross-entropy plus the divergence at the attacked point; "weat": the same, weighted);
- `loop.py`: the epochs, the per-epoch validation check, `train`;
- `checkpointing.py`: what each epoch writes (checkpoint, best/ and snapshot copies, trainer state, log) and
  how a run resumes.
"""

from .checkpointing import BEST_DIR, LOG_FILE, SNAPSHOT_DIR, STATE_FILE, snapshot_folder
from .config import DATA_DEFAULTS, MODES, OPTIMIZERS, QUASI_EPS, QUASI_NORM, SCHEDULES, TrainConfig, lr_factor
from .loop import train
from .preparation import channel_stats, inherit_input_transform, inherit_validation_split

__all__ = [
    "BEST_DIR", "DATA_DEFAULTS", "LOG_FILE", "MODES", "OPTIMIZERS", "QUASI_EPS", "QUASI_NORM", "SCHEDULES",
    "SNAPSHOT_DIR", "STATE_FILE", "TrainConfig", "channel_stats", "inherit_input_transform", "inherit_validation_split",
    "lr_factor",
    "snapshot_folder", "train",
]
