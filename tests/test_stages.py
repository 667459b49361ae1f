"""The resumable stages of `reproduce` (experiments/stages.py): a run continued from any stage boundary gives,
bit for bit, the stages and results of an uninterrupted run; a store refuses stages made under anything else
that changes their outputs (the eval transform, fusion, the device type, software versions, the code).

A tiny random model on a toy ImageFolder (no shared data): two 4-image batches per split, two attack steps."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

import robgen.experiments.stages as stages_module
from robgen.engine.fused import fusion, fusion_enabled
from robgen.experiments.reproduce import ReproduceSettings, reproduce
from robgen.experiments.stages import KEY_FILE, StageStore, run_environment, stage_seed
from robgen.models import Classifier, ModelSpec
from robgen.models.checkpoint import build_network

SETTINGS = dict(attacks=("pgd-8", "pgd-16"), steps=2, lambdas=(0.0, 1.2, 3.0), val_size=40, limit=8, batch_size=4,
                reference_size=32, lid_reference=24, timing_repeats=1)
UNCOMPARABLE = ("cost", "wall_seconds", "continued")  # timings, and how many stages were read back
CODE_FINGERPRINT = stages_module.code_fingerprint


@pytest.fixture(scope="module", autouse=True)
def same_code():
    """The code's fingerprint pinned for these runs (a checkout edited while the tests run would change it);
    `test_other_code_is_refused` and `test_the_code_fingerprint_follows_the_files` test it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages_module, "code_fingerprint", lambda *args, **kwargs: "this checkout")
        yield


def _model():
    """A random width-4 ResNet10 for the toy data's 4 classes, at its 16 x 16 pixels (cheap on a busy CPU)."""
    torch.manual_seed(0)  # tests only: library code never seeds globally
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=4, class_labels=[f"c{i}" for i in range(4)],
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 16, 16), arch_kwargs={"width": 4})
    return Classifier(build_network(spec), spec).eval()


def _run(model, data, stage_dir):
    return reproduce(model, str(data), None, settings=ReproduceSettings(**SETTINGS), progress=False,
                     stage_dir=stage_dir)


def _comparable(results) -> str:
    return json.dumps({key: value for key, value in results.items() if key not in UNCOMPARABLE}, sort_keys=True)


def _stage_file(folder, name):
    """Where a store on `folder` keeps stage `name` (opened with the key it records)."""
    return StageStore(folder, json.loads((folder / KEY_FILE).read_text())).path(name)


def _stage(path):
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        return tensors, json.loads(handle.metadata()["trace"] or "null")


ORDER = ["clean-val", "clean-test", "pgd-8-val", "pgd-8-test", "pgd-16-val", "pgd-16-test",
         "hepgd-8-lam1.2-val", "hepgd-8-lam1.2-test", "hepgd-8-lam3 (adaptive)-test"]  # the stages, in run order


@pytest.fixture(scope="module")
def uninterrupted(toy_data, tmp_path_factory):
    """One uninterrupted run whose stages are kept (not cleared): (results, stage folder, stage names in run order)."""
    folder = tmp_path_factory.mktemp("whole") / "stages"
    order = []
    real_run = StageStore.run

    def recording(self, name, compute):
        order.append(name)
        return real_run(self, name, compute)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageStore, "run", recording)
        patch.setattr(StageStore, "clear", lambda self: None)
        results = _run(_model(), toy_data, folder)
    return results, folder, order


def test_the_run_has_a_stage_per_split_and_attack(uninterrupted):
    _, folder, order = uninterrupted
    assert order == ORDER
    assert len(list(folder.glob("*.safetensors"))) == len(order)
    for name in ORDER:  # which attacked images were changed is kept with the attack's stages
        assert ("perturbed" in _stage(_stage_file(folder, name))[0]) == (not name.startswith("clean")), name


# every boundary; the quick suite (-m "not slow") keeps the one between pgd-8's validation and test stages
BOUNDARIES = [k if k == 3 else pytest.param(k, marks=pytest.mark.slow) for k in range(len(ORDER) + 1)]


@pytest.mark.parametrize("finished", BOUNDARIES)
def test_a_run_continued_from_any_stage_boundary_equals_the_uninterrupted_run(uninterrupted, toy_data, tmp_path,
                                                                             monkeypatch, finished):
    """Stop after `finished` stages (among them between each attack's validation and test stages), run again:
    every stage it computes (logits, labels, features, trace) and the results are the uninterrupted run's,
    bit for bit."""
    results, whole, _ = uninterrupted
    folder = tmp_path / "stages"
    shutil.copytree(whole, folder)
    for name in ORDER[finished:]:  # what the interrupted run had not finished
        _stage_file(folder, name).unlink()
    monkeypatch.setattr(StageStore, "clear", lambda self: None)  # keep what the continued run wrote, to compare it
    continued = _run(_model(), toy_data, folder)
    assert continued["continued"]["stages_read_back"] == finished
    for name in ORDER[finished:]:
        tensors, trace = _stage(_stage_file(folder, name))
        expected, expected_trace = _stage(_stage_file(whole, name))
        assert tensors.keys() == expected.keys()
        for key in tensors:
            assert torch.equal(tensors[key], expected[key]), f"{name}: {key} differs after {finished} stages"
        assert trace == expected_trace, f"{name}: trace differs after {finished} stages"
    assert _comparable(continued) == _comparable(results)


class Interrupted(BaseException):
    """A stop in the middle of a stage, as a killed process makes one."""


def test_a_run_stopped_inside_an_attack_stage_continues_from_its_finished_batch_bit_for_bit(
        uninterrupted, toy_data, tmp_path, monkeypatch):
    """An attack's stage keeps each batch as it finishes: stopped in the second batch of pgd-8's test stage, the
    run continued reads the first back and writes the uninterrupted run's stage (logits, features, trace, changed
    images) and results."""
    results, whole, _ = uninterrupted
    folder = tmp_path / "stages"
    real_run, calls = stages_module.StageParts.run, []

    def stop_at_fourth(self, index, compute):  # batches 1-2: pgd-8's validation stage; 3-4: its test stage
        calls.append(index)
        if len(calls) == 4:
            raise Interrupted
        return real_run(self, index, compute)

    monkeypatch.setattr(stages_module.StageParts, "run", stop_at_fourth)
    with pytest.raises(Interrupted):
        _run(_model(), toy_data, folder)
    parts = stages_module.parts_folder(folder, "pgd-8-test")
    assert [path.name for path in parts.iterdir()] == ["batch-000000.safetensors"]
    monkeypatch.setattr(stages_module.StageParts, "run", real_run)
    monkeypatch.setattr(StageStore, "clear", lambda self: None)
    continued = _run(_model(), toy_data, folder)
    assert continued["continued"]["stages_read_back"] == 3 and continued["continued"]["batches_read_back"] == 1
    assert not parts.exists()
    for name in ORDER[3:]:
        tensors, trace = _stage(_stage_file(folder, name))
        expected, expected_trace = _stage(_stage_file(whole, name))
        assert tensors.keys() == expected.keys() and trace == expected_trace, name
        assert all(torch.equal(tensors[key], expected[key]) for key in tensors), name
    assert _comparable(continued) == _comparable(results)


def test_stage_seeds_depend_on_the_seed_and_the_stage_alone():
    assert stage_seed(0, "pgd-8-test") == stage_seed(0, "pgd-8-test")
    seeds = {stage_seed(seed, name) for seed in (0, 1) for name in ("pgd-8-val", "pgd-8-test", "pgd-16-test")}
    assert len(seeds) == 6
    assert all(0 <= seed < 2**63 for seed in seeds)


# ---- the key: what a store's stages were made under ----


@pytest.fixture
def stopped_run(uninterrupted, tmp_path):
    """The stages of a run that stopped half way, as the same command would find them."""
    _, whole, _ = uninterrupted
    folder = tmp_path / "stages"
    shutil.copytree(whole, folder)
    for name in ORDER[4:]:
        _stage_file(folder, name).unlink()
    return folder


def test_the_same_command_is_accepted(stopped_run, toy_data):
    assert _run(_model(), toy_data, stopped_run)["continued"]["stages_read_back"] == 4


def test_another_eval_transform_is_refused(stopped_run, toy_data):
    model = _model()
    model.spec.crop_pct = 0.875  # an edited config.json: same weights, other pixels
    with pytest.raises(ValueError, match=r"holds the finished stages of another run \(its eval_transform, pixels "
                                         r"differ: eval_transform.crop_pct: 1.0 → 0.875; pixels.test: "):
        _run(model, toy_data, stopped_run)
    model = _model()
    model.spec.interpolation = "bilinear"
    with pytest.raises(ValueError, match="eval_transform"):
        _run(model, toy_data, stopped_run)


def test_fusion_switched_is_refused(stopped_run, toy_data):
    with fusion(not fusion_enabled()):
        with pytest.raises(ValueError, match=r"another run \(its fusion differ: "
                                             r"fusion: (true → false|false → true)\)"):
            _run(_model(), toy_data, stopped_run)


def test_another_device_type_is_refused(stopped_run, toy_data, monkeypatch):
    monkeypatch.setattr(stages_module, "model_device", lambda model: torch.device("cuda", 0))  # a GPU run's key
    with pytest.raises(ValueError, match=r"another run \(its device differ: device: \"cpu\" → \"cuda\"\)"):
        _run(_model(), toy_data, stopped_run)


@pytest.mark.parametrize("package", ["robgen", "torch", "torchattacks", "timm"])
def test_other_software_versions_are_refused(stopped_run, toy_data, monkeypatch, package):
    real = stages_module.installed_version
    monkeypatch.setattr(stages_module, "installed_version",
                        lambda name: "999.0" if name == package else real(name))
    with pytest.raises(ValueError, match=rf"another run.*\b{package}\b"):
        _run(_model(), toy_data, stopped_run)


def test_other_code_is_refused(stopped_run, toy_data, monkeypatch):
    """A bug fix in an attack changes its outputs without changing robgen's version number."""
    monkeypatch.setattr(stages_module, "code_fingerprint", lambda: "edited")
    with pytest.raises(ValueError, match=r"another run.*\bcode\b"):
        _run(_model(), toy_data, stopped_run)


def test_the_environment_names_what_decides_a_stages_outputs(monkeypatch):
    model = _model()
    environment = run_environment(model)
    assert environment["eval_transform"] == {"input_size": [3, 16, 16], "crop_pct": 1.0, "interpolation": "bicubic"}
    assert environment["network"] == {"architecture": model.spec.architecture,
                                      "arch_kwargs": dict(model.spec.arch_kwargs), "num_classes": 4}
    assert environment["fusion"] is fusion_enabled() and environment["device"] == "cpu"
    assert environment["torch"] == torch.__version__ and environment["robgen"]
    assert environment["code"] == "this checkout" and len(CODE_FINGERPRINT()) == 64  # (pinned here, see same_code)
    assert run_environment(model, fused=not fusion_enabled())["fusion"] is not fusion_enabled(), "a run's own setting"
    monkeypatch.setattr(stages_module, "model_device", lambda model: torch.device("cuda", 0))
    assert run_environment(model)["device"] == "cuda"


def test_another_network_for_the_same_weights_is_refused(stopped_run, toy_data):
    """An edited config.json's architecture arguments load the same weights into another network (other outputs):
    the stages were read back."""
    model = _model()
    model.spec.arch_kwargs = dict(model.spec.arch_kwargs, edited=True)
    with pytest.raises(ValueError, match=r"another run \(its network differ: network.arch_kwargs"):
        _run(model, toy_data, stopped_run)


def test_stages_whose_key_is_gone_are_never_read_as_this_runs(stopped_run, toy_data):
    """A removal cut short after key.json went (or a key.json deleted) left stages that any run then read back."""
    (stopped_run / KEY_FILE).unlink()
    with pytest.raises(ValueError, match="without their key.json"):
        _run(_model(), toy_data, stopped_run)
    key = {"settings": "whatever"}
    fresh = StageStore(stopped_run, key, replace_stale=True)
    assert fresh.replaced and list(stopped_run.glob("*.safetensors")) == []
    assert json.loads((stopped_run / KEY_FILE).read_text()) == fresh.key


def test_a_damaged_key_is_named_and_removed_with_its_stages_by_overwrite(stopped_run, toy_data):
    """A key.json cut short gave json's bare "Expecting value: line 1 column 14 (char 13)", and --overwrite (the
    way to start again) failed the same."""
    (stopped_run / KEY_FILE).write_text('{"settings": ')
    with pytest.raises(ValueError, match="key.json is damaged .*pass --overwrite"):
        _run(_model(), toy_data, stopped_run)
    fresh = StageStore(stopped_run, {"settings": "whatever"}, replace_stale=True)
    assert fresh.replaced and list(stopped_run.glob("*.safetensors")) == []
    assert json.loads((stopped_run / KEY_FILE).read_text()) == fresh.key


def test_a_stage_file_cut_short_is_computed_again(stopped_run, toy_data):
    """A 0-byte stage (a crash or a full disk while writing it) failed every later run, --overwrite included."""
    _stage_file(stopped_run, ORDER[0]).write_bytes(b"")
    assert _run(_model(), toy_data, stopped_run)["continued"]["stages_read_back"] == 3


def test_a_stages_batches_are_kept_as_they_finish_and_go_when_the_stage_is_written(tmp_path):
    """`StageStore.parts`: a batch computed is written at once and read back instead of computed; a batch file cut
    short is computed again; writing the stage removes its parts and counts what they took."""
    from robgen.experiments.stages import parts_folder, write_tensors

    store = StageStore(tmp_path / "stages", {"settings": 1})
    parts, computed = store.parts("k+1 pgd (eps 8/255)"), []

    def batch(index):
        return lambda: computed.append(index) or {"evaded": torch.tensor([index % 2 == 0]), "n": torch.tensor([index])}

    first = [parts.run(index, batch(index)) for index in range(3)]
    folder = parts_folder(store.folder, "k+1 pgd (eps 8/255)")
    assert sorted(path.name for path in folder.iterdir()) == [f"batch-{i:06d}.safetensors" for i in range(3)]
    (folder / "batch-000001.safetensors").write_bytes(b"\0" * 5)  # cut short by a crash
    again = store.parts("k+1 pgd (eps 8/255)")
    second = [again.run(index, batch(index)) for index in range(3)]
    assert computed == [0, 1, 2, 1] and again.reused == 2
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(first, second))
    recorded = []
    store.finish("k+1 pgd (eps 8/255)", 1.0, lambda path, seconds: recorded.append(seconds) or write_tensors(
        {"n": torch.ones(1)}, seconds, path))
    assert not folder.exists() and store.path("k+1 pgd (eps 8/255)").is_file()
    assert store.reused_batches == 2 and store.reused_seconds == again.reused_seconds > 0
    assert recorded == [1.0 + again.reused_seconds]  # the stage's time: here, and its batches' then


def test_kept_batches_never_outlive_what_they_belong_to(tmp_path):
    """Batches without the key that says whose they are (a clear() cut short) are refused like stages, and those a
    stop left beside a stage written whole are removed when the stage is read back (never "under way" again)."""
    from robgen.experiments.stages import parts_folder, write_tensors

    folder = tmp_path / "stages"
    store = StageStore(folder, {"settings": 1})
    store.parts("a").run(0, lambda: {"n": torch.ones(1)})
    (folder / KEY_FILE).unlink()
    with pytest.raises(ValueError, match="without their key.json"):
        StageStore(folder, {"settings": 2})
    assert StageStore(folder, {"settings": 2}, replace_stale=True).replaced and not parts_folder(folder, "a").exists()

    store = StageStore(folder, {"settings": 2})
    store.parts("a").run(0, lambda: {"n": torch.ones(1)})
    write_tensors({"n": torch.ones(1)}, 1.0, store.path("a"))  # stopped after writing the stage, before the cleanup
    assert StageStore(folder, {"settings": 2}).read("a", stages_module.read_tensors) is not None
    assert not parts_folder(folder, "a").exists()


def test_clearing_removes_the_key_before_the_stages(tmp_path, monkeypatch):
    folder = tmp_path / "stages"
    store = StageStore(folder, {"settings": 1})
    (folder / "a.safetensors").write_bytes(b"x")
    seen = []
    monkeypatch.setattr(stages_module.shutil, "rmtree", lambda path, ignore_errors: seen.append(
        sorted(p.name for p in folder.iterdir())))
    store.clear()
    assert seen == [["a.safetensors"]], "key.json went first: an interrupted removal leaves no key to trust"


def test_the_code_fingerprint_follows_the_files(tmp_path):
    package = tmp_path / "package"
    (package / "attacks").mkdir(parents=True)
    (package / "attacks" / "pgd.py").write_text("STEP = 1\n")
    (package / "data.py").write_text("SIZE = 32\n")
    parts = ("attacks", "data.py")
    before = CODE_FINGERPRINT(package, parts)
    assert CODE_FINGERPRINT(package, parts) == before
    (package / "attacks" / "pgd.py").write_text("STEP = 2\n")
    edited = CODE_FINGERPRINT(package, parts)
    assert edited != before
    (package / "app.py").write_text("TITLE = 'robgen'\n")  # not one of the parts
    assert CODE_FINGERPRINT(package, parts) == edited


def test_with_overwrite_stages_of_another_run_are_removed_and_those_of_this_run_kept(stopped_run, toy_data,
                                                                                      monkeypatch):
    """`replace_stale` (the commands' --overwrite): a key that differs empties the folder and the run starts afresh;
    the key of this very run keeps its stages."""
    from robgen.experiments.stages import StageStore

    key = json.loads((stopped_run / "key.json").read_text())
    kept = StageStore(stopped_run, key, replace_stale=True)
    assert kept.replaced == [] and len(list(stopped_run.glob("*.safetensors"))) == 4
    other = dict(key, code="other code")
    fresh = StageStore(stopped_run, other, replace_stale=True)
    assert fresh.replaced and "code" in fresh.replaced[0]
    assert list(stopped_run.glob("*.safetensors")) == []
    assert json.loads((stopped_run / "key.json").read_text()) == fresh.key


def test_a_known_data_sets_stages_follow_its_data_root_whatever_folder_the_working_directory_holds(tmp_path,
                                                                                                    monkeypatch):
    """`load_dataset("cifar10")` reads the data root whatever is in the working directory, so the key must too:
    two copies of the data (exact PNGs, JPEG copies) under two roots never share stages."""
    from robgen.experiments.stages import data_location

    (tmp_path / "cifar10").mkdir()
    monkeypatch.chdir(tmp_path)
    first, second = data_location("cifar10", tmp_path / "copy-a"), data_location("cifar10", tmp_path / "copy-b")
    assert first != second and first.endswith("copy-a") and second.endswith("copy-b")
    assert data_location("./cifar10") == str((tmp_path / "cifar10").resolve())  # a folder named by its path


def test_an_image_replaced_in_place_is_refused(toy_data, tmp_path):
    """The key named the data folder and the image counts: an image file replaced by another under the same name
    kept both, and its run read back clean outputs of the old pixels beside attacks on the new ones."""
    data = tmp_path / "images"
    shutil.copytree(toy_data, data)
    folder = tmp_path / "stages"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageStore, "clear", lambda self: None)
        _run(_model(), data, folder)
    from PIL import Image
    for path in (path for path in data.rglob("*") if path.is_file()):  # every file, whichever split it is in
        with Image.open(path) as image:
            mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored.save(path)
    with pytest.raises(ValueError, match="pixels"):
        _run(_model(), data, folder)


def test_the_adaptive_run_names_a_damaged_key_before_calibrating(tmp_path):
    """refuse_stages_of_another_run read a damaged key.json as "the finished stages of another run (its data,
    settings differ: not recorded ...)", never saying the key was damaged."""
    from robgen.experiments.adaptive import refuse_stages_of_another_run

    (tmp_path / KEY_FILE).write_text('{"settings": ')
    with pytest.raises(ValueError, match="key.json is damaged .*pass --overwrite"):
        refuse_stages_of_another_run(tmp_path, {"settings": {}})


def test_a_key_left_alone_by_an_attempt_cut_before_any_stage_is_replaced_without_overwrite(tmp_path):
    """An attempt stopped before its first stage finished left key.json alone; the same folder with other settings
    was then refused as holding "the finished stages of another run", though none had finished."""
    (tmp_path / KEY_FILE).write_text(json.dumps({"settings": "an earlier attempt's"}))
    store = StageStore(tmp_path, {"settings": "these"})
    assert json.loads((tmp_path / KEY_FILE).read_text()) == store.key
    (tmp_path / "stage.safetensors").write_bytes(b"")  # a stage of that other run: refused as before
    (tmp_path / KEY_FILE).write_text(json.dumps({"settings": "an earlier attempt's"}))
    with pytest.raises(ValueError, match="finished stages of another run"):
        StageStore(tmp_path, {"settings": "these"})


def test_a_store_refuses_the_stages_of_another_command_naming_it(tmp_path):
    """reproduce's store over an adaptive run's stages offered --overwrite, which removes that run's work."""
    from robgen.experiments.stages import StageStore

    folder = tmp_path / ".stages"
    folder.mkdir()
    (folder / "key.json").write_text(json.dumps({"command": "adaptive", "settings": {"steps": 100}}))
    (folder / "energy-eps8_255-k+1 pgd.safetensors").write_bytes(b"adaptive's finished stage")
    with pytest.raises(ValueError, match="holds the stages of a `python -m robgen adaptive` run, not of `python -m "
                                         "robgen reproduce`: choose another --out"):
        StageStore(folder, {"command": "reproduce", "settings": {"steps": 10}})
    assert (folder / "energy-eps8_255-k+1 pgd.safetensors").read_bytes() == b"adaptive's finished stage"
    (folder / "key.json").write_text(json.dumps({"settings": {"steps": 100}}))  # an older key names no command
    with pytest.raises(ValueError, match="holds the finished stages of another run"):
        StageStore(folder, {"command": "reproduce", "settings": {"steps": 10}})
