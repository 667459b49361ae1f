from pathlib import Path

import pytest
import torch
from PIL import Image

from robgen import data


def make_image_folder(root, classes=("ant", "bee", "cat"), per_class=4, size=12):
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (label * 80, i * 40, 0)).save(folder / f"{i:04d}.png")
    return root


def test_image_folder_pixels_and_interleaved_order(tmp_path):
    dataset = data.load_dataset(make_image_folder(tmp_path / "imgs"))
    assert data.class_names(dataset) == ["ant", "bee", "cat"]
    x, y = data.load_tensors(dataset)
    assert x.shape == (12, 3, 12, 12) and x.dtype == torch.float32
    assert y.tolist()[:6] == [0, 1, 2, 0, 1, 2], "the first N images are class-balanced"
    # every image is exactly the colour it was written with, on the [0, 1] scale: (80 * label, 40 * i, 0) / 255
    for k in range(12):
        label, i = k % 3, k // 3
        assert int(y[k]) == label
        expected = torch.tensor([80 * label, 40 * i, 0], dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 12, 12)
        assert torch.allclose(x[k], expected, atol=1e-6), f"image {k}"


def test_torchvisions_pickled_cifar10_is_read_in_the_order_of_the_image_folder_copy(tmp_path, monkeypatch):
    """Online, `download=True` gives torchvision's CIFAR-10 (the original order); offline, the ImageFolder copy
    (<class>/NNNN, NNNN the image's rank in its class). Both must come in one order, or a model's recorded
    validation split (indices) would name other images, most of them trained on, in the other copy."""
    import torchvision

    original = [2, 0, 0, 1, 2, 1, 0, 2, 1, 1]  # labels in the original order; image k is the number k

    class Pickled(torch.utils.data.Dataset):
        classes = ["ant", "bee", "cat"]

        def __init__(self, root, train=True, transform=None, download=False):
            self.targets = list(original)

        def __len__(self):
            return len(original)

        def __getitem__(self, k):
            return torch.full((3, 2, 2), float(k)), original[k]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Pickled)
    (tmp_path / "cifar-10-batches-py").mkdir()
    pickled = data.load_dataset("cifar10", split="train", root=tmp_path)
    folder = tmp_path / "folder"
    for label, name in enumerate(Pickled.classes):  # the ImageFolder copy of the same images
        ranks = [k for k, y in enumerate(original) if y == label]
        (folder / name).mkdir(parents=True)
        for rank, k in enumerate(ranks):
            Image.new("RGB", (2, 2), (k, 0, 0)).save(folder / name / f"{rank:04d}.png")
    copy = data.load_dataset(folder)
    from_pickle = [int(pickled[i][0][0, 0, 0]) for i in range(len(original))]
    from_folder = [round(float(copy[i][0][0, 0, 0]) * 255) for i in range(len(original))]
    assert from_pickle == from_folder == [1, 3, 0, 2, 5, 4, 6, 8, 7, 9]
    assert pickled.targets == copy.targets


def test_torchvisions_pickled_cifar_is_lossless_throughout(tmp_path):
    """Its arrays are the original pixels, but `lossless_only` (--exact, the ablation's pixel factor) refused it as
    no image-file data set."""
    import torchvision

    class Pickled(torchvision.datasets.CIFAR10):
        def __init__(self):  # the real one reads (and checks) the archive's batches
            self.targets, self.classes = [0, 1, 0, 1], ["ant", "bee"]

        def __len__(self):
            return 4

        def __getitem__(self, k):
            return torch.full((3, 2, 2), k / 4), self.targets[k]

    reordered = torch.utils.data.Subset(Pickled(), [3, 1, 2])
    exact = data.lossless_only(reordered)
    assert [float(exact[i][0][0, 0, 0]) for i in range(len(exact))] == [0.75, 0.25, 0.5]
    assert exact.classes == ["ant", "bee"]
    with pytest.raises(ValueError, match="ImageFolder layouts"):
        data.lossless_only(torch.utils.data.TensorDataset(torch.zeros(2, 3, 2, 2), torch.zeros(2)))


def test_a_folder_of_images_is_decoded_as_the_same_files_are_one_by_one(tmp_path):
    import numpy as np

    from robgen.images import load_image

    folder = tmp_path / "odd" / "only"
    folder.mkdir(parents=True)
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(folder / "0000.png")  # transparent: white, not red
    Image.fromarray(np.full((12, 12), 30000, dtype=np.uint16)).save(folder / "0001.png")  # 16-bit gray
    x, _ = data.load_tensors(data.load_dataset(tmp_path / "odd"))
    for k, name in enumerate(("0000.png", "0001.png")):
        assert torch.equal(x[k], load_image(folder / name)), name
    assert torch.allclose(x[0], torch.ones_like(x[0]))


def test_train_val_split_is_deterministic_and_disjoint(tmp_path):
    dataset = data.load_dataset(make_image_folder(tmp_path / "imgs", per_class=10))
    train_a, val_a = data.train_val_split(dataset, 7, seed=0)
    train_b, val_b = data.train_val_split(dataset, 7, seed=0)
    _, val_c = data.train_val_split(dataset, 7, seed=1)
    assert val_a.indices == val_b.indices and train_a.indices == train_b.indices
    assert val_a.indices != val_c.indices
    assert len(train_a) == 23 and len(val_a) == 7
    assert not set(train_a.indices) & set(val_a.indices)
    with pytest.raises(ValueError, match="val_size"):
        data.train_val_split(dataset, 30)


def test_limit_beyond_the_split_is_an_error(tmp_path):
    dataset = data.load_dataset(make_image_folder(tmp_path / "imgs"))
    assert len(data.first(dataset, 5)) == 5
    with pytest.raises(ValueError, match="larger than the test split, which has 12"):
        data.first(dataset, 13, "test split")


def test_offline_root_from_environment_and_clear_errors(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "cifar10" / "test", classes=[f"k{i}" for i in range(10)], per_class=2, size=32)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert len(data.load_dataset("cifar10", "test")) == 20
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load_dataset("cifar10", "train")
    with pytest.raises(FileNotFoundError, match="unknown data set"):
        data.load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ImageFolder layout"):
        data.load_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_dataset("cifar10", "dev")
    for split in ("val", "Validation"):  # were the test images: a detector "calibrated on validation" saw the test set
        with pytest.raises(ValueError, match="held out of 'train'"):
            data.load_dataset("cifar10", split)
    make_image_folder(tmp_path / "imagenette" / "val", classes=[f"k{i}" for i in range(10)], per_class=1, size=32)
    assert len(data.load_dataset("imagenette", "val")) == len(data.load_dataset("imagenette", "test")) == 10


def test_real_cifar10_loads_as_the_paper_uses_it(cifar_root):
    test = data.load_dataset("cifar10", "test", root=cifar_root)
    assert len(test) == 10000 and data.class_names(test)[0] == "airplane"
    train = data.load_dataset("cifar10", "train", root=cifar_root)
    train_part, val = data.train_val_split(train, 5000)
    assert (len(train_part), len(val)) == (45000, 5000)
    x, y = data.load_tensors(test, 10)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))


def _photo(width, height):
    """A smooth, non-square test photo whose crops differ from each other (a gradient in both axes)."""
    xs = torch.linspace(0, 1, width).view(1, 1, width).expand(1, height, width)
    ys = torch.linspace(0, 1, height).view(1, height, 1).expand(1, height, width)
    pixels = torch.cat([xs, ys, (xs + ys) / 2]).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def test_a_data_set_read_through_a_model_spec_is_what_load_image_gives(tmp_path):
    from robgen import images
    from robgen.models import ModelSpec

    folder = tmp_path / "photos" / "church"
    folder.mkdir(parents=True)
    _photo(60, 40).save(folder / "a.png")
    (tmp_path / "photos" / "tench").mkdir()
    _photo(40, 70).save(tmp_path / "photos" / "tench" / "b.png")
    spec = ModelSpec(architecture="resnet10_imagenette", num_classes=2, class_labels=["church", "tench"],
                     input_size=(3, 24, 24), crop_pct=0.75, interpolation="bicubic")
    dataset = data.load_dataset(tmp_path / "photos", spec=spec)
    for index, path in enumerate([folder / "a.png", tmp_path / "photos" / "tench" / "b.png"]):
        x, _ = dataset[index]
        assert x.shape == (3, 24, 24)
        assert torch.equal(x, images.load_model_input(path, spec)), "one eval transform for files and data sets"
    # crop_pct < 1 keeps the centre only: the same image at crop_pct 1 shows more of the border
    wide = data.load_dataset(tmp_path / "photos", transform=data.pixel_transform(24, crop_pct=1.0, interpolation="bicubic"))
    assert not torch.equal(wide[0][0], dataset[0][0])
    assert data.eval_transform(spec).transforms[0].crop_pct == 0.75


def test_imagenette_folders_are_labelled_with_class_names(tmp_path):
    for wnid in ("n01440764", "n03028079"):
        (tmp_path / "imagenette" / "val" / wnid).mkdir(parents=True)
        _photo(30, 30).save(tmp_path / "imagenette" / "val" / wnid / "x.png")
    dataset = data.load_dataset("imagenette", "test", root=tmp_path)
    assert data.class_names(dataset) == ["tench", "church"]
    assert dataset[0][0].shape == (3, 160, 160), "Imagenette without a spec: the 160-px images"


def test_a_model_of_another_data_set_is_refused():
    from robgen.models import ModelSpec

    cifar = ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=[f"c{i}" for i in range(10)],
                      training={"data": {"name": "cifar10", "val_size": 5000}})
    nette_classes = list(data.IMAGENETTE_CLASSES.values())
    with pytest.raises(ValueError, match="trained on cifar10, not imagenette"):
        data.check_model_matches(cifar, "imagenette", nette_classes)
    named = ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=["airplane"] + ["x"] * 9)
    with pytest.raises(ValueError, match="not the model's"):
        data.check_model_matches(named, "imagenette", nette_classes)
    with pytest.raises(ValueError, match="10 classes but imagenette has 2"):
        data.check_model_matches(cifar, "imagenette", nette_classes[:2])
    nette = ModelSpec(architecture="resnet10_imagenette", num_classes=10, class_labels=nette_classes,
                      training={"data": {"name": "imagenette", "val_size": 500}})
    data.check_model_matches(nette, "imagenette", nette_classes)
    # a model trained on Imagenette's own folder is labelled by WordNet ids: the same classes
    by_id = ModelSpec(architecture="resnet10_imagenette", num_classes=10, class_labels=list(data.IMAGENETTE_CLASSES))
    data.check_model_matches(by_id, "imagenette", nette_classes)
    with pytest.raises(ValueError, match="not the model's"):
        data.check_model_matches(by_id, "imagenette", nette_classes[1:] + nette_classes[:1])
    assert data.model_val_size(nette, "imagenette") == 500
    assert data.model_val_size(cifar, "imagenette") == 500 and data.model_val_size(cifar, "cifar10") == 5000


def test_numbered_class_folders_sorted_as_text_are_refused_for_a_model_with_generic_labels():
    """Folders 0 ... 10 sort as 0, 1, 10, 2, ...: a model labelled "class i" scored folder 10 as its class 2."""
    from robgen.models import ModelSpec

    spec = ModelSpec(architecture="resnet10_cifar", num_classes=11, class_labels=[f"class {i}" for i in range(11)])
    folders = sorted(str(i) for i in range(11))
    with pytest.raises(ValueError, match="numbers sorted as text .* leading zeros \\(00, 01, 02"):
        data.check_model_matches(spec, "/photos", folders)
    data.check_model_matches(spec, "/photos", sorted(str(i).zfill(2) for i in range(11)))  # sorted as numbers
    with pytest.raises(ValueError, match="folder 10 would be scored as the model's class 0"):  # (two folders: crashed)
        data.check_model_matches(ModelSpec(architecture="resnet10_cifar", num_classes=2,
                                           class_labels=["class 0", "class 1"]), "/photos", ["10", "9"])
    named = ModelSpec(architecture="resnet10_cifar", num_classes=11, class_labels=folders)  # trained on them
    data.check_model_matches(named, "/photos", folders)
    # and for a model with named labels (a timm ImageNet model on val/0 ... val/999): folder 10 was its class 2
    animals = ModelSpec(architecture="resnet10_cifar", num_classes=11, class_labels=[f"animal{i}" for i in range(11)])
    with pytest.raises(ValueError, match=r"folder 10 would be scored as the model's class 2 \(animal2\)"):
        data.check_model_matches(animals, "/photos", folders)


def test_the_split_seed_is_the_one_the_models_training_recorded():
    from robgen.models import ModelSpec

    def spec(training):
        return ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=[f"c{i}" for i in range(10)],
                         training=training)

    recorded = spec({"data": {"name": "cifar10", "val_size": 5000, "split_seed": 0}, "config": {"seed": 1}})
    older = spec({"data": {"name": "cifar10", "val_size": 5000}, "config": {"seed": 1}})  # the run's seed chose it
    assert data.model_split_seed(recorded, "cifar10") == 0
    assert data.model_split_seed(older, "cifar10") == 1
    assert data.model_split_seed(older, "imagenette", default=7) == 7, "not trained on it: the default"
    assert data.model_split_seed(spec({}), "cifar10", default=3) == 3


def test_the_models_validation_split_uses_its_recorded_size_and_seed():
    from robgen.models import ModelSpec

    spec = ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=[f"c{i}" for i in range(10)],
                     training={"data": {"name": "toy", "val_size": 7, "split_seed": 5}})
    items = list(range(50))
    rest, validation = data.model_val_split(items, spec, "toy")
    assert list(validation) == list(data.train_val_split(items, 7, seed=5)[1]) and len(rest) == 43
    assert len(data.model_val_split(items, spec, "toy", val_size=3)[1]) == 3
    other = data.model_val_split(items, spec, "other", val_size=7, default_seed=2)[1]  # not trained on it
    assert list(other) == list(data.train_val_split(items, 7, seed=2)[1])


def test_a_smaller_validation_split_is_part_of_the_recorded_one_and_a_larger_is_refused(tmp_path, monkeypatch):
    """A smaller split is the start of the same seeded order, so no image the model trained on; a larger one would
    take trained-on images. The recorded folder is recognised however it is spelled."""
    from robgen.models import ModelSpec

    folder = tmp_path / "shots"
    folder.mkdir()
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=[f"c{i}" for i in range(10)],
                     training={"data": {"name": str(folder), "val_size": 7, "split_seed": 5}})
    items = list(range(50))
    recorded = set(data.model_val_split(items, spec, str(folder))[1])
    assert set(data.model_val_split(items, spec, str(folder), val_size=3)[1]) <= recorded
    with pytest.raises(ValueError, match="val_size 8 is larger than the 7 images the model's training held out"):
        data.model_val_split(items, spec, str(folder), val_size=8)
    monkeypatch.chdir(tmp_path)
    for spelled in (str(folder) + "/", "shots", "./shots/"):
        assert set(data.model_val_split(items, spec, spelled)[1]) == recorded, spelled


def test_an_image_folder_with_split_folders_gives_them_and_one_without_never_tests_a_validation_image(tmp_path):
    """detect / zoo / reproduce / adaptive on a folder: its train/ and test/ (or val/) when it has them; a single
    folder served as both splits, so the threshold was fitted on images it was then tested on."""
    from robgen.experiments.pipeline import detection_splits
    from tests.conftest import make_toy_image_folder, tiny_model

    make_toy_image_folder(tmp_path / "split" / "train", per_class=6)
    make_toy_image_folder(tmp_path / "split" / "val", per_class=3)
    assert len(data.load_dataset(tmp_path / "split", "train")) == 24
    assert len(data.load_dataset(tmp_path / "split", "test")) == 12 == len(data.load_dataset(tmp_path / "split", "val"))
    model = tiny_model(num_classes=4)
    model.spec.class_labels = ["class0", "class1", "class2", "class3"]
    splits = detection_splits(model, str(tmp_path / "split"), val_size=8)
    assert (len(splits.validation), len(splits.test)) == (8, 12)
    single = make_toy_image_folder(tmp_path / "single", per_class=5)
    assert not data.one_folder(tmp_path / "split") and data.one_folder(single) and not data.one_folder("cifar10")
    with pytest.raises(ValueError, match="has 20 images and the validation split takes 19 of them, leaving 1"):
        detection_splits(model, str(single), val_size=19)  # was "val_size must be >= 1, got 0": not what was given
    splits = detection_splits(model, str(single), val_size=8)
    pixels = [torch.stack([split[i][0] for i in range(len(split))]).flatten(1) for split in (splits.validation,
                                                                                              splits.test)]
    reference = torch.stack([splits.train[i][0] for i in range(len(splits.train))]).flatten(1)
    assert (len(pixels[0]), len(pixels[1]), len(reference)) == (8, 6, 6)
    for one, other in ((pixels[0], pixels[1]), (pixels[0], reference), (pixels[1], reference)):
        assert not (one[:, None] == other[None]).all(-1).any(), "no image in two of validation, test, reference"


def test_split_folders_with_different_classes_are_refused_before_their_labels_shift(tmp_path):
    """A train/ without one class numbered the rest 0..2: every validation label after the gap was off by one,
    and detect fitted its detector on them without a word."""
    import shutil

    from tests.conftest import make_toy_image_folder

    make_toy_image_folder(tmp_path / "split" / "train", per_class=4)
    make_toy_image_folder(tmp_path / "split" / "test", per_class=2)
    assert len(data.load_dataset(tmp_path / "split", "train")) == 16
    shutil.rmtree(tmp_path / "split" / "train" / "class1")
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"hold different classes \(train/ lacks class1\)"):
            data.load_dataset(tmp_path / "split", split)
    # the same under a named data set's own folder (a partly unpacked archive): read as cifar10, it was not checked
    shutil.move(str(tmp_path / "split"), str(tmp_path / "cifar10"))
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"hold different classes \(train/ lacks class1\).*unpack it again"):
            data.load_dataset("cifar10", split, root=tmp_path)


def test_a_named_data_sets_own_folder_is_that_data_set_for_its_split_and_its_model(tmp_path, monkeypatch):
    """~/.cache/robgen-data/imagenette2-160 given as a path was a new data set: a 5,000-image "validation" split of
    its train/, 4,500 of them trained on; and a model ran on another named data set's folder without a word."""
    from robgen.models import ModelSpec

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    for name in ("imagenette2-160", "imagenette", "cifar10"):
        (tmp_path / name).mkdir()
    assert data.same_data("imagenette", tmp_path / "imagenette2-160") and data.same_data("imagenette", tmp_path / "imagenette")
    assert data.canonical_data(str(tmp_path / "imagenette2-160") + "/") == "imagenette"
    assert data.default_val_size(tmp_path / "imagenette2-160") == 500
    spec = ModelSpec(architecture="resnet10_imagenette", num_classes=10, class_labels=list(data.IMAGENETTE_CLASSES.values()),
                     training={"data": {"name": "imagenette", "val_size": 500, "split_seed": 3}})
    assert data.recorded_val_size(spec, tmp_path / "imagenette2-160") == 500
    assert data.model_split_seed(spec, tmp_path / "imagenette2-160") == 3
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with pytest.raises(ValueError, match="this model was trained on imagenette, not"):
        data.check_model_matches(spec, tmp_path / "cifar10", cifar)
    data.check_model_matches(spec, tmp_path / "imagenette2-160", list(data.IMAGENETTE_CLASSES))  # WordNet ids


def test_class_folders_prefixed_with_the_models_order_are_its_classes_and_prefixes_sorted_as_text_are_refused():
    """The message advised renaming to 0_airplane, 1_automobile, ...: fit-seeds and fit-detector then refused those
    folders, and with 11 classes or more (1_, 10_, 2_ sorted as text) the labels were mixed up without a word."""
    from robgen.models import ModelSpec

    labels = [f"kind{i}" for i in range(12)]
    spec = ModelSpec(architecture="x", num_classes=12, class_labels=labels)
    padded = sorted(f"{i:02d}_{label}" for i, label in enumerate(labels))
    data.check_model_matches(spec, "/somewhere/shots", padded, by_name=True)
    trained_on_them = ModelSpec(architecture="x", num_classes=12, class_labels=padded)  # its labels: the folders'
    data.check_model_matches(trained_on_them, "/somewhere/shots", padded, by_name=True)
    as_text = sorted(f"{i}_{label}" for i, label in enumerate(labels))
    with pytest.raises(ValueError, match="do not run 0, 1, 2.*pad them with zeros: 00_kind0, 01_kind1"):
        data.check_model_matches(spec, "/somewhere/shots", as_text)
    with pytest.raises(ValueError, match="00_kind0, 01_kind1, 02_kind2"):  # the advice of the order check itself
        data.check_model_matches(spec, "/somewhere/shots", sorted(labels))


def test_a_class_folder_called_train_is_a_class_and_a_missing_split_folder_is_named(tmp_path):
    """CIFAR-100 has a class "train": a folder of class folders stays one even so; a root of split folders that
    lacks test/ (and val/) says so instead of loading train/ as the only class."""
    from tests.conftest import make_toy_image_folder

    classes = make_toy_image_folder(tmp_path / "classes", classes=2, per_class=3)
    (classes / "class0").rename(classes / "train")
    assert data.one_folder(classes) and data.class_names(data.load_dataset(classes, "train")) == ["class1", "train"]
    make_toy_image_folder(tmp_path / "half" / "train", classes=2, per_class=3)
    assert len(data.load_dataset(tmp_path / "half", "train")) == 6 and not data.one_folder(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match=r"half has train/ but no test/ or val/ or valid/ or validation/ for the test split"):
        data.load_dataset(tmp_path / "half", "test")
    capital = tmp_path / "capital"  # Train/ and Test/: taken as split folders, then not found in them (Linux)
    make_toy_image_folder(capital / "Train", classes=2, per_class=3)
    make_toy_image_folder(capital / "Test", classes=2, per_class=2)
    assert len(data.load_dataset(capital, "train")) == 6 and len(data.load_dataset(capital, "test")) == 4


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    """A zip made on a Mac holds __MACOSX/ beside the splits and "._0000.png" AppleDouble files beside the images;
    a notebook leaves .ipynb_checkpoints/. They were read as splits' classes (train and test mixed) and decoded as
    images (a crash part way through a run)."""
    from tests.conftest import make_toy_image_folder

    root = tmp_path / "unzipped"
    make_toy_image_folder(root / "train", classes=2, per_class=3)
    make_toy_image_folder(root / "test", classes=2, per_class=2)
    (root / "__MACOSX" / "train" / "class0").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "class0" / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / "class0" / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (16, 16)).save(root / "train" / ".ipynb_checkpoints" / "copy.png")
    (root / "train" / "class1" / ".ipynb_checkpoints").mkdir()  # inside a class: its images are no examples
    Image.new("RGB", (16, 16)).save(root / "train" / "class1" / ".ipynb_checkpoints" / "0000-checkpoint.png")
    assert not data.one_folder(root), "still a root of splits"
    train = data.load_dataset(root, "train")
    assert data.class_names(train) == ["class0", "class1"] and len(train) == 6
    x, _ = data.load_tensors(train)  # every file read is an image
    assert x.shape[0] == 6 and len(data.load_dataset(root, "test")) == 4


def test_a_non_square_models_data_set_images_have_its_height_and_width(tmp_path):
    """`eval_transform` passed the height alone: a (32, 48) model got 32 x 32 images from a data set and
    32 x 48 from a file (a ViT then failed, a CNN ran on other pixels than the app's)."""
    from robgen import images
    from robgen.models import ModelSpec

    folder = tmp_path / "photos" / "church"
    folder.mkdir(parents=True)
    _photo(90, 50).save(folder / "a.png")
    spec = ModelSpec(architecture="resnet10_imagenette", num_classes=1, class_labels=["church"],
                     input_size=(3, 32, 48), crop_pct=0.875, interpolation="bicubic")
    x, _ = data.load_dataset(tmp_path / "photos", spec=spec)[0]
    assert x.shape == (3, 32, 48)
    assert torch.equal(x, images.load_model_input(folder / "a.png", spec))
    with pytest.raises(ValueError, match="square"):
        data.pixel_transform((32, 48), train=True)


def test_class_folders_named_after_the_models_classes_in_another_order_are_refused():
    """An image folder numbers its class folders alphabetically: named after the model's classes in another order,
    every image would be scored against another class's label. Folders named otherwise cannot be checked."""
    from robgen.models import ModelSpec

    spec = ModelSpec(architecture="resnet10_cifar", num_classes=3, class_labels=["tench", "church", "French horn"])
    with pytest.raises(ValueError, match="name the model's classes in another order"):
        data.check_model_matches(spec, "/data/nette", ["French horn", "church", "tench"])
    with pytest.raises(ValueError, match="rename the folders"):
        data.check_model_matches(spec, "/data/nette", ["church", "dog", "tench"])
    data.check_model_matches(spec, "/data/nette", ["Tench", "Church", "French Horn"])  # the model's order
    data.check_model_matches(spec, "/data/nette", ["0_tench", "1_church", "2_french_horn"])  # in order by prefix
    data.check_model_matches(spec, "/data/nette", ["0_tench", "1_church", "2_french_horn"], by_name=True)
    # index prefixes that put the model's classes in another order (a review, 2026-12-07: accepted, church's images
    # scored as tench)
    with pytest.raises(ValueError, match="their index prefixes number them.*0_tench, 1_church"):
        data.check_model_matches(spec, "/data/nette", ["0_church", "1_tench", "2_french_horn"])
    data.check_model_matches(spec, "/data/nette", ["0_a", "1_b", "2_c"])  # other names: nothing to check them by


def test_a_named_data_sets_own_folder_is_that_data_set_for_the_recorded_split(tmp_path, monkeypatch):
    """A model trained on "cifar10", given --data <data root>/cifar10, drew its validation split with another seed:
    1,813 of 2,000 validation images had been trained on (found by review)."""
    from robgen.models import ModelSpec

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    (tmp_path / "cifar10").mkdir()
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=[f"c{i}" for i in range(10)],
                     training={"data": {"name": "cifar10", "val_size": 7, "split_seed": 5}})
    items = list(range(50))
    recorded = list(data.model_val_split(items, spec, "cifar10", default_seed=1)[1])
    for spelled in (str(tmp_path / "cifar10"), str(tmp_path / "cifar10") + "/"):
        assert data.same_data("cifar10", spelled)
        assert list(data.model_val_split(items, spec, spelled, default_seed=1)[1]) == recorded, spelled
    assert not data.same_data("cifar10", str(tmp_path)) and not data.same_data("cifar10", "imagenette")


def test_labels_of_reads_the_targets_through_subsets_without_reading_an_image():
    from torch.utils.data import Dataset, Subset

    class Unreadable(Dataset):
        targets = [3, 1, 4, 1, 5]

        def __len__(self):
            return 5

        def __getitem__(self, index):
            raise AssertionError("an image was read")

    assert data.labels_of(Subset(Subset(Unreadable(), [4, 2, 0]), [0, 2])) == [5, 3]


def test_canonical_data_spells_each_data_set_one_way(tmp_path, monkeypatch):
    """Records compared as text (ablation rows) measured 'cifar10' and its own folder as two data sets."""
    monkeypatch.setenv("ROBGEN_DATA", str(tmp_path))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    assert data.canonical_data("CIFAR10") == data.canonical_data(tmp_path / "cifar10") == "cifar10"
    assert data.canonical_data(str(tmp_path / "cifar10") + "/") == "cifar10"
    assert data.canonical_data("mine/") == data.canonical_data("./mine") == str(tmp_path / "mine")


def test_a_grayscale_model_reads_a_data_set_as_it_reads_the_files(tmp_path):
    """`eval_transform` of a one-channel model gave three channels; now the luma, the pixels `load_model_input`
    gives each file."""
    from robgen import images
    from robgen.models import ModelSpec

    for name, (width, height) in {"church": (60, 40), "tench": (40, 70)}.items():
        (tmp_path / "photos" / name).mkdir(parents=True)
        _photo(width, height).save(tmp_path / "photos" / name / "a.png")
    spec = ModelSpec(architecture="resnet10_imagenette", num_classes=2, class_labels=["church", "tench"],
                     input_size=(1, 24, 24), mean=(0.5,), std=(0.25,), crop_pct=0.75, interpolation="bicubic")
    dataset = data.load_dataset(tmp_path / "photos", spec=spec)
    for index, name in enumerate(["church", "tench"]):
        x, _ = dataset[index]
        assert x.shape == (1, 24, 24)
        assert torch.equal(x, images.load_model_input(tmp_path / "photos" / name / "a.png", spec))
    assert data.pixel_transform(8, train=True, channels=1)(_photo(20, 20)).shape == (1, 8, 8)


def test_counts_that_are_no_whole_numbers_are_refused_saying_so():
    """train_val_split(ds, 0.1) and first(ds, 10.0) failed in a slice with a TypeError that named no argument."""
    dataset = torch.utils.data.TensorDataset(torch.zeros(50, 1))
    with pytest.raises(TypeError, match="a number of images, not a share: for 10% of these 50 pass 5"):
        data.train_val_split(dataset, 0.1)
    with pytest.raises(TypeError, match="limit must be an integer"):
        data.first(dataset, 2.5)
    assert len(data.first(dataset, 10.0)) == 10 and len(data.train_val_split(dataset, 5.0)[1]) == 5


def test_gif_images_in_a_data_folder_are_read_as_a_single_upload_is(tmp_path):
    """A folder's GIF files were skipped without a word (torchvision's extensions), though `attack` reads a GIF."""
    from PIL import Image

    from robgen import images

    for name in ("a", "b"):
        (tmp_path / "shots" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 30, 30) if name == "a" else (30, 30, 200)).save(tmp_path / "shots" / name / "x.gif")
    dataset = data.load_dataset(tmp_path / "shots", "train")
    assert len(dataset) == 2 and data.class_names(dataset) == ["a", "b"]
    x, _ = dataset[0]
    assert torch.equal(x, images.load_image(tmp_path / "shots" / "a" / "x.gif"))


def test_a_download_that_fails_says_what_to_do_instead_of_urllibs_traceback(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(RuntimeError, match="could not download cifar10 into .*: check the connection, or unpack"):
        data.load_dataset("cifar10", "train", root=tmp_path, download=True)


def test_a_folder_of_images_of_several_sizes_read_without_a_size_says_what_to_pass(tmp_path):
    """torch's bare "stack expects each tensor to be equal size" came out of load_tensors (and training) on a folder
    of photos of several sizes (a review, 2026-12-07)."""
    root = tmp_path / "mixed"
    for k, side in enumerate((12, 16, 16)):
        (root / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (side, side), (k * 40, 0, 0)).save(root / f"class{k % 2}" / f"{k}.png")
    mixed = data.load_dataset(root, "train")
    with pytest.raises(ValueError, match=r"differ in size \(12x12, 16x16 pixels\).*image_size="):
        data.load_tensors(mixed)
    images, labels = data.load_tensors(data.load_dataset(root, "train", image_size=16))
    assert images.shape == (3, 3, 16, 16) and sorted(labels.tolist()) == [0, 0, 1]


def test_augmenting_for_training_and_a_models_eval_transform_are_not_asked_for_together(tmp_path):
    """train_augment=True with spec= gave 3-channel images at image_size, ignoring the (grayscale, 16-px) spec that
    the docstring says overrides it (a review, 2026-12-07)."""
    from robgen.models import ModelSpec
    from tests.conftest import make_toy_image_folder

    root = make_toy_image_folder(tmp_path / "toy", classes=2, per_class=2)
    spec = ModelSpec(architecture="x", num_classes=2, class_labels=["class0", "class1"], input_size=(1, 16, 16),
                     mean=(0.5,), std=(0.25,))
    with pytest.raises(ValueError, match="spec= reads the images as the model sees them.*pass one"):
        data.load_dataset(root, "train", spec=spec, train_augment=True)
    assert data.load_dataset(root, "train", spec=spec)[0][0].shape == (1, 16, 16)


def test_same_data_reads_a_folder_in_another_case_as_another_folder(tmp_path):
    """Named data sets match in any case ("CIFAR10" is cifar10), but on a disk that tells case apart "Birds" and
    "birds" are two data sets: a model trained on one must not be read as trained on the other (its validation
    split would be taken from the other's images)."""
    (tmp_path / "birds").mkdir()
    (tmp_path / "Birds").mkdir()
    assert data.same_data("CIFAR10", "cifar10")
    assert data.same_data(str(tmp_path / "birds"), str(tmp_path / "birds") + "/")
    assert not data.same_data(str(tmp_path / "birds"), str(tmp_path / "Birds"))


def test_kaggles_valid_folder_is_a_split_and_a_data_set_one_level_down_is_refused(tmp_path):
    """train/ valid/ test/ (Kaggle's layout) was read as a data set of three classes named after the splits, and
    train trained a 3-class model on it; an archive unpacked one level too high was one class."""
    from tests.conftest import make_toy_image_folder

    for split, per_class in (("train", 3), ("valid", 2), ("test", 1)):
        make_toy_image_folder(tmp_path / "kaggle" / split, per_class=per_class)
    train, test = (data.load_dataset(tmp_path / "kaggle", split) for split in ("train", "test"))
    assert data.class_names(train) == data.class_names(test) == [f"class{i}" for i in range(4)]
    assert (len(train), len(test)) == (12, 4)
    make_toy_image_folder(tmp_path / "two" / "train", per_class=3)
    make_toy_image_folder(tmp_path / "two" / "validation", per_class=2)
    assert len(data.load_dataset(tmp_path / "two", "test")) == 8, "validation/ serves as the test split"
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "two").rename(tmp_path / "wrapped" / "two")
    with pytest.raises(ValueError, match="holds split folders \\(train/, validation/\\), so .* is one level above"):
        data.load_dataset(tmp_path / "wrapped", "train")


def test_a_link_inside_the_data_set_or_above_it_is_refused_not_read_as_more_images(tmp_path):
    """A link inside a class folder to the folder above made a loop: 20 images were read as 820, other classes'
    images under the linking class's label; two classes linking to each other likewise, and a link to a sibling
    class read its images twice, once under the wrong label."""
    import os

    from tests.conftest import make_toy_image_folder

    root = make_toy_image_folder(tmp_path / "photos", classes=2, per_class=3)
    elsewhere = make_toy_image_folder(tmp_path / "elsewhere", classes=1, per_class=2)
    os.symlink(elsewhere / "class0", root / "class0" / "more")  # a folder outside the data set: read as one
    assert len(data.load_dataset(root, "train")) == 8
    for link, target in (("class1/parent", ".."), ("class1/sibling", root / "class0")):
        os.symlink(target, root / link)
        with pytest.raises(ValueError, match=f"{link} links to .*inside the data set or above it"):
            data.load_dataset(root, "train")
        (root / link).unlink()


def test_jpegs_other_names_are_images_and_a_class_without_images_lists_the_endings(tmp_path):
    """photo.jfif (a browser's JPEG) and .jpe were skipped silently though an upload of them is read; a class of
    such files only was "Found no valid file for the classes cat", naming no ending that counts."""
    from PIL import Image

    from tests.conftest import make_toy_image_folder

    root = make_toy_image_folder(tmp_path / "photos", classes=2, per_class=1)
    for name in ("web.jfif", "cam.jpe"):
        Image.new("RGB", (16, 16), "red").save(root / "class0" / name, format="JPEG")
    assert len(data.load_dataset(root, "train")) == 4
    (root / "class1" / "notes.txt").write_text("no image")
    for path in (root / "class1").glob("*.png"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="image files end in .*\\.png.*\\.jfif"):
        data.load_dataset(root, "train")


def test_imagenette_in_torchvisions_layout_is_read_by_robgens_folder_reader(tmp_path):
    """imagenette2-160/ unzipped on a Mac holds __MACOSX/ and "._x.JPEG" files: torchvision's Imagenette reader took
    __MACOSX for a class (KeyError) and decoded the AppleDouble files (a crash at the first batch)."""
    from PIL import Image

    for split in ("train", "val"):
        for wnid in data.IMAGENETTE_CLASSES:
            folder = tmp_path / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(folder / f"{wnid}_{i}.JPEG")
        (tmp_path / "imagenette2-160" / split / "__MACOSX").mkdir()
        (tmp_path / "imagenette2-160" / split / "n01440764" / "._n01440764_0.JPEG").write_bytes(b"AppleDouble")
    test = data.load_dataset("imagenette", "test", root=tmp_path)
    assert len(test) == 20 and test.classes == list(data.IMAGENETTE_CLASSES.values())
    assert [test[i][1] for i in range(4)] == [0, 1, 2, 3]  # interleaved by rank in class, as a model's split reads


def test_torchvisions_cifar_files_cut_short_are_a_clear_error(tmp_path):
    """An empty or partial cifar-10-batches-py/ ended in torchvision's RuntimeError traceback, which advised
    download=True (the command line's flag is --download) and named no folder."""
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py is incomplete or corrupt .*pass --download"):
        data.load_dataset("cifar10", "test", root=tmp_path)


def test_a_folder_beside_a_named_data_sets_splits_is_not_a_split(tmp_path):
    """notes/ beside cifar10/train and cifar10/test was compared as a split: "notes/ lacks airplane ... unpack it
    again", for a data set that loaded before."""
    from tests.conftest import make_toy_image_folder

    for split in ("train", "test"):
        make_toy_image_folder(tmp_path / "cifar10" / split, classes=2, per_class=2)
    (tmp_path / "cifar10" / "notes").mkdir()
    assert len(data.load_dataset("cifar10", "train", root=tmp_path)) == 4


def test_a_file_given_as_a_data_set_is_called_a_file(tmp_path):
    """An archive given as --data was "unknown data set": it exists, it is a file, and a folder is what is needed."""
    archive = tmp_path / "cifar10-imagefolder.tar.gz"
    archive.write_bytes(b"archive")
    with pytest.raises(FileNotFoundError, match="cifar10-imagefolder.tar.gz is a file: a data set is one of .* a "
                                                "folder of class folders"):
        data.load_dataset(archive, "train")


def test_the_training_crop_of_a_small_squashing_model_squashes_as_its_eval_does():
    """crop-flip at <= 64 px dropped the model's crop mode: a squashing model's fine-tune trained on the centre of
    wide pictures (their sides cut off) and was validated on the whole of them, squashed."""
    from PIL import Image

    picture = Image.new("RGB", (32, 16), "black")
    picture.paste((255, 0, 0), (0, 0, 8, 16))  # the left quarter red: outside a centre crop of the short side
    for crop_mode, red_seen in (("squash", True), ("center", False)):
        train = data.pixel_transform(16, train=True, augment="crop-flip", crop_mode=crop_mode)
        torch.manual_seed(0)  # tests only: torchvision's random crop and flip draw from the global RNG
        seen = [bool((train(picture)[0] > 0.5).any()) for _ in range(8)]
        assert all(seen) if red_seen else not any(seen), crop_mode
    assert bool((data.pixel_transform(16, crop_mode="squash")(picture)[0] > 0.5).any())  # the eval transform


def test_a_loop_inside_a_linked_folder_elsewhere_and_two_links_to_one_folder_are_refused(tmp_path):
    """The link check walked without following links, so it never looked inside a folder linked from elsewhere: a
    link there back to that folder made torchvision's reader read its 1 image 40 times (until the system's limit on
    links), under the linking class's label."""
    import os

    from tests.conftest import make_toy_image_folder

    root = make_toy_image_folder(tmp_path / "photos", classes=2, per_class=3)
    elsewhere = make_toy_image_folder(tmp_path / "elsewhere", classes=1, per_class=1) / "class0"
    os.symlink(elsewhere, root / "class0" / "more")
    assert len(data.load_dataset(root, "train")) == 7
    os.symlink(elsewhere, elsewhere / "again")
    with pytest.raises(ValueError, match="again is .* reached through links"):
        data.load_dataset(root, "train")
    (elsewhere / "again").unlink()
    os.symlink(elsewhere, root / "class1" / "same")  # one folder under two classes' labels
    with pytest.raises(ValueError, match="reached through links"):
        data.load_dataset(root, "train")


def test_folders_named_in_decomposed_unicode_number_their_classes_as_composed_ones(tmp_path):
    """A zip made on a Mac names "é" as "e" and a combining accent (NFD), which sorts after "f" as text: its copy
    of a data set numbered "éclair" and "fraisé" the other way round from the composed (NFC) copy, so every image
    was scored against the other label, and a model trained on one copy was taken for the other's."""
    import unicodedata

    from robgen.models import ModelSpec

    names = ("éclair", "fraisé")  # sorted composed, "é" (U+00E9) comes after "f"; decomposed, "e" before it
    for form in ("NFC", "NFD"):
        root = tmp_path / form
        for label, name in enumerate(names):
            folder = root / unicodedata.normalize(form, name)
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (200 * (name == "éclair"), 0, 0)).save(folder / "0.png")
        dataset = data.load_dataset(root, "train")
        assert [unicodedata.normalize("NFC", c) for c in data.class_names(dataset)] == ["fraisé", "éclair"], form
        assert [int(dataset[i][0][0].mean() > 0.5) for i in range(2)] == [dataset[i][1] for i in range(2)], form  # éclair: 1
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=2, class_labels=[unicodedata.normalize("NFD", n) for n in names])
    data.check_model_matches(spec, tmp_path / "NFC", list(names), by_name=True)


def test_imagenette_given_as_its_folder_under_the_data_root_is_labelled_by_class_name(tmp_path, monkeypatch):
    """The named data set labelled its classes by name and its own folder, given as a path, by WordNet id, so
    fine-tuning a shipped Imagenette model on that folder was refused ("classifies tench, ... but ... has
    n01440764, ...")."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    for wnid in ("n01440764", "n03028079"):
        for split in ("train", "val"):
            (tmp_path / "imagenette2-160" / split / wnid).mkdir(parents=True)
            _photo(30, 30).save(tmp_path / "imagenette2-160" / split / wnid / "x.png")
    assert data.class_names(data.load_dataset(tmp_path / "imagenette2-160", "train")) == ["tench", "church"]
    assert data.class_names(data.load_dataset("imagenette", "train")) == ["tench", "church"]
    assert data.comparable_labels(["n01440764", "French_horn"]) == data.comparable_labels(["tench", "French horn"])


def test_a_data_root_given_to_the_library_decides_which_folder_is_a_named_data_set(tmp_path, monkeypatch):
    """data_root= went to load_dataset alone: the split a model's training held out of Imagenette was looked up
    under the default root, so its folder under data_root was another data set, of no recorded split (a 5,000-image
    "validation" split of images it trained on, or, here, a refusal)."""
    from robgen.experiments.pipeline import detection_splits
    from tests.conftest import tiny_model

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    root = tmp_path / "elsewhere"
    for split in ("train", "val"):
        for i, wnid in enumerate(data.IMAGENETTE_CLASSES):
            (root / "imagenette2-160" / split / wnid).mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (20, 20), (20 * i, 40 * j, 0)).save(root / "imagenette2-160" / split / wnid / f"{j}.png")
    model = tiny_model()
    model.spec.class_labels = list(data.IMAGENETTE_CLASSES.values())
    model.spec.training = {"data": {"name": "imagenette", "val_size": 4, "split_seed": 3}}
    folder = root / "imagenette2-160"
    assert data.canonical_data(folder) != "imagenette"  # under the default root it is a folder of its own
    splits = detection_splits(model, folder, data_root=root)
    train = data.load_dataset(folder, "train", spec=model.spec)
    assert splits.validation.indices == data.train_val_split(train, 4, seed=3)[1].indices
    assert data.DATA_ENV not in __import__("os").environ  # given back after the call
    assert data.reads_data_root(lambda data_root=None: data.canonical_data(folder))(data_root=root) == "imagenette"


def test_split_folders_of_other_names_are_refused_not_read_as_two_classes(tmp_path):
    """Kaggle's training_set/{cats,dogs} and test_set/{cats,dogs} were read as the classes test_set and
    training_set: every label said which split an image was in, and a model trained on them learnt that."""
    for split in ("training_set", "test_set"):
        make_image_folder(tmp_path / "kaggle" / split, classes=("cats", "dogs"), per_class=2)
    with pytest.raises(ValueError, match=r"look like splits, not classes.*name them train/ and test/"):
        data.load_dataset(tmp_path / "kaggle", "train")
    for split in ("training_set", "test_set"):  # the same, each split one level further down in its own name
        make_image_folder(tmp_path / "deeper" / split / split, classes=("cats", "dogs"), per_class=2)
    with pytest.raises(ValueError, match="look like splits, not classes"):
        data.load_dataset(tmp_path / "deeper", "train")
    make_image_folder(tmp_path / "nested", classes=("ant", "bee"), per_class=2)  # classes with images of their own
    (tmp_path / "nested" / "ant" / "more").mkdir()
    assert len(data.load_dataset(tmp_path / "nested", "train")) == 4
    for name in ("cat", "dog"):  # classes keeping their images one level down, under a shared name: classes
        make_image_folder(tmp_path / "kept" / name, classes=("images",), per_class=2)
    assert data.class_names(data.load_dataset(tmp_path / "kept", "train")) == ["cat", "dog"]


def test_a_named_data_sets_copy_of_another_size_is_named_in_a_warning(tmp_path, monkeypatch, caplog):
    """A partly unpacked archive changed every model's recorded validation split (a seeded draw over all training
    images) without a word: most of its "held-out" images were then ones the model trained on."""
    import logging

    monkeypatch.setattr(data, "KNOWN_SIZES", {**data.KNOWN_SIZES, ("cifar10", "test"): 7})
    make_image_folder(tmp_path / "cifar10" / "test", classes=("airplane", "automobile"), per_class=3)
    make_image_folder(tmp_path / "cifar10" / "train", classes=("airplane", "automobile"), per_class=3)
    with caplog.at_level(logging.WARNING):
        data.load_dataset("cifar10", "test", root=tmp_path)
    assert "holds 6 images, not the 7 of cifar10's test split" in caplog.text
    caplog.clear()
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with caplog.at_level(logging.WARNING):  # the same folder given as a path: the same data set
        data.load_dataset(tmp_path / "cifar10", "test")
    assert "holds 6 images, not the 7 of cifar10's test split" in caplog.text


def test_two_threads_each_see_their_own_data_root(tmp_path, monkeypatch):
    """The call's data root was the process-wide $ROBGEN_DATA: a thread inside its own call saw the default root
    once another thread's call ended, and the variable was left set to the other thread's root."""
    import threading

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    seen, inside, release = {}, threading.Barrier(2), threading.Event()

    def call(name):
        with data.data_root_as(tmp_path / name):
            inside.wait()
            if name == "b":
                release.wait()  # a's call has ended by now
            seen[name] = data.default_data_root()
            if name == "a":
                release.set()

    threads = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": tmp_path / "a", "b": tmp_path / "b"}
    assert data.default_data_root() == Path.home() / ".cache" / "robgen-data"


def test_a_copy_of_another_count_than_the_training_drew_its_split_from_is_refused(tmp_path):
    """The validation split is a seeded draw over every training image: with 5 of 200 images gone, 12 of the 50
    "held-out" images were ones the model trained on (chance level), and nothing said so."""
    from robgen.models import ModelSpec

    folder = make_image_folder(tmp_path / "photos", per_class=6)
    train = data.load_dataset(folder, "train")
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=3, class_labels=["ant", "bee", "cat"],
                     training={"data": {"name": data.canonical_data(folder), "val_size": 4, "split_seed": 0,
                                        "train_images": 18}})
    assert len(data.model_val_split(train, spec, folder)[1]) == 4
    spec.training["data"]["train_images"] = 20
    with pytest.raises(ValueError, match="drew its validation split from 20 images .* this copy has 18"):
        data.model_val_split(train, spec, folder)


def test_a_download_that_fails_on_the_command_line_is_an_error_not_a_traceback_and_leaves_no_folder(
        tmp_path, monkeypatch, capsys):
    """`eval ... --download` offline ended in a traceback (exit 1), and the --data-root it made stayed behind."""
    import urllib.error

    import torchvision

    from robgen.cli import main

    def offline(root, *args, **kwargs):
        Path(root, "cifar-10-batches-py").mkdir(parents=True)  # as torchvision makes its folders before fetching
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    root = tmp_path / "new" / "data"
    code = main(["eval", "--model", "cifar10-resnet10-standard", "--data", "cifar10", "--limit", "4", "--steps", "0",
                 "--device", "cpu", "--data-root", str(root), "--download"])
    assert code == 2
    assert "error: could not download cifar10 into" in capsys.readouterr().err
    assert not (tmp_path / "new").exists(), "the folders the failed download made are gone"
    kept = tmp_path / "mine"
    (kept / "notes").mkdir(parents=True)
    (kept / "notes" / "readme.txt").write_text("mine")
    assert main(["eval", "--model", "cifar10-resnet10-standard", "--data", "cifar10", "--limit", "4", "--steps", "0",
                 "--device", "cpu", "--data-root", str(kept / "data"), "--download"]) == 2
    assert (kept / "notes" / "readme.txt").read_text() == "mine" and not (kept / "data").exists()
