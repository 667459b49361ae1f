import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robgen
from robgen.cli import main
from tests.conftest import REPO, tiny_model


@pytest.fixture
def checkpoint(tmp_path):
    return robgen.save_checkpoint(tiny_model(), tmp_path / "tiny")


@pytest.fixture
def images(tmp_path):
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(2):
        x = torch.randint(0, 256, (3, 40, 48), generator=g).float() / 255
        paths.append(robgen.save_image(x, tmp_path / f"photo{i}.png"))
    return paths


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "robgen", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "attack" in result.stdout and "detect" in result.stdout


@pytest.mark.parametrize("crop_pct, side", [(1.0, 32), (0.875, 36)])
def test_attack_writes_pngs_inside_the_ball_and_a_report(tmp_path, images, capsys, crop_pct, side):
    """The PNGs read back through the model's eval transform as the attacked pixels: at crop_pct 1 the model's
    32x32 input, at 0.875 the photo resized to 36x36 around it (written as 32x32, the transform would resize
    it again and the model would see another image)."""
    from robgen.images import load_model_input

    net = tiny_model()
    net.spec.crop_pct = crop_pct
    checkpoint = robgen.save_checkpoint(net, tmp_path / "tiny")
    out = tmp_path / "out"
    code = main(["attack", "--model", str(checkpoint), "--attack", "pgd", "--eps", "8/255", "--steps", "3",
                 "--out", str(out), *map(str, images)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert len(report["images"]) == 2 and report["trace"]["step"] == [0, 1, 2, 3]
    model = robgen.load_model(checkpoint)
    assert model.spec.crop_pct == crop_pct
    for row, photo in zip(report["images"], images):
        assert robgen.load_image(out / row["adversarial_png"]).shape == (3, side, side)
        clean = load_model_input(out / row["clean_png"], model.spec)
        adv = load_model_input(out / row["adversarial_png"], model.spec)
        assert torch.equal(clean, load_model_input(photo, model.spec)), "the clean file is the photo as the model sees it"
        assert 0 < (adv - clean).abs().max() <= 8 / 255 + 1e-6
        with torch.no_grad():
            e = robgen.energy(model(adv[None]))
        assert row["adversarial"]["energy"] == pytest.approx(float(e), abs=1e-4), "report describes the PNG"
    assert "->" in capsys.readouterr().out


def test_attack_on_a_crop_pct_above_1_model_writes_the_inputs_themselves(tmp_path, images):
    """Its eval transform pads a picture with black, so no file reads back as the input: the command crashed with a
    traceback after the whole attack and wrote nothing. It writes the inputs as they are, as the app does, and
    says so in results.json."""
    net = tiny_model()
    net.spec.crop_pct = 1.15
    checkpoint = robgen.save_checkpoint(net, tmp_path / "wide")
    out = tmp_path / "out"
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out), *map(str, images)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert "pads a picture with black" in report["files"]
    for row in report["images"]:
        clean, adv = (robgen.load_image(out / row[name]) for name in ("clean_png", "adversarial_png"))
        assert clean.shape == adv.shape == (3, 32, 32) and 0 < float((adv - clean).abs().max()) <= 8 / 255 + 1e-6


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, checkpoint, images, toy_data, capsys):
    """--out under a file ran the whole command (train: an epoch; eval, fit-seeds, gradmap: their work) and ended in
    a FileExistsError or NotADirectoryError traceback."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    under = str(blocker / "sub")
    calls = {
        "attack": ["attack", "--model", str(checkpoint), "--steps", "1", "--out", under, str(images[0])],
        "gradmap": ["gradmap", "--model", str(checkpoint), "--out", under + "/maps.png", str(images[0])],
        "eval": ["eval", "--model", str(checkpoint), "--data", str(toy_data), "--steps", "0", "--out", under + "/e.json"],
        "train": ["train", "--data", str(toy_data), "--arch", "resnet10_cifar", "--width", "4", "--epochs", "1",
                  "--out", under],
        "adaptive": ["adaptive", "--model", str(checkpoint), "--data", str(toy_data), "--detector", "energy",
                     "--limit", "4", "--steps", "1", "--out", under],
        "fit-seeds": ["fit-seeds", "--model", str(checkpoint), "--data", str(toy_data), "--out", under + "/s.safetensors"],
    }
    for command, argv in calls.items():
        capsys.readouterr()
        assert main(argv) == 2, command
        message = capsys.readouterr().err
        assert "has a file on its way" in message and str(blocker) in message, (command, message)
    assert blocker.read_text() == "not a folder"
    # a file --out whose folder is a file: the message quoted the folder as --out, "a folder to write into"
    # (a review, 2026-12-07)
    for argv in (calls["eval"][:-1] + [str(blocker / "e.json")], calls["gradmap"][:-2] + [str(blocker / "m.png"),
                                                                                          str(images[0])]):
        assert main(argv) == 2
        message = capsys.readouterr().err
        assert f"--out {argv[argv.index('--out') + 1]}: its folder {blocker} is a file; choose another" in message, \
            message


def test_targeted_attack_by_label(tmp_path, checkpoint, images):
    out = tmp_path / "o"
    code = main(["attack", "--model", str(checkpoint), "--target", "c5", "--steps", "5", "--step-size", "2/255",
                 "--out", str(out), str(images[0])])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["target"] == "c5"
    # the written PNG, read back, is pulled toward class 5 ("c5") more than toward any other class
    # (an untargeted attack on this model and image raises class 0 most)
    model = robgen.load_model(checkpoint)
    row = report["images"][0]
    clean = robgen.load_image(out / row["clean_png"])
    adv = robgen.load_image(out / row["adversarial_png"])
    with torch.no_grad():
        log_p_clean, log_p_adv = model(torch.stack([clean, adv])).log_softmax(1)
    assert log_p_adv[5] > log_p_clean[5]
    assert int((log_p_adv - log_p_clean).argmax()) == 5, (log_p_adv - log_p_clean).tolist()
    assert report["trace"]["target_prob"][-1] > report["trace"]["target_prob"][0], "the trace follows p(c5)"


def test_attack_input_errors_say_what_to_fix(tmp_path, checkpoint, images, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["attack", "--model", str(checkpoint), "--out", str(out), str(images[0]), str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt is not an image" in capsys.readouterr().err
    assert not out.exists(), "nothing was written"
    assert main(["attack", "--model", "nope", "--out", str(out), str(images[0])]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["attack", "--model", str(checkpoint), "--eps", "8", "--out", str(out), str(images[0])]) == 2
    assert "8/255" in capsys.readouterr().err
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out), str(images[0])]) == 0
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out), str(images[0])]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "--model", str(checkpoint), "--eps", "eight", "--out", str(out), str(images[0])])


def test_attack_gives_every_input_its_own_files_whatever_the_names(tmp_path, checkpoint):
    """x/cat.png, cat-2.png, y/cat.png: the third was renamed cat-2 and overwrote the second's PNGs."""
    import json

    g = torch.Generator().manual_seed(1)
    paths = []
    for place in ("x/cat.png", "cat-2.png", "y/cat.png", "cat-3.png"):
        (tmp_path / place).parent.mkdir(parents=True, exist_ok=True)
        paths.append(robgen.save_image(torch.rand(3, 32, 32, generator=g), tmp_path / place))
    out = tmp_path / "out"
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out), *map(str, paths)]) == 0
    rows = json.loads((out / "results.json").read_text())["images"]
    names = [row["clean_png"] for row in rows]
    assert len(set(names)) == len(paths), names
    for path, row in zip(paths, rows):  # each file is its own input, read back
        assert torch.equal(robgen.load_image(out / row["clean_png"]), robgen.load_image(path))


def test_detect_refuses_a_model_of_other_classes(tmp_path, cifar_root, capsys):
    five = robgen.save_checkpoint(tiny_model(num_classes=5), tmp_path / "five")
    code = main(["detect", "--model", str(five), "--data", "cifar10", "--data-root", str(cifar_root),
                 "--limit", "10", "--out", str(tmp_path / "d")])
    assert code == 2 and "5 classes but cifar10 has 10" in capsys.readouterr().err


def test_detect_fits_and_evaluates_on_real_data(tmp_path, trained_checkpoint, cifar_root, monkeypatch):
    from robgen.experiments import pipeline

    runs, run_pipeline = [], pipeline.detection_experiment

    def recording_pipeline(*args, **kwargs):  # keeps the result: the test split's clean and attacked logits
        runs.append(run_pipeline(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(pipeline, "detection_experiment", recording_pipeline)
    out = tmp_path / "detect"
    code = main(["detect", "--model", str(trained_checkpoint), "--data", "cifar10", "--data-root", str(cifar_root),
                 "--steps", "10", "--alpha", "2/255", "--limit", "200", "--val-size", "1000", "--out", str(out)])
    assert code == 0 and len(runs) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    detector = robgen.EnergyDetector.load(out / "detector.json")
    assert metrics["threshold"] == detector.threshold
    assert metrics["n_test"] == 200 and metrics["n_validation"] == 200
    # the written rates are the written detector's, recomputed on the test split's logits
    clean, adversarial = runs[0].clean["test"], runs[0].adversarial["test"]
    assert clean.logits.shape == adversarial.logits.shape == (200, 10)
    recomputed = detector.evaluate(clean.logits, adversarial.logits)
    for key in ("detection_rate", "false_positive_rate", "false_negative_rate", "auroc", "threshold", "n_clean",
                "n_adversarial"):
        assert metrics[key] == pytest.approx(recomputed[key], abs=1e-12), key
    assert metrics["detection_rate"] == float(detector.predict(adversarial.logits).double().mean())
    assert metrics["false_positive_rate"] == float(detector.predict(clean.logits).double().mean())
    assert metrics["auroc"] > 0.5
    assert metrics["clean_accuracy"] == clean.accuracy and metrics["adversarial_accuracy"] == adversarial.accuracy
    assert metrics["adversarial_accuracy"] < metrics["clean_accuracy"]


def test_attack_in_batches_keeps_every_image(tmp_path, checkpoint, images):
    copy = tmp_path / "other" / images[0].name
    copy.parent.mkdir()
    copy.write_bytes(images[0].read_bytes())
    out = tmp_path / "batched"
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--batch-size", "1", "--out", str(out),
                 str(images[0]), str(images[1]), str(copy)]) == 0
    report = json.loads((out / "results.json").read_text())
    names = [row["adversarial_png"] for row in report["images"]]
    assert len(set(names)) == 3 and all((out / name).is_file() for name in names)


def test_each_command_group_module_holds_its_commands():
    from robgen.cli import attack, build_parser, detection, reproduce, synthesis, training

    groups = {attack: ["attack"], detection: ["detect", "fit-detector"], training: ["train", "eval", "models"],
              reproduce: ["reproduce"], synthesis: ["fit-seeds", "synthesize", "gradmap", "synthesis-quality"]}
    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    for module, names in groups.items():
        for name in names:
            assert commands[name].get_default("run").__module__ == module.__name__, name
    for name, parser in commands.items():  # later commands too: each in a command-group module
        assert parser.get_default("run").__module__ not in ("robgen.cli", "robgen.cli.common"), name


def test_detect_refuses_a_temperature_that_is_not_a_number(tmp_path, capsys):
    code = main(["detect", "--model", "nope", "--data", "cifar10", "--temperature", "warm", "--out", str(tmp_path / "d")])
    assert code == 2 and "--temperature must be a number or 'search', got 'warm'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["detect", "fit-detector"])
@pytest.mark.parametrize("flags, says", [
    (["--temperature", "0"], "temperature must be a finite number > 0"),
    (["--temperature", "nan"], "temperature must be a finite number > 0"),
    (["--temperature", "inf"], "temperature must be a finite number > 0"),
    (["--rule", "fpr", "--target-fpr", "1.5"], "--target-fpr must be in [0, 1), got 1.5"),
])
def test_detector_settings_are_refused_before_the_model_loads(tmp_path, capsys, command, flags, says):
    """They were checked only when the detector was fitted, after both splits had been attacked."""
    code = main([command, "--model", "nope", "--data", "cifar10", "--out", str(tmp_path / "d")] + flags)
    error = capsys.readouterr().err
    assert code == 2 and says in error and "unknown model" not in error
    assert not (tmp_path / "d").exists()


def test_attack_reads_images_through_the_models_eval_transform(tmp_path, images):
    model = tiny_model()
    model.spec.crop_pct, model.spec.interpolation = 0.5, "bilinear"
    folder = robgen.save_checkpoint(model, tmp_path / "cropping")
    out = tmp_path / "out"
    assert main(["attack", "--model", str(folder), "--steps", "1", "--out", str(out), str(images[0])]) == 0
    written = out / json.loads((out / "results.json").read_text())["images"][0]["clean_png"]
    spec = robgen.load_model(folder).spec
    expected = robgen.images.load_model_input(images[0], spec)
    plain = robgen.load_image(images[0], size=32)
    assert robgen.load_image(written).shape == (3, 64, 64), "the photo resized to 32 / 0.5 around the model's crop"
    clean = robgen.images.load_model_input(written, spec)
    assert torch.equal(clean, expected), "read back, the PNG is the model's view (crop 0.5, bilinear)"
    assert (clean - plain).abs().max() > 0.1, "not a plain resize"


def test_eval_record_writes_into_the_checkpoint_the_model_came_from(tmp_path, toy_data, capsys):
    import json

    import robgen
    from conftest import tiny_model

    folder = robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "four")
    args = ["eval", "--model", str(folder), "--data", str(toy_data), "--steps", "1", "--limit", "8", "--batch-size", "8"]
    assert main(args + ["--record"]) == 0
    recorded = json.loads((folder / "config.json").read_text())["metrics"]["eval"]
    (key, result), = recorded.items()
    assert key.endswith("-first8") and result["n"] == 8
    assert result["clean_accuracy_ci"][0] <= result["clean_accuracy"] <= result["clean_accuracy_ci"][1]
    capsys.readouterr()
    assert key == f"{toy_data.resolve()}-test-first8"  # the data set in one spelling: a trailing slash is none other
    assert main(args[:-4] + ["--data", str(toy_data) + "/", "--steps", "2", "--limit", "8", "--batch-size", "8",
                             "--record"]) == 0
    assert list(json.loads((folder / "config.json").read_text())["metrics"]["eval"]) == [key]
    note = capsys.readouterr().err
    assert "replaced the record" in note and "(PGD-1 at L∞ 8/255; now PGD-2 at L∞ 8/255)" in note
    # --out replaced any file without a word (the checkpoint's own config.json too), and a folder failed after the
    # whole evaluation with a traceback
    config = (folder / "config.json").read_bytes()
    assert main(args + ["--out", str(folder / "config.json")]) == 2
    assert "exists: choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert (folder / "config.json").read_bytes() == config
    assert main(args + ["--out", str(folder)]) == 2 and "is a folder" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "new") + "/"]) == 2 and "is a folder" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "eval.json")]) == 0
    assert main(args + ["--out", str(tmp_path / "eval.json"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 8
    # --split val --val-size N replaced the whole validation split's record, under a key that did not say N
    validation = ["eval", "--model", str(folder), "--data", str(toy_data), "--split", "val", "--steps", "0",
                  "--batch-size", "8", "--record"]
    assert main(validation + ["--val-size", "12"]) == 0 and main(validation + ["--val-size", "16"]) == 0
    records = json.loads((folder / "config.json").read_text())["metrics"]["eval"]
    assert records[f"{toy_data.resolve()}-val12"]["n"] == 12 and records[f"{toy_data.resolve()}-val16"]["n"] == 16
    # the command recorded is the one run, also when main(argv) is called from Python (it quoted sys.argv: pytest's)
    import shlex

    recorded = json.loads((tmp_path / "eval.json").read_text())["command"]
    assert recorded == "python -m robgen " + shlex.join(args + ["--out", str(tmp_path / "eval.json"), "--overwrite"])


def test_eval_on_the_validation_split_the_models_training_held_out(tmp_path, toy_data, capsys):
    import json

    import robgen
    from conftest import tiny_model
    from robgen import data

    model = tiny_model(num_classes=4)
    model.spec.training = {"data": {"name": str(toy_data), "val_size": 40, "split_seed": 3}}
    folder = robgen.save_checkpoint(model, tmp_path / "four")
    out = tmp_path / "val.json"
    assert main(["eval", "--model", str(folder), "--data", str(toy_data), "--split", "val", "--steps", "0",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 40 and result["split"] == "val"
    # the same 40 images as the training's held-out split (seed 3), measured directly
    _, held_out = data.train_val_split(data.load_dataset(str(toy_data), "train", spec=model.spec), 40, seed=3)
    direct = robgen.evaluation.evaluate_robustness(robgen.load_model(folder), held_out, steps=0, progress=False)
    assert result["clean_accuracy"] == direct["clean_accuracy"]
    capsys.readouterr()
    assert main(["eval", "--model", str(folder), "--data", str(toy_data), "--val-size", "10", "--steps", "0"]) == 2
    assert "give it with --split val" in capsys.readouterr().err
    # a folder of class folders has no test split: --split test measures the images trained on too, and says so
    assert main(["eval", "--model", str(folder), "--data", str(toy_data), "--split", "test", "--steps", "0",
                 "--limit", "8"]) == 0
    assert "the ones the model trained on included" in capsys.readouterr().err


def test_numbers_may_be_fractions_of_decimals_divided_exactly():
    import argparse

    from robgen.cli.common import UsageError, parse_number, parse_numbers

    assert parse_number("8/255") == 8 / 255 and parse_number("0.5/255") == 1 / 510 and parse_number("0.03") == 0.03
    assert parse_numbers("0.5/255, 8/255,1e-3", "--eps") == (1 / 510, 8 / 255, 0.001)
    for bad in ("1/0", "a/2", "1/2/3", "8/", "1e400/1"):
        with pytest.raises(UsageError, match="takes numbers separated by commas"):
            parse_numbers(bad, "--eps")
        with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
            parse_number(bad)


@pytest.mark.parametrize("name, says", [("gpu", "is not a device: use auto, cpu, cuda or cuda:N"),
                                        ("CUDA", "is not a device")])
def test_a_device_name_torch_does_not_know_is_a_usage_error(name, says):
    from robgen.cli.common import UsageError, pick_device

    with pytest.raises(UsageError, match=says):
        pick_device(name)
    assert pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("argv", [
    ["attack", "--model", "m", "--out=~/robgen-out", "a.png"],
    ["adaptive", "--model", "m", "--data", "cifar10", "--out=~/robgen-out", "--detector-file=~/robgen-out"],
    ["gradmap", "--out=~/robgen-out", "--models", "m", "--", "a.png"],
    ["fit-detector", "--model", "m", "--data", "cifar10", "--out=~/robgen-out"],
])
def test_a_path_after_an_equals_sign_starts_at_the_home_folder(argv):
    # "--out=~/x" reaches the program with its "~": no shell expands it after "="
    from robgen.cli import build_parser

    args = build_parser().parse_args(argv)
    home = str(Path.home() / "robgen-out")
    assert args.out == home
    assert getattr(args, "detector_file", [home]) == [home]


def test_attack_and_synthesize_work_for_a_grayscale_model(tmp_path, images):
    """A one-channel model (timm's in_chans=1) read every file as three channels and failed on its first image;
    now its files are its luma, its PNGs and grids are grayscale."""
    from PIL import Image

    from robgen.images import load_model_input
    from robgen.models import Classifier, ModelSpec
    from robgen.models.checkpoint import build_network

    torch.manual_seed(0)
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=3, class_labels=["a", "b", "c"],
                     input_size=(1, 28, 28), mean=(0.5,), std=(0.25,), arch_kwargs={"width": 4})
    checkpoint = robgen.save_checkpoint(Classifier(build_network(spec), spec).eval(), tmp_path / "gray")
    out = tmp_path / "out"
    assert main(["attack", "--model", str(checkpoint), "--steps", "3", "--out", str(out), str(images[0])]) == 0
    row = json.loads((out / "results.json").read_text())["images"][0]
    clean = load_model_input(out / row["clean_png"], spec)
    adv = load_model_input(out / row["adversarial_png"], spec)
    assert clean.shape == (1, 28, 28) and Image.open(out / row["adversarial_png"]).mode == "L"
    assert torch.equal(clean, load_model_input(images[0], spec))
    assert 0 < (adv - clean).abs().max() <= 8 / 255 + 1e-6
    assert main(["synthesize", "--model", str(checkpoint), "--steps", "2", "--n", "2", "--init", "uniform",
                 "--out", str(tmp_path / "syn")]) == 0
    assert Image.open(tmp_path / "syn" / "grid.png").size[0] > 0


def test_output_paths_and_counts_that_cannot_work_are_refused_and_a_refused_run_leaves_no_folder(
        tmp_path, checkpoint, images, capsys):
    """A review's list: --out naming a file gave FileExistsError/NotADirectoryError tracebacks; --batch-size 0 a
    ZeroDivision-like error deep inside; a run refused after its --out folder was made left it there, empty;
    --out "" (an unset $OUT) wrote into the current folder; "newdir/" became a file named newdir; gradmap's
    "maps-eps0.03" failed (format "03") after computing every gradient."""
    (tmp_path / "afile").write_text("mine")
    assert main(["attack", "--model", str(checkpoint), "--out", str(tmp_path / "afile"), str(images[0])]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"
    with pytest.raises(SystemExit) as stopped:
        main(["attack", "--model", str(checkpoint), "--batch-size", "0", "--out", str(tmp_path / "o"), str(images[0])])
    assert stopped.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "--model", str(checkpoint), "--out", "", str(images[0])])
    assert "an empty path" in capsys.readouterr().err
    assert main(["attack", "--model", str(checkpoint), "--target", "dog", "--out", str(tmp_path / "refused"),
                 str(images[0])]) == 2
    assert not (tmp_path / "refused").exists(), "the refused run's empty folder is gone"
    assert main(["gradmap", "--models", str(checkpoint), "--out", str(tmp_path / "maps-eps0.03"), str(images[0])]) == 2
    assert "end it with .png" in capsys.readouterr().err
    assert main(["gradmap", "--models", str(checkpoint), "--out", str(tmp_path / "figs") + "/", str(images[0])]) == 2
    assert "names a folder" in capsys.readouterr().err  # (it wrote figs.png)
    (tmp_path / "maps").mkdir()  # an existing folder named without a slash: it wrote maps.png beside it
    assert main(["gradmap", "--models", str(checkpoint), "--out", str(tmp_path / "maps"), str(images[0])]) == 2
    assert "is a folder" in capsys.readouterr().err and not (tmp_path / "maps.png").exists()


def test_a_companion_file_given_a_new_folder_goes_inside_it(tmp_path, toy_data):
    """fit-seeds / fit-detector --out newdir/ (not yet made) wrote a file named newdir."""
    from conftest import tiny_model

    folder = robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "four")
    assert main(["fit-seeds", "--model", str(folder), "--data", str(toy_data), "--limit", "40",
                 "--out", str(tmp_path / "newdir") + "/"]) == 0
    assert (tmp_path / "newdir").is_dir() and (tmp_path / "newdir" / "seeds.safetensors").is_file()


def test_a_corrupt_image_in_a_data_set_is_named(tmp_path, toy_data, capsys):
    """A truncated PNG among a data set's images stopped `detect` part-way with PIL's "image file is truncated",
    naming no file (and a traceback)."""
    import shutil

    from conftest import tiny_model

    data = shutil.copytree(toy_data, tmp_path / "data")
    broken = sorted(data.rglob("*.png"))[3]
    broken.write_bytes(broken.read_bytes()[:60])
    folder = robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "four")
    assert main(["detect", "--model", str(folder), "--data", str(data), "--val-size", "40", "--steps", "1",
                 "--out", str(tmp_path / "det")]) == 2
    error = capsys.readouterr().err
    assert broken.name in error and "could not be read" in error and "remove or replace it" in error
    assert not (tmp_path / "det").exists(), "nothing was written: the folder it made is gone"


def test_a_setting_the_chosen_method_would_ignore_is_refused(tmp_path, checkpoint, images, capsys, toy_data):
    """--lam with PGD, --steps with FGSM, --target-fpr without --rule fpr, --noise with ascent, --milestones without
    --schedule multistep ... were ignored without a word (and some recorded as if used)."""
    attack = ["attack", "--model", str(checkpoint), "--out", str(tmp_path / "a"), str(images[0])]
    for extra, flag in ((["--lam", "3"], "--lam"), (["--attack", "fgsm", "--steps", "40"], "--steps"),
                        (["--attack", "apgd", "--step-size", "2/255"], "--step-size")):
        assert main(attack + extra) == 2
        assert f"does not take {flag}" in capsys.readouterr().err
    assert main(attack + ["--attack", "hepgd", "--lam", "3", "--steps", "2"]) == 0
    detect = ["detect", "--model", str(checkpoint), "--data", str(toy_data), "--out", str(tmp_path / "d")]
    assert main(detect + ["--target-fpr", "0.01"]) == 2 and "--rule fpr" in capsys.readouterr().err
    assert main(detect + ["--temperature", "1", "--temperatures", "0.5,2"]) == 2
    assert "would be ignored" in capsys.readouterr().err
    synth = ["synthesize", "--model", str(checkpoint), "--out", str(tmp_path / "s"), "--init", "Uniform", "--n", "1",
             "--steps", "1", "--classes", "c1"]
    assert main(synth + ["--noise", "0.5"]) == 2 and "does not take --noise" in capsys.readouterr().err
    assert main(synth + ["--method", "sgld", "--eps", "3"]) == 2 and "does not take --eps" in capsys.readouterr().err
    assert main(synth) == 0, "--init is read in any case"
    assert main(synth[:-6] + ["--init", "nowhere.png"]) == 2
    assert "neither gaussian, uniform, gray nor an image file" in capsys.readouterr().err
    assert main(["train", "--data", str(toy_data), "--milestones", "1,2", "--out", str(tmp_path / "t")]) == 2
    assert "milestones would be ignored" in capsys.readouterr().err


def test_flags_that_change_nothing_are_refused_even_when_they_repeat_the_default(tmp_path, checkpoint, images,
                                                                                  toy_data, capsys):
    """eval --steps 0 --eps 0.5 --norm l2 printed clean accuracy alone, the attack's flags ignored; attack --attack
    fgsm --steps 10 passed because 10 is the default, where --steps 5 was refused; detect --temperatures 1,1 searched
    1 twice and 0.1,,1 dropped the blank."""
    evaluate = ["eval", "--model", str(checkpoint), "--data", str(toy_data), "--limit", "4", "--steps", "0"]
    for extra in (["--eps", "0.5"], ["--norm", "l2"], ["--step-size=0.1"], ["--ep", "0.9"], ["--nor", "l2"]):
        assert main(evaluate + extra) == 2
        assert "--steps 0 measures clean accuracy only" in capsys.readouterr().err
    attack = ["attack", "--model", str(checkpoint), "--out", str(tmp_path / "a"), str(images[0]), "--attack", "fgsm"]
    assert main(attack + ["--steps", "10"]) == 2 and "does not take --steps" in capsys.readouterr().err
    assert main(attack + ["--lam=1.2"]) == 2 and "does not take --lam" in capsys.readouterr().err
    assert main(attack + ["--la", "1.2"]) == 2 and "does not take --lam" in capsys.readouterr().err  # abbreviated
    detect = ["detect", "--model", str(checkpoint), "--data", str(toy_data), "--out", str(tmp_path / "d")]
    for grid, says in (("1,1", "names 1 twice"), ("0.1,,1", "has an empty entry"),
                       ("0,1", "must be finite numbers > 0")):
        with pytest.raises(SystemExit):
            main(detect + ["--temperatures", grid])
        assert says in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_more_numbers_that_cannot_work_are_refused_with_what_to_enter(tmp_path, checkpoint, images, capsys, toy_data):
    """--eps inf was "eps must be > 0, got inf"; zoo --temperature abc "could not convert string to float";
    --grid-columns 0 drew grids without samples; fit-seeds --resolution 64 on 32-px images ran for minutes."""
    with pytest.raises(SystemExit):
        main(["attack", "--model", str(checkpoint), "--eps", "inf", "--out", str(tmp_path / "a"), str(images[0])])
    assert "not a finite number: 'inf'" in capsys.readouterr().err
    assert main(["zoo", "--model", str(checkpoint), "--data", str(toy_data), "--temperature", "abc",
                 "--out", str(tmp_path / "z")]) == 2
    assert "--temperature must be a number or 'search'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synthesis-quality", "--models", str(checkpoint), "--judges", str(checkpoint), "--grid-columns", "0",
              "--out", str(tmp_path / "q")])
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["fit-seeds", "--model", str(checkpoint), "--data", str(toy_data), "--resolution", "64",
                 "--out", str(tmp_path / "seeds.safetensors")]) == 2
    assert "above the model's input side 32" in capsys.readouterr().err
    out = tmp_path / "negative-lam"  # a negative λ pulls the energy down: it was run as asked
    assert main(["attack", "--model", str(checkpoint), "--attack", "hepgd", "--lam", "-1", "--out", str(out),
                 str(images[0])]) == 2
    assert "lam must be a finite number >= 0" in capsys.readouterr().err and not out.exists()


def test_attack_overwrite_replaces_the_earlier_runs_pngs_and_keeps_other_files(tmp_path, checkpoint, images):
    """--overwrite left the replaced run's PNGs beside the new results.json, which no longer named them."""
    out = tmp_path / "out"
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out), *map(str, images)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out), "--overwrite",
                 str(images[1])]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "photo1_adv.png", "photo1_clean.png",
                                                           "results.json"]


def test_attack_writes_over_no_file_it_did_not_make_and_never_over_its_input(tmp_path, checkpoint, images, capsys):
    """A review (2026-12-07): --overwrite deleted this run's own input (an earlier run's cat_adv.png, attacked again
    from the same --out), and any run wrote <stem>_clean.png over a file of that name that no attack had made."""
    import hashlib

    out = tmp_path / "out"
    command = ["attack", "--model", str(checkpoint), "--steps", "1", "--out", str(out)]
    assert main(command + [str(images[0])]) == 0
    again = out / "photo0_adv.png"
    digest = hashlib.sha256(again.read_bytes()).hexdigest()
    assert main(command + ["--overwrite", str(again)]) == 0  # the earlier adversarial image, attacked again
    assert again.is_file() and hashlib.sha256(again.read_bytes()).hexdigest() == digest, "the input kept"
    capsys.readouterr()
    # photo0.png's output photo0_adv.png is the other input, the earlier adversarial image read again
    assert main(command + ["--overwrite", str(again), str(images[0])]) == 2
    assert "is one of the input images" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo1_clean.png").write_bytes(b"not an attack's")
    assert main(command[:-1] + [str(mine), str(images[1])]) == 2
    assert "exists and is no output of an earlier attack" in capsys.readouterr().err
    assert (mine / "photo1_clean.png").read_bytes() == b"not an attack's" and sorted(p.name for p in mine.iterdir()) == [
        "photo1_clean.png"]


def test_numbers_that_would_change_a_result_silently_are_refused_before_the_work(tmp_path, checkpoint, toy_data, capsys):
    """--weight-decay nan trained an epoch and advised a lower learning rate; --max-drop nan (or 3, meant as points)
    changed budget-sweep's pick; reproduce --attacks "," ran Table 1 without its PGD rows."""
    train = ["train", "--data", str(toy_data), "--arch", "resnet10_cifar", "--width", "4", "--epochs", "1",
             "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):  # refused as it is parsed
        main(train + ["--weight-decay", "nan"])
    assert "argument --weight-decay: not a finite number: 'nan'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="weight_decay=nan: every number of a recipe must be finite"):
        robgen.training.TrainConfig(weight_decay=math.nan)  # and by the recipe, for Python callers
    assert main(train + ["--weight-decay", "-0.1"]) == 2
    assert "weight_decay and momentum must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()
    sweep = ["budget-sweep", "--models", str(checkpoint), "--judge", str(checkpoint), "--data", str(toy_data),
             "--out", str(tmp_path / "sweep"), "--max-drop"]
    with pytest.raises(SystemExit):
        main(sweep + ["nan"])
    assert "argument --max-drop: not a finite number" in capsys.readouterr().err
    for drop in ("3", "1"):
        assert main(sweep + [drop]) == 2
        assert "--max-drop is a share of clean accuracy in [0, 1)" in capsys.readouterr().err
    assert main(["reproduce", "--model", str(checkpoint), "--data", str(toy_data), "--attacks", ",",
                 "--out", str(tmp_path / "repro")]) == 2
    assert "no attacks given" in capsys.readouterr().err
    assert main(["adaptive", "--model", str(checkpoint), "--data", str(toy_data), "--detector-file",
                 str(tmp_path / "none.json"), "--out", str(tmp_path / "adaptive")]) == 2
    assert "none.json does not exist" in capsys.readouterr().err


def test_every_number_flag_takes_a_fraction_as_the_readme_says(capsys):
    """The README says numbers may be written as fractions; train's --lr, detect's --target-fpr and --temperature,
    budget-sweep's --max-drop took plain floats only ("invalid float value: '1/10'")."""
    from robgen.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "cifar10", "--lr", "1/10", "--weight-decay", "1/2000",
                              "--label-smoothing", "1/10", "--out", "x"])
    assert (args.lr, args.weight_decay, args.label_smoothing) == (0.1, 0.0005, 0.1)
    assert parser.parse_args(["detect", "--model", "m", "--data", "cifar10", "--target-fpr", "1/20",
                              "--out", "x"]).target_fpr == 0.05
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "cifar10", "--lr", "nan", "--out", "x"])
    assert "not a finite number" in capsys.readouterr().err
    from robgen.cli.detection import parse_temperature

    assert parse_temperature("1/2") == 0.5


def test_seeds_devices_and_a_file_in_a_new_folder_are_handled_before_the_work(tmp_path, checkpoint, images, toy_data,
                                                                              capsys):
    """A review (2026-12-07): a seed beyond 64 bits failed inside torch after the model loaded ("Overflow when
    unpacking long long", a traceback); --device meta got as far as the model; fit-seeds --out newdir/seeds.safetensors
    fitted, then failed to write; a refused command left the empty parents of its --out folder behind."""
    out = tmp_path / "a"
    with pytest.raises(SystemExit):
        main(["attack", "--model", str(checkpoint), "--seed", str(2**64), "--out", str(out), str(images[0])])
    assert "argument --seed: must be at most 2^63 - 1" in capsys.readouterr().err and not out.exists()
    assert main(["attack", "--model", str(checkpoint), "--device", "meta", "--out", str(out), str(images[0])]) == 2
    assert "robgen runs on cpu or cuda" in capsys.readouterr().err and not out.exists()
    seeds = tmp_path / "new" / "seeds.safetensors"
    four = robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "four")  # the toy data's 4 classes
    assert main(["fit-seeds", "--model", str(four), "--data", str(toy_data), "--resolution", "4", "--rank", "200",
                 "--out", str(seeds)]) == 0
    assert seeds.is_file()
    assert "(4x4, rank 48)" in capsys.readouterr().out  # 3 x 4 x 4 values: what was fitted, not what was asked
    # fit-seeds took any --device and fitted on the CPU: now refused as every command refuses it
    assert main(["fit-seeds", "--model", str(four), "--data", str(toy_data), "--device", "meta",
                 "--out", str(tmp_path / "other.safetensors")]) == 2
    assert "robgen runs on cpu or cuda" in capsys.readouterr().err and not (tmp_path / "other.safetensors").exists()
    nested = tmp_path / "p1" / "p2" / "p3"
    assert main(["synthesize", "--model", str(checkpoint), "--n", "0", "--out", str(nested)]) == 2
    assert not (tmp_path / "p1").exists()


@pytest.mark.parametrize("markdown", [False, True])
def test_models_lists_the_checkpoints_that_load_and_names_one_that_does_not(tmp_path, monkeypatch, capsys, markdown):
    """One folder written by a newer robgen beside the shipped ones stopped the whole listing with a traceback."""
    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "checkpoints" / "tiny")
    newer = robgen.save_checkpoint(tiny_model(), tmp_path / "checkpoints" / "newer")
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps(dict(config, format_version=99)))
    monkeypatch.setenv("ROBGEN_CHECKPOINTS", str(tmp_path / "checkpoints"))
    assert main(["models", *(["--markdown"] if markdown else [])]) == 0
    out = capsys.readouterr().out
    assert "newer: does not load (" in out and "newer robgen" in out
    assert folder.is_dir() and ("`tiny`" if markdown else "tiny: resnet10_cifar") in out


def test_synthesis_grids_are_outputs_that_only_overwrite_replaces(tmp_path, checkpoint, toy_data, capsys):
    """synthesis-quality and budget-sweep checked results.json and results.md only, and drew over a folder's
    grid_<model>.png (a figure kept from another run) without --overwrite; and a model without seeds (the default
    --init gaussian) was found out once synthesis had begun, told to use the library's init='uniform'."""
    import shutil

    kept = b"a figure from another run"
    twin = shutil.copytree(checkpoint, tmp_path / "twin")  # budget-sweep's candidate beside its reference
    for command, models, flags in (("synthesis-quality", [], ["--judges", str(checkpoint)]),
                                   ("budget-sweep", [str(twin)], ["--judge", str(checkpoint), "--data", str(toy_data)])):
        out = tmp_path / command
        out.mkdir()
        (out / f"grid_{Path(checkpoint).name}.png").write_bytes(kept)
        given = [command, "--models", str(checkpoint), *models, *flags, "--n", "2", "--steps", "1", "--out", str(out)]
        assert main(given) == 2
        error = capsys.readouterr().err
        assert "or pass --init uniform or gray" in error and "synthesising" not in error
        assert main(given + ["--init", "uniform"]) == 2
        assert f"already holds grid_{Path(checkpoint).name}.png" in capsys.readouterr().err
        assert (out / f"grid_{Path(checkpoint).name}.png").read_bytes() == kept


def test_eval_record_into_a_folder_it_cannot_write_is_refused_before_evaluating(tmp_path, toy_data, capsys,
                                                                                  monkeypatch):
    """A read-only checkpoint folder ran the whole evaluation, then failed with a PermissionError traceback."""
    import os

    import robgen
    import robgen.evaluation
    from conftest import tiny_model

    folder = robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "four")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))
    evaluated = []
    monkeypatch.setattr(robgen.evaluation, "evaluate_robustness", lambda *a, **k: evaluated.append(1))
    config = (folder / "config.json").read_bytes()
    assert main(["eval", "--model", str(folder), "--data", str(toy_data), "--steps", "1", "--limit", "8",
                 "--record"]) == 2
    assert f"--record writes into {folder / 'config.json'}, but {folder} is not writable" in capsys.readouterr().err
    assert evaluated == [] and (folder / "config.json").read_bytes() == config


def test_detect_turns_the_experiments_refusal_into_a_clear_error(toy_data, tmp_path, capsys, monkeypatch):
    """detect let the experiment's ValueError (e.g. "the attack changed none of the images ... raise --eps") out as a
    traceback, where fit-detector, zoo and reproduce print it as an error."""
    import robgen.experiments.pipeline as pipeline

    def refuses(*args, **kwargs):
        raise ValueError("the attack changed none of the 4 images, so there is nothing to fit a detector on")

    import robgen
    from conftest import tiny_model

    monkeypatch.setattr(pipeline, "detection_experiment", refuses)
    four = robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "four")
    assert main(["detect", "--model", str(four), "--data", str(toy_data), "--val-size", "4", "--limit", "4",
                 "--steps", "1", "--out", str(tmp_path / "d")]) == 2
    assert "error: the attack changed none of the 4 images" in capsys.readouterr().err


def test_overwrite_removes_the_grids_of_generators_the_new_run_has_not(tmp_path, checkpoint):
    """synthesis-quality --overwrite with other --models left the replaced run's grid_<model>.png beside results
    that no longer name that model."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    out = tmp_path / "quality"
    settings = ["--n", "2", "--steps", "1", "--init", "uniform", "--out", str(out)]
    assert main(["synthesis-quality", "--models", str(checkpoint), "--judges", str(checkpoint), *settings]) == 0
    assert (out / f"grid_{Path(checkpoint).name}.png").is_file()
    (out / "grid_mine.png").write_bytes(b"a figure of the user's")
    assert main(["synthesis-quality", "--models", str(other), "--judges", str(checkpoint), *settings,
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("grid_*.png")) == ["grid_mine.png", "grid_other.png"]


def test_data_root_names_where_named_data_sets_live_for_the_whole_command(tmp_path, monkeypatch):
    """--data-root COPY with --data COPY/imagenette2-160 was a data set of its own, not Imagenette: a 5,000-image
    validation split of its train/, 4,500 of them trained on, while --data imagenette --data-root COPY read the
    500 the models' training held out."""
    import argparse

    from robgen import data
    from robgen.cli.common import DATA_ENV, data_root_of

    monkeypatch.delenv(DATA_ENV, raising=False)
    copy = tmp_path / "copy" / "imagenette2-160"
    copy.mkdir(parents=True)
    assert data.canonical_data(copy) != "imagenette"
    with data_root_of(argparse.Namespace(data_root=str(tmp_path / "copy"))):
        assert data.same_data("imagenette", copy) and data.default_val_size(copy) == 500
    assert data.canonical_data(copy) != "imagenette"  # put back after the command


def test_a_librarys_message_about_a_parameter_names_the_flag(tmp_path, checkpoint, toy_data, images, capsys):
    """detect --limit 0 said "limit must be >= 1", train --train-limit 0 the same (pointing at --limit), --image-size
    0 named no flag: the library's parameter names, where the command line has flags."""
    from robgen.cli import as_flags

    cases = [(["eval", "--model", str(checkpoint), "--data", str(toy_data), "--limit", "0"], "--limit must be >= 1"),
             (["train", "--data", str(toy_data), "--train-limit", "0"], "--train-limit (the first N training images) must"),
             (["train", "--data", str(toy_data), "--image-size", "0"], "--image-size (the input side in pixels) must"),
             (["attack", "--model", str(checkpoint), "--step-size", "0", str(images[0])], "--step-size must be > 0")]
    for argv, says in cases:
        assert main(argv + ["--out", str(tmp_path / "out")]) == 2, argv
        assert f"error: {says}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    class Args:
        limit = 3

    assert as_flags("limits must be set", Args()) == "limits must be set"  # no such flag: left as it is
    assert as_flags("eps must be > 0", Args()) == "eps must be > 0"
