"""The synthesis commands: fit-seeds, synthesize, gradmap, synthesis-quality."""

import json

import pytest
import torch
from PIL import Image

import robgen
from robgen.cli import main
from robgen.energy import class_energy
from robgen.images import load_model_input
from robgen.synthesis import SEEDS_FILE, load_seeds
from robgen.synthesis.seeds import SeedDistribution
from tests.conftest import REPO, tiny_model

ROBUST = "cifar10-resnet10-robust"


def test_fit_seeds_writes_a_seed_file_next_to_the_checkpoint(tmp_path, toy_data, capsys):
    spec_model = tiny_model(num_classes=4)
    spec_model.spec.class_labels = ["class0", "class1", "class2", "class3"]
    folder = robgen.save_checkpoint(spec_model, tmp_path / "toy-model")
    assert main(["fit-seeds", "--model", str(folder), "--data", str(toy_data), "--resolution", "4"]) == 0
    seeds = load_seeds(robgen.load_model(folder))
    assert (folder / SEEDS_FILE).is_file() and seeds.resolution == 4
    # the class colours of the toy data come back as the seeds' means: class0 is red
    red = seeds.means[0].view(3, 4, 4).mean((1, 2))
    assert float(red[0]) > 0.6 and float(red[1]) < 0.4
    assert main(["fit-seeds", "--model", str(folder), "--data", str(toy_data)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_fit_seeds_takes_the_data_every_other_command_takes(tmp_path, capsys):
    """Imagenette's own folder names its classes by WordNet id; fit-seeds compared them with the model's labels
    (names) and refused the data zoo, detect and ablation accept. The seeds are named by the model's labels."""
    from robgen import data

    images = tmp_path / "imagenette-folder"
    for index, wnid in enumerate(data.IMAGENETTE_CLASSES):
        (images / wnid).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (20 * index, 40 * i, 0)).save(images / wnid / f"{i}.png")
    model = tiny_model(num_classes=10)
    model.spec.class_labels = list(data.IMAGENETTE_CLASSES.values())
    model.spec.input_size = (3, 16, 16)
    folder = robgen.save_checkpoint(model, tmp_path / "nette-model")
    assert main(["fit-seeds", "--model", str(folder), "--data", str(images), "--resolution", "2"]) == 0, \
        capsys.readouterr().err
    assert load_seeds(robgen.load_model(folder)).class_labels == list(data.IMAGENETTE_CLASSES.values())
    other = tmp_path / "other-folder"  # folders that name other classes: other data, refused
    for index, name in enumerate("abcdefghij"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (20 * index, 0, 0)).save(other / name / "0.png")
    assert main(["fit-seeds", "--model", str(folder), "--data", str(other), "--overwrite"]) == 2
    assert "are not the model's classes" in capsys.readouterr().err


def test_synthesize_writes_a_grid_of_classes_by_samples(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synthesize", "--model", ROBUST, "--classes", "cat", "8", "--n", "3", "--steps", "4",
                 "--out", str(out), "--scale", "2"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert [row["class"] for row in report["classes"]] == ["cat", "ship"]
    assert len(report["traces"]["cat"]["target_prob"]) == 5
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 3 * 64 and grid.height >= 2 * 64
    assert main(["synthesize", "--model", ROBUST, "--classes", "unicorn", "--out", str(tmp_path / "x")]) == 2
    assert "unknown class 'unicorn'" in capsys.readouterr().err
    # a class named twice kept one trace for two rows (the second replaced the first): refused before any work
    assert main(["synthesize", "--model", ROBUST, "--classes", "cat", "3", "--out", str(tmp_path / "y")]) == 2
    assert "names cat more than once" in capsys.readouterr().err and not (tmp_path / "y").exists()
    # a model without seeds was told of init='uniform', the library's words, after loading: now the command's
    bare = robgen.save_checkpoint(tiny_model(), tmp_path / "bare")
    assert main(["synthesize", "--model", str(bare), "--out", str(tmp_path / "z")]) == 2
    assert "or pass --init uniform or gray" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_synthesize_by_sgld_and_from_an_image_file(tmp_path, monkeypatch):
    from robgen import plots

    drawn, draw = [], plots.image_grid

    def recording_grid(grid, *args, **kwargs):  # the (classes, n, C, H, W) images that grid.png shows
        drawn.append(grid.clone())
        return draw(grid, *args, **kwargs)

    monkeypatch.setattr(plots, "image_grid", recording_grid)
    out = tmp_path / "sgld"
    photo = REPO / "examples" / "astronaut.png"  # black pixels: a step past 0 must be clipped
    assert main(["synthesize", "--model", ROBUST, "--classes", "0", "--n", "2", "--steps", "3", "--method", "sgld",
                 "--init", str(photo), "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["method"] == "sgld" and (out / "grid.png").is_file() and len(drawn) == 1
    model = robgen.load_model(ROBUST)
    start = load_model_input(photo, model.spec)
    images = drawn[0][0]
    assert images.shape == (2, *start.shape)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert all(float((image - start).abs().max()) > 1 / 255 for image in images), "each chain moved from the photo"
    # SGLD descends E(x, y) of the class (airplane, 0): lower at the end than at the photo, in the model and the trace
    with torch.no_grad():
        energy_start = float(class_energy(model(start[None]), torch.tensor([0]))[0])
        energy_end = float(class_energy(model(images), torch.tensor([0, 0])).mean())
    assert energy_end < energy_start
    trace = report["traces"]["airplane"]
    assert trace["step"] == [0, 1, 2, 3]
    assert -trace["loss"][0] == pytest.approx(energy_start, abs=1e-3)  # the trace's loss is -E(x, y)
    assert -trace["loss"][-1] == pytest.approx(energy_end, abs=1e-3)


def test_gradmap_draws_every_model_side_by_side(tmp_path, capsys):
    out = tmp_path / "maps.png"
    assert main(["gradmap", "--models", "cifar10-resnet10-standard", ROBUST, "--out", str(out),
                 str(REPO / "examples" / "chelsea.png"), str(REPO / "examples" / "coffee.png")]) == 0
    with Image.open(out) as figure:
        assert figure.width > figure.height  # 2 rows of 5 panels
    assert main(["gradmap", "--models", ROBUST, "--out", str(tmp_path / "bad.png"), str(REPO / "README.md")]) == 2
    assert "README.md" in capsys.readouterr().err


def test_gradmap_gives_each_model_the_images_at_its_own_input_size(tmp_path, monkeypatch, capsys):
    """The Imagenette standard model takes 160 px, the robust one 128: each gets its own view of the photo;
    models of different classes are refused."""
    import robgen.plots

    drawn = {}
    real = robgen.plots.gradient_maps
    monkeypatch.setattr(robgen.plots, "gradient_maps",
                        lambda images, gradients, path: drawn.update(images=images, gradients=gradients)
                        or real(images, gradients, path))
    out = tmp_path / "maps.png"
    assert main(["gradmap", "--models", "imagenette-resnet10-standard", "imagenette-resnet10-robust", "--out", str(out),
                 str(REPO / "examples" / "chelsea.png")]) == 0
    sides = {name: robgen.load_model(name).spec.input_size[-1] for name in drawn["gradients"]}
    assert {name: grad.shape[-1] for name, grad in drawn["gradients"].items()} == sides
    assert len(set(sides.values())) == 2 and out.is_file()
    assert main(["gradmap", "--models", "imagenette-resnet10-robust", ROBUST, "--out", str(tmp_path / "x.png"),
                 str(REPO / "examples" / "chelsea.png")]) == 2
    assert "different classes" in capsys.readouterr().err


def test_synthesis_quality_writes_the_judge_table(tmp_path):
    out = tmp_path / "quality"
    assert main(["synthesis-quality", "--models", ROBUST, "--judges", "cifar10-resnet10-standard", ROBUST,
                 "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    generators = {row["generator"] for row in result["rows"]}
    assert generators == {ROBUST, "seeds only (no ascent)"}
    assert "samples from" in (out / "results.md").read_text() and (out / f"grid_{ROBUST}.png").is_file()


def test_fit_detector_stores_the_detector_and_its_calibration_energies(tmp_path, toy_data, capsys):
    model = tiny_model(num_classes=4)
    model.spec.class_labels = ["class0", "class1", "class2", "class3"]
    model.spec.input_size = (3, 16, 16)
    folder = robgen.save_checkpoint(model, tmp_path / "toy-model")
    arguments = ["fit-detector", "--model", str(folder), "--data", str(toy_data), "--val-size", "40", "--limit", "20",
                 "--steps", "2", "--device", "cpu"]
    assert main(arguments) == 0
    from robgen.experiments.calibration import load_shipped_detector

    detector = load_shipped_detector(robgen.load_model(folder))
    calibration = detector.calibration
    assert len(calibration["clean_energy"]) == len(calibration["adversarial_energy"]) == 20
    assert calibration["n_test"] == 20 and "detection_rate" in calibration["test"]
    assert min(calibration["clean_energy"]) <= detector.threshold <= max(calibration["clean_energy"] + calibration["adversarial_energy"])
    assert main(arguments) == 2 and "--overwrite" in capsys.readouterr().err


def test_fit_detector_takes_the_false_positive_budget_of_rule_fpr(tmp_path, toy_data):
    """`fit-detector --rule fpr` fitted at 5% whatever was wanted (it had no --target-fpr): a larger budget now
    records itself and lifts the threshold over more of the clean validation energies (stored rounded to 4
    decimals for the histogram, hence the margin)."""
    from robgen.experiments.calibration import load_shipped_detector

    model = tiny_model(num_classes=4)
    model.spec.class_labels = ["class0", "class1", "class2", "class3"]
    model.spec.input_size = (3, 16, 16)
    folder = robgen.save_checkpoint(model, tmp_path / "toy-model")
    thresholds = {}
    for budget in (0.05, 0.3):
        arguments = ["fit-detector", "--model", str(folder), "--data", str(toy_data), "--val-size", "40", "--limit",
                     "20", "--steps", "2", "--device", "cpu", "--rule", "fpr", "--target-fpr", str(budget),
                     "--temperature", "1", "--overwrite"]
        assert main(arguments) == 0
        detector = load_shipped_detector(robgen.load_model(folder))
        flagged = sum(energy < detector.threshold - 1e-4 for energy in detector.calibration["clean_energy"])
        assert detector.target_fpr == budget and flagged <= budget * 20, budget
        thresholds[budget] = detector.threshold
    assert thresholds[0.3] > thresholds[0.05], "the larger budget is used, not 5%"


def test_synthesis_commands_refuse_settings_they_would_misuse_and_record_what_they_used(tmp_path, capsys):
    """SGLD --step-size 0 ran with 1 (0 read as "not given"); --scale 0 wrote an empty grid, -2 crashed after all
    the work; fit-seeds --resolution 0 wrote seeds no sample could use; gradmap --out NAME wrote NAME.png past
    the overwrite check. results.json now records the settings the method used."""
    common = ["synthesize", "--model", ROBUST, "--classes", "cat", "--n", "1", "--steps", "1"]
    assert main(common + ["--method", "sgld", "--step-size", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--step-size must be > 0" in capsys.readouterr().err
    for scale in ("0", "-2"):
        assert main(common + ["--scale", scale, "--out", str(tmp_path / "b")]) == 2
        assert "--scale must be at least 1" in capsys.readouterr().err
    assert main(common + ["--method", "sgld", "--init", "uniform", "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "results.json").read_text())
    assert (report["n"], report["step_size"], report["noise"]) == (1, 1.0, 0.01)
    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "tiny")
    assert main(["fit-seeds", "--model", str(folder), "--data", "cifar10", "--resolution", "0"]) == 2
    assert "--resolution must be at least 1" in capsys.readouterr().err and not (folder / SEEDS_FILE).exists()
    maps = ["gradmap", "--models", ROBUST, "--out", str(tmp_path / "maps"), str(REPO / "examples" / "chelsea.png")]
    assert main(maps) == 0 and (tmp_path / "maps.png").is_file()
    assert main(maps) == 2 and "maps.png exists" in capsys.readouterr().err


def test_synthesis_refuses_seeds_of_other_classes_and_init_pixels_outside_0_1():
    from robgen.synthesis import sgld_sample, synthesize

    model = robgen.load_model(ROBUST)
    seeds = load_seeds(model)
    seeds.class_labels = seeds.class_labels[:4] + ["unicorn"] + seeds.class_labels[5:]
    with pytest.raises(ValueError, match="was fitted for the classes .* not this model's"):
        synthesize(model, "cat", 1, steps=1, seeds=seeds)
    labels = torch.arange(10).repeat(2)  # seeds fitted on grayscale images of the model's classes
    gray = SeedDistribution.fit([(torch.rand(20, 1, 32, 32), labels)], model.spec.class_labels, rank=2, progress=False)
    with pytest.raises(ValueError, match="fitted on images of 1 channel.*this model takes 3"):
        synthesize(model, "cat", 1, steps=1, seeds=gray)
    with pytest.raises(ValueError, match="0-255"):
        sgld_sample(model, "cat", 1, steps=1, init=torch.full((1, 3, 32, 32), 200.0))


def test_gradmap_never_writes_over_an_input_image_and_the_sweep_needs_a_candidate(tmp_path, capsys):
    """gradmap --overwrite --out cat.png cat.png replaced the photo with the figure; budget-sweep with the reference
    alone did all its work and reported that no candidate was eligible."""
    import shutil

    photo = tmp_path / "cat.png"
    shutil.copy(REPO / "examples" / "chelsea.png", photo)
    before = photo.read_bytes()
    assert main(["gradmap", "--models", ROBUST, "--out", str(photo), "--overwrite", str(photo)]) == 2
    assert "is one of the input images" in capsys.readouterr().err and photo.read_bytes() == before
    assert main(["budget-sweep", "--models", "cifar10-resnet10-standard", "--judge", ROBUST, "--data", "cifar10",
                 "--out", str(tmp_path / "sweep")]) == 2
    assert "names only the reference (cifar10-resnet10-standard)" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_the_budget_sweep_refuses_two_models_of_one_folder_name(tmp_path, capsys):
    """runs/A/best and runs/B/best were both "best": the second replaced the first, unmeasured and unsaid."""
    folders = [robgen.save_checkpoint(tiny_model(seed=seed), tmp_path / run / "best") for seed, run in enumerate("AB")]
    arguments = ["budget-sweep", "--models", *map(str, folders), "--judge", ROBUST, "--data", "cifar10",
                 "--out", str(tmp_path / "sweep")]
    assert main(arguments) == 2
    assert "share the folder name best" in capsys.readouterr().err and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("command", ["synthesis-quality", "gradmap"])
def test_synthesis_quality_and_gradmap_refuse_two_models_of_one_folder_name(tmp_path, capsys, command):
    """Keyed by folder name, runs/A/best and runs/B/best became one entry: the second silently replaced the first."""
    folders = [str(robgen.save_checkpoint(tiny_model(seed=seed), tmp_path / run / "best")) for seed, run in enumerate("AB")]
    out, image = tmp_path / "out", str(REPO / "examples" / "chelsea.png")
    if command == "gradmap":
        arguments = ["gradmap", "--models", *folders, "--out", str(out), image]
    else:
        arguments = ["synthesis-quality", "--models", *folders, "--judges", ROBUST, "--out", str(out)]
    assert main(arguments) == 2
    assert "share the folder name best" in capsys.readouterr().err and not out.exists()
    same_twice = [folders[0], folders[0] + "/"]  # one model, written twice: fine
    if command == "gradmap":
        assert main(["gradmap", "--models", *same_twice, "--out", str(out), image]) == 0


def test_a_class_draws_the_same_images_whatever_other_classes_are_named(tmp_path, monkeypatch):
    """One generator served every class in turn: with the same --seed, dog's samples changed with the classes named
    before it (mean p 0.716 alone, 0.813 after cat). `--init=~/photo.png` (no shell expands that `~`) was "neither
    gaussian, uniform, gray nor an image file"."""
    import shutil

    from robgen import plots

    drawn, draw = [], plots.image_grid

    def recording_grid(grid, *args, **kwargs):
        drawn.append(grid.clone())
        return draw(grid, *args, **kwargs)

    monkeypatch.setattr(plots, "image_grid", recording_grid)
    for classes, out in ((["dog"], "alone"), (["cat", "dog"], "second")):
        assert main(["synthesize", "--model", ROBUST, "--classes", *classes, "--n", "2", "--steps", "2",
                     "--seed", "5", "--out", str(tmp_path / out)]) == 0
    assert torch.equal(drawn[0][0], drawn[1][1])
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(REPO / "examples" / "astronaut.png", tmp_path / "photo.png")
    assert main(["synthesize", "--model", ROBUST, "--classes", "dog", "--n", "1", "--steps", "1",
                 "--init=~/photo.png", "--out", str(tmp_path / "from-photo")]) == 0


def test_the_quality_commands_take_every_seed_their_parser_takes(tmp_path):
    """seed * 1000 + k overflowed torch's 64-bit seed above about 1.8e16 ('Overflow when unpacking long long'),
    after the models had loaded."""
    out = tmp_path / "quality"
    assert main(["synthesis-quality", "--models", ROBUST, "--judges", "cifar10-resnet10-standard", "--n", "2",
                 "--steps", "1", "--init", "uniform", "--seed", str(2**63 - 1), "--out", str(out)]) == 0


def test_the_budget_sweep_needs_seeds_of_the_reference_alone(tmp_path):
    """Every candidate was asked for a seeds.safetensors, though all start from the reference's seeds."""
    unseeded = robgen.save_checkpoint(robgen.load_model("cifar10-resnet10-quasirobust"), tmp_path / "quasi")
    assert not (unseeded / SEEDS_FILE).exists()
    assert main(["budget-sweep", "--models", "cifar10-resnet10-standard", str(unseeded), "--judge", ROBUST,
                 "--data", "cifar10", "--limit", "8", "--n", "2", "--steps", "1", "--out", str(tmp_path / "sweep")]) == 0
