"""Data sets as [0, 1] pixel tensors: CIFAR-10/100, Imagenette, any ImageFolder.

Online, torchvision downloads the originals (`download=True`). Offline, point
robgen at a folder holding them (`root=...`, the CLI's `--data-root`, or the
`ROBGEN_DATA` environment variable; default `~/.cache/robgen-data`), in either
layout:
- torchvision's own (`cifar-10-batches-py/`, `imagenette2-160/`), or
- ImageFolder (`cifar10/{train,test}/<class>/*.png|jpg`).

ImageFolder lists images class by class, so the loaders here reorder them to
interleave the classes (image 0 of every class, then image 1, ...): the first
N images of a split are then class-balanced.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import inspect
import logging
import os
import re
import unicodedata
import urllib.error
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from .checks import check_steps
from .files import first_missing, remove_if_empty

F = TypeVar("F", bound=Callable)
logger = logging.getLogger(__name__)

DATA_ENV = "ROBGEN_DATA"
KNOWN = ("cifar10", "cifar100", "imagenette")
_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"), "imagenette": ("train", "val")}
# Imagenette's ten ImageNet classes: WordNet id -> the first ImageNet name (torchvision's Imagenette lists
# every synonym; robgen labels a class with its first name, whichever layout the images come in).
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute",
}


_DATA_ROOT: "contextvars.ContextVar[Optional[Path]]" = contextvars.ContextVar("robgen_data_root", default=None)


@contextlib.contextmanager
def data_root_as(root: Optional[Union[str, Path]]) -> Iterator[None]:
    """`root` as the data root of the block (None: unchanged): where named data sets are read from, and so also
    which folders are a named data set given as a path (`same_data`, `canonical_data`: a model's recorded validation
    split, Imagenette's recipe defaults). The command line's --data-root and every library call that takes
    `data_root=` (`reads_data_root`) go through it. Held in a context variable, not `$ROBGEN_DATA`: two threads'
    calls with other roots each see their own (a process-wide variable gave one thread the other's root, or none)."""
    if root is None or str(root) == "":
        yield
        return
    token = _DATA_ROOT.set(Path(root).expanduser())
    try:
        yield
    finally:
        _DATA_ROOT.reset(token)


def reads_data_root(function: F) -> F:
    """`function` run with its `data_root=` argument as the data root of the whole call (`data_root_as`): given to
    `load_dataset` alone, it read the images there while the split a model's training held out was looked up under
    the default root (a model trained on <root>/cifar10 got a validation split of images it trained on)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with data_root_as(signature.bind_partial(*args, **kwargs).arguments.get("data_root")):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def default_data_root(root: Optional[Union[str, Path]] = None) -> Path:
    """`root`, else the call's (`data_root_as`), else `$ROBGEN_DATA`, else `~/.cache/robgen-data`."""
    if root is not None:
        return Path(root).expanduser()
    if _DATA_ROOT.get() is not None:  # the call's data root (`data_root_as`)
        return _DATA_ROOT.get()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "robgen-data"


AUGMENTATIONS = ("crop-flip", "flip", "none")  # what `pixel_transform(train=True, augment=...)` does in training


def pixel_transform(image_size: Optional[Union[int, Tuple[int, int]]] = None, train: bool = False,
                    crop_pct: float = 1.0, interpolation: str = "bilinear", augment: str = "crop-flip",
                    channels: int = 3, crop_mode: str = "center"):
    """PIL image -> float tensor in [0, 1], as a model of input side `image_size` sees it ((height, width): a
    non-square one, evaluation only) and of `channels` input channels (1: the luma of the RGB picture, last).

    Evaluation (`train=False`) is timm's eval transform, the one `robgen.load_image`
    applies to a single file: resize the short side to image_size / crop_pct with
    `interpolation`, centre-crop image_size (no resize when `image_size` is None).
    `train=True` adds the training augmentation `augment`: "crop-flip", the standard one
    (a reflect-padded random crop for small images (<= 64 px), a random resized crop for
    larger ones, and a horizontal flip); "flip", a horizontal flip of the eval transform's
    image (the official CIFAR-10 recipe); "none", the eval transform alone.
    """
    from torchvision import transforms as T

    from .images import check_channels

    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}: choose from {', '.join(AUGMENTATIONS)}")
    if train and image_size is not None and not isinstance(image_size, int):
        raise ValueError(f"training takes a square image size (one side), got {image_size}")
    steps = []
    if train and augment == "crop-flip":
        if image_size is None or image_size <= 64:
            if image_size is not None:  # the whole picture (crop_pct 1), squashed where the model's eval squashes
                steps += [_EvalResize(image_size, 1.0, interpolation, crop_mode)]
            steps += [_PadRandomCrop()]
        else:
            steps += [T.RandomResizedCrop(image_size, scale=(0.35, 1.0), interpolation=_torchvision_mode(interpolation))]
    elif image_size is not None:
        steps += [_EvalResize(image_size, crop_pct, interpolation, crop_mode)]
    if train and augment != "none":
        steps += [T.RandomHorizontalFlip()]
    if check_channels(channels) != 3:
        steps += [_Channels(channels)]
    steps.append(T.ToTensor())
    return T.Compose(steps)


def eval_transform(spec):
    """The eval transform of the model `spec` describes (its input size, crop_pct and interpolation): the pixels
    `images.load_model_input` gives a file, a non-square input's height and width both."""
    channels, height, width = spec.input_size
    size = height if height == width else (height, width)
    return pixel_transform(size, crop_pct=spec.crop_pct, interpolation=spec.interpolation, channels=channels,
                           crop_mode=spec.crop_mode)


class _EvalResize:
    """`images.resize_and_crop` as a transform step (one implementation for files and data sets)."""

    def __init__(self, size: Union[int, Tuple[int, int]], crop_pct: float, interpolation: str,
                 crop_mode: str = "center") -> None:
        self.size, self.crop_pct, self.interpolation, self.crop_mode = size, crop_pct, interpolation, crop_mode

    def __call__(self, image):
        from .images import resize_and_crop

        return resize_and_crop(image.convert("RGB"), self.size, crop_pct=self.crop_pct, interpolation=self.interpolation,
                               crop_mode=self.crop_mode)

    def __repr__(self) -> str:
        return (f"EvalResize(size={self.size}, crop_pct={self.crop_pct}, interpolation={self.interpolation!r}, "
                f"crop_mode={self.crop_mode!r})")


class _Channels:
    """`images.to_channels` as a transform step: a grayscale model's luma, as a single file gives it."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, image):
        from .images import to_channels

        return to_channels(image.convert("RGB"), self.channels)

    def __repr__(self) -> str:
        return f"Channels({self.channels})"


def _torchvision_mode(interpolation: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(interpolation.lower())


class _PadRandomCrop:
    """Reflect-pad by 1/8 of the side and crop back to the image's own size (the CIFAR augmentation)."""

    def __call__(self, image):
        from torchvision import transforms as T

        width, height = image.size
        return T.RandomCrop((height, width), padding=max(1, min(height, width) // 8), padding_mode="reflect")(image)


def load_dataset(
    name: Union[str, Path],
    split: str = "test",
    root: Optional[Union[str, Path]] = None,
    download: bool = False,
    image_size: Optional[int] = None,
    train_augment: bool = False,
    transform=None,
    spec=None,
) -> Dataset:
    """A data set yielding (pixels in [0, 1] of shape (3, H, W), label); `.classes` lists its labels (with
    `spec`, a grayscale model's: (1, H, W)).

    Args:
        name: "cifar10", "cifar100", "imagenette", or the path of an ImageFolder root: class sub-folders,
            or train/ and test/ (or val/) folders of them (`split_folder`); one without those serves as
            every split (`one_folder`: `detection_splits` splits it itself).
        split: "train" or "test" (Imagenette's "val" folder is its test split, and split="val" reads it; CIFAR's
            "val" is refused: its validation images are held out of train, `model_val_split`).
        root: where the data sets live (see module docs); ignored for a path name.
        download: let torchvision download a missing data set (needs the internet).
        image_size: resize + centre-crop to this size (Imagenette default: 160).
        spec: a model's `ModelSpec`: apply that model's eval transform (`eval_transform`), so the
            images are exactly what the model sees; overrides `image_size`.
    """
    if spec is not None and train_augment:  # the augmentation read the images at image_size, ignoring the spec
        raise ValueError("spec= reads the images as the model sees them (its eval transform) and train_augment=True "
                         "augments them for training: pass one; to augment at a model's size and channels, give "
                         "transform=pixel_transform(size, train=True, channels=...)")
    if spec is not None and transform is None:
        transform = eval_transform(spec)
    key = str(name).lower()
    if key in KNOWN:
        split = _normalise_split(key, split)
        data_root = default_data_root(root)
        if key == "imagenette" and image_size is None:
            image_size = 160
        transform = transform or pixel_transform(image_size, train_augment)
        dataset = _load_known(key, split, data_root, download, transform)
    else:
        folder = Path(name).expanduser()
        if folder.is_file():
            raise FileNotFoundError(f"{name} is a file: a data set is one of {', '.join(KNOWN)} or a folder of class "
                                    "folders (<root>/<class>/<image>), e.g. the folder an archive unpacks to")
        if not folder.is_dir():
            raise FileNotFoundError(
                f"unknown data set {str(name)!r}: use one of {', '.join(KNOWN)} or an existing ImageFolder path"
            )
        transform = transform or pixel_transform(image_size, train_augment)
        if split_layout(folder):
            check_split_classes(folder)
        else:
            refuse_splits_one_level_down(folder)
            refuse_splits_of_other_names(folder)
        read = split_folder(folder, split) or folder
        dataset = _image_folder(read, transform)
        named = canonical_data(folder)  # a named data set's own folder under the data root: read as by its name
        if named in KNOWN:
            dataset = _as_named(dataset, named, read.name.lower(), read)
    return dataset


SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val", "valid", "validation"),
                 "val": ("val", "valid", "validation", "test")}  # valid/: Kaggle's and Roboflow's name
SPLIT_NAMES = {"train", "test", "val", "valid", "validation"}


def ignored_folder(name: str) -> bool:
    """A folder an image folder's reader skips: hidden ones (.ipynb_checkpoints, .git) and the __MACOSX folder of a
    zip made on a Mac, which are neither classes nor splits."""
    return name.startswith(".") or name == "__MACOSX"


def split_layout(folder: Path) -> bool:
    """Whether an image-folder root holds split folders (train/, test/ or val/, and nothing else), not classes: a
    folder of classes may have one called "train" (CIFAR-100 does)."""
    if not folder.is_dir():
        return False
    found = False
    with os.scandir(folder) as entries:  # a class folder of many images: no stat per file, and out at the first
        for entry in entries:            # folder that is no split
            if entry.is_dir() and not ignored_folder(entry.name):
                if entry.name.lower() not in SPLIT_NAMES:
                    return False
                found = True
    return found


def refuse_splits_one_level_down(folder: Path) -> None:
    """Refuse a root of "class" folders one of which holds split folders (a zip unpacked one level too high:
    wrapped/cifar10/{train,test}): its classes would be the wrapping folders, one class of every image."""
    for path in sorted(folder.iterdir()):
        if path.is_dir() and not ignored_folder(path.name) and split_layout(path):
            splits = sorted(f"{split.name}/" for split in path.iterdir()
                            if split.is_dir() and not ignored_folder(split.name))
            raise ValueError(f"{path} holds split folders ({', '.join(splits)}), so {folder} is one level above the "
                             f"data set: point --data at {path}")


SPLIT_LIKE = re.compile(r"train|test|val", re.IGNORECASE)  # training_set, test_set, Testing, validation_data, ...


def refuse_splits_of_other_names(folder: Path) -> None:
    """Refuse a root of "class" folders that are splits by other names (Kaggle's training_set/ and test_set/, each
    holding the same class folders, maybe one level further down in a folder of its own name, and no image of its
    own): read as two classes, the labels would say which split an image is in, and a model trained on them would
    learn that. Class folders that keep their images in sub-folders (cat/images/, dog/images/) are classes: their
    names do not read as splits."""
    inner = {}
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or ignored_folder(path.name):
            continue
        if not SPLIT_LIKE.search(path.name):
            return
        names, files = _entries(path)
        if not files and names == {path.name}:  # training_set/training_set/{cats,dogs}
            names, files = _entries(path / path.name)
        if files:
            return  # an image (or any file) of its own: a class folder
        inner[path.name] = names
    if len(inner) >= 2 and all(inner.values()) and len({frozenset(names) for names in inner.values()}) == 1:
        shared = sorted(next(iter(inner.values())))
        raise ValueError(f"the folders of {folder} ({', '.join(f'{name}/' for name in inner)}) hold no image of their "
                         f"own but the same folders ({', '.join(shared[:4])}{', ...' if len(shared) > 4 else ''}): "
                         "they look like splits, not classes (read as classes, the labels would say which split an "
                         "image is in); name them train/ and test/ (or val/), or point --data at one of them")


def _entries(folder: Path) -> Tuple[set, bool]:
    """The names of `folder`'s sub-folders (not the ignored ones), and whether it holds a file of its own."""
    names = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                return names, True
            if entry.is_dir() and not ignored_folder(entry.name):
                names.add(entry.name)
    return names, False


def split_folder(folder: Path, split: str) -> Optional[Path]:
    """The sub-folder of an image-folder root with split folders (`split_layout`) that holds `split` (train/;
    test/ or val/); None for a root of class folders. A split that root lacks is an error that says so."""
    if not split_layout(folder):
        return None
    by_name = {path.name.lower(): path for path in sorted(folder.iterdir())  # Train/ and Test/ too, as split_layout
               if path.is_dir() and not ignored_folder(path.name)}            # reads them (and macOS would)
    for name in SPLIT_FOLDERS.get(str(split).lower(), (str(split),)):
        if name.lower() in by_name:
            return by_name[name.lower()]
    wanted = " or ".join(f"{name}/" for name in SPLIT_FOLDERS.get(str(split).lower(), (str(split),)))
    present = ", ".join(sorted(f"{path.name}/" for path in folder.iterdir() if path.is_dir()))
    raise FileNotFoundError(f"{folder} has {present} but no {wanted} for the {split} split: add it, or pass a folder "
                            "of class folders (it then serves as every split)")


def check_split_classes(folder: Path) -> None:
    """Refuse an image-folder root whose split folders (train/, test/, val/) hold different class folders: each
    split numbers its classes by their sorted names, so a class missing from one split shifts the label of every
    class after it there (validation images, held out of train/, scored against the wrong classes)."""
    splits = {path.name: {entry.name for entry in path.iterdir() if entry.is_dir() and not ignored_folder(entry.name)}
              for path in sorted(folder.iterdir()) if path.is_dir() and path.name.lower() in SPLIT_NAMES}
    every = set().union(*splits.values())
    lacking = {name: sorted(every - classes) for name, classes in splits.items() if every - classes}
    if lacking:
        raise ValueError(f"the split folders of {folder} hold different classes ("
                         + "; ".join(f"{name}/ lacks {', '.join(missing)}" for name, missing in lacking.items())
                         + "): labels are numbered by the sorted class folders of each split, so they would not "
                         "match; give every split the same class folders (an archive partly unpacked: unpack it again)")


def one_folder(name: Union[str, Path]) -> bool:
    """Whether `name` is a root of class folders, without train/ and test/ (or val/) split folders: it then serves
    as every split, and the callers that need disjoint splits split it themselves (`detection_splits`)."""
    if str(name).lower() in KNOWN:
        return False
    folder = Path(name).expanduser()
    return folder.is_dir() and not split_layout(folder)


def _normalise_split(key: str, split: str) -> str:
    train_name, test_name = _SPLITS[key]
    split = split.lower()
    if split in ("train",):
        return train_name
    if split == "test" or split == test_name:  # Imagenette's test images are its folder "val"
        return test_name
    if split in ("val", "validation"):  # elsewhere in robgen "validation" is the split held out of train
        raise ValueError(f"{key} has no {split!r} split of its own: its validation images are the ones a model's "
                         "training held out of 'train' (robgen.data.model_val_split(train, model.spec, data), or "
                         "train_val_split(train, n)); for its test images pass split='test'")
    raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")


KNOWN_SIZES = {("cifar10", "train"): 50000, ("cifar10", "test"): 10000, ("cifar100", "train"): 50000,
               ("cifar100", "test"): 10000, ("imagenette", "train"): 9469, ("imagenette", "val"): 3925}


def _as_named(dataset: Dataset, key: str, split: str, folder: Path) -> Dataset:
    """An image folder of the named data set `key` as robgen reads it by name, whichever way it was given:
    Imagenette's classes by name, not WordNet id; and a warning where the copy has another number of images than
    the data set (an archive partly unpacked, a file deleted): a model's validation split is a seeded draw over
    every training image, so with one missing it names other images, most of them trained on."""
    if key == "imagenette":
        dataset.classes = [IMAGENETTE_CLASSES.get(name, name) for name in dataset.classes]
    expected = KNOWN_SIZES.get((key, split))
    if expected is not None and len(dataset) != expected:
        logger.warning("%s holds %d images, not the %d of %s's %s split (an archive partly unpacked?): a model's "
                       "recorded validation split is drawn over all of them, so here it names other images, most of "
                       "them ones it trained on; unpack the archive again", folder, len(dataset), expected, key, split)
    return dataset


def _load_known(key: str, split: str, data_root: Path, download: bool, transform) -> Dataset:
    from torchvision import datasets

    image_folder = data_root / key / split
    if image_folder.is_dir():
        check_split_classes(data_root / key)  # a partly unpacked archive: a class missing from one split shifts
        dataset = _image_folder(image_folder, transform)  # every later label there, silently
        return _as_named(dataset, key, split, image_folder)
    if key in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
        pickled = data_root / ("cifar-10-batches-py" if key == "cifar10" else "cifar-100-python")
        if pickled.is_dir() or download:
            with _download_errors(key, data_root, download):
                try:
                    dataset = cls(str(data_root), train=split == "train", transform=transform, download=download)
                except RuntimeError as error:  # "Dataset not found or corrupted. You can use download=True"
                    if download:
                        raise
                    raise FileNotFoundError(f"{pickled} is incomplete or corrupt (torchvision: {error}): unpack "
                                            f"{key}'s archive there again, or pass --download (download=True) "
                                            "online") from None
            # the order an ImageFolder copy (<class>/NNNN, NNNN: the image's rank in its class) gets, so that a
            # model's recorded validation split names the same images whichever copy it is read from
            return _interleaved(dataset, dataset.targets, dataset.classes)
    else:
        folder = data_root / "imagenette2-160" / split  # torchvision's layout: it downloads, robgen reads (the same
        if not folder.is_dir() and download:  # files in the same order, the same pixels on all 13,394; its own
            with _download_errors(key, data_root, download):  # reader took a Mac's __MACOSX/ for a class)
                datasets.Imagenette(str(data_root), split=split, size="160px", download=True)
        if folder.is_dir():
            check_split_classes(folder.parent)
            return _as_named(_image_folder(folder, transform), key, split, folder)
    raise FileNotFoundError(
        f"{key} ({split}) not found under {data_root}. Online: pass download=True (CLI: --download). Offline: point "
        f"--data-root or ${DATA_ENV} at a folder holding {key}/{split}/<class>/ images"
        + (" or imagenette2-160/" if key == "imagenette" else f" or torchvision's {key} files")
        + " (e.g. unpack an archive there with tar xzf)"
    )


class DownloadError(RuntimeError):
    """A data set could not be downloaded (offline, a proxy, a server error); the message says what to do."""


@contextlib.contextmanager
def _download_errors(key: str, data_root: Path, download: bool):
    """A failed download (offline, a proxy, a server error) as an error that says what to do, not urllib's
    traceback; the data root it made for the download, left empty, is removed again."""
    made = first_missing(Path(data_root).absolute())
    try:
        yield
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        if not download:
            raise
        remove_if_empty(made)
        raise DownloadError(f"could not download {key} into {data_root} ({type(error).__name__}: {error}): check "
                            f"the connection, or unpack the data set under --data-root / ${DATA_ENV} yourself and "
                            "run without --download") from None


def read_rgb(path: str):
    """An image file of a data set decoded as `load_image` decodes an upload (`images.to_rgb`: upright, alpha on
    white, 16-bit scaled), not as torchvision's default loader (a bare convert("RGB"): alpha dropped, 16-bit
    clipped), so a folder of images and the same files one by one give the model the same pixels."""
    import struct

    from PIL import Image

    from .images import ImageError, open_image, to_rgb

    try:
        # held to an upload's limit on strips (scaled to cover the input, one makes gigapixels), not on size: a data
        # set of tiny images, or of 48-megapixel photos, is the user's (PIL's own 179-megapixel guard stays)
        with open(path, "rb") as file, open_image(file, path, min_side=1, max_pixels=None) as image:
            image.load()
            return to_rgb(image)
    except ImageError as error:  # too large or a strip: it says so, naming the file
        raise ImageError(f"{error}: remove or replace it in the data set") from None
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, struct.error,
            Image.DecompressionBombError) as error:
        # (PIL's decoders fail on corrupt files in all these ways) a run would stop part-way with PIL's bare
        # message, naming no file: say which one
        raise ImageError(f"{path} in the data set could not be read ({type(error).__name__}: {error}): remove or "
                         "replace it") from None


def _image_folder(folder: Path, transform) -> Dataset:
    from .image_folder import IMAGE_EXTENSIONS, ImageFolder  # torchvision's, without hidden folders and files

    try:
        dataset = ImageFolder(str(folder), transform=transform, loader=read_rgb)
    except (FileNotFoundError, RuntimeError) as error:
        raise FileNotFoundError(
            f"{folder} does not have the ImageFolder layout <root>/<class>/<image> with images inside "
            f"({' '.join(str(error).split())}; image files end in {', '.join(IMAGE_EXTENSIONS)})"
        ) from None
    return _interleaved(dataset, dataset.targets, dataset.classes)


class _Interleaved(Subset):
    """A reordering of a class-sorted data set that keeps its `.classes`."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], classes: List[str], targets: List[int]) -> None:
        super().__init__(dataset, list(indices))
        self.classes = list(classes)
        self.targets = [targets[i] for i in self.indices]


def _interleaved(dataset: Dataset, targets: Sequence[int], classes: List[str]) -> Dataset:
    rank_in_class, seen = [], {}
    for label in targets:
        rank_in_class.append(seen.get(label, 0))
        seen[label] = rank_in_class[-1] + 1
    order = sorted(range(len(targets)), key=lambda i: (rank_in_class[i], targets[i]))
    return _Interleaved(dataset, order, classes, list(targets))


def class_names(dataset: Dataset) -> List[str]:
    """The class labels of a data set (or of the data set a Subset draws from)."""
    while not hasattr(dataset, "classes") and isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not hasattr(dataset, "classes"):
        raise ValueError("this data set does not list its classes (no .classes attribute)")
    return list(dataset.classes)


def labels_of(dataset: Dataset) -> List[int]:
    """The label of every example, from the data set's `targets` (through Subsets) without reading an image; a data
    set that keeps no targets is read through."""
    targets = _targets(dataset)
    return targets if targets is not None else [int(label) for _, label in dataset]


def _targets(dataset: Dataset) -> Optional[List[int]]:
    if getattr(dataset, "targets", None) is not None:
        return [int(label) for label in dataset.targets]
    if isinstance(dataset, Subset):
        inner = _targets(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    return None


def default_val_size(data: Union[str, Path]) -> int:
    """Images held out of train for validation by default: the paper's 500 on Imagenette, 5,000 elsewhere."""
    return 500 if canonical_data(data) == "imagenette" else 5000


def same_data(recorded: Union[str, Path, None], data: Union[str, Path]) -> bool:
    """Whether a data set name a model's training recorded is `data`: a named data set in any case, a folder
    however spelled (trailing slash, ~, relative path), and a named data set's own folder under the data root
    (`default_data_root() / "cifar10"`) as that data set."""
    if recorded is None or str(recorded) == "":
        return False
    if str(recorded) == str(data) or (str(recorded).lower() == str(data).lower() and str(data).lower() in KNOWN):
        return True  # a folder's name in another case is another folder, unless the disk says it is the same one
    named = [str(name).lower() for name in (recorded, data) if str(name).lower() in KNOWN]
    if len(named) == 2:
        return False
    folders = [Path(str(name)).expanduser().resolve() for name in (recorded, data) if str(name).lower() not in KNOWN]
    if named:  # a named data set and a folder: the same when the folder is where that data set is read from
        return folders[0] in [folder.resolve() for folder in known_folders(named[0])]
    if folders[0] == folders[1]:
        return True
    return all(folder.exists() for folder in folders) and os.path.samefile(*folders)  # a disk that ignores case


def known_folders(name: str) -> List[Path]:
    """The image folders under the data root that a named data set is read from (`_load_known`): `<root>/<name>`,
    and for Imagenette torchvision's `<root>/imagenette2-160` too, which it reads in the same order (both
    interleaved by rank in class), so that a model's recorded validation split names the same images."""
    root = default_data_root()
    return [root / name] + ([root / "imagenette2-160"] if name == "imagenette" else [])


def canonical_data(data: Union[str, Path]) -> str:
    """One spelling per data set, for records compared as text: a named data set as its name (also when given as
    its own folder under the data root), any other folder as its absolute path."""
    if str(data).lower() in KNOWN:
        return str(data).lower()
    for name in KNOWN:
        if same_data(name, data):
            return name
    return str(Path(str(data)).expanduser().resolve())


def recorded_val_size(spec, data: Union[str, Path]) -> Optional[int]:
    """The validation split the model's training held out of `data`, None when it was not trained on `data`."""
    recorded = spec.training.get("data", {}) if isinstance(spec.training, dict) else {}
    if same_data(recorded.get("name"), data) and recorded.get("val_size"):
        return int(recorded["val_size"])
    return None


def model_val_size(spec, data: Union[str, Path]) -> int:
    """The validation split to use with a model: the one its training held out (so no validation image
    was trained on) when it was trained on `data`, else `default_val_size(data)`."""
    recorded = recorded_val_size(spec, data)
    return recorded if recorded is not None else default_val_size(data)


def model_split_seed(spec, data: Union[str, Path], default: int = 0) -> int:
    """The seed of the validation split a model's training held out of `data` (see `train_val_split`).

    Recorded as `split_seed` by training; older records hold only the run's `seed`, which then chose the
    split. `default` when the model was not trained on `data` (or records neither).
    """
    training = spec.training if isinstance(spec.training, dict) else {}
    recorded = training.get("data", {})
    if not same_data(recorded.get("name"), data):
        return default
    if recorded.get("split_seed") is not None:
        return int(recorded["split_seed"])
    seed = training.get("config", {}).get("seed")
    return default if seed is None else int(seed)


def model_val_split(train: Dataset, spec, data: Union[str, Path], val_size: Optional[int] = None,
                    default_seed: int = 0) -> Tuple[Subset, Subset]:
    """`train` split into (the rest, the validation images) as the model's training split it: its recorded
    size (or `val_size`) and seed (`model_split_seed`; `default_seed` for a model not trained on `data`), so
    no validation image was trained on."""
    recorded = recorded_val_size(spec, data)
    if recorded is not None:  # the split is a seeded draw over every training image: another count, other images
        images = (spec.training.get("data") or {}).get("train_images")
        if images is not None and int(images) != len(train):
            raise ValueError(f"the model's training drew its validation split from {images} images of {data}'s "
                             f"training split, and this copy has {len(train)}: the same seed here names other images, "
                             "most of them trained on; read the copy it was trained on (an archive partly unpacked: "
                             "unpack it again)")
    if val_size is None:
        val_size = model_val_size(spec, data)
    elif recorded is not None and val_size > recorded:  # a smaller one is part of it: the same seeded order
        raise ValueError(f"val_size {val_size} is larger than the {recorded} images the model's training held out of "
                         f"{data}: the rest were trained on; use at most {recorded} (or leave it out)")
    return train_val_split(train, val_size, seed=model_split_seed(spec, data, default=default_seed))


def _prefixed(labels: Sequence[str]) -> str:
    """The folder names that keep `labels` in order when sorted as text: "00_airplane, 01_automobile, ..."."""
    width = len(str(len(labels) - 1))
    return ", ".join(f"{str(i).zfill(width)}_{label}" for i, label in enumerate(labels[:3])) + ", ..."


def _without_order_prefix(data, classes: Sequence[str]) -> List[str]:
    """Class folder names without the index prefix that puts them in the model's order ("03_cat" -> "cat"), when
    every folder has one and, sorted as the folders are, they run 0, 1, 2, ...; `classes` as they are otherwise.
    Prefixes that sort out of order (1_, 10_, 2_, ...: numbers sorted as text) are refused, saying how to pad."""
    found = [re.fullmatch(r"(\d+)_(.+)", name) for name in classes]
    if len(classes) < 2 or not all(found):
        return list(classes)
    numbers = [int(match.group(1)) for match in found]
    if numbers == list(range(len(classes))):
        return [match.group(2) for match in found]
    raise ValueError(f"the class folders of {data} carry index prefixes ({', '.join(classes[:4])}, ...) that do not "
                     "run 0, 1, 2, ... as the folders sort (as text: 10_ before 2_), so labels would be mixed up; pad "
                     f"them with zeros: {_prefixed([match.group(2) for match in sorted(found, key=lambda m: int(m.group(1)))])}")


def comparable_labels(labels: Sequence[str]) -> List[str]:
    """Class labels as two spellings of one class compare: Imagenette's WordNet ids (its folders' names) as its
    class names, in lower case, "_" as " " (french_horn), and in Unicode's composed form (NFC: a folder unpacked from
    a Mac's zip names "é" as "e" and an accent, NFD, which compares as another text)."""
    return [unicodedata.normalize("NFC", IMAGENETTE_CLASSES.get(label, label)).lower().replace("_", " ")
            for label in labels]


def check_model_matches(spec, data: Union[str, Path], classes: Sequence[str], by_name: bool = False) -> None:
    """Refuse a data set that is not the one the model of `spec` classifies, saying which it needs.

    Checked: the number of classes, the data set the model was trained on (when its spec
    records one of the named data sets), and, for named data sets, the class labels. `by_name`: a folder's class
    names too must be the model's labels (where the model's labels are names, not "class i"), for what is fitted
    to the classes themselves (seeds, a detector's calibration), where a folder of other names is other data.
    """
    named = canonical_data(data)  # a named data set's own folder too
    key = named if named in KNOWN else str(data).lower()
    named_in_order = _without_order_prefix(data, classes)
    ordered = named_in_order != list(classes)  # index prefixes put the folders in the model's order
    classes = named_in_order
    if len(classes) != spec.num_classes:
        raise ValueError(f"the model has {spec.num_classes} classes but {data} has {len(classes)}: "
                         "pick a model trained on this data set")
    trained_on = str(spec.training.get("data", {}).get("name") or spec.training.get("config", {}).get("data") or "")
    trained_on = canonical_data(trained_on) if trained_on else ""
    if key in KNOWN and trained_on in KNOWN and trained_on != key:
        raise ValueError(f"this model was trained on {trained_on}, not {data}: pick a model trained on {data} "
                         f"(python -m robgen models lists the shipped ones)")
    # Imagenette's classes by WordNet id (its own folder's names) or by name (the named data set's labels): one class
    try:  # a model trained on such folders has their prefixes in its labels: compared without them too
        model_labels = _without_order_prefix("the model's labels", spec.class_labels)
    except ValueError:
        model_labels = list(spec.class_labels)
    folders, labels = comparable_labels(classes), comparable_labels(model_labels)
    generic = all(label == f"c{i}" or label == f"class {i}" for i, label in enumerate(spec.class_labels))
    if key in KNOWN and folders != labels and not generic:
        raise ValueError(f"{data}'s classes ({', '.join(classes)}) are not the model's "
                         f"({', '.join(spec.class_labels)}): pick a model trained on {data}")
    if key not in KNOWN and folders != labels and not generic and set(folders) & set(labels):
        # an image folder numbers its class folders alphabetically (or by their index prefixes); named after the
        # model's classes in another order (or some of them), every image would be scored against another label
        numbered = ("their index prefixes number them" if ordered else
                    "image folders number their class folders alphabetically")
        raise ValueError(f"the class folders of {data} ({', '.join(classes)}) name the model's classes in another "
                         f"order, or other classes, than the model's ({', '.join(spec.class_labels)}): {numbered}, "
                         "so labels would be mixed up; rename the folders so that sorted they follow the model's "
                         f"order: the model's labels behind their index, {_prefixed(spec.class_labels)}")
    if by_name and folders != labels and not generic:
        raise ValueError(f"the class folders of {data} ({', '.join(classes)}) are not the model's classes "
                         f"({', '.join(spec.class_labels)}): fit on the data set the model classifies, its folders "
                         "named after its classes")
    numbers = [int(name) for name in classes] if all(name.isdigit() for name in classes) else []
    misplaced = next((i for i, (number, wanted) in enumerate(zip(numbers, sorted(numbers))) if number != wanted), None)
    if key not in KNOWN and misplaced is not None and folders != labels:  # the model's labels named or generic
        # folders 0 ... 10 sort as text (0, 1, 10, 2, ...): the model's class i would be matched to the i-th of those
        width = max(len(name) for name in classes)
        raise ValueError(f"the class folders of {data} are numbers sorted as text ({', '.join(classes[:4])}, ...), so "
                         f"folder {classes[misplaced]} would be scored as the model's class {misplaced} "
                         f"({spec.class_labels[misplaced]}): rename the folders with leading zeros "
                         f"({', '.join(str(n).zfill(width) for n in sorted(numbers)[:3])}, ...)")


def train_val_split(dataset: Dataset, val_size: int, seed: int = 0) -> Tuple[Subset, Subset]:
    """Hold `val_size` examples out of `dataset`, chosen by a seeded permutation.

    The same seed always gives the same split (the paper uses 45k/5k on CIFAR-10).
    """
    n = len(dataset)
    if isinstance(val_size, float) and 0 < val_size < 1:
        raise TypeError(f"val_size is a number of images, not a share: for {val_size:.0%} of these {n} pass "
                        f"{round(val_size * n)}")
    val_size = check_steps(val_size, "val_size")
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} for a data set of {n} examples, got {val_size} "
                         "(the default is 5,000 held-out images, 500 for Imagenette: pass --val-size N)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[val_size:])), Subset(dataset, sorted(order[:val_size]))


def first(dataset: Dataset, limit: Optional[int], what: str = "split") -> Dataset:
    """The first `limit` examples (all if None); a limit beyond the data is an error."""
    if limit is None:
        return dataset
    limit = check_steps(limit, "limit")  # a whole number >= 1 (10.0 is 10; 0.5 says so, not a slice TypeError)
    if limit > len(dataset):
        raise ValueError(f"limit {limit} is larger than the {what}, which has {len(dataset)} examples: ask for "
                         f"{len(dataset)} or fewer")
    return Subset(dataset, range(limit))


def collate_examples(batch):
    """torch's default batching of (image, label) examples, with a message that says what to do when a folder's
    images differ in size (read without one size to scale them to, they cannot be stacked)."""
    try:
        return default_collate(batch)
    except RuntimeError as error:
        sizes = sorted({tuple(example[0].shape) for example in batch if isinstance(example[0], torch.Tensor)})
        if len(sizes) < 2:
            raise
        shown = ", ".join("x".join(str(side) for side in size[1:]) for size in sizes[:4])
        raise ValueError(f"the images differ in size ({shown}{', ...' if len(sizes) > 4 else ''} pixels), so they "
                         "cannot be batched: read them at one size with image_size= (CLI: --image-size) or a model's "
                         "spec= (its eval transform)") from None


def make_loader(dataset: Dataset, batch_size: int = 256, shuffle: bool = False, workers: int = 0, seed: int = 0) -> DataLoader:
    """A DataLoader with a seeded shuffle (no global RNG) and pinned memory when CUDA is present."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, collate_fn=collate_examples,
    )


def load_tensors(dataset: Dataset, limit: Optional[int] = None, batch_size: int = 500) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (or the first `limit`) examples stacked into (images, labels) tensors."""
    subset = first(dataset, limit)
    images, labels = [], []
    for x, y in make_loader(subset, batch_size=batch_size):
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def pixels_fingerprint(dataset: Dataset, batch_size: int = 500) -> str:
    """A hash of a split's pixels and labels, read a batch at a time: the same on every machine with the same
    images, and another one where a file was replaced, added or removed (a path and a count cannot say that)."""
    digest, labels = hashlib.sha256(), []
    for x, y in make_loader(dataset, batch_size=batch_size):
        digest.update(x.contiguous().numpy().tobytes())  # the bytes of the whole stacked tensor, batch by batch
        labels.append(torch.as_tensor(y))
    if labels:
        digest.update(torch.cat(labels).numpy().tobytes())
    return digest.hexdigest()[:16]


def lossless_only(dataset: Dataset) -> Subset:
    """The examples stored as PNG files (for the CIFAR-10 archive: the exact original pixels); all of torchvision's
    pickled CIFAR-10 or CIFAR-100, whose arrays are the original pixels.

    Works on ImageFolder data sets, torchvision's CIFAR and reorderings of them, keeping their order.
    """
    from torchvision.datasets import CIFAR10  # CIFAR100 is one too

    base, indices = dataset, list(range(len(dataset)))
    while isinstance(base, Subset):
        indices = [base.indices[i] for i in indices]
        base = base.dataset
    samples = getattr(base, "samples", None)
    if isinstance(base, CIFAR10):
        keep = list(range(len(indices)))
    elif samples is None:
        raise ValueError("only image-file data sets (ImageFolder layouts) and torchvision's pickled CIFAR know "
                         "which images are lossless")
    else:
        keep = [position for position, index in enumerate(indices)
                if str(samples[index][0]).lower().endswith(".png")]
    if not keep:
        raise ValueError("this data set holds no PNG images")
    subset = Subset(dataset, keep)
    subset.classes = class_names(dataset)
    return subset


class _JpegCopies(Dataset):
    """`dataset`'s images encoded as JPEG at `quality` (PIL, 4:2:0 chroma subsampling) and decoded again."""

    def __init__(self, dataset: Dataset, quality: int) -> None:
        self.dataset, self.quality = dataset, quality
        self.classes = class_names(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        import io

        from PIL import Image

        x, y = self.dataset[index]
        pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        gray = pixels.shape[2] == 1
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if gray else pixels).save(buffer, format="JPEG", quality=self.quality)
        buffer.seek(0)
        decoded = torch.from_numpy(np.array(Image.open(buffer).convert("L" if gray else "RGB")))
        decoded = decoded.unsqueeze(2) if gray else decoded
        return decoded.permute(2, 0, 1).float() / 255, y


def jpeg_copies(dataset: Dataset, quality: int = 75) -> Dataset:
    """The same images as `dataset` (tensors in [0, 1]), each JPEG-compressed at `quality` and decoded.

    The CIFAR-10 archive's JPEG copies are PIL's quality 75 with 4:2:0 chroma subsampling (its quantisation
    tables match PIL's at 75); `jpeg_copies(lossless_only(test))` gives the exact test images as the archive
    would have copied them.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return _JpegCopies(dataset, quality)
