"""Start-up: `--help` and argument errors answer without importing torch, and `import robgen` stays light.

Each check runs in a fresh interpreter (this test process has long imported torch) and asserts which
modules got imported, not how long it took: timings are noise on a shared machine.
"""

import json
import subprocess
import sys

import pytest

from robgen.cli import build_parser
from tests.conftest import REPO


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def imported_modules(importtime_stderr: str) -> set:
    """The modules named by `python -X importtime`'s report ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args, code, says", [
    (["--help"], 0, "reproduce"),
    (["train", "--help"], 0, "--epochs"),
    (["reproduce", "--help"], 0, "--hepgd-steps"),
    (["attack", "--model", "m", "--out", "o", "--no-such-option", "x.png"], 2, "unrecognized arguments: --no-such-option"),
    (["attack", "--out", "o", "x.png"], 2, "the following arguments are required: --model"),
    (["detect", "--model", "m", "--data", "cifar10", "--out", "o", "--eps", "big"], 2, "not a number: 'big'"),
])
def test_python_m_robgen_answers_help_and_argument_errors_without_torch(args, code, says):
    result = run_python("-X", "importtime", "-m", "robgen", *args)
    assert result.returncode == code, result.stderr[-2000:]
    assert says in result.stdout + result.stderr
    modules = imported_modules(result.stderr)
    assert "robgen.cli" in modules, "the report names the CLI's imports"
    assert "torch" not in modules, f"python -m robgen {' '.join(args)} imported torch"


PROBE = """
import json, sys
from robgen.cli import main
answers = {}
for args in json.loads(sys.argv[1]):
    try:
        answers[" ".join(args)] = main(args)
    except SystemExit as exit:
        answers[" ".join(args)] = exit.code
heavy = sorted(name for name in ("torch", "torchvision", "timm", "numpy", "PIL", "matplotlib", "gradio", "torchattacks")
               if name in sys.modules)
print(json.dumps({"answers": answers, "heavy": heavy}))
"""


def test_every_command_answers_help_and_argument_errors_without_torch():
    commands = sorted(next(action for action in build_parser()._actions if action.dest == "command").choices)
    asked = [[command, "--help"] for command in commands]
    asked += [[command, "--no-such-option"] for command in commands]  # refused by argparse, before any import
    asked += [["attack", "--model", "m", "--out", "o", "--attack", "nope", "x.png"],
              ["detect", "--model", "m", "--data", "cifar10", "--out", "o", "--temperatures", "0.5,0"],
              ["zoo", "--model", "m", "--data", "cifar10", "--out", "o", "--lam", "1/0"]]
    result = run_python("-c", PROBE, json.dumps(asked))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["answers"] == {" ".join(args): 0 if args[-1] == "--help" else 2 for args in asked}
    assert report["heavy"] == [], f"parsing imported {report['heavy']}"


def test_import_robgen_and_its_public_api_leave_out_the_optional_heavy_packages():
    """torchattacks (the zoo), gradio (the app) and matplotlib (figures) are imported by the code that needs them."""
    probe = ("import sys, robgen\n"
             "[getattr(robgen, name) for name in robgen.__all__]\n"
             "print(sorted(name for name in ('torchattacks', 'gradio', 'matplotlib') if name in sys.modules))")
    result = run_python("-c", probe)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_lazy_package_gives_the_same_names_as_an_eager_one():
    """`robgen.energy` is the function even where a submodule import bound robgen/energy.py first; `from robgen
    import X`, `dir` and the subpackages the public API brings along all work as they did."""
    probe = """
import sys
import robgen.attacks  # imports robgen/energy.py before anything touched robgen.energy
import robgen
from robgen import PGD, energy
assert robgen.energy is energy is sys.modules["robgen.energy"].energy, robgen.energy
assert PGD is robgen.attacks.PGD and robgen.HEPGD is robgen.HighEnergyPGD
assert set(robgen.__all__) <= set(dir(robgen))
assert robgen.models.load_model is robgen.load_model and robgen.engine.Trace is robgen.Trace
namespace = {}
exec("from robgen import *", namespace)
assert set(robgen.__all__) <= set(namespace)
try:
    robgen.no_such_name
except AttributeError as error:
    assert "no_such_name" in str(error)
else:
    raise AssertionError("robgen.no_such_name did not raise AttributeError")
print("ok")
"""
    result = run_python("-c", probe)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_clis_plain_copies_of_library_constants_match_the_library():
    """argparse needs these while parsing, before torch is imported; the library's own lists are the truth."""
    from robgen import data
    from robgen.attacks import ATTACKS
    from robgen.attacks.zoo import ZOO_NAMES
    from robgen.cli import common, detection, zoo
    from robgen.detection import TEMPERATURES

    assert common.ATTACK_NAMES == tuple(sorted(ATTACKS))
    assert common.DATA_ENV == data.DATA_ENV
    assert detection.TEMPERATURES == TEMPERATURES
    assert zoo.ZOO_NAMES == ZOO_NAMES
