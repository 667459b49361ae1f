"""space.yaml, the rendered Space README, the deploy (a fake HfApi, no network), ZeroGPU's decorator."""

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from robgen.web import space
from robgen.web.examples import adversarial_examples
from robgen.web.model_cache import HUB_MODELS
from tests.conftest import REPO


def front_matter(text):
    match = re.match(r"---\n(.*?)\n---\n\n", text, flags=re.S)
    assert match, text
    return yaml.safe_load(match.group(1))


def test_front_matter_is_yaml_with_the_space_settings():
    settings = space.SpaceSettings.load()
    text = space.render(settings, "# body\n")
    assert text.endswith("\n---\n\n# body\n")
    matter = front_matter(text)
    assert matter["sdk"] == "gradio" and matter["app_file"] == "app.py"
    assert len(matter["short_description"]) <= 60
    assert matter["models"] == ["madrylab/robust-imagenet-models", "timm/inception_v3.tf_adv_in1k"]
    for entry in matter["preload_from_hub"]:  # files, not whole repos
        repo, files = entry.split(" ")
        assert repo in matter["models"] and all(files.split(","))


def test_the_space_targets_zerogpu_as_it_requires():
    settings = space.SpaceSettings.load()
    assert settings.hardware == "zero-a10g"
    matter = front_matter(space.render(settings))
    assert matter["python_version"] in ("3.10", "3.12") and "suggested_hardware" not in matter
    gpu_space = space.SpaceSettings(title="t", sdk_version="6.31.0", python_version="3.11", hardware="t4-small")
    assert front_matter(space.render(gpu_space))["suggested_hardware"] == "t4-small"


def test_the_space_preloads_the_file_of_every_hub_model_the_app_offers():
    entries = dict(entry.split(" ") for entry in space.SpaceSettings.load().preload_from_hub)
    for name in HUB_MODELS:
        kind, model = name.split(":", 1)
        if kind == "madrylab":
            assert f"{model}.ckpt" in entries["madrylab/robust-imagenet-models"].split(","), name
        else:  # timm loads <org>/<name>'s safetensors weights
            assert "model.safetensors" in entries[f"timm/{model}"].split(","), name


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
    assert "checkpoints/cifar10-resnet10-robust/seeds.safetensors" in files and "robgen/web/space.py" in files
    assert not [f for f in files if f.startswith((".git/", "tests/", "runs/", "out/")) or f.endswith("trainer_state.pt")
                or "__pycache__" in f]
    assert plan["readme"].startswith("---\n") and "dry run" in capsys.readouterr().out
    # the app's example photos and every Detect example set it shows (examples/adversarial/<model>/) go up too
    shown = [Path(name).relative_to(REPO).as_posix() for names in adversarial_examples(REPO / "examples" / "adversarial")
             .values() for name in names]
    assert shown and set(shown) <= set(files) and "examples/chelsea.png" in files


def test_a_checkout_uploads_what_git_tracks_and_names_what_it_leaves_untracked(tmp_path):
    """Files nobody added were uploaded too: a `.env` holding a token would be published on a public Space."""
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "trainer_state.pt").write_bytes(b"big")
    (tmp_path / "app.py").write_text("tracked\n")
    (tmp_path / "new.py").write_text("not yet added\n")
    (tmp_path / "notes.txt").write_text("left out by space.yaml\n")
    (tmp_path / ".env").write_text("HF_TOKEN=secret\n")
    git("add", "app.py", ".gitignore")
    assert space.files_to_upload(tmp_path, ["*.txt"]) == [".gitignore", "app.py"]
    assert space.untracked_files(tmp_path) == [".env", "new.py", "notes.txt"]
    settings = space.SpaceSettings(title="t", sdk_version="6.31.0", python_version="3.12")
    assert space.deploy("me/x", settings, root=tmp_path, dry_run=True)["untracked"] == [".env", "new.py", "notes.txt"]
    # a file this checkout holds untracked, which an earlier deploy (of every untracked file) put on the Space, is
    # left there, not deleted
    api = RecordingApi(on_the_space=["app.py", "new.py", "gone.py"])
    assert space.deploy("me/x", settings, root=tmp_path, api=api)["deleted"] == ["gone.py"]
    with pytest.raises(ValueError, match="the app file main.py is not among the files to upload"):
        space.deploy("me/x", space.SpaceSettings(title="t", sdk_version="6", python_version="3.12", app_file="main.py"),
                     root=tmp_path, dry_run=True)


class RecordingApi:
    """Records every HfApi call instead of making it."""

    def __init__(self, on_the_space=()):
        self.calls, self.on_the_space = [], list(on_the_space)

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "list_repo_files":
                return self.on_the_space
            return f"https://huggingface.co/spaces/{args[0] if args else kwargs.get('repo_id')}"
        return record


def test_deploy_is_one_commit_with_the_readme_and_sets_the_hardware(tmp_path):
    (tmp_path / "app.py").write_text("print('app')\n")
    (tmp_path / "README.md").write_text("# robgen\n")
    (tmp_path / "cache.pyc").write_bytes(b"\0")
    settings = space.SpaceSettings(title="t", sdk_version="6.31.0", python_version="3.12", hardware="zero-a10g",
                                   ignore=["*.pyc"], preload_from_hub=["org/weights model.safetensors"])
    api = RecordingApi(on_the_space=[".gitattributes", "README.md", "app.py", "checkpoints/old/model.safetensors"])
    plan = space.deploy("me/robgen", settings, root=tmp_path, api=api)
    # each call once: the Space created, its files listed, one commit, the hardware requested (whatever the order)
    calls = {name: (args, kwargs) for name, args, kwargs in api.calls}
    assert len(api.calls) == len(calls) and set(calls) == {"create_repo", "list_repo_files", "create_commit",
                                                            "request_space_hardware"}
    create_args, create = calls["create_repo"]
    assert create_args == ("me/robgen",)
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio" and create["space_hardware"] == "zero-a10g"
    _, commit = calls["create_commit"]
    assert commit["repo_id"] == "me/robgen" and commit["repo_type"] == "space"
    operations = {op.path_in_repo: op for op in commit["operations"]}
    # not cache.pyc; a checkpoint folder gone from the checkout (the app there would still offer it) deleted in the
    # same commit, the Hub's .gitattributes kept
    assert set(operations) == {"README.md", "app.py", "checkpoints/old/model.safetensors"} and len(operations) == 3
    assert type(operations["checkpoints/old/model.safetensors"]).__name__ == "CommitOperationDelete"
    assert plan["deleted"] == ["checkpoints/old/model.safetensors"]
    with open(operations["app.py"].path_or_fileobj) as app_file:
        assert app_file.read() == "print('app')\n"
    readme = operations["README.md"].path_or_fileobj.decode()
    matter = front_matter(readme)
    assert readme.endswith("# robgen\n") and matter["models"] == ["org/weights"] and "suggested_hardware" not in matter
    assert calls["request_space_hardware"] == (("me/robgen", "zero-a10g"), {})


def test_bad_space_settings_are_refused(tmp_path):
    path = tmp_path / "space.yaml"
    cases = {
        "hardware: quantum-1\n": "hardware 'quantum-1'",
        "colour: red\n": "unknown settings colour",
        "hardware: zero-a10g\n": r"ZeroGPU \(zero-a10g\) runs Python 3.10 or 3.12, not 3.11",
        "preload_from_hub: [timm/inception_v3.tf_adv_in1k]\n": "must be 'org/repo file1,file2'",
        # a text where a list belongs was read letter by letter: ignore: "tests/*" uploaded nothing but the README
        "ignore: 'tests/*'\n": "ignore must be a list of texts",
        "preload_from_hub: [{timm/x: model.safetensors}]\n": "preload_from_hub must be a list of texts",
        "short_description: 12345\n": "short_description must be a text",
    }
    for extra, message in cases.items():
        path.write_text("title: x\nsdk_version: '6'\npython_version: '3.11'\n" + extra)
        with pytest.raises(ValueError, match=message):
            space.SpaceSettings.load(path)
    path.write_text("title: x\nsdk_version: '6'\npython_version: 3.10\n")  # YAML: the number 3.1
    with pytest.raises(ValueError, match=r"write python_version in quotes.*3.10 becomes 3.1; got 3.1\)"):
        space.SpaceSettings.load(path)
    with pytest.raises(ValueError, match="USER/NAME"):
        space.deploy("robgen", space.SpaceSettings.load(), dry_run=True)
    path.write_text("title: x\nsdk_version: '6'\npython_version: '3.12'\nignore:\npreload_from_hub:\n"
                    "  - openai-community/gpt2 config.json 11c5a3d5811f50298f278a704980280950aedb10\n")
    settings = space.SpaceSettings.load(path)  # keys left empty: none; a pinned revision: the Hub's own form
    assert settings.ignore == [] and settings.hub_models == ["openai-community/gpt2"]


def test_gpu_decorator_is_a_no_op_without_the_spaces_package(monkeypatch):
    def handler(x):
        return x + 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError
    assert space.gpu(handler) is handler and space.gpu(duration=5)(handler) is handler
    monkeypatch.setitem(sys.modules, "spaces", types.ModuleType("spaces"))  # some other `spaces`, without GPU
    assert space.gpu(handler) is handler


def test_gpu_decorator_wraps_handlers_in_spaces_gpu_on_zerogpu(monkeypatch):
    durations = []
    fake = types.ModuleType("spaces")

    def gpu(duration=None):
        durations.append(duration)
        return lambda fn: (lambda *args: ("on the GPU", fn(*args)))

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert space.gpu(lambda x: x + 1)(1) == ("on the GPU", 2)
    assert space.gpu(duration=120)(lambda: 0)() == ("on the GPU", 0)
    assert durations == [60, 120]


def test_render_writes_over_no_file_without_overwrite_and_refuses_a_folder(tmp_path, capsys):
    """render --out replaced any file without a word (notes.md became the Space's front matter), and a folder
    ended in an IsADirectoryError traceback."""
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    assert space.main(["render", "--out", str(notes)]) == 2 and notes.read_text() == "my notes"
    assert "exists: choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert space.main(["render", "--out", str(tmp_path)]) == 2 and "is a folder" in capsys.readouterr().err
    assert space.main(["render", "--out", str(notes), "--overwrite"]) == 0 and notes.read_text().startswith("---")


def test_render_out_expands_the_home_folder_the_shell_leaves_after_an_equals_sign(tmp_path, monkeypatch):
    """--out=~/x.md (the shell expands no ~ after "=") said "its folder ~ does not exist"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert space.main(["render", "--out=~/front.md"]) == 0 and (tmp_path / "front.md").read_text().startswith("---")


def test_a_space_yaml_that_is_not_yaml_and_an_out_in_no_folder_are_clear_errors(tmp_path, capsys):
    """A space.yaml with an unterminated quote ended in yaml's 21-frame traceback; render --out nodir/README.md
    said "No such file or directory: 'nodir/README.md.5874-64087acc.partial'", a file the user never named."""
    broken = tmp_path / "space.yaml"
    broken.write_text('title: "robgen\nsdk_version: "5.0"\n')
    assert space.main(["--config", str(broken), "render"]) == 2
    assert f"{broken} is not valid YAML" in capsys.readouterr().err
    missing = tmp_path / "nodir" / "README.md"
    assert space.main(["render", "--out", str(missing)]) == 2
    error = capsys.readouterr().err
    assert f"its folder {missing.parent} does not exist" in error and ".partial" not in error
