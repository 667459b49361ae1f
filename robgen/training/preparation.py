"""What a training run starts from: its data splits and its initial model.

The training split is the data set's train split minus a seeded validation split (held out, recorded in the
checkpoint, and used by every later robgen evaluation of the model). The initial model is a fresh network
(normalised by the training images' channel statistics), or, with `init_from`, a trained checkpoint to
fine-tune, which keeps its input transform unless the recipe sets another, and holds out the validation split
its base held out (another split would hold out images the base was trained on).
"""

from __future__ import annotations

from dataclasses import replace

from .. import data as datasets
from ..models import Classifier, ModelSpec
from ..models.checkpoint import build_network
from .config import TrainConfig, data_defaults


def channel_stats(dataset, n: int = 5000, batch_size: int = 500):
    """Per-channel mean and std of the first `n` images (for the model's normalisation)."""
    x, _ = datasets.load_tensors(dataset, min(n, len(dataset)), batch_size)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def load_data(config: TrainConfig, data_root, download: bool, channels: int = 3, crop_mode: str = "center"):
    """(training split with the recipe's augmentation, validation split, class names, the training split without
    augmentation), images of `channels` channels (a grayscale model's fine-tune: 1), resized by `crop_mode` (a
    fine-tuned timm model that squashes its images is validated on squashed ones, as its spec reads them)."""
    size = config.image_size
    if size is None and config.crop_pct not in (None, 1.0):  # a crop margin on images kept at their own size:
        # resize and crop them as the model's eval transform will (its spec records this crop_pct), not raw
        raw = datasets.load_dataset(config.data, "train", root=data_root, download=download,
                                    transform=datasets.pixel_transform(None))
        size = int(raw[0][0].shape[-1])
    how = dict(crop_pct=config.crop_pct, interpolation=config.interpolation, channels=channels, crop_mode=crop_mode)
    augmented = datasets.load_dataset(config.data, "train", root=data_root, download=download,
                                      transform=datasets.pixel_transform(size, train=True, augment=config.augment, **how))
    plain = datasets.load_dataset(config.data, "train", root=data_root, download=download,
                                  transform=datasets.pixel_transform(size, **how))
    split_seed = config.seed if config.split_seed is None else config.split_seed
    train_part, _ = datasets.train_val_split(augmented, config.val_size, seed=split_seed)
    plain_train, val = datasets.train_val_split(plain, config.val_size, seed=split_seed)
    if config.train_limit is not None:
        train_part = datasets.first(train_part, config.train_limit, "training split")
        plain_train = datasets.first(plain_train, config.train_limit, "training split")
    return train_part, val, datasets.class_names(plain), plain_train


def inherit_input_transform(config: TrainConfig, base_spec) -> TrainConfig:
    """A fine-tuning config whose unset input transform is the base model's: image side (where the data set
    is resized at all, as Imagenette is, or the base was trained on it at a size of its own), crop_pct and
    interpolation. Set ones are kept: `--image-size 160`
    fine-tunes a 128-px model at 160 px."""
    resized = "image_size" in data_defaults(config.data)
    training = base_spec.training if isinstance(base_spec.training, dict) else {}
    if datasets.recorded_val_size(base_spec, config.data) is not None and (training.get("config") or {}).get(
            "image_size"):  # a base trained on this folder at a size of its own: fine-tuned at it, not at the files'
        resized = True
    return replace(
        config,
        image_size=config.image_size or (base_spec.input_size[-1] if resized else None),
        crop_pct=config.crop_pct if config.crop_pct is not None else (base_spec.crop_pct or 1.0),
        interpolation=config.interpolation or base_spec.interpolation or "bilinear",
    )


def inherit_validation_split(config: TrainConfig, base_spec) -> TrainConfig:
    """A fine-tuning config that holds out the validation split its base model held out of the same data set
    (its seed and size), so that the per-epoch checks, `best/` and every later evaluation score images neither
    model was trained on. A smaller `val_size` is a part of that split (the same seeded order); another seed or a
    larger size is refused. A base not trained on this data set: the split of a fresh run."""
    recorded = datasets.recorded_val_size(base_spec, config.data)
    if recorded is None:
        return replace(config, val_size=config.val_size or datasets.default_val_size(config.data))
    seed = datasets.model_split_seed(base_spec, config.data)
    if config.split_seed is not None and config.split_seed != seed:
        raise ValueError(f"{config.init_from} held out the validation split of seed {seed}; split seed "
                         f"{config.split_seed} would hold out images it was trained on: leave --split-seed out")
    if config.val_size is not None and config.val_size > recorded:
        raise ValueError(f"{config.init_from} held out {recorded} validation images; {config.val_size} would hold "
                         f"out images it was trained on: give --val-size {recorded} or less, or leave it out")
    return replace(config, split_seed=seed, val_size=config.val_size or recorded)


def fresh_model(config: TrainConfig, plain, classes) -> Classifier:
    """A network of the recipe's architecture at random initialisation, normalised by the channel statistics of
    `plain`, the training images (validation images left out) without augmentation."""
    mean, std = channel_stats(plain, n=5000)  # the first 5,000 (smoke runs with train_limit: those)
    sample, _ = plain[0]
    arch_kwargs = {"width": config.width} if config.width is not None else {}
    spec = ModelSpec(
        architecture=config.architecture, num_classes=len(classes), class_labels=classes, mean=mean, std=std,
        input_size=tuple(sample.shape), arch_kwargs=arch_kwargs, crop_pct=config.crop_pct,
        interpolation=config.interpolation,
    )
    return Classifier(build_network(spec), spec)


def model_to_fine_tune(config: TrainConfig, model: Classifier, classes, input_size) -> Classifier:
    """`model`, the checkpoint `config.init_from` names, made ready to fine-tune: same classes and architecture
    as the run. Its spec takes this run's eval transform (`input_size`, crop_pct, interpolation): a model
    fine-tuned at another resolution (e.g. 128 -> 160 px) is fed as it was last trained.
    """
    if datasets.comparable_labels(model.spec.class_labels) != datasets.comparable_labels(classes):
        raise ValueError(f"{config.init_from} classifies {', '.join(model.spec.class_labels)}, but {config.data} has "
                         f"{', '.join(classes)}: fine-tune a model of this data set")
    width = model.spec.arch_kwargs.get("width")
    if model.spec.architecture != config.architecture or (config.width is not None and width != config.width):
        raise ValueError(f"{config.init_from} is a {model.spec.architecture} (width {width}), but this run trains "
                         f"{config.architecture} (width {config.width}): pass the same --arch and --width")
    model.spec.metrics = {}  # measured again every epoch; the recipe records init_from
    # no longer the model in the base's folder: its detector.json and seeds were fitted to the base's weights
    model.spec.source = model.spec.folder = ""
    model.spec.input_size = input_size
    model.spec.crop_pct, model.spec.interpolation = config.crop_pct, config.interpolation
    return model
