"""MadryLab's robust ImageNet models: conversion of a `robustness`-library checkpoint to robgen's format."""

import json

import pytest
import timm
import torch

import robgen
from robgen.models.checkpoint import model_folder
from robgen.models.madrylab import convert_state_dict, load_madrylab, training_recipe

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def robustness_checkpoint(tmp_path_factory):
    """A file laid out as the `robustness` library saves one (for a random timm resnet18), and its network."""
    torch.manual_seed(0)  # tests only
    net = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    weights = net.state_dict()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    state = {f"module.model.{key}": value for key, value in weights.items()}
    state.update({f"module.attacker.model.{key}": value for key, value in weights.items()})
    state.update({"module.normalizer.new_mean": mean, "module.normalizer.new_std": std,
                  "module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std})
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
    path = tmp_path_factory.mktemp("hub") / "resnet18_l2_eps3.ckpt"
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "epoch": 90, "nat_prec1": torch.tensor(53.12)}, path)
    return path, net


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "madrylab"


def imagenet_logits(net, x):
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return net((x - mean) / std)


def test_conversion_gives_timms_resnet18_behind_imagenet_normalisation(robustness_checkpoint, cache):
    path, net = robustness_checkpoint
    model = load_madrylab("resnet18_l2_eps3", ckpt_path=path)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), imagenet_logits(net, x), atol=1e-4)
    spec = model.spec
    assert spec.architecture == "resnet18" and spec.num_classes == 1000 and len(spec.class_labels) == 1000
    assert spec.mean == pytest.approx(IMAGENET_MEAN) and spec.std == pytest.approx(IMAGENET_STD), "from the normaliser"
    assert (spec.crop_pct, spec.interpolation) == (0.875, "bilinear"), "torchvision's ImageNet eval transform"
    assert spec.training["mode"] == "pgd" and spec.training["norm"] == "l2" and spec.training["eps"] == 3.0
    assert spec.source == "madrylab:resnet18_l2_eps3"
    assert model_folder(model) == cache / "resnet18_l2_eps3", "the cached checkpoint, where fitted files would go"
    config = json.loads((cache / "resnet18_l2_eps3" / "config.json").read_text())
    assert config["crop_pct"] == 0.875 and "folder" not in config

    again = robgen.load_model("madrylab:resnet18_l2_eps3")  # from the cache: no download, no .ckpt needed
    assert torch.equal(again.net.fc.weight, net.fc.weight) and again.spec.source == "madrylab:resnet18_l2_eps3"


def test_eps0_files_are_standard_models(robustness_checkpoint, cache):
    path, _ = robustness_checkpoint
    assert load_madrylab("resnet18_l2_eps0", ckpt_path=path).spec.training["mode"] == "standard"
    assert training_recipe("l2", 0.05)["mode"] == "quasi"
    assert training_recipe("l2", 3.0)["mode"] == "pgd"
    assert training_recipe("linf", 4.0) == {"mode": "pgd", "norm": "linf", "eps": 4.0 / 255}


def test_architectures_timm_cannot_build_are_refused_before_downloading(cache, monkeypatch):
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("must not download a checkpoint it cannot convert")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(ValueError, match="timm cannot build"):
        robgen.load_model("madrylab:wide_resnet50_4_l2_eps3")
    with pytest.raises(ValueError, match="unknown MadryLab model"):
        load_madrylab("vgg16_bn")
    with pytest.raises(ValueError, match="unknown MadryLab model"):
        load_madrylab("resnet50_l2_eps3.0.1")


class _NotAllowlisted:
    """Stands for a pickled object outside torch's weights_only allowlist (e.g. an argparse.Namespace)."""


def test_checkpoints_holding_pickled_objects_are_refused_with_a_way_out(tmp_path, cache):
    path = tmp_path / "resnet18_l2_eps3.ckpt"
    torch.save({"model": {}, "args": _NotAllowlisted()}, path)
    with pytest.raises(ValueError, match="weights_only=True") as info:
        load_madrylab("resnet18_l2_eps3", ckpt_path=path)
    assert "ckpt_path='clean.ckpt'" in str(info.value)
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="incomplete download"):
        load_madrylab("resnet18_l2_eps3", ckpt_path=tmp_path / "cut.ckpt")
    assert not (cache / "resnet18_l2_eps3").exists(), "nothing cached from a refused file"


def test_files_without_robustness_weights_are_explained():
    with pytest.raises(ValueError, match="no 'module.model"):
        convert_state_dict({"model": {"fc.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="no 'model' state dict"):
        convert_state_dict([1, 2])


def test_a_named_file_is_converted_again_and_so_is_a_conversion_from_before_the_eval_transform(
        robustness_checkpoint, cache, tmp_path, monkeypatch):
    import huggingface_hub

    path, net = robustness_checkpoint
    load_madrylab("resnet18_l2_eps3", ckpt_path=path)
    other = tmp_path / "other.ckpt"  # another file under the same name: its weights, not the cached ones
    state = torch.load(path, weights_only=False)
    state["model"] = {key: value + 1 if key.endswith("fc.bias") else value for key, value in state["model"].items()}
    torch.save(state, other)
    model = load_madrylab("resnet18_l2_eps3", ckpt_path=other)
    assert torch.equal(model.net.fc.bias, net.fc.bias + 1)
    assert model.spec.training["source"] == f"file:{other.resolve()}"
    config_path = cache / "resnet18_l2_eps3" / "config.json"  # as a robgen before crop_pct wrote it
    config = json.loads(config_path.read_text())
    config.pop("crop_pct"), config.pop("interpolation")
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename, **kwargs: str(path))
    model = robgen.load_model("madrylab:resnet18_l2_eps3")
    assert (model.spec.crop_pct, model.spec.interpolation) == (0.875, "bilinear")
    assert torch.equal(model.net.fc.bias, net.fc.bias)
