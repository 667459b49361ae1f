import json
import pickle

import pytest
import timm
import torch

import robgen
from robgen.models import checkpoint as checkpoint_module
from robgen.models import loading
from tests.conftest import tiny_model


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
    # a bare name resolves to the checkpoints folder; list_models lists it
    monkeypatch.setenv(loading.CHECKPOINTS_ENV, str(tmp_path))
    assert robgen.list_models() == ["ckpt"]
    assert torch.equal(robgen.load_model("ckpt").net.head.weight, model.net.head.weight)


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


def test_hub_names_load_robgen_checkpoints_from_the_hub_cache(tmp_path, monkeypatch):
    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "snapshot")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(folder / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = robgen.load_model("hf-hub:someone/robust-model")
    assert calls == [("someone/robust-model", "config.json"), ("someone/robust-model", "model.safetensors")]
    assert model.spec.source == "hf-hub:someone/robust-model"
    assert torch.equal(model.net.head.weight, tiny_model().net.head.weight)


def test_offline_pretrained_download_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(loading.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="pretrained=False"):
        robgen.load_model("timm:resnet18")


def test_spec_class_index_by_name_or_number():
    spec = tiny_model().spec
    assert spec.class_index("c3") == 3 and spec.class_index("3") == 3 and spec.class_index(2) == 2
    with pytest.raises(ValueError, match="c0, c1"):
        spec.class_index("dog")
    with pytest.raises(ValueError, match="0..9"):
        spec.class_index(10)


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
