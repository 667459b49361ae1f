"""Running the app as a Hugging Face Space: settings in `space.yaml`, README front matter, deploy, ZeroGPU.

    python -m robgen.web.space render                           # print the Space README front matter
    python -m robgen.web.space render --out space-README.md
    python -m robgen.web.space deploy --repo USER/NAME --dry-run # what would be uploaded, no network
    python -m robgen.web.space deploy --repo USER/NAME          # create or update the Space (needs HF_TOKEN)

`space.yaml` holds the title, Gradio and Python versions, hardware (e.g.
"zero-a10g" or "t4-small"), the Hub files to preload at build time and the
files to leave out. `gpu` wraps the app's handlers with `spaces.GPU` on
ZeroGPU Spaces, where the `spaces` package is installed, and does nothing
anywhere else. ZeroGPU runs each such call in a forked worker, so the app
loads every model it offers on the CPU at start-up (`robgen.web.model_cache.preload`).

A deploy is one commit: the files of the checkout (those git tracks, minus
`ignore`) and the README with its front matter, together; files on the Space
that are not among them are deleted in it.
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import yaml

from ..files import write_text_atomically

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACE_FILE = "space.yaml"
HARDWARE = ("cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large",
            "a100-large")
ZERO_GPU = "zero-a10g"
ZERO_GPU_PYTHONS = ("3.10", "3.12")  # the Python versions ZeroGPU Spaces run
# Front-matter keys of a Space README (https://huggingface.co/docs/hub/spaces-config-reference) robgen sets.
FRONT_MATTER_KEYS = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "python_version", "app_file",
                     "pinned", "license", "short_description", "suggested_hardware", "models", "preload_from_hub")


def gpu(function: Optional[Callable] = None, *, duration: int = 60):
    """`spaces.GPU(duration=...)` when the `spaces` package is present (ZeroGPU), else the function unchanged."""
    try:
        import spaces  # noqa: F401  (only on Hugging Face Spaces)
    except ImportError:
        spaces = None
    decorator = getattr(spaces, "GPU", None)  # None also for an unrelated module or folder called `spaces`

    def wrap(fn: Callable) -> Callable:
        return decorator(duration=duration)(fn) if decorator is not None else fn

    return wrap(function) if function is not None else wrap


@dataclass
class SpaceSettings:
    """The contents of `space.yaml`."""

    title: str
    sdk_version: str
    python_version: str
    hardware: str = "cpu-basic"
    emoji: str = "🔋"
    color_from: str = "indigo"
    color_to: str = "red"
    license: str = "mit"
    short_description: str = ""
    app_file: str = "app.py"
    preload_from_hub: List[str] = field(default_factory=list)  # "org/repo file1,file2": files fetched at build time
    ignore: List[str] = field(default_factory=list)  # glob patterns left out of the upload

    @classmethod
    def load(cls, path: Path = REPO_ROOT / SPACE_FILE) -> "SpaceSettings":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the Space settings live in {SPACE_FILE} at the repo root")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML ({' '.join(str(error).split())}): mend it, e.g. close a quote") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must be a YAML mapping of settings")
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = [name for name in ("title", "sdk_version", "python_version") if name not in data]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        unquoted = [name for name in ("sdk_version", "python_version") if not isinstance(data[name], str)]
        if unquoted:  # YAML reads 3.10 as the number 3.1
            raise ValueError(f"{path}: write {unquoted[0]} in quotes, e.g. python_version: \"3.10\" (unquoted, YAML "
                             f"reads a number, and 3.10 becomes 3.1; got {data[unquoted[0]]!r})")
        lists = ("preload_from_hub", "ignore")
        for name in lists:  # a string was read character by character: ignore: "tests/*" left out every file
            value = data.get(name)
            if value is None:  # the key with nothing after it: none
                data[name] = []
            elif not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
                raise ValueError(f"{path}: {name} must be a list of texts, one per line under it (\"{name}:\" then "
                                 f"\"  - ...\"), got {value!r}")
        texts = [name for name in cls.__dataclass_fields__ if name not in lists and name in data]
        wrong = [name for name in texts if not isinstance(data[name], str)]
        if wrong:
            raise ValueError(f"{path}: {wrong[0]} must be a text (in quotes where YAML would read another type), got "
                             f"{data[wrong[0]]!r}")
        settings = cls(**data)
        if settings.hardware not in HARDWARE:
            raise ValueError(f"{path}: hardware {settings.hardware!r} is not one of {', '.join(HARDWARE)}")
        if len(settings.short_description) > 60:
            raise ValueError(f"{path}: short_description has {len(settings.short_description)} characters; "
                             "the Hub allows 60")
        if settings.hardware == ZERO_GPU and ".".join(settings.python_version.split(".")[:2]) not in ZERO_GPU_PYTHONS:
            raise ValueError(f"{path}: ZeroGPU ({ZERO_GPU}) runs Python {' or '.join(ZERO_GPU_PYTHONS)}, "
                             f"not {settings.python_version}")
        for entry in settings.preload_from_hub:  # a third part pins the repo's revision (a commit)
            parts = str(entry).split()
            if len(parts) not in (2, 3) or parts[0].count("/") != 1 or not all(parts[1].split(",")):
                raise ValueError(f"{path}: preload_from_hub entry {entry!r} must be 'org/repo file1,file2', or "
                                 "'org/repo file1,file2 <commit>' (the files the app downloads, not the whole repo)")
        return settings

    @property
    def hub_models(self) -> List[str]:
        """The Hub repos the Space uses: those it preloads files from, in order."""
        return list(dict.fromkeys(str(entry).split()[0] for entry in self.preload_from_hub))

    def front_matter(self) -> dict:
        matter = {
            "title": self.title, "emoji": self.emoji, "colorFrom": self.color_from, "colorTo": self.color_to,
            "sdk": "gradio", "sdk_version": self.sdk_version, "python_version": self.python_version,
            "app_file": self.app_file, "pinned": False, "license": self.license,
            "short_description": self.short_description,
        }
        if self.hardware != ZERO_GPU:  # ZeroGPU cannot be suggested to people who duplicate the Space
            matter["suggested_hardware"] = self.hardware
        if self.preload_from_hub:
            matter["models"] = self.hub_models
            matter["preload_from_hub"] = list(self.preload_from_hub)
        return {key: matter[key] for key in FRONT_MATTER_KEYS if key in matter and matter[key] not in ("", None)}


def render(settings: SpaceSettings, body: str = "") -> str:
    """A Space README: the YAML front matter between --- lines, then `body`."""
    matter = yaml.safe_dump(settings.front_matter(), sort_keys=False, allow_unicode=True)
    return f"---\n{matter}---\n\n{body}"


def _git_files(root: Path, *which: str) -> Optional[List[str]]:
    """The files `git ls-files` lists with `which` in the checkout at `root`; None where `root` is not the top of
    a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout.decode()

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != root.resolve():
            return None
        listed = git("ls-files", "-z", *which).split("\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({name for name in listed if name and (root / name).is_file()})


def _candidate_files(root: Path) -> List[str]:
    """What git tracks in the checkout at `root` (committed or added: not a new file nobody added, such as a
    `.env` holding a token, which a public Space would publish); every file but .git/ where `root` is not the top
    of a git checkout."""
    tracked = _git_files(root, "--cached")
    if tracked is not None:
        return tracked
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*")
                  if path.is_file() and ".git" not in path.relative_to(root).parts)


def untracked_files(root: Path) -> List[str]:
    """The files of the checkout at `root` that git does not track and does not ignore: left out of an upload (a
    deploy names them, so that a new file meant for the Space is `git add`ed)."""
    return _git_files(root, "--others", "--exclude-standard") or []


def files_to_upload(root: Path, ignore: List[str]) -> List[str]:
    """The repo files a Space upload takes (what git tracks, minus the `ignore` globs), sorted."""
    return [relative for relative in _candidate_files(root)
            if not any(fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative + "/", pattern)
                       for pattern in ignore)]


KEPT_ON_THE_SPACE = (".gitattributes",)  # the Hub's own file of a new Space: not deleted by a deploy


def deploy(repo_id: str, settings: SpaceSettings, root: Path = REPO_ROOT, dry_run: bool = False, api=None,
           private: bool = False, token: Optional[str] = None) -> dict:
    """Create or update the Space `repo_id`: the repo, then one commit with the files and the README (front
    matter from space.yaml), then the hardware. A Space never runs a half-deployed state.

    With `dry_run`, nothing touches the network: the plan is returned (and
    printed by the CLI). `api` is an `HfApi` (made here when None).
    """
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ValueError(f"--repo must look like USER/NAME, got {repo_id!r}")
    readme = render(settings, (root / "README.md").read_text() if (root / "README.md").is_file() else "")
    files = files_to_upload(root, list(settings.ignore) + ["README.md"])
    if settings.app_file not in files:
        raise ValueError(f"the app file {settings.app_file} is not among the files to upload (not tracked by git, "
                         f"missing, or left out by space.yaml's ignore): the Space could not start")
    plan = {
        "repo_id": repo_id, "create_repo": {"repo_type": "space", "space_sdk": "gradio",
                                            "space_hardware": settings.hardware, "private": private, "exist_ok": True},
        "files": files + ["README.md"], "readme": readme, "request_space_hardware": settings.hardware,
        "untracked": untracked_files(root),
    }
    if dry_run:
        return plan
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", space_hardware=settings.hardware,
                          private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme.encode()))
    # the Space holds this checkout's files and no others: a checkpoint folder removed here (which the app would
    # still offer there) or a file now ignored is deleted in the same commit
    # (not a file this checkout holds untracked: an earlier robgen uploaded those, a checkpoint never `git add`ed)
    stale = sorted(set(api.list_repo_files(repo_id, repo_type="space")) - set(plan["files"]) - set(KEPT_ON_THE_SPACE)
                   - set(plan["untracked"]))
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    plan["deleted"] = stale
    api.create_commit(repo_id=repo_id, repo_type="space", operations=operations,
                      commit_message="Deploy robgen (README front matter from space.yaml)")
    api.request_space_hardware(repo_id, settings.hardware)
    plan["url"] = str(url)
    return plan


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robgen.web.space", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / SPACE_FILE), help="the Space settings (default space.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    render_parser = commands.add_parser("render", help="write the Space README front matter")
    render_parser.add_argument("--out", help="write this file instead of printing (an existing one only with "
                                              "--overwrite)")
    render_parser.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    render_parser.add_argument("--with-readme", action="store_true", help="append the project README")
    deploy_parser = commands.add_parser("deploy", help="create or update the Space")
    deploy_parser.add_argument("--repo", required=True, help="USER/NAME of the Space")
    deploy_parser.add_argument("--dry-run", action="store_true", help="print the plan, touch no network")
    deploy_parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = SpaceSettings.load(Path(args.config))
        if args.command == "render":
            body = (REPO_ROOT / "README.md").read_text() if args.with_readme else ""
            text = render(settings, body)
            if args.out:
                out = Path(args.out).expanduser()  # --out=~/x.md: the shell leaves that ~ to us
                if out.is_dir():
                    raise ValueError(f"--out names the file to write; {out} is a folder")
                if out.exists() and not args.overwrite:
                    raise ValueError(f"{out} exists: choose another --out, or pass --overwrite to replace it")
                if not out.parent.is_dir():
                    raise ValueError(f"--out {out}: its folder {out.parent} does not exist; create it or choose another")
                try:
                    write_text_atomically(out, text)
                except OSError as error:
                    raise ValueError(f"--out {out} cannot be written ({error.strerror or error}); choose another") from None
                print(f"wrote {out}")
            else:
                print(text, end="")
            return 0
        plan = deploy(args.repo, settings, dry_run=args.dry_run, private=args.private)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run: would create/update the Space {plan['repo_id']} (sdk gradio {settings.sdk_version}, "
              f"hardware {settings.hardware}) and upload {len(plan['files'])} files:")
        for name in plan["files"]:
            print(f"  {name}")
        print("files on the Space that are not in this list are deleted by the deploy")
        print("README.md front matter:\n" + plan["readme"].split("\n---\n")[0] + "\n---")
    else:
        print(f"deployed {plan['url']}" + (f" (deleted there: {', '.join(plan['deleted'])})" if plan["deleted"] else ""))
    if plan["untracked"]:
        print(f"left out, as git does not track them (git add a file to upload it): {', '.join(plan['untracked'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
