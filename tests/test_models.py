import json
import math
import os
import pickle
import shutil

import numpy as np
import pytest
import timm
import torch

import robgen
from robgen.models import ModelSpec
from robgen.models import checkpoint as checkpoint_module
from robgen.models import loading, subnormals
from robgen.models.checkpoint import model_folder
from tests.conftest import REPO, tiny_model


def test_paper_resnet10_is_registered_with_timm():
    net = timm.create_model("resnet10_cifar", num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1), "3x3 stride-1 stem"
    assert [len(stage) for stage in net.stages] == [1, 1, 1, 1]
    assert [stage[0].conv1.out_channels for stage in net.stages] == [64, 128, 256, 512]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    narrow = timm.create_model("resnet10_cifar_w16")
    assert narrow.stages[-1][0].conv1.out_channels == 128


def test_timm_model_normalises_inside_and_carries_spec():
    model = robgen.load_model("timm:resnet10_cifar", pretrained=False, width=4)
    assert not model.training
    spec = model.spec
    assert spec.architecture == "resnet10_cifar" and spec.num_classes == 10 and len(spec.class_labels) == 10
    assert spec.input_size == (3, 32, 32) and spec.training["weights"] == "random"
    x = torch.rand(2, 3, 32, 32)
    expected = model.net((x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert {name for name, _ in model.named_buffers()} >= {"mean", "std"}, "normalisation moves with .to(device)"


def test_a_timm_model_that_squashes_its_images_is_read_as_timm_reads_it(caplog, tmp_path):
    """timm squashes the whole photo for these weights (crop_mode 'squash': each side to size / crop_pct, the
    aspect ratio not kept); robgen centre-cropped it (with a warning). Now it squashes too, as timm's own eval
    transform does, for files and data sets, and a checkpoint keeps the mode; "border" still warns."""
    import timm
    from PIL import Image

    from robgen import data, images
    from robgen.models.loading import _timm_spec

    with caplog.at_level("WARNING", logger="robgen.models.loading"):
        model = robgen.load_model("timm:convnextv2_nano.fcmae_ft_in22k_in1k_384", pretrained=False)
    assert model.spec.crop_mode == "squash" and "crop_mode" not in caplog.text
    photo = tmp_path / "wide.png"
    pixels = (np.random.default_rng(0).random((300, 500, 3)) * 255).astype("uint8")  # less than 3x the input
    Image.fromarray(pixels).save(photo)
    config = dict(timm.data.resolve_data_config(model=model.net), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    timm_transform = timm.data.create_transform(**config)  # its pixels, not normalised
    x = images.load_model_input(photo, model.spec)
    with Image.open(photo) as picture:
        assert torch.equal(x, timm_transform(picture.convert("RGB"))), "timm's own eval transform, pixel for pixel"
    assert torch.equal(data.eval_transform(model.spec)(Image.open(photo)), x), "data sets read the same"
    saved = robgen.save_checkpoint(model, tmp_path / "squash")
    assert robgen.load_model(saved).spec.crop_mode == "squash"
    assert images.load_model_input(images.save_model_input(x, tmp_path / "again.png", model.spec), model.spec).equal(x)
    caplog.clear()
    net = timm.create_model("resnet10_cifar", pretrained=False, width=4)
    net.pretrained_cfg = dict(timm.models.get_pretrained_cfg("resnet10_cifar").to_dict(), crop_mode="border")
    with caplog.at_level("WARNING", logger="robgen.models.loading"):
        assert _timm_spec("resnet10_cifar", net, {"width": 4}, "random").crop_mode == "center"
    assert "crop_mode='border'" in caplog.text
    with pytest.raises(ValueError, match="unknown crop_mode 'stretch'"):
        ModelSpec(architecture="resnet10_cifar", num_classes=2, class_labels=["a", "b"], crop_mode="stretch")


def test_forward_refuses_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny_model()(torch.rand(2, 1, 32, 32))


def test_unknown_names_list_what_is_known(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CHECKPOINTS_ENV, str(tmp_path))
    robgen.save_checkpoint(tiny_model(), tmp_path / "my-model")
    with pytest.raises(ValueError, match="my-model") as info:
        robgen.load_model("no-such-model")
    assert "timm:" in str(info.value) and "hf-hub:" in str(info.value)
    with pytest.raises(ValueError, match="unknown timm architecture"):
        robgen.load_model("timm:resnet_does_not_exist", pretrained=False)
    for spelled in ("ResNet18", "resnet-18", "vit_bse_patch16_224"):  # no suggestion was made for these
        with pytest.raises(ValueError, match=r"similar names: .*\b(resnet18|vit_base_patch16_224)\b"):
            robgen.load_model(f"timm:{spelled}", pretrained=False)


def test_checkpoint_round_trip_is_bit_exact(tmp_path, monkeypatch):
    model = tiny_model()
    model.spec.training = {"recipe": "none"}
    folder = robgen.save_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "robgen-checkpoint" and config["arch_kwargs"] == {"width": 4}
    loaded = robgen.load_model(str(folder))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.spec.training == {"recipe": "none"}
    # a bare name resolves through the checkpoint search path; list_models lists it
    monkeypatch.setenv(loading.CHECKPOINTS_ENV, str(tmp_path))
    assert "ckpt" in robgen.list_models()
    assert torch.equal(robgen.load_model("ckpt").net.head.weight, model.net.head.weight)


def test_subnormal_weights_load_as_zero_and_change_no_output(tmp_path):
    """Adam with weight decay leaves weights below float32's smallest normal number, on which x86 CPUs are many
    times slower; load_model sets them to zero, which moves no logit."""
    model = tiny_model()
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        weight = model.net.head.weight
        weight[:, ::2] = tiny / 8  # subnormal: nonzero, below the smallest normal float32
        weight[0, 1] = -tiny / 1024
        model.net.stem[1].running_mean[0] = tiny * 2  # tiny but normal: kept
    planted = int(((weight != 0) & (weight.abs() < tiny)).sum())
    assert planted > 0
    folder = robgen.save_checkpoint(model, tmp_path / "subnormal")
    loaded = robgen.load_model(folder)
    head = loaded.net.head.weight
    assert not bool(((head != 0) & (head.abs() < tiny)).any())
    assert int((head == 0).sum()) == planted + int((weight == 0).sum())
    assert float(loaded.net.stem[1].running_mean[0]) == tiny * 2
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), rtol=0, atol=1e-6)
    assert subnormals.flush_subnormals(loaded) == 0  # nothing left to flush
    # one file, one model: read keeping its subnormals (load_checkpoint) or zeroing them, the same fingerprint,
    # so a detector calibrated on either is taken by the other; a weight that is not subnormal still counts
    from robgen.models.checkpoint import load_checkpoint
    from robgen.models.fingerprint import model_fingerprint

    kept = load_checkpoint(folder)
    assert subnormals.subnormal_mask(kept.net.head.weight).any()
    assert model_fingerprint(kept) == model_fingerprint(loaded) == model_fingerprint(model)
    with torch.no_grad():
        kept.net.stem[1].running_mean[0] = 0.0
    assert model_fingerprint(kept) != model_fingerprint(loaded)
    # found from their bits, also while the CPU reads them as zero (flush-denormal mode)
    if torch.set_flush_denormal(True):  # False where the CPU has no such mode
        try:
            assert subnormals.flush_subnormals(robgen.load_model(folder).net.head) == 0
            unflushed = robgen.models.load_checkpoint(folder)
            assert subnormals.flush_subnormals(unflushed) == planted
        finally:
            torch.set_flush_denormal(False)  # torch's default


def test_saving_other_weights_into_a_model_folder_removes_the_files_fitted_to_the_old_ones(tmp_path):
    """A detector.json or seeds fitted to the weights a save replaces were read back as the new model's."""
    from robgen.models.checkpoint import companion_file

    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "m")
    (folder / "detector.json").write_text("{}")
    (folder / "seeds.safetensors").write_bytes(b"seeds")
    robgen.save_checkpoint(robgen.load_model(folder), folder)  # the same weights again: kept
    assert (folder / "detector.json").is_file() and (folder / "seeds.safetensors").is_file()
    half = robgen.save_checkpoint(tiny_model(), tmp_path / "half", dtype=torch.float16)
    (half / "detector.json").write_text("{}")
    robgen.save_checkpoint(robgen.load_model(half), half)  # loaded as float32: the same values, kept
    assert (half / "detector.json").is_file()
    from dataclasses import replace

    reread = robgen.load_model(half)  # the same weights read with other channel statistics: another model
    reread.spec = replace(reread.spec, mean=(0.4, 0.4, 0.4))
    robgen.save_checkpoint(reread, half)
    assert not (half / "detector.json").exists(), "fitted to the model as it read pixels before"
    other = tiny_model()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    robgen.save_checkpoint(other, folder)
    assert not (folder / "detector.json").exists() and not (folder / "seeds.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="no detector.json"):
        companion_file(robgen.load_model(folder), "detector.json", "fit-detector")


def test_half_precision_checkpoint_loads_as_float(tmp_path):
    model = tiny_model()
    folder = robgen.save_checkpoint(model, tmp_path / "half", dtype=torch.float16)
    loaded = robgen.load_model(folder)
    assert loaded.net.head.weight.dtype == torch.float32
    assert torch.allclose(loaded.net.head.weight, model.net.head.weight, atol=1e-3)


def test_corrupt_and_mismatched_checkpoints_are_explained(tmp_path):
    folder = robgen.save_checkpoint(tiny_model(width=4), tmp_path / "a")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        robgen.load_model(folder)

    folder = robgen.save_checkpoint(tiny_model(width=4), tmp_path / "b")
    config = json.loads((folder / "config.json").read_text())
    config["arch_kwargs"] = {"width": 8}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match the architecture"):
        robgen.load_model(folder)

    (folder / "config.json").write_text("{ broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        robgen.load_model(folder)

    folder = robgen.save_checkpoint(tiny_model(width=4), tmp_path / "c")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, format_version="1")))  # was a bare TypeError
    with pytest.raises(ValueError, match="format_version must be a whole number"):
        robgen.load_model(folder)
    (folder / "config.json").write_text(json.dumps(dict(config, format_version=1.0)))  # a whole number
    robgen.load_model(folder)


def test_a_config_without_channel_statistics_is_warned_about(tmp_path, caplog):
    folder = robgen.save_checkpoint(tiny_model(width=4), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["mean"], config["std"]
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        model = robgen.load_model(folder)
    assert "records no mean or std" in caplog.text and tuple(model.spec.mean) == (0.0, 0.0, 0.0)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_weights_are_never_unpickled(tmp_path):
    good = tmp_path / "weights.pth"
    source = robgen.load_model("timm:resnet10_cifar", pretrained=False, width=4)
    torch.save({"state_dict": source.net.state_dict()}, good)
    loaded = robgen.load_model("timm:resnet10_cifar", weights=good, width=4)
    assert torch.equal(loaded.net.head.weight, source.net.head.weight)
    assert loaded.spec.training["weights"] == "file"

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"x": _Payload()}, handle)
    with pytest.raises(ValueError, match="weights_only=True"):
        robgen.load_model("timm:resnet10_cifar", weights=evil, width=4)

    # weights saved from a DistributedDataParallel wrapper ("module." keys): .pth loaded them, .safetensors was
    # refused as "missing 74 tensors ... another architecture" (a review, 2026-12-07)
    from safetensors.torch import save_file

    wrapped = {f"module.{key}": value.contiguous() for key, value in source.net.state_dict().items()}
    save_file(wrapped, str(tmp_path / "ddp.safetensors"))
    torch.save(wrapped, tmp_path / "ddp.pth")
    for name in ("ddp.safetensors", "ddp.pth"):
        loaded = robgen.load_model("timm:resnet10_cifar", weights=tmp_path / name, width=4)
        assert torch.equal(loaded.net.head.weight, source.net.head.weight), name
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ddp.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.safetensors cannot be read as safetensors"):
        robgen.load_model("timm:resnet10_cifar", weights=tmp_path / "cut.safetensors", width=4)
    # timm's checkpoint_path was saved as an architecture argument (the model recorded "weights: random", and
    # loading its checkpoint needed the file again): weights= is the way, and says so
    with pytest.raises(ValueError, match="weights=<file>.*not timm's checkpoint_path"):
        robgen.load_model("timm:resnet10_cifar", width=4, checkpoint_path=str(good))
    overlay = robgen.load_model("timm:resnet10_cifar", pretrained=False, width=4, cache_dir=str(tmp_path))
    assert overlay.spec.arch_kwargs == {"width": 4}


def test_checkpoint_search_path_is_env_then_checkout_then_package(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    robgen.save_checkpoint(tiny_model(seed=1), first / "mine")
    robgen.save_checkpoint(tiny_model(seed=2), second / "mine")
    robgen.save_checkpoint(tiny_model(seed=3), second / "cifar10-resnet10-robust")
    monkeypatch.setenv(loading.CHECKPOINTS_ENV, os.pathsep.join([str(first), str(second)]))
    path = loading.checkpoint_search_path()
    assert path[:2] == [first, second] and loading.SOURCE_CHECKPOINTS in path
    assert loading.checkpoints_dir() == first
    assert {"mine", "cifar10-resnet10-standard"} <= set(robgen.list_models())
    mine = robgen.load_model("mine")
    assert torch.equal(mine.net.head.weight, tiny_model(seed=1).net.head.weight), "the first folder wins"
    assert model_folder(mine) == first / "mine"
    shadowed = robgen.load_model("cifar10-resnet10-robust")
    assert torch.equal(shadowed.net.head.weight, tiny_model(seed=3).net.head.weight), "$ROBGEN_CHECKPOINTS shadows"
    monkeypatch.delenv(loading.CHECKPOINTS_ENV)
    assert model_folder(robgen.load_model("cifar10-resnet10-robust")) == REPO / "checkpoints" / "cifar10-resnet10-robust"
    with pytest.raises(ValueError, match="unknown model"):
        robgen.load_model("../checkpoints")


def test_source_is_a_display_name_and_folder_is_where_the_files_are(tmp_path):
    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "ckpt")
    model = robgen.load_model(folder)
    assert model.spec.folder == str(folder) and model_folder(model) == folder
    model.spec.source = "shown to the user"  # what loaders such as hf-hub: and madrylab: do
    assert model_folder(model) == folder
    robgen.save_checkpoint(model, tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert "folder" not in config and "source" not in config, "nothing local or per-load is saved"
    assert model_folder(tiny_model()) is None


def test_companion_file_names_are_the_ones_synthesis_and_calibration_read():
    from robgen.experiments.calibration import DETECTOR_FILE
    from robgen.synthesis.seeds import SEEDS_FILE

    assert set(checkpoint_module.COMPANION_FILES) == {SEEDS_FILE, DETECTOR_FILE}


def _fake_hub(monkeypatch, remote, cache):
    """`hf_hub_download` serving files of the folder `remote` from a snapshot folder named after a commit."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    commit = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        if not (remote / filename).is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        snapshot = cache / repo_id.replace("/", "--") / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copy(remote / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls, commit


def test_hub_names_load_robgen_checkpoints_from_the_hub_cache(tmp_path, monkeypatch):
    remote = robgen.save_checkpoint(tiny_model(), tmp_path / "remote")
    calls, commit = _fake_hub(monkeypatch, remote, tmp_path / "cache")
    model = robgen.load_model("hf-hub:someone/robust-model")
    assert calls[0] == ("someone/robust-model", "config.json", None)
    assert all(revision == commit for _, _, revision in calls[1:]), "the other files come from the same commit"
    assert {filename for _, filename, _ in calls} == {"config.json", "model.safetensors", "seeds.safetensors", "detector.json"}
    assert model.spec.source == "hf-hub:someone/robust-model"
    assert model_folder(model) is not None and model_folder(model).name == commit
    assert torch.equal(model.net.head.weight, tiny_model().net.head.weight)


def test_offline_a_weights_file_missing_from_the_cache_is_not_blamed_on_the_repo(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    remote = robgen.save_checkpoint(tiny_model(), tmp_path / "remote")
    _fake_hub(monkeypatch, remote, tmp_path / "cache")
    fetch = huggingface_hub.hf_hub_download

    def offline(repo_id, filename, revision=None, **kwargs):  # the config is cached, the weights are not
        if filename == "model.safetensors":
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        return fetch(repo_id, filename, revision=revision, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="model.safetensors of the Hugging Face Hub repo 'someone/m' is not in "
                                           "the local cache and the Hub cannot be reached"):
        robgen.load_model("hf-hub:someone/m")


def test_a_timm_model_from_the_hub_rebuilds_keeps_its_labels_and_a_revision_is_read(tmp_path, monkeypatch):
    # its spec named the repo as the architecture: a saved copy could not be rebuilt, nor the source loaded again
    import json

    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root, commit = tmp_path / "hub" / "models--me--timm-tiny", "a" * 40
    (root / "refs").mkdir(parents=True)
    for ref in ("main", "v1"):
        (root / "refs" / ref).write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "test_resnet", "num_classes": 3, "label_names": ["cat", "dog", "cat"],
        "pretrained_cfg": {"input_size": [3, 96, 96], "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3],
                           "crop_pct": 0.9, "interpolation": "bilinear", "num_classes": 3}}))
    model = robgen.load_model("hf-hub:me/timm-tiny@v1")
    assert (model.spec.architecture, model.spec.source) == ("test_resnet", "hf-hub:me/timm-tiny@v1")
    assert model.spec.class_labels == ["cat (class 0)", "dog", "cat (class 2)"] and model.spec.input_size == (3, 96, 96)
    copy = robgen.load_model(robgen.save_checkpoint(model, tmp_path / "saved"))
    x = torch.rand(1, 3, 96, 96)
    assert torch.equal(copy(x), model(x)) and copy.spec.class_labels == model.spec.class_labels


def test_the_app_reads_hf_hub_offline_as_huggingface_hub_does(monkeypatch):
    from robgen.web.model_cache import hub_reachable

    for value in ("1", "ON", "yes", "TRUE"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_reachable(timeout=0.01) is False, value
    import socket

    tried = []

    def refused(*args, **kwargs):
        tried.append(args)
        raise OSError("no network here")

    monkeypatch.setattr(socket, "create_connection", refused)
    for value in ("0", "off", "no", "FALSE", ""):  # online to huggingface_hub: the app tries the Hub
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        hub_reachable(timeout=0.01)
    assert len(tried) == 5


def test_a_vit_built_for_another_size_records_that_size():
    model = robgen.load_model("timm:vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10)
    assert model.spec.input_size == (3, 64, 64)
    assert model(torch.rand(1, *model.spec.input_size)).shape == (1, 10)


def test_a_half_precision_save_refuses_values_it_would_turn_into_infinity(tmp_path):
    model = tiny_model()
    batch_norm = next(module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))
    batch_norm.running_var[0] = 7e4  # finite in float32, infinity in float16
    with pytest.raises(ValueError, match=r"running_var holds values up to 7e\+04, beyond torch.float16's range"):
        robgen.save_checkpoint(model, tmp_path / "half", dtype=torch.float16)
    batch_norm.running_var[0] = 1.0
    robgen.save_checkpoint(model, tmp_path / "half", dtype=torch.float16)


def test_hub_checkpoints_bring_their_seeds_and_detector(tmp_path, monkeypatch):
    from robgen.experiments.calibration import load_shipped_detector
    from robgen.synthesis import load_seeds

    remote = tmp_path / "remote"
    shutil.copytree(REPO / "checkpoints" / "cifar10-resnet10-robust", remote)
    _fake_hub(monkeypatch, remote, tmp_path / "cache")
    model = robgen.load_model("hf-hub:someone/cifar10-robust")
    assert model.spec.source == "hf-hub:someone/cifar10-robust"
    folder = model_folder(model)
    assert (folder / "seeds.safetensors").is_file() and (folder / "detector.json").is_file()
    assert load_seeds(model).class_labels == model.spec.class_labels
    assert load_shipped_detector(model).threshold is not None


def test_timm_models_carry_timms_eval_transform(tmp_path):
    model = robgen.load_model("timm:resnet18", pretrained=False)
    expected = timm.data.resolve_data_config(model=model.net)
    assert (model.spec.crop_pct, model.spec.interpolation) == (expected["crop_pct"], expected["interpolation"])
    assert model.spec.crop_pct < 1.0, "resnet18's default weights are evaluated with a crop margin"
    cifar = robgen.load_model("timm:resnet10_cifar", pretrained=False, width=4)
    assert (cifar.spec.crop_pct, cifar.spec.interpolation) == (1.0, "bilinear")  # its registered data config

    folder = robgen.save_checkpoint(model, tmp_path / "r18")
    assert robgen.load_model(folder).spec.crop_pct == model.spec.crop_pct
    config = json.loads((folder / "config.json").read_text())
    del config["crop_pct"], config["interpolation"]  # a checkpoint written before these fields existed
    (folder / "config.json").write_text(json.dumps(config))
    old = robgen.load_model(folder)
    assert (old.spec.crop_pct, old.spec.interpolation) == (1.0, "bicubic")
    with pytest.raises(ValueError, match="interpolation"):
        ModelSpec(architecture="x", num_classes=1, class_labels=["a"], interpolation="cubic-ish")


def test_offline_pretrained_download_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(loading.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="pretrained=False"):
        robgen.load_model("timm:resnet18")


def test_spec_class_index_by_name_or_number():
    spec = tiny_model().spec
    assert spec.class_index("c3") == 3 and spec.class_index("3") == 3 and spec.class_index(2) == 2
    assert spec.class_index(2.0) == 2
    import numpy as np

    assert spec.class_index(np.int64(3)) == 3 and spec.class_index(torch.tensor(4)) == 4
    for neither in (3.7, True, np.float32(3.7), np.bool_(True), torch.tensor(3.7)):  # 3.7 was class 3, True class 1
        with pytest.raises(ValueError, match="neither a label nor a whole index"):
            spec.class_index(neither)
    with pytest.raises(ValueError, match="c0, c1"):
        spec.class_index("dog")
    with pytest.raises(ValueError, match="0..9"):
        spec.class_index(10)



def test_a_class_typed_with_its_spaces_doubled_is_that_class():
    """"golf  ball" (two spaces, as a phone's keyboard leaves them) was an unknown class, though the message
    listed "golf ball"."""
    from robgen.models import ModelSpec

    spec = ModelSpec(architecture="tiny", num_classes=2, class_labels=["golf ball", "French horn"])
    assert spec.class_index("golf  ball") == 0 and spec.class_index(" french   Horn ") == 1


def test_a_label_made_of_digits_is_that_label_not_an_index():
    """An ImageFolder of classes 1..10 sorts them '1', '10', '2', ...: "1" was read as index 1, label '10'."""
    from robgen.models import ModelSpec

    labels = sorted(str(i) for i in range(1, 11))
    spec = ModelSpec(architecture="tiny", num_classes=10, class_labels=labels)
    assert [labels[spec.class_index(name)] for name in ("1", "10", "5")] == ["1", "10", "5"]
    assert spec.class_index(1) == 1  # a number is still an index



def test_imagenet_labels_name_one_class_each_and_a_synonym_picks_its_class():
    # timm's table has "crane" twice (the bird, 134; the machine, 517): the top-5 dict kept one of them, with the
    # other's probability, and the machine could not be picked by name; a label lists synonyms ("tench, Tinca tinca")
    from robgen.experiments.single_image import top_classes

    labels = loading._imagenet_labels()
    if labels[0].startswith("class "):
        pytest.skip("this timm ships no ImageNet label table")
    spec = ModelSpec("resnet18", 1000, labels)
    assert len(set(spec.class_labels)) == 1000
    assert (spec.class_labels[134], spec.class_labels[517]) == ("crane (class 134)", "crane (class 517)")
    assert spec.class_index("crane (class 517)") == 517 and spec.class_index("Tench") == 0
    assert spec.class_index("tank suit") == 639 and spec.class_index("maillot") == 638  # a whole label first
    with pytest.raises(ValueError, match=r"'crane' names several classes: 134 .*; 517 .*: give the index"):
        spec.class_index("crane")
    with pytest.raises(ValueError, match=r"unknown class 'tenchh'; give one of this model's 1000 labels or an index "
                                         r"0\.\.999 \(close: .*trench"):
        spec.class_index("tenchh")
    with pytest.raises(ValueError, match="no class given"):
        spec.class_index(None)
    logits = torch.zeros(1000)
    logits[134], logits[517] = 5.0, 4.0
    top = top_classes(logits, spec.class_labels, k=3)
    assert len(top) == 3 and top["crane (class 134)"] > top["crane (class 517)"]

def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    folder = robgen.save_checkpoint(tiny_model(seed=0), tmp_path / "c")
    before = (folder / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        robgen.save_checkpoint(tiny_model(seed=1), folder)
    assert (folder / "model.safetensors").read_bytes() == before
    robgen.load_model(folder)


@pytest.mark.parametrize("name, size, kwargs, features", [
    ("resnet10_imagenette", 128, {"width": 32}, 256),  # 7x7 stride-2 stem + max-pool: 128 -> 32 before the blocks
    ("resnet10_imagenette_official", 150, {}, 2048),  # the notebook's: 512 channels on a 2x2 pooled map
])
def test_the_imagenette_resnets_come_from_timm(name, size, kwargs, features):
    import robgen.models.resnets  # noqa: F401  (registers them)

    net = timm.create_model(name, num_classes=10, **kwargs)
    x = torch.rand(2, 3, size, size)
    assert net.forward_features(x).shape == (2, features)
    assert net(x).shape == (2, 10)
    stem_out = net.stem(x)
    assert stem_out.shape[-1] == (size // 4 if "official" not in name else (size + 1) // 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_subnormals_are_read_from_the_bits_of_every_float_type(dtype):
    info = torch.finfo(dtype)
    values = torch.tensor([0.0, -0.0, info.tiny, -info.tiny, info.tiny / 2, -info.tiny / 4, 1.0, -2.0, float("inf"),
                           float("nan"), info.max], dtype=dtype)
    assert subnormals.subnormal_mask(values).tolist() == [False] * 4 + [True] * 2 + [False] * 5
    assert subnormals.zero_subnormals_([values, torch.tensor([1], dtype=torch.int32)]) == 2
    assert values[4:6].tolist() == [0.0, 0.0] and not torch.signbit(values[4:6]).any()  # +0, the negative one too
    assert torch.signbit(values[1])  # zeros keep their sign


def test_a_config_for_another_architecture_is_a_clear_error_not_a_type_error(tmp_path):
    model = tiny_model()
    folder = robgen.save_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["arch_kwargs"] = {**config.get("arch_kwargs", {}), "no_such_argument": 3}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not take .*the config belongs to another model"):
        robgen.load_model(folder)
    del config["arch_kwargs"]["no_such_argument"]
    config["training"], config["metrics"] = None, None  # null for "none"
    (folder / "config.json").write_text(json.dumps(config))
    spec = robgen.load_model(folder).spec
    assert spec.training == {} and spec.metrics == {}


def test_a_checkpoint_named_from_the_home_folder_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    robgen.save_checkpoint(tiny_model(), tmp_path / "my models" / "tiny")
    assert robgen.load_model("~/my models/tiny").spec.num_classes == tiny_model().spec.num_classes


def test_a_config_from_before_the_eval_transform_was_recorded_loads_with_a_warning(tmp_path, caplog):
    import json
    import logging

    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    config.pop("crop_pct"), config.pop("interpolation")
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        model = robgen.load_model(folder)
    assert (model.spec.crop_pct, model.spec.interpolation) == (1.0, "bicubic")
    assert "records no crop_pct or interpolation (written by an older robgen)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        robgen.load_model(robgen.save_checkpoint(tiny_model(), tmp_path / "new"))
    assert "older robgen" not in caplog.text


def test_a_local_copy_of_a_timm_hub_repo_loads_with_its_readable_labels_and_a_transformers_repo_is_explained(
        tmp_path, monkeypatch):
    """A folder as `huggingface-cli download` leaves a timm repo was refused ("not a robgen checkpoint config");
    timm's export keeps WordNet ids in label_names, the names in label_descriptions (the ids were shown); a
    transformers repo failed with a bare KeyError 'architecture'."""
    import json

    from timm.models import save_for_hf

    net = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    save_for_hf(net, tmp_path / "timm-repo", safe_serialization=True, model_config={
        "label_names": ["n01", "n02", "n03"], "label_descriptions": {"n01": "tench", "n02": "goldfish", "n03": "shark"}})
    model = robgen.load_model(tmp_path / "timm-repo")
    assert model.spec.class_labels == ["tench", "goldfish", "shark"] and model.spec.architecture == "test_resnet"
    x = torch.rand(1, *model.spec.input_size)
    normalised = (x - torch.tensor(model.spec.mean).view(1, 3, 1, 1)) / torch.tensor(model.spec.std).view(1, 3, 1, 1)
    assert torch.allclose(model(x), net(normalised), atol=1e-6), "its own weights"
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"], "model_type": "vit"}))
    _fake_hub(monkeypatch, remote, tmp_path / "cache")
    with pytest.raises(ValueError, match="neither a robgen checkpoint .* nor a timm model"):
        robgen.load_model("hf-hub:someone/vit")


def test_a_spec_refuses_a_mean_or_std_that_is_not_finite_and_an_input_size_that_is_not_positive():
    """A config.json holding NaN (json.dumps writes it) loaded without a word and every logit was NaN."""
    labels = ["a", "b"]
    for mean, std in (((math.nan,) * 3, (0.5,) * 3), ((0.5,) * 3, (math.nan,) * 3), ((0.5,) * 3, (math.inf,) * 3)):
        with pytest.raises(ValueError, match="mean must be finite and std finite and positive"):
            ModelSpec(architecture="x", num_classes=2, class_labels=labels, mean=mean, std=std)
    for size in ((3, -32, 32), (3, 0, 32), (0, 32, 32)):
        with pytest.raises(ValueError, match="input_size must be positive|mean and std need"):
            ModelSpec(architecture="x", num_classes=2, class_labels=labels, input_size=size)


def test_a_one_channel_timm_model_is_normalised_as_the_average_of_its_three_channel_statistics():
    """in_chans=1 got mean = std = 0.5, where timm's summed RGB kernels expect ImageNet's (std about 0.226): the
    first layer saw its input at about half the scale it was trained for."""
    model = robgen.load_model("timm:resnet18", pretrained=False, in_chans=1, num_classes=10)
    mean, std = timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD
    assert model.spec.input_size[0] == 1
    assert model.spec.mean == pytest.approx((sum(mean) / 3,)) and model.spec.std == pytest.approx((sum(std) / 3,))


def test_a_timm_folder_on_the_search_path_loads_by_its_name_as_it_is_listed(tmp_path, monkeypatch):
    """list_models() listed such a folder, but its name went to load_checkpoint: "not a robgen checkpoint config"."""
    from timm.models import save_for_hf

    net = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    save_for_hf(net, tmp_path / "my-timm-model", safe_serialization=True)
    monkeypatch.setenv("ROBGEN_CHECKPOINTS", str(tmp_path))
    assert "my-timm-model" in robgen.list_models()
    model = robgen.load_model("my-timm-model")
    assert model.spec.architecture == "test_resnet" and model.spec.source == "my-timm-model"
    x = torch.rand(1, *model.spec.input_size)
    assert torch.allclose(model(x), robgen.load_model(tmp_path / "my-timm-model")(x), atol=1e-6)


def test_arguments_only_a_timm_name_takes_are_refused_for_other_names_and_a_headless_model_too():
    """weights=, pretrained=False and timm arguments were silently ignored for a checkpoint name (a missing weights
    file raised nothing); timm:<name> with num_classes=0 (a feature extractor) was labelled a 1000-class model."""
    for ignored in (dict(weights="mine.pth"), dict(pretrained=False), dict(width=8)):
        with pytest.raises(ValueError, match="apply to timm: names only"):
            robgen.load_model("cifar10-resnet10-standard", **ignored)
    with pytest.raises(ValueError, match="num_classes=0 has no classifier head"):
        robgen.load_model("timm:resnet10_cifar", pretrained=False, num_classes=0, width=4)


def test_a_spec_refuses_a_class_count_that_is_no_whole_number_and_a_crop_pct_written_as_a_percentage():
    """num_classes "10" was "10 classes but 10 class labels"; crop_pct 87.5 loaded and every image then failed
    with a ZeroDivisionError."""
    labels = [f"c{i}" for i in range(10)]
    for bad in ("10", 10.0, True):
        with pytest.raises(ValueError, match="num_classes must be a whole number"):
            ModelSpec(architecture="resnet10_cifar", num_classes=bad, class_labels=labels)
    with pytest.raises(ValueError, match="crop_pct must be a fraction .* not a percentage; got 87.5"):
        ModelSpec(architecture="resnet10_cifar", num_classes=10, class_labels=labels, crop_pct=87.5)
    assert ModelSpec(architecture="resnet10_cifar", num_classes=np.int64(10), class_labels=labels).num_classes == 10
    assert ModelSpec(architecture="x", num_classes=10, class_labels=labels, crop_pct=1.15).crop_pct == 1.15  # timm's


def test_a_label_given_as_written_is_that_class_even_beside_one_differing_in_case():
    """class_index("cat") was class 0 of ["Cat", "cat"]: case was ignored first, the first match taken."""
    spec = ModelSpec(architecture="x", num_classes=3, class_labels=["Cat", "cat", "dog"])
    assert (spec.class_index("cat"), spec.class_index("Cat"), spec.class_index("DOG")) == (1, 0, 2)
    with pytest.raises(ValueError, match="names several classes but for their case"):
        spec.class_index("CAT")


def test_a_folder_named_like_a_shipped_model_is_loaded_with_a_warning_and_found_from_any_directory(
        tmp_path, monkeypatch, caplog):
    """./cifar10-resnet10-standard, a folder of one's own, was loaded in place of the shipped model without a word,
    recorded as the shipped name; and its folder was kept as typed, so that from another working directory its
    detector and seeds were not found (a review, 2026-12-07)."""
    shipped = "cifar10-resnet10-standard"
    robgen.save_checkpoint(tiny_model(), tmp_path / shipped)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="robgen.models.loading"):
        model = robgen.load_model(shipped)
    assert model.spec.arch_kwargs == {"width": 4}, "the folder, as a path in the working directory reads"
    assert "names both the folder" in caplog.text and model.spec.source == str((tmp_path / shipped).resolve())
    monkeypatch.chdir("/")
    assert model_folder(model) == (tmp_path / shipped).resolve()
    caplog.clear()
    with caplog.at_level("WARNING", logger="robgen.models.loading"):
        assert robgen.load_model(shipped).spec.source == shipped and "names both" not in caplog.text


def test_loading_a_model_leaves_the_global_random_stream_as_it_was(tmp_path):
    """A checkpoint's network was built with a random initialisation drawn from the global RNG before its weights
    replaced it, so that `torch.manual_seed(0); load_model(...); torch.rand(1)` drew another number than without
    the load (a review, 2026-12-07). A timm architecture with random weights still draws, as asked."""
    from robgen.engine import random as engine_random
    from robgen.global_rng import LOCK

    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "tiny")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    robgen.load_model(folder)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(0)
    robgen.load_model("timm:resnet10_cifar", pretrained=False, width=4)
    assert not torch.equal(torch.rand(3), expected)
    import threading

    acquired = []  # one lock for every block that draws from or restores it: another thread waits for the block
    with engine_random.seeded_global_rng(1):
        waiting = threading.Thread(target=lambda: acquired.append(LOCK.acquire(timeout=0.05)))
        waiting.start()
        waiting.join()
    assert acquired == [False]


def test_a_save_that_fails_keeps_the_files_fitted_to_the_old_weights_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A save of other weights that failed while writing still removed nothing, but one stopped while renaming left
    a .partial file; the companions are now removed once the new files are written, just before the renames."""
    import robgen.files

    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "m")
    (folder / "detector.json").write_text("{}")
    other = tiny_model()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    real_save_file = robgen.models.checkpoint.save_file

    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(robgen.models.checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        robgen.save_checkpoint(other, folder)
    assert (folder / "detector.json").is_file(), "the old weights are still there, and so is what was fitted to them"
    monkeypatch.setattr(robgen.models.checkpoint, "save_file", real_save_file)
    real_replace, calls = os.replace, []

    def stopped_at_the_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(robgen.files.os, "replace", stopped_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        robgen.save_checkpoint(other, folder)
    assert not list(folder.glob("*.partial")) and not (folder / "detector.json").exists()


def test_every_path_a_user_names_takes_the_home_folder_as_a_shell_does(tmp_path, monkeypatch):
    """`load_image` and `load_model` read '~/...' from the home folder, but saving wrote a folder named '~' in the
    working directory (save_image, save_checkpoint, a detector's or reject option's or seeds' save), so what was
    saved under '~/x' was not found there; weights='~/w.pth', a madrylab ckpt_path and $ROBGEN_CACHE were refused
    or relative to the working directory."""
    from robgen.detection import EnergyDetector
    from robgen.detection.reject import make_reject_option
    from robgen.images import load_image, save_image
    from robgen.models.checkpoint import load_checkpoint, save_checkpoint
    from robgen.models.madrylab import cache_dir
    from robgen.synthesis.seeds import SeedDistribution
    from tests.conftest import tiny_model

    home, elsewhere = tmp_path / "home", tmp_path / "work"
    home.mkdir(), elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    model, x = tiny_model(), torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    save_image(x[0], "~/pictures/a.png")
    assert (home / "pictures" / "a.png").is_file() and load_image("~/pictures/a.png").shape == (3, 32, 32)
    save_checkpoint(model, "~/models/tiny")
    assert (home / "models" / "tiny").is_dir()
    assert torch.equal(load_checkpoint("~/models/tiny").net.head.weight, model.net.head.weight)
    assert torch.equal(robgen.load_model("~/models/tiny").net.head.weight, model.net.head.weight)
    torch.save(model.net.state_dict(), home / "w.pth")
    loaded = robgen.load_model("timm:resnet10_cifar", weights="~/w.pth", width=4)
    assert torch.equal(loaded.net.head.weight, model.net.head.weight)

    detector = EnergyDetector().fit(torch.randn(50, 10, generator=torch.Generator().manual_seed(1)),
                                    torch.randn(50, 10, generator=torch.Generator().manual_seed(2)) + 3)
    detector.save("~/d/detector.json")
    assert EnergyDetector.load("~/d/detector.json").threshold == detector.threshold
    option = make_reject_option("energy", target_fpr=0.2).calibrate(model, x)
    option.save("~/d/reject.json")
    assert type(option).load("~/d/reject.json", model=model).to_dict() == option.to_dict()
    seeds = SeedDistribution.fit([(x, torch.tensor([0, 0, 0, 1, 1, 1]))], class_labels=["a", "b"], resolution=8,
                                 rank=2, progress=False)
    seeds.save("~/d/seeds.safetensors")
    assert torch.equal(SeedDistribution.load("~/d/seeds.safetensors").means, seeds.means)

    monkeypatch.setenv("ROBGEN_CACHE", "~/cache")
    assert cache_dir() == home / "cache" / "madrylab"
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing written where the command ran


def test_a_hub_config_that_is_not_a_json_object_is_named_with_what_to_do(tmp_path, monkeypatch):
    """A cut config.json in the Hub cache gave json's bare JSONDecodeError (no file named), a list gave
    "'list' object has no attribute 'get'"."""
    remote = tmp_path / "remote"
    remote.mkdir()
    _fake_hub(monkeypatch, remote, tmp_path / "cache")
    (remote / "config.json").write_text('{"format": "robgen-check')
    with pytest.raises(ValueError, match=r"hf-hub:someone/cut's config.json is not valid JSON .*delete it from the "
                                         r"local cache \(.*config.json\) to fetch it again"):
        robgen.load_model("hf-hub:someone/cut")
    (remote / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json holds a JSON list, not the object of settings"):
        robgen.load_model("hf-hub:someone/list")


def test_uint8_images_are_refused_by_the_model_and_labels_are_told_apart_whatever_they_read():
    """A uint8 tensor (0-255) gave the logits of a nearly white image with no word; ["x", "x", "x (class 1)"] gave
    two classes the label "x (class 1)", and class_index("x (class 1)") picked the wrong one."""
    from robgen.models.classifier import distinct_labels

    model = tiny_model()
    with pytest.raises(TypeError, match=r"got a torch.uint8 tensor: for 8-bit images give x.float\(\) / 255"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    for labels in (["x", "x", "x (class 1)"], ["x (class 1)", "x", "x"], ["a", "b", "a"], ["a", "b"]):
        named = distinct_labels(labels)
        assert len(set(named)) == len(labels), labels
        assert all(name == label or name.startswith(label) for name, label in zip(named, labels))
    assert distinct_labels(["a", "b", "a"]) == ["a (class 0)", "b", "a (class 2)"]


def test_a_timm_folder_with_pytorch_model_bin_alone_is_found_by_name_on_the_search_path(tmp_path, monkeypatch):
    """timm's save_for_hf writes pytorch_model.bin alone: such a folder loaded by its path but was "unknown model"
    by its name on the search path, and list_models left it out."""
    import json

    from robgen.models import loading

    folder = tmp_path / "timm-tiny"
    folder.mkdir()
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    torch.save(net.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "test_resnet", "num_classes": 3, "label_names": ["a", "b", "c"],
        "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0,
                           "interpolation": "bilinear", "num_classes": 3}}))
    monkeypatch.setenv(loading.CHECKPOINTS_ENV, str(tmp_path))
    assert "timm-tiny" in robgen.list_models()
    model = robgen.load_model("timm-tiny")
    x = torch.rand(1, 3, 64, 64)
    assert model.spec.source == "timm-tiny" and torch.equal(model(x), robgen.load_model(str(folder))(x))
