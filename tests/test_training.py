"""Training: every mode learns, adversarial modes train on examples inside the eps-ball,
checkpoints round-trip, runs resume exactly, and bad input is explained."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import robgen
from robgen import training
from robgen.training import TrainConfig, train


def config(toy_data, **overrides):
    settings = dict(data=str(toy_data), width=4, epochs=3, batch_size=16, lr=0.05, val_size=32, eval_subset=16,
                    eval_steps=2, eps=8 / 255, seed=0)
    settings.update(overrides)
    if settings.get("mode", "standard") not in training.config.MULTI_STEP_MODES:  # one step or none: refused there
        settings.pop("attack_steps", None)
    return TrainConfig(**settings)


@pytest.mark.parametrize("mode", training.MODES)
def test_every_mode_lowers_the_loss(toy_data, tmp_path, mode):
    rows = []
    model = train(config(toy_data, mode=mode, attack_steps=2), tmp_path / mode, progress=False, on_epoch=rows.append)
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = json.loads((tmp_path / mode / "config.json").read_text())
    assert saved["training"]["config"]["mode"] == mode and saved["training"]["epochs_done"] == 3
    assert len((tmp_path / mode / "log.jsonl").read_text().splitlines()) == 3
    assert "val_pgd_accuracy" in saved["metrics"]
    loaded = robgen.load_model(tmp_path / mode)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.cpu(), b), f"checkpoint round trip of {name}"


def test_quasi_mode_uses_the_small_l2_budget(toy_data):
    quasi = config(toy_data, mode="quasi", eps=None)
    assert (quasi.norm, quasi.eps) == ("l2", training.QUASI_EPS)
    assert quasi.step_size == pytest.approx(1.25 * training.QUASI_EPS)
    # a budget given explicitly is kept (it was replaced by L2 0.05 when it equalled the L-inf default 8/255)
    explicit = config(toy_data, mode="quasi", norm="linf", eps=8 / 255)
    assert (explicit.norm, explicit.eps) == ("linf", 8 / 255)
    # an eps alone is L-inf, as the shipped quasi-robust models were trained (--mode quasi --eps 2/255)
    assert (config(toy_data, mode="quasi", eps=2 / 255).norm, config(toy_data, mode="pgd", eps=None).eps) == (
        "linf", 8 / 255)
    with pytest.raises(ValueError, match="quasi mode's default budget is L2 0.05: give an linf eps"):
        config(toy_data, mode="quasi", norm="linf", eps=None)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        config(toy_data, norm="l1")


@pytest.mark.parametrize("mode, norm, eps", [("fast", "linf", 8 / 255), ("pgd", "l2", 0.25),
                                             ("reject", "linf", 8 / 255), ("trades", "linf", 8 / 255)])
def test_adversarial_training_trains_on_examples_in_the_ball(toy_data, tmp_path, monkeypatch, mode, norm, eps):
    seen = []
    original = robgen.PGD.__call__

    def spy(self, x, y, *args, **kwargs):
        x_adv = original(self, x, y, *args, **kwargs)
        seen.append((x.clone(), x_adv.clone()))
        return x_adv

    monkeypatch.setattr(robgen.PGD, "__call__", spy)
    train(config(toy_data, mode=mode, norm=norm, eps=eps, epochs=1, attack_steps=2), tmp_path / "adv", progress=False)
    training_calls = [pair for pair in seen if pair[0].shape[0] == 16]  # batch_size 16; evaluation batches differ
    assert training_calls
    for x, x_adv in training_calls:
        delta = (x_adv - x).flatten(1)
        size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all() and (size > 0).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def stop_after_epoch(n):
    def callback(row):
        if row["epoch"] == n:
            raise KeyboardInterrupt  # the run dies after epoch n was written

    return callback


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), f"{name} differs"


@pytest.mark.parametrize("mode", ["standard", "pgd", "fast"])
def test_resume_continues_exactly(toy_data, tmp_path, mode):
    # adversarial modes draw random starts from the attack's generator: resuming must continue its stream
    settings = dict(mode=mode, epochs=2, attack_steps=2)
    straight = train(config(toy_data, **settings), tmp_path / "straight", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, **settings), tmp_path / "resumed", progress=False, on_epoch=stop_after_epoch(1))
    resumed = train(config(toy_data, **settings), tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(straight, resumed)
    log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_a_fine_tune_resumes_exactly_after_its_base_was_deleted(toy_data, tmp_path):
    """A resumed fine-tune loaded its base again for what it inherits (input transform, validation split): a base
    deleted or overwritten since stopped the resume. It reads them from its own checkpoint now."""
    import shutil

    train(config(toy_data, epochs=1), tmp_path / "base", progress=False)
    tune = config(toy_data, epochs=2, val_size=None, seed=1, init_from=str(tmp_path / "base"))
    straight = train(tune, tmp_path / "straight", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tune, tmp_path / "resumed", progress=False, on_epoch=stop_after_epoch(1))
    shutil.rmtree(tmp_path / "base")
    resumed = train(tune, tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(straight, resumed)
    assert resumed.spec.training["data"] == straight.spec.training["data"]  # the base's split, held out still


def test_a_log_line_lost_with_the_run_is_written_again_on_resume(toy_data, tmp_path):
    """A run stopped after its trainer state and before (or part-way through) its log line lost that epoch's line
    for good: the resumed log.jsonl skipped it (a review, 2026-12-07)."""
    folder = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, epochs=3), folder, progress=False, on_epoch=stop_after_epoch(2))
    lines = (folder / "log.jsonl").read_text().splitlines()
    (folder / "log.jsonl").write_text(lines[0] + "\n" + lines[1][:10])  # epoch 2's line cut part-way
    train(config(toy_data, epochs=3), folder, resume=True, progress=False)
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3] and log[1] == json.loads(lines[1])


@pytest.mark.parametrize("mode", ["standard", "pgd"])
def test_a_trainer_state_from_before_the_generator_states_still_resumes(toy_data, tmp_path, caplog, mode):
    """Runs started by older robgen (trainer_state.pt with only the CPU RNG under "rng") must still resume."""
    settings = dict(mode=mode, epochs=2, attack_steps=2)
    folder = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, **settings), folder, progress=False, on_epoch=stop_after_epoch(1))
    state = torch.load(folder / training.STATE_FILE, weights_only=True)
    old_format = {key: state[key] for key in ("optimizer", "scheduler", "epoch", "wall_seconds", "history", "rng")}
    torch.save(old_format, folder / training.STATE_FILE)
    with caplog.at_level("WARNING", logger="robgen.training"):
        resumed = train(config(toy_data, **settings), folder, resume=True, progress=False)
    assert resumed.spec.training["epochs_done"] == 2
    warned = "predates saved generator states" in caplog.text
    if mode == "standard":  # the CPU RNG is all a standard run on the CPU draws from: still exact
        assert not warned
        assert_same_weights(train(config(toy_data, **settings), tmp_path / "straight", progress=False), resumed)
    else:
        assert warned, "the user is told the attack's random starts restart"
    assert "random_states" in torch.load(folder / training.STATE_FILE, weights_only=True), "rewritten in the new format"


def test_training_leaves_the_global_rng_alone(toy_data, tmp_path):
    state = torch.random.get_rng_state()
    train(config(toy_data, epochs=1), tmp_path / "rng", progress=False)
    assert torch.equal(state, torch.random.get_rng_state())


def test_bad_input_is_explained(toy_data, tmp_path):
    with pytest.raises(ValueError, match="8/255"):
        TrainConfig(eps=8)
    with pytest.raises(ValueError, match="unknown training mode"):
        TrainConfig(mode="mart")
    with pytest.raises(FileNotFoundError, match="unknown data set"):
        train(config(toy_data, data=str(tmp_path / "nowhere")), tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config(toy_data), tmp_path / "empty", resume=True, progress=False)
    train(config(toy_data, epochs=1), tmp_path / "w4", progress=False)
    with pytest.raises(ValueError, match="same architecture"):
        train(config(toy_data, epochs=2, width=8), tmp_path / "w4", resume=True, progress=False)
    # Adam with SGD's momentum: accepted and ignored (a review, 2026-12-07)
    with pytest.raises(ValueError, match="momentum would be ignored .*--optimizer adam"):
        TrainConfig(optimizer="adam", momentum=0.5)


def test_a_run_resumes_on_the_data_it_was_started_on_however_spelled(toy_data, tmp_path, monkeypatch):
    """The resume compared the data set as typed: "images" from another working directory (another folder of the
    same classes) resumed there, and the same folder by its absolute path was refused (a review, 2026-12-07)."""
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(toy_data, elsewhere / toy_data.name)  # another folder of the same name and classes
    monkeypatch.chdir(toy_data.parent)
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data.name, epochs=2), tmp_path / "run", progress=False, on_epoch=stop_after_epoch(1))
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ValueError, match="was trained on .* resume on the data it was started with"):
        train(config(toy_data.name, epochs=2), tmp_path / "run", resume=True, progress=False)
    resumed = train(config(str(toy_data.resolve()), epochs=2), tmp_path / "run", resume=True, progress=False)
    assert resumed.spec.training["epochs_done"] == 2


def test_a_run_that_dies_keeps_its_last_complete_checkpoint(toy_data, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, epochs=3), tmp_path / "dies", progress=False, on_epoch=stop_after_epoch(2))
    saved = json.loads((tmp_path / "dies" / "config.json").read_text())
    assert saved["training"]["epochs_done"] == 2
    robgen.load_model(tmp_path / "dies")
    resumed = train(config(toy_data, epochs=3), tmp_path / "dies", resume=True, progress=False)
    assert resumed.spec.training["epochs_done"] == 3


def test_a_run_killed_between_its_weights_and_its_trainer_state_goes_on_from_the_last_whole_epoch(
        toy_data, tmp_path, monkeypatch):
    """Epoch 2's weights beside epoch 1's optimiser and schedule: resuming trained epoch 2 again on top of them, and
    then refused such a run for good (every finished epoch lost to a Ctrl-C in the instant of writing). The trainer
    state keeps its epoch's weights, so the run goes on from epoch 1 exactly; an older state without them is
    refused, as it was."""
    from robgen.training import checkpointing

    real_save = checkpointing.atomic_save

    def killed_writing_epoch_2(obj, path):
        if obj["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(obj, path)

    settings = dict(epochs=3, mode="pgd", attack_steps=2)
    for folder in ("torn", "torn-old"):
        monkeypatch.setattr(checkpointing, "atomic_save", killed_writing_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(config(toy_data, **settings), tmp_path / folder, progress=False)
        monkeypatch.setattr(checkpointing, "atomic_save", real_save)
    assert json.loads((tmp_path / "torn" / "config.json").read_text())["training"]["epochs_done"] == 2
    resumed = train(config(toy_data, **settings), tmp_path / "torn", resume=True, progress=False)
    assert_same_weights(train(config(toy_data, **settings), tmp_path / "straight", progress=False), resumed)
    state = torch.load(tmp_path / "torn-old" / training.STATE_FILE, weights_only=True)
    torch.save({key: value for key, value in state.items() if key != "model"}, tmp_path / "torn-old" / training.STATE_FILE)
    with pytest.raises(ValueError, match="weights of epoch 2 but the optimiser, schedule and random state of epoch 1"):
        train(config(toy_data, **settings), tmp_path / "torn-old", resume=True, progress=False)


def test_a_state_of_the_other_device_resumes_with_fresh_random_starts(toy_data, tmp_path, caplog):
    """A run trained on a lent GPU and resumed on the CPU (or back): the attack generator's state of the other
    device (16 bytes on CUDA, 5,056 on the CPU) crashed set_state. Simulated: a CUDA-sized state in a CPU run's file."""
    settings = dict(mode="pgd", epochs=2, attack_steps=2)
    folder = tmp_path / "gpu-run"
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, **settings), folder, progress=False, on_epoch=stop_after_epoch(1))
    state = torch.load(folder / training.STATE_FILE, weights_only=True)
    state["random_states"][0]["attack"] = torch.zeros(16, dtype=torch.uint8)  # a Philox (CUDA) generator's state
    torch.save(state, folder / training.STATE_FILE)
    with caplog.at_level("WARNING", logger="robgen.training"):
        resumed = train(config(toy_data, **settings), folder, resume=True, progress=False)
    assert resumed.spec.training["epochs_done"] == 2
    assert "generator of another device (a 16-byte state" in caplog.text


def test_a_fine_tuned_model_is_the_model_in_its_own_folder_not_its_bases(toy_data, tmp_path):
    """It kept the base checkpoint's folder: the base's detector.json and seeds were read as its own."""
    from robgen.models.checkpoint import model_folder

    train(config(toy_data, epochs=1), tmp_path / "base", progress=False)
    (tmp_path / "base" / "detector.json").write_text("{}")
    tuned = train(config(toy_data, epochs=1, init_from=str(tmp_path / "base")), tmp_path / "tuned", progress=False)
    assert model_folder(tuned) == tmp_path / "tuned" and tuned.spec.source == str(tmp_path / "tuned")
    assert robgen.load_model(tmp_path / "tuned").spec.source == str(tmp_path / "tuned")


@pytest.mark.parametrize("mode", ["fast", "pgd"])
def test_adversarial_runs_keep_their_best_pgd_epoch(toy_data, tmp_path, mode):
    rows = []
    train(config(toy_data, mode=mode, attack_steps=2, epochs=4), tmp_path / mode, progress=False, on_epoch=rows.append)
    best = json.loads((tmp_path / mode / training.BEST_DIR / "config.json").read_text())
    accuracies = [row["val_pgd_accuracy"] for row in rows]
    latest_best = max(i for i, a in enumerate(accuracies) if a == max(accuracies)) + 1  # ties go to the later epoch
    assert best["training"]["best_epoch"] == latest_best
    assert best["metrics"]["val_pgd_accuracy"] == max(accuracies)
    assert best["training"]["epochs_done"] == latest_best


def test_standard_and_quasi_runs_keep_no_best_copy(toy_data, tmp_path):
    train(config(toy_data, mode="quasi", epochs=1), tmp_path / "q", progress=False)
    assert not (tmp_path / "q" / training.BEST_DIR).exists()


def test_overwrite_removes_the_old_runs_files_only_after_its_checks_pass(toy_data, tmp_path, capsys):
    """--overwrite deleted the log and trainer state before checking --data, and kept the old run's detector.json,
    seeds, best/ and snapshots, which were then read as the new model's."""
    from robgen.cli import main

    out = tmp_path / "run"
    train(config(toy_data, mode="fast", attack_steps=1, epochs=2, snapshot_every=1), out, progress=False)
    (out / "detector.json").write_text("{}")  # fitted to the old weights
    (out / "notes.txt").write_text("mine")
    before = sorted(path.name for path in out.iterdir())
    assert {"best", "epochs", "log.jsonl", "trainer_state.pt"} <= set(before)
    flags = ["train", "--arch", "resnet10_cifar", "--width", "4", "--epochs", "1", "--batch-size", "16",
             "--val-size", "32", "--eval-subset", "16", "--eval-steps", "1", "--out", str(out), "--overwrite"]
    assert main(flags + ["--data", str(tmp_path / "nowhere")]) == 2
    assert "unknown data set" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == before  # a typo loses nothing
    # a run stopped in its first epoch (Ctrl-C, a diverging loss) left an empty folder: the old run was removed
    # before any batch ran; now it goes when the first epoch is written
    from robgen.training import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_loss = loop.batch_loss
    loop.batch_loss = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            main(flags + ["--data", str(toy_data)])
    finally:
        loop.batch_loss = real_loss
    assert sorted(path.name for path in out.iterdir()) == before
    assert main(flags + ["--data", str(toy_data)]) == 0
    left = sorted(path.name for path in out.iterdir())
    assert left == ["config.json", "log.jsonl", "model.safetensors", "notes.txt", "trainer_state.pt"], left
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    for bad in (["--lr", "0"], ["--label-smoothing", "2"]):  # refused before any work, not in the first batch
        assert main(flags + ["--data", str(toy_data)] + bad) == 2
    assert "--label-smoothing is a probability" in capsys.readouterr().err


def test_overwrite_removes_the_runs_own_files_in_best_and_epochs_and_a_lone_log_is_not_appended_to(toy_data, tmp_path,
                                                                                                   capsys):
    """--overwrite removed best/ and epochs/ whole, a user's files in them too; and a folder holding a log.jsonl
    but no checkpoint took a new run without --overwrite, which added its lines to that log."""
    from robgen.cli import main

    out = tmp_path / "run"
    train(config(toy_data, mode="fast", attack_steps=1, epochs=2, snapshot_every=1), out, progress=False)
    (out / "best" / "photo.txt").write_text("mine")
    (out / "epochs" / "my-notes.txt").write_text("mine")
    (out / "epochs" / "epoch-001" / "plot.png").write_bytes(b"mine")
    flags = ["train", "--arch", "resnet10_cifar", "--width", "4", "--epochs", "1", "--batch-size", "16",
             "--val-size", "32", "--eval-subset", "16", "--eval-steps", "1", "--data", str(toy_data)]
    assert main(flags + ["--out", str(out), "--overwrite"]) == 0
    left = sorted(str(path.relative_to(out)) for path in out.rglob("*"))
    assert left == ["best", "best/photo.txt", "config.json", "epochs", "epochs/epoch-001", "epochs/epoch-001/plot.png",
                    "epochs/my-notes.txt", "log.jsonl", "model.safetensors", "trainer_state.pt"], left
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "log.jsonl").write_text('{"my": "experiment notes"}\n')
    assert main(flags + ["--out", str(notes)]) == 2
    assert "already holds log.jsonl of a training run" in capsys.readouterr().err
    assert (notes / "log.jsonl").read_text() == '{"my": "experiment notes"}\n'
    with pytest.raises(ValueError, match="already holds log.jsonl of a training run"):
        train(config(toy_data, epochs=1), notes, progress=False)


def test_fine_tuning_starts_from_the_given_checkpoint(toy_data, tmp_path):
    base = train(config(toy_data, epochs=1), tmp_path / "base", progress=False)
    # one epoch at a tiny learning rate: the tuned weights stay far closer to the base than a fresh start's
    tuned = train(config(toy_data, mode="quasi", epochs=1, lr=1e-4, init_from=str(tmp_path / "base")), tmp_path / "tuned",
                  progress=False)
    fresh = train(config(toy_data, mode="quasi", epochs=1, lr=1e-4, seed=5), tmp_path / "fresh", progress=False)
    weight = "net.head.weight"
    to_base = (tuned.state_dict()[weight] - base.state_dict()[weight]).norm()
    fresh_to_base = (fresh.state_dict()[weight] - base.state_dict()[weight]).norm()
    assert to_base < 0.1 * fresh_to_base
    assert tuned.spec.mean == base.spec.mean and tuned.spec.std == base.spec.std
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["training"]["config"]["init_from"] == str(tmp_path / "base")
    with pytest.raises(ValueError, match="same --arch and --width"):
        train(config(toy_data, width=8, init_from=str(tmp_path / "base")), tmp_path / "wide", progress=False)


def test_fine_tuning_at_another_resolution_records_the_new_input(toy_data, tmp_path):
    base = train(config(toy_data, epochs=1), tmp_path / "base", progress=False)
    assert base.spec.input_size == (3, 16, 16) and base.spec.crop_pct == 1.0
    tuned = train(config(toy_data, epochs=1, image_size=24, crop_pct=0.875, interpolation="bicubic",
                         init_from=str(tmp_path / "base")), tmp_path / "tuned", progress=False)
    assert tuned.spec.input_size == (3, 24, 24)
    assert (tuned.spec.crop_pct, tuned.spec.interpolation) == (0.875, "bicubic")
    loaded = robgen.load_model(tmp_path / "tuned")
    assert loaded.spec.input_size == (3, 24, 24) and loaded.spec.crop_pct == 0.875
    assert loaded.spec.interpolation == "bicubic"


def test_fine_tuning_holds_out_the_validation_split_its_base_held_out(toy_data, tmp_path):
    """A fine-tune with another seed held out the split of its own seed: 28 of its 32 validation images were
    images its base had trained on (per-epoch checks, best/ and later evaluations all scored them)."""
    from robgen import data as datasets
    from robgen.models import ModelSpec

    base = train(config(toy_data, epochs=1), tmp_path / "base", progress=False)
    base_val = set(datasets.model_val_split(datasets.load_dataset(str(toy_data)), base.spec, str(toy_data))[1].indices)
    tuned_config = training.inherit_validation_split(config(toy_data, seed=1, val_size=None,
                                                            init_from=str(tmp_path / "base")), base.spec)
    assert (tuned_config.split_seed, tuned_config.val_size) == (0, 32)
    _, val, _, _ = training.preparation.load_data(tuned_config, None, False)
    assert set(val.indices) == base_val
    smaller = training.inherit_validation_split(config(toy_data, seed=1, val_size=16, init_from="base"), base.spec)
    _, part, _, _ = training.preparation.load_data(smaller, None, False)
    assert set(part.indices) < base_val, "a smaller split is a part of the base's"
    with pytest.raises(ValueError, match="leave --split-seed out"):
        training.inherit_validation_split(config(toy_data, split_seed=1, init_from="base"), base.spec)
    with pytest.raises(ValueError, match="--val-size 32 or less"):
        training.inherit_validation_split(config(toy_data, val_size=48, init_from="base"), base.spec)
    tuned = train(config(toy_data, epochs=1, seed=1, val_size=None, init_from=str(tmp_path / "base")),
                  tmp_path / "tuned", progress=False)
    recorded = tuned.spec.training["data"]
    assert (recorded["split_seed"], recorded["val_size"]) == (0, 32), "recorded: later evaluations use it"
    assert recorded["train_images"] == 160, "the images the split was drawn from: a copy of another count is refused"
    # a fine-tune started before (its recipe: split seed None, i.e. its own seed 0, the base's split) still resumes
    older = tmp_path / "older"
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, epochs=2, val_size=None, init_from=str(tmp_path / "base")), older, progress=False,
              on_epoch=stop_after_epoch(1))
    saved = json.loads((older / "config.json").read_text())
    saved["training"]["config"]["split_seed"] = None
    (older / "config.json").write_text(json.dumps(saved))
    train(config(toy_data, epochs=2, val_size=None, init_from=str(tmp_path / "base")), older, resume=True,
          progress=False)
    # a base trained on other data (or not by robgen): the split of a fresh run
    untrained = ModelSpec(architecture="resnet10_cifar", num_classes=4, class_labels=list("abcd"), mean=(0.5,) * 3,
                          std=(0.5,) * 3, input_size=(3, 16, 16))
    foreign = training.inherit_validation_split(config(toy_data, seed=1, val_size=None, init_from="x"), untrained)
    assert foreign.split_seed is None and foreign.val_size == datasets.default_val_size(str(toy_data))


def test_a_fresh_models_normalisation_comes_from_its_training_images_only(toy_data, tmp_path):
    from robgen import data as datasets

    model = train(config(toy_data, epochs=1), tmp_path / "m", progress=False)
    plain = datasets.load_dataset(str(toy_data))
    training_part, validation = datasets.train_val_split(plain, 32, seed=0)
    x, _ = datasets.load_tensors(training_part)
    assert model.spec.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert model.spec.std == pytest.approx(x.std(dim=(0, 2, 3)).tolist(), abs=1e-6)
    everything, _ = datasets.load_tensors(plain)
    assert model.spec.mean != pytest.approx(everything.mean(dim=(0, 2, 3)).tolist(), abs=1e-6), "not with validation"


def test_fine_tuning_keeps_the_base_models_input_transform_unless_told_otherwise():
    from robgen.models import ModelSpec

    base = ModelSpec(architecture="resnet10_imagenette", num_classes=10, class_labels=[str(i) for i in range(10)],
                     mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 160, 160), crop_pct=0.9, interpolation="bicubic")
    tuned = training.inherit_input_transform(TrainConfig(data="imagenette", init_from="base"), base)
    assert (tuned.image_size, tuned.crop_pct, tuned.interpolation) == (160, 0.9, "bicubic")
    told = training.inherit_input_transform(TrainConfig(data="imagenette", init_from="base", image_size=128), base)
    assert (told.image_size, told.crop_pct) == (128, 0.9)
    fresh = TrainConfig(data="imagenette")  # no base: the data set's defaults
    assert (fresh.image_size, fresh.crop_pct, fresh.interpolation) == (128, 0.875, "bilinear")
    cifar = training.inherit_input_transform(TrainConfig(data="cifar10", init_from="base"), base)
    assert cifar.image_size is None, "CIFAR-10 images are used at their own size, never resized"

    # a base trained on a folder at a size of its own: fine-tuned on that folder at it, not at the files' size (it
    # was retrained at half the resolution without a word; a review, 2026-12-07); a foreign base gives no size
    from dataclasses import replace

    folder = "/data/my-photos"
    own = replace(base, input_size=(3, 32, 32), training={
        "config": {"image_size": 32}, "data": {"name": folder, "val_size": 40, "split_seed": 0}})
    assert training.inherit_input_transform(TrainConfig(data=folder, init_from="base"), own).image_size == 32
    assert training.inherit_input_transform(TrainConfig(data="/data/other", init_from="base"), own).image_size is None


def test_data_set_defaults_fill_the_recipe():
    nette = TrainConfig(data="imagenette")
    assert (nette.val_size, nette.image_size, nette.crop_pct) == (500, 128, 0.875)
    cifar = TrainConfig(data="cifar10")
    assert (cifar.val_size, cifar.image_size, cifar.crop_pct) == (5000, None, 1.0)
    assert TrainConfig(data="imagenette", val_size=100, crop_pct=1.0).val_size == 100
    with pytest.raises(ValueError, match="crop_pct"):
        TrainConfig(crop_pct=1.5)


def test_the_eval_transform_travels_with_the_trained_model(toy_data, tmp_path):
    model = train(config(toy_data, epochs=1, image_size=12, crop_pct=0.75, interpolation="bicubic"), tmp_path / "crop",
                  progress=False)
    loaded = robgen.load_model(tmp_path / "crop")
    assert loaded.spec.input_size == (3, 12, 12)
    assert (loaded.spec.crop_pct, loaded.spec.interpolation) == (0.75, "bicubic")
    assert model.spec.crop_pct == 0.75


def test_evaluation_with_zero_steps_measures_clean_accuracy_only(toy_data, tmp_path):
    from robgen import data as datasets
    from robgen.evaluation import evaluate_robustness

    model = train(config(toy_data, epochs=1), tmp_path / "m", progress=False)
    images = datasets.first(datasets.load_dataset(str(toy_data)), 40)
    clean_only = evaluate_robustness(model, images, steps=0, progress=False)
    full = evaluate_robustness(model, images, steps=2, progress=False)
    assert clean_only["clean_accuracy"] == full["clean_accuracy"] and clean_only["n"] == 40
    assert "pgd_accuracy" not in clean_only and "attack" not in clean_only
    assert clean_only["clean_accuracy_ci"] == full["clean_accuracy_ci"]
    with pytest.raises(ValueError, match="APGD is an attack: give it steps >= 1"):
        evaluate_robustness(model, images, steps=0, apgd=True, progress=False)
    with pytest.raises(ValueError, match="the data set is empty"):  # was a ZeroDivisionError after the loop
        evaluate_robustness(model, torch.utils.data.Subset(images, []), steps=0, progress=False)
    apgd = evaluate_robustness(model, images, steps=2, apgd=True, progress=False)
    assert apgd["apgd"]["steps"] == 10 and apgd["attack"]["steps"] == 2  # APGD's least, said in the result


def test_robust_accuracy_counts_only_images_the_model_gets_right_clean():
    # a model wrong exactly at its clean images and right everywhere near them: PGD's random start lands where it is
    # right, and counting that as robust gave a robust accuracy above the clean one
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from robgen.evaluation import evaluate_robustness

    class WrongOnlyAtTheCentre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))
            self.spec = SimpleNamespace(num_classes=2, input_size=(1, 2, 2), class_labels=["a", "b"])

        def forward(self, x):
            distance = (x - 0.5).abs().flatten(1).sum(1) * self.scale
            return torch.stack([1000 * distance - 1e-3, torch.zeros_like(distance)], 1)

    images = TensorDataset(torch.full((8, 1, 2, 2), 0.5), torch.zeros(8, dtype=torch.long))
    result = evaluate_robustness(WrongOnlyAtTheCentre().eval(), images, eps=8 / 255, steps=5, progress=False)
    assert result["clean_accuracy"] == 0.0 and result["pgd_accuracy"] == 0.0


def test_a_crop_margin_on_images_kept_at_their_size_is_applied_to_the_validation_images(toy_data):
    """--crop-pct without --image-size (CIFAR-10's own 32 px): the validation images during training are resized
    and cropped as the model's eval transform (its spec records the crop_pct) will show them, not left raw."""
    from robgen import data as datasets

    _, val, _, _ = training.preparation.load_data(config(toy_data, crop_pct=0.875), None, False)
    _, raw_val, _, _ = training.preparation.load_data(config(toy_data), None, False)
    as_evaluated = datasets.load_dataset(str(toy_data), "train", transform=datasets.pixel_transform(16, crop_pct=0.875))
    index = val.indices[0]
    assert raw_val.indices[0] == index and val[0][0].shape == (3, 16, 16)
    assert torch.equal(val[0][0], as_evaluated[index][0]) and not torch.equal(val[0][0], raw_val[0][0])


def test_a_second_seed_can_hold_out_the_same_validation_split(toy_data, tmp_path):
    from robgen import data as datasets

    plain = datasets.load_dataset(str(toy_data), "train")
    split = {seed: set(datasets.train_val_split(plain, 32, seed=seed)[1].indices) for seed in (0, 1)}
    assert split[0] != split[1]
    for seed, split_seed, held_out in ((1, None, split[1]), (1, 0, split[0]), (0, None, split[0])):
        _, val, _, _ = training.preparation.load_data(config(toy_data, seed=seed, split_seed=split_seed), None, False)
        assert set(val.indices) == held_out
    model = train(config(toy_data, epochs=1, seed=1, split_seed=0), tmp_path / "run", progress=False)
    assert model.spec.training["data"]["split_seed"] == 0


def test_a_run_on_a_relative_data_folder_records_it_so_that_its_split_is_found_from_anywhere(toy_data, tmp_path,
                                                                                              monkeypatch):
    """Training recorded the folder as typed ("toys"); read from another working directory, the model's split was not
    found, robgen fell back to seed 0, and 4 of 6 "validation" images were training images (a review, 2026-12-07)."""
    from robgen import data as datasets

    monkeypatch.chdir(toy_data.parent)
    model = train(config(toy_data.name, epochs=1, seed=3, val_size=16), tmp_path / "run", progress=False)
    monkeypatch.chdir(tmp_path)
    saved = robgen.load_model(tmp_path / "run")
    assert saved.spec.training["data"]["name"] == str(toy_data.resolve())
    assert datasets.model_split_seed(saved.spec, toy_data) == 3 == model.spec.training["data"]["split_seed"]
    assert datasets.recorded_val_size(saved.spec, str(toy_data)) == 16


def test_multistep_schedule_divides_the_rate_by_ten_at_each_milestone():
    factor = training.lr_factor("multistep", total=100 * 10, steps_per_epoch=10, milestones=(30, 80))
    assert [factor(step) for step in (0, 299)] == [1.0, 1.0]  # epochs 1-30
    assert factor(300) == pytest.approx(0.1) and factor(799) == pytest.approx(0.1)  # epochs 31-80
    assert factor(800) == pytest.approx(0.01) and factor(999) == pytest.approx(0.01)


@pytest.mark.parametrize("augment", ["flip", "none"])
def test_flip_and_no_augmentation_never_crop(augment):
    from PIL import Image

    from robgen import data

    pixels = torch.rand(3, 12, 12)
    image = Image.fromarray((pixels.permute(1, 2, 0) * 255).round().byte().numpy())
    plain = data.pixel_transform(None)(image)
    augmented = data.pixel_transform(None, train=True, augment=augment)
    seen = {tuple(augmented(image).flatten()[:5].tolist()) for _ in range(40)}
    allowed = {tuple(plain.flatten()[:5].tolist()), tuple(plain.flip(-1).flatten()[:5].tolist())}
    assert seen <= allowed  # the image itself, or its mirror: never shifted
    assert len(seen) == (2 if augment == "flip" else 1)
    with pytest.raises(ValueError, match="crop-flip, flip, none"):
        data.pixel_transform(None, train=True, augment="jitter")


def test_official_cifar_recipe_options_train_and_snapshot(toy_data, tmp_path):
    rows = []
    train(config(toy_data, epochs=4, optimizer="adam", lr=1e-3, schedule="multistep", milestones=(2, 3),
                 augment="flip", snapshot_every=2), tmp_path / "run", progress=False, on_epoch=rows.append)
    # each row's rate is the one its epoch trained at (the rate after the epoch logged a milestone an epoch early)
    assert [row["lr"] for row in rows] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["training"]["config"]
    assert (saved["optimizer"], saved["augment"], saved["milestones"]) == ("adam", "flip", [2, 3])
    snapshots = sorted(p.name for p in (tmp_path / "run" / training.SNAPSHOT_DIR).iterdir())
    assert snapshots == ["epoch-002", "epoch-004"]
    early = robgen.load_model(training.snapshot_folder(tmp_path / "run", 2))
    assert json.loads((training.snapshot_folder(tmp_path / "run", 2) / "config.json").read_text())["training"][
        "epochs_done"] == 2
    last = robgen.load_model(tmp_path / "run")
    assert not all(torch.equal(a, b) for a, b in zip(early.state_dict().values(), last.state_dict().values()))


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "rmsprop", "sgd, adam"), ("schedule", "step", "onecycle, cosine, multistep"),
    ("augment", "mixup", "crop-flip, flip, none"), ("milestones", (80, 30), "increasing"),
    ("snapshot_every", -1, ">= 0"), ("reject_cap", 1.5, r"probability in \(0, 1\)"), ("reject_weight", -1, ">= 0"),
    ("trades_beta", -1, ">= 0"),
    ("reject_adversarial_share", 1.5, r"share in \[0, 1\]"), ("reject_attack", "cw", "confident, pgd"),
])
def test_bad_recipe_options_are_explained(toy_data, field, value, message):
    with pytest.raises(ValueError, match=message):
        config(toy_data, **{field: value})


def test_resume_with_data_loading_workers_continues_exactly(toy_data, tmp_path):
    # the workers were kept across epochs: their augmentation streams were not in the trainer state
    settings = dict(epochs=2, workers=1, augment="flip")
    straight = train(config(toy_data, **settings), tmp_path / "straight", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config(toy_data, **settings), tmp_path / "resumed", progress=False, on_epoch=stop_after_epoch(1))
    assert_same_weights(straight, train(config(toy_data, **settings), tmp_path / "resumed", resume=True,
                                        progress=False))
    with pytest.raises(ValueError, match="workers"):  # another number of workers augments differently
        train(config(toy_data, **{**settings, "workers": 0}), tmp_path / "resumed", resume=True, progress=False)


def test_resume_refuses_another_recipe(toy_data, tmp_path):
    train(config(toy_data, epochs=1, optimizer="adam", lr=1e-3), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"optimizer 'adam' \(this run: 'sgd'\)"):
        train(config(toy_data, epochs=2, lr=1e-3), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ValueError, match="augment"):
        train(config(toy_data, epochs=1, optimizer="adam", lr=1e-3, augment="flip"), tmp_path / "run", resume=True,
              progress=False)



def test_a_run_that_recorded_a_setting_its_mode_ignores_still_resumes(toy_data, tmp_path):
    """Older runs recorded --milestones under onecycle (ignored, now refused when given): resuming with them was
    refused by the new check, and without them by the recipe comparison."""
    import json

    train(config(toy_data, epochs=1), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    saved["training"]["config"]["milestones"] = [10, 20]  # as such a run recorded it
    path.write_text(json.dumps(saved))
    from robgen.training.loop import _check_resumable

    _check_resumable(config(toy_data, epochs=1), tmp_path / "run")  # the recipe it ran: accepted
    with pytest.raises(ValueError, match="milestones would be ignored"):  # given again: refused, as for any run
        config(toy_data, epochs=1, milestones=(10, 20))
    with pytest.raises(ValueError, match="augment"):  # a setting the run used still has to match
        _check_resumable(config(toy_data, epochs=1, augment="flip"), tmp_path / "run")


class Table(torch.nn.Module):
    """A 'model' whose logits are looked up by two pixels of the image: the first says attacked (1) or clean (0),
    the second which image; `table_inputs` makes the clean images x and their attacked points x*."""

    def __init__(self, clean, attacked):
        super().__init__()
        self.clean, self.attacked = clean, attacked

    def forward(self, x):
        row = x[:, 0, 0, 1].long()
        return torch.where(x[:, :1, 0, 0] > 0.5, self.attacked[row], self.clean[row])


def table_inputs(n):
    x, x_star = torch.zeros(n, 3, 2, 2), torch.ones(n, 3, 2, 2)
    x[:, 0, 0, 1] = x_star[:, 0, 0, 1] = torch.arange(n, dtype=torch.float)
    return x, x_star


def test_the_reject_loss_is_the_clean_cross_entropy_plus_the_excess_of_the_most_likely_wrong_class():
    import math

    import torch.nn.functional as F

    from robgen.attacks.objectives import wrong_class_log_prob
    from robgen.training.losses import batch_loss

    y = torch.tensor([0, 1])
    clean = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    attacked = torch.tensor([[0.0, 2.0, 0.0],  # fooled: p(wrong) = e^2 / (e^2 + 2) = 0.79, above the cap
                             [0.0, 1.0, 0.0]])  # still right: p(best wrong) = 1 / (e + 2) = 0.21, below a cap of 0.25
    x, x_star = table_inputs(2)
    recipe = TrainConfig(mode="reject", reject_cap=0.25, reject_weight=2.0)
    loss, logits = batch_loss(recipe, Table(clean, attacked), x, x_star, y)
    assert torch.equal(logits, clean)  # the training accuracy is counted on the clean images
    excess = math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(0.25)  # only the fooled image's counts
    assert float(loss) == pytest.approx(float(F.cross_entropy(clean, y)) + 2.0 * excess / 2, rel=1e-6)
    assert torch.allclose(wrong_class_log_prob(attacked, y), torch.log_softmax(attacked, 1)[[0, 1], [1, 0]])
    mixed = TrainConfig(mode="reject", reject_cap=0.25, reject_weight=2.0, reject_adversarial_share=0.75)
    mixed_loss, _ = batch_loss(mixed, Table(clean, attacked), x, x_star, y)  # a quarter clean, three quarters at x*
    assert float(mixed_loss) == pytest.approx(0.25 * float(F.cross_entropy(clean, y))
                                              + 0.75 * float(F.cross_entropy(attacked, y)) + 2.0 * excess / 2, rel=1e-6)
    pgd_loss, pgd_logits = batch_loss(TrainConfig(mode="pgd"), Table(clean, attacked), x, x_star, y)
    assert torch.equal(pgd_logits, attacked) and float(pgd_loss) == pytest.approx(float(F.cross_entropy(attacked, y)))


def test_trades_loss_is_the_clean_cross_entropy_plus_beta_times_the_divergence_at_the_attacked_point_weat_weighs_it():
    import torch.nn.functional as F

    from robgen.attacks.objectives import prediction_divergence
    from robgen.training.losses import batch_loss

    y = torch.tensor([0, 1])
    clean = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    attacked = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    x, x_star = table_inputs(2)
    p, q = torch.softmax(clean, 1), torch.softmax(attacked, 1)
    kl = (p * (p.log() - q.log())).sum(1)  # KL(p(x) || p(x*)) per image, written out
    loss, logits = batch_loss(TrainConfig(mode="trades", trades_beta=6.0), Table(clean, attacked), x, x_star, y)
    assert torch.equal(logits, clean)  # the training accuracy is counted on the clean images
    assert float(loss) == pytest.approx(float(F.cross_entropy(clean, y)) + 6.0 * float(kl.mean()), rel=1e-6)
    assert torch.allclose(prediction_divergence(attacked, torch.log_softmax(clean, 1)), kl)
    unmoved, _ = batch_loss(TrainConfig(mode="trades"), Table(clean, clean), x, x_star, y)  # same prediction: no term
    assert float(unmoved) == pytest.approx(float(F.cross_entropy(clean, y)), rel=1e-6)
    # WEAT: each image's term weighted by 1 / softplus(|E(x)|), E(x) = -logsumexp of its clean logits
    weights = 1 / F.softplus(torch.logsumexp(clean, 1).abs())
    per_image = F.cross_entropy(clean, y, reduction="none") + 6.0 * kl
    weighted, _ = batch_loss(TrainConfig(mode="weat"), Table(clean, attacked), x, x_star, y)
    assert float(weighted) == pytest.approx(float((weights * per_image).mean()), rel=1e-6)


def attack_in_the_ball(kind, model, x, y):
    """`kind`'s points for (x, y) at L-inf 8/255 (10 steps of 2/255, random start seeded 1), checked to be in the ball."""
    x_adv = kind(model, eps=8 / 255, step_size=2 / 255, steps=10, generator=torch.Generator().manual_seed(1))(x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    return x_adv


def test_divergence_pgd_moves_the_prediction_further_than_pgd_stays_in_the_ball_and_ignores_the_labels():
    from robgen.attacks.objectives import prediction_divergence
    from robgen.attacks.pgd import DivergencePGD
    from robgen.training.adversarial import training_attack
    from tests.conftest import tiny_model

    model = tiny_model().eval()
    x = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
        clean = torch.log_softmax(model(x), 1)
    moved = {}
    for kind in (robgen.PGD, DivergencePGD):
        with torch.no_grad():
            moved[kind] = prediction_divergence(model(attack_in_the_ball(kind, model, x, y)), clean).mean()
    assert moved[DivergencePGD] > moved[robgen.PGD] > 0
    assert torch.equal(attack_in_the_ball(DivergencePGD, model, x, (y + 1) % 10),
                       attack_in_the_ball(DivergencePGD, model, x, y))  # the labels are not read
    with pytest.raises(ValueError, match="random_start=True"):
        DivergencePGD(model, random_start=False)
    with pytest.raises(ValueError, match="untargeted"):
        DivergencePGD(model)(x, y, target=(y + 1) % 10)
    for mode in ("trades", "weat"):
        assert type(training_attack(TrainConfig(mode=mode), model, torch.device("cpu"))) is DivergencePGD


def test_confident_pgd_makes_more_confident_mistakes_than_pgd():
    from robgen.attacks.objectives import wrong_class_log_prob
    from robgen.attacks.pgd import ConfidentPGD
    from tests.conftest import tiny_model

    model = tiny_model().eval()
    x = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    found = {}
    for kind in (robgen.PGD, ConfidentPGD):
        with torch.no_grad():
            found[kind] = wrong_class_log_prob(model(attack_in_the_ball(kind, model, x, y)), y).mean()
    assert found[ConfidentPGD] > found[robgen.PGD]
    with pytest.raises(ValueError, match="untargeted"):
        ConfidentPGD(model)(x, y, target=(y + 1) % 10)


def test_reject_mode_makes_its_point_with_the_attack_the_recipe_names_and_the_cli_offers_the_same_choices():
    from robgen.attacks.pgd import ConfidentPGD
    from robgen.cli import build_parser
    from robgen.training.adversarial import training_attack
    from robgen.training.config import REJECT_ATTACKS
    from tests.conftest import tiny_model

    model = tiny_model()
    confident = training_attack(TrainConfig(mode="reject"), model, torch.device("cpu"))
    plain = training_attack(TrainConfig(mode="reject", reject_attack="pgd"), model, torch.device("cpu"))
    assert type(confident) is ConfidentPGD and type(plain) is robgen.PGD
    assert (plain.steps, plain.eps) == (confident.steps, confident.eps) == (7, 8 / 255)
    train_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    option = next(a for a in train_parser._actions if a.dest == "reject_attack")
    assert tuple(option.choices) == REJECT_ATTACKS and option.default == TrainConfig().reject_attack
    modes = next(a for a in train_parser._actions if a.dest == "mode")
    assert tuple(modes.choices) == training.MODES
    beta = next(a for a in train_parser._actions if a.dest == "trades_beta")
    assert beta.default == TrainConfig().trades_beta


def test_each_step_on_the_cpu_zeroes_the_subnormal_weights_and_optimiser_state_and_nothing_else():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 4)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        model.weight[0, :2] = torch.tensor([1e-40, -3e-39])  # subnormal float32
        model.weight[1, 0] = 2e-38  # the smallest normal is 1.18e-38: kept
    exp_avg_sq = optimizer.state[model.weight]["exp_avg_sq"]
    exp_avg_sq[2, 3] = 1e-41
    before = model.weight.detach().clone(), exp_avg_sq.clone()
    training.loop.flush_training_subnormals(model, optimizer)
    assert model.weight[0, :2].detach().tolist() == [0.0, 0.0] and float(exp_avg_sq[2, 3]) == 0.0
    changed = (model.weight != before[0]) | (exp_avg_sq != before[1])
    assert int(changed.sum()) == 3 and float(model.weight[1, 0].detach()) == pytest.approx(2e-38)


def test_training_on_the_cpu_zeroes_subnormals_after_every_step(toy_data, tmp_path, monkeypatch):
    calls, steps = [], []
    real = training.loop.flush_training_subnormals
    monkeypatch.setattr(training.loop, "flush_training_subnormals", lambda *a: calls.append(1) or real(*a))
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    config = TrainConfig(data=str(toy_data), width=4, epochs=1, batch_size=16, lr=0.05, val_size=40, eval_subset=8,
                         eval_steps=1, optimizer="adam", seed=0)
    train(config, tmp_path / "run", device="cpu", progress=False)
    assert len(steps) > 1 and len(calls) == len(steps)


def test_training_leaves_the_processs_float_mode_as_it_found_it(toy_data):
    """The CPU's flush-to-zero mode is per thread and torch's worker threads copy it when they start: a run that
    switched it on left some threads reading 1e-40 as 0 afterwards (seen: scores of 1e-40 accepted). A fresh
    process with two threads, whose first multi-threaded operation is inside the run."""
    child = (
        "import sys, torch\n"
        "from robgen.training import TrainConfig, train\n"
        "torch.set_num_threads(2)\n"
        "config = TrainConfig(data=sys.argv[1], width=4, epochs=1, batch_size=16, lr=0.05, val_size=40,\n"
        "                     eval_subset=8, eval_steps=1, optimizer='adam', seed=0)\n"
        "train(config, sys.argv[2], device='cpu', progress=False)\n"
        "tiny = torch.full((1_000_000,), 1e-40, dtype=torch.float64).float()\n"
        "print(bool((tiny * 1 > 0).all()))\n")
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run([sys.executable, "-c", child, str(toy_data), out],
                                cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "True"  # none of the million read as 0, on any thread


def test_a_grayscale_model_fine_tunes_on_the_luma_of_its_data(toy_data, tmp_path):
    """Training read every data set as three channels, so a one-channel checkpoint could not be fine-tuned."""
    from dataclasses import replace

    from robgen.models import Classifier
    from robgen.models.checkpoint import build_network

    base = train(config(toy_data, epochs=1), tmp_path / "base", progress=False)
    spec = replace(base.spec, input_size=(1,) + tuple(base.spec.input_size[1:]), mean=(0.5,), std=(0.25,))
    gray = Classifier(build_network(spec), spec)
    state = base.net.state_dict()
    stem = next(name for name, value in state.items() if value.ndim == 4)  # the first convolution reads the input
    state[stem] = state[stem].sum(dim=1, keepdim=True)
    gray.net.load_state_dict(state)
    robgen.save_checkpoint(gray.eval(), tmp_path / "gray")
    tuned = train(config(toy_data, epochs=1, val_size=None, init_from=str(tmp_path / "gray")), tmp_path / "tuned",
                  progress=False)
    assert tuned.spec.input_size[0] == 1 and robgen.load_model(tmp_path / "tuned").spec.input_size[0] == 1


def test_a_squashing_base_is_fine_tuned_on_squashed_validation_images(tmp_path):
    """The fine-tune's validation images were centre-cropped while the model's spec (kept from its timm base,
    crop_mode "squash") reads images squashed: its per-epoch accuracy and best/ were measured on other pixels."""
    import numpy as np
    from PIL import Image

    from robgen import data as datasets
    from robgen.models import ModelSpec
    from robgen.training.preparation import load_data

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "wide" / label).mkdir(parents=True)
        for index in range(12):
            Image.fromarray((rng.random((24, 40, 3)) * 255).astype("uint8")).save(tmp_path / "wide" / label / f"{index}.png")
    settings = config(tmp_path / "wide", val_size=4, image_size=16, crop_pct=0.9, interpolation="bilinear")
    _, validation, _, _ = load_data(settings, None, False, crop_mode="squash")
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=2, class_labels=["a", "b"], input_size=(3, 16, 16),
                     crop_pct=0.9, interpolation="bilinear", crop_mode="squash")
    as_spec = datasets.load_dataset(tmp_path / "wide", "train", spec=spec)
    x, _ = validation[0]
    assert any(torch.equal(x, as_spec[i][0]) for i in range(len(as_spec))), "the pixels the model's spec reads"


def test_a_folder_holding_a_run_is_refused_to_a_python_caller_unless_resumed_or_overwritten(toy_data, tmp_path):
    """Only the CLI refused it: train(config, out) over an earlier run kept that run's best/, snapshots and log
    lines, so load_model(out / "best") gave the earlier model."""
    out = tmp_path / "run"
    train(config(toy_data, epochs=1), out, progress=False)
    with pytest.raises(ValueError, match="already holds config.json, trainer_state.pt, log.jsonl of a training run: "
                                         "resume=True to continue it, overwrite=True"):
        train(config(toy_data, epochs=1, mode="quasi"), out, progress=False)
    assert json.loads((out / "config.json").read_text())["training"]["config"]["mode"] == "standard"


def test_settings_a_mode_would_ignore_and_an_l2_run_without_its_radius_are_refused():
    """attack_steps=10 with --mode fast ran one step and recorded 10; norm="l2" without eps trained at L2 8/255 =
    0.031, sixteen times below the usual CIFAR-10 L2 radius, and called it L2 adversarial training."""
    for mode, setting in (("fast", dict(attack_steps=10)), ("quasi", dict(attack_steps=10)),
                          ("standard", dict(attack_step_size=0.01))):
        with pytest.raises(ValueError, match=f"{next(iter(setting))} would be ignored by --mode {mode}"):
            TrainConfig(mode=mode, **setting)
    for mode in ("pgd", "fast", "trades"):
        with pytest.raises(ValueError, match=f"the {mode} mode's default budget is L-inf 8/255"):
            TrainConfig(mode=mode, norm="l2")
        assert TrainConfig(mode=mode, norm="l2", eps=0.5).eps == 0.5
    # standard training attacks nothing, but its per-epoch check measured PGD at L2 0.031 and recorded it as such
    with pytest.raises(ValueError, match="the per-epoch check's default budget is L-inf 8/255, a tiny L2 radius"):
        TrainConfig(mode="standard", norm="l2")
    assert TrainConfig(mode="standard", norm="l2", eps=0.5).eps == 0.5
    assert TrainConfig(mode="pgd", attack_steps=10).attack_steps == 10


def test_imagenette_given_as_its_folder_gets_imagenettes_recipe(tmp_path, monkeypatch):
    """The recipe's defaults were looked up by the spelling: Imagenette given as its folder under the data root got
    Imagenette's validation split and name in the record, but trained at the files' own size, uncropped."""
    monkeypatch.setenv("ROBGEN_DATA", str(tmp_path))
    for spelling in ("imagenette", str(tmp_path / "imagenette"), str(tmp_path / "imagenette2-160")):
        recipe = TrainConfig(data=spelling)
        assert (recipe.image_size, recipe.crop_pct, recipe.val_size) == (128, 0.875, 500), spelling


def test_a_recipe_takes_numpys_numbers_and_refuses_what_it_cannot_train_with(toy_data, tmp_path):
    """numpy's numbers (a sweep's) trained an epoch, then stopped the run where the recipe is written as JSON;
    a seed past 2**53 failed inside torch after the data loaded ("Overflow when unpacking long long"); an L-inf
    step size of 2 (meant as 2/255) made PGD an iterated FGSM at the ball's corners; momentum 0 failed in torch
    ("Nesterov momentum requires a momentum")."""
    import numpy as np

    recipe = config(toy_data, epochs=np.int64(1), lr=np.float32(0.05), momentum=0.0, seed=np.int32(3))
    assert (type(recipe.epochs), type(recipe.lr), type(recipe.seed)) == (int, float, int)
    train(recipe, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["config"]["lr"] == recipe.lr
    for bad, says in ((dict(epochs=2.5), "epochs must be a whole number"), (dict(seed=10**17), r"\[0, 2\*\*53\]"),
                      (dict(mode="pgd", attack_step_size=2), "use 2/255"), (dict(lr="0.1"), "lr must be a number"),
                      (dict(eps=300 / 255), r"give at most 1 \(= 255/255\)")):
        with pytest.raises(ValueError, match=says):
            config(toy_data, **bad)


def test_an_architecture_that_does_not_take_a_width_is_refused_with_the_recipe(toy_data, tmp_path, capsys):
    """train --arch resnet18 --width 32 loaded the data (channel statistics over 5,000 images), then failed with
    timm's TypeError as a traceback ("ResNet.__init__() got an unexpected keyword argument 'width'")."""
    from robgen.cli import main

    with pytest.raises(ValueError, match="the architecture 'resnet18' does not take width=32"):
        TrainConfig(architecture="resnet18", width=32)
    with pytest.raises(ValueError, match="unknown architecture 'resnet_nope'"):
        TrainConfig(architecture="resnet_nope")
    assert TrainConfig(architecture="resnet10_cifar", width=8).width == 8
    assert main(["train", "--data", str(toy_data), "--arch", "resnet18", "--width", "32", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "does not take width=32" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_channels_last_on_the_cpu_is_refused_where_torchs_backward_pass_crashes(toy_data, tmp_path):
    """--channels-last on the CPU at width 4 ended the process ("double free or corruption") in the backward pass
    of the shortcut's strided 1x1 convolution on 4 channels (torch 2.14's oneDNN kernels); from 8 channels it
    trains."""
    with pytest.raises(ValueError, match="channels-last on the CPU crashes .* 1x1 convolution of stride 2 on 4 "
                                         "channels.*without --channels-last"):
        train(config(toy_data, epochs=1, channels_last=True), tmp_path / "w4", device="cpu", progress=False)
    assert not (tmp_path / "w4" / "model.safetensors").exists()
    model = train(config(toy_data, epochs=1, width=8, channels_last=True), tmp_path / "w8", device="cpu",
                  progress=False)
    assert (tmp_path / "w8" / "model.safetensors").exists() and model.spec.arch_kwargs["width"] == 8


def test_a_python_callers_recipe_and_folder_are_checked_before_training(toy_data, tmp_path, monkeypatch):
    """From Python: a pathlib.Path as the data set (or init_from) trained an epoch, then failed writing the recipe
    ("Object of type PosixPath is not JSON serializable"), as did a Path in `extra`; a folder under a file failed at
    the first epoch's save; resume and overwrite together were taken (overwrite ignored); the model returned named
    its folder as given, so that after a chdir its detector and seeds were not found."""
    from pathlib import Path

    from robgen.models.checkpoint import model_folder

    recipe = config(toy_data, data=Path(toy_data), epochs=1)
    assert recipe.data == str(toy_data)
    with pytest.raises(ValueError, match="extra is written into the checkpoint's config.json.*PosixPath"):
        config(toy_data, extra={"notes": Path("x")})
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=r"afile/run has a file on its way \(.*afile\): choose another"):
        train(recipe, tmp_path / "afile" / "run", progress=False)
    with pytest.raises(ValueError, match="give one"):
        train(recipe, tmp_path / "r", resume=True, overwrite=True, progress=False)
    monkeypatch.chdir(tmp_path)
    model = train(recipe, "run", progress=False)
    monkeypatch.chdir("/")  # another working directory
    assert model_folder(model) == (tmp_path / "run").resolve()


def test_a_callers_random_draws_at_each_epoch_leave_the_run_as_it_would_be(toy_data, tmp_path):
    """on_epoch ran inside the run's seeded streams: a callback drawing from torch's RNG changed the weights (62 of
    76 tensors in the review's example) and a resumed run no longer matched an uninterrupted one."""
    quiet = train(config(toy_data, epochs=2), tmp_path / "quiet", progress=False)
    drawing = train(config(toy_data, epochs=2), tmp_path / "drawing", progress=False, on_epoch=lambda row: torch.rand(5))
    assert_same_weights(quiet, drawing)


def test_a_model_fine_tuned_on_imagenettes_own_folder_is_taken_with_labels_by_wordnet_id():
    """A shipped Imagenette model (labels "tench", "French horn", ...) fine-tuned on Imagenette's own folder
    (WordNet ids, n01440764, ...) was refused: "classifies tench, ... but ... has n01440764, ...: fine-tune a model
    of this data set"; a folder of other classes still is."""
    from robgen.training.preparation import model_to_fine_tune
    from tests.conftest import tiny_model

    base = tiny_model(num_classes=2)
    base.spec.class_labels = ["tench", "French horn"]
    config = TrainConfig(data="imagenette", architecture="resnet10_cifar", init_from="base", epochs=1)
    tuned = model_to_fine_tune(config, base, ["n01440764", "n03394916"], (3, 32, 32))
    assert tuned.spec.class_labels == ["tench", "French horn"]
    with pytest.raises(ValueError, match="fine-tune a model of this data set"):
        model_to_fine_tune(config, tiny_model(num_classes=2), ["ant", "bee"], (3, 32, 32))


@pytest.mark.parametrize("setting, value", [("image_size", 0), ("image_size", -4),
                                            ("train_limit", 0)])
def test_a_recipe_refuses_sizes_and_limits_that_name_no_image_before_reading_any(setting, value):
    """--image-size 0 gave "height and width must be > 0" after 11 s of reading (naming no flag, and "width" read
    as --width); --train-limit 0 said "limit must be >= 1", pointing at --limit."""
    with pytest.raises(ValueError, match=f"{setting} .* must be a whole number >= 1, got {value}"):
        TrainConfig(data="cifar10", **{setting: value})
