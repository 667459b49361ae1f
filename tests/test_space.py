"""space.yaml, the rendered Space README, the deploy plan (no network), ZeroGPU's decorator, Hub model conversion."""

import re

import pytest
import timm
import torch
import yaml

from robgen.web import space
from robgen.models.madrylab import convert_state_dict, load_madrylab
from tests.conftest import REPO


def test_front_matter_is_yaml_with_the_space_settings():
    settings = space.SpaceSettings.load()
    text = space.render(settings, "# body\n")
    match = re.match(r"---\n(.*?)\n---\n\n# body\n$", text, flags=re.S)
    assert match, text
    matter = yaml.safe_load(match.group(1))
    assert matter["sdk"] == "gradio" and matter["app_file"] == "app.py" and matter["python_version"] == "3.11"
    assert matter["suggested_hardware"] == settings.hardware
    assert any(entry.startswith("madrylab/robust-imagenet-models ") for entry in matter["preload_from_hub"])
    assert len(matter["short_description"]) <= 60


def test_the_space_runs_the_gradio_version_the_requirements_pin():
    pinned = re.search(r"^gradio==(\S+)$", (REPO / "requirements.txt").read_text(), flags=re.M).group(1)
    assert space.SpaceSettings.load().sdk_version == pinned


def test_render_command_prints_the_front_matter(capsys):
    assert space.main(["render"]) == 0
    assert capsys.readouterr().out.startswith("---\ntitle: ")


def test_dry_run_plans_the_upload_without_tests_caches_or_training_state(capsys):
    assert space.main(["deploy", "--repo", "someone/robgen", "--dry-run"]) == 0
    plan = space.deploy("someone/robgen", space.SpaceSettings.load(), dry_run=True)
    files = plan["files"]
    assert "app.py" in files and "README.md" in files and "checkpoints/cifar10-resnet10-robust/model.safetensors" in files
    assert "checkpoints/cifar10-resnet10-robust/seeds.safetensors" in files
    assert not [f for f in files if f.startswith((".git/", "tests/")) or f.endswith("trainer_state.pt") or "__pycache__" in f]
    assert plan["readme"].startswith("---\n") and "dry run" in capsys.readouterr().out


class RecordingApi:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return f"https://huggingface.co/spaces/{args[0] if args else kwargs.get('repo_id')}"
        return record


def test_deploy_creates_the_space_uploads_and_requests_hardware(tmp_path):
    (tmp_path / "app.py").write_text("print('app')\n")
    (tmp_path / "README.md").write_text("# robgen\n")
    settings = space.SpaceSettings(title="t", sdk_version="6.31.0", python_version="3.11", hardware="zero-a10g",
                                   ignore=["*.pyc"])
    api = RecordingApi()
    space.deploy("me/robgen", settings, root=tmp_path, api=api)
    names = [name for name, _, _ in api.calls]
    assert names == ["create_repo", "upload_folder", "upload_file", "request_space_hardware"]
    create = api.calls[0][2]
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio" and create["space_hardware"] == "zero-a10g"
    assert "README.md" in api.calls[1][2]["ignore_patterns"]
    readme = api.calls[2][2]["path_or_fileobj"].decode()
    assert readme.startswith("---\n") and readme.endswith("# robgen\n")
    assert api.calls[3][1] == ("me/robgen", "zero-a10g")


def test_bad_space_settings_are_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("title: x\nsdk_version: '6'\npython_version: '3.11'\nhardware: quantum-1\n")
    with pytest.raises(ValueError, match="hardware 'quantum-1'"):
        space.SpaceSettings.load(path)
    path.write_text("title: x\nsdk_version: '6'\npython_version: '3.11'\ncolour: red\n")
    with pytest.raises(ValueError, match="unknown settings colour"):
        space.SpaceSettings.load(path)
    with pytest.raises(ValueError, match="USER/NAME"):
        space.deploy("robgen", space.SpaceSettings.load(), dry_run=True)


def test_gpu_decorator_is_a_no_op_without_the_spaces_package():
    def handler(x):
        return x + 1

    assert space.gpu(handler) is handler and space.gpu(duration=5)(handler) is handler


def test_a_madrylab_checkpoint_is_converted_once_to_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBGEN_CACHE", str(tmp_path / "cache"))
    net = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    state = {f"module.model.{k}": v for k, v in net.state_dict().items()}
    state.update({f"module.attacker.model.{k}": v for k, v in net.state_dict().items()})
    state["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    torch.save({"model": state, "epoch": 90}, tmp_path / "resnet18_l2_eps3.ckpt")
    model = load_madrylab("resnet18_l2_eps3", ckpt_path=tmp_path / "resnet18_l2_eps3.ckpt")
    assert (tmp_path / "cache" / "madrylab" / "resnet18_l2_eps3" / "model.safetensors").is_file()
    x = torch.rand(1, 3, 64, 64)
    expected = net((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.allclose(model(x), expected.detach(), atol=1e-4)
    assert model.spec.training["norm"] == "l2" and model.spec.training["eps"] == 3.0
    again = load_madrylab("resnet18_l2_eps3")  # from the cache: no download, no ckpt needed
    assert torch.equal(again.net.fc.weight, model.net.fc.weight)
    with pytest.raises(ValueError, match="no 'module.model"):
        convert_state_dict({"model": {"fc.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="unknown MadryLab model"):
        load_madrylab("vgg16_bn")
