"""What every command shares: argument groups, number parsing, device, output folders, model and image loading.

No command lives here. `UsageError` is the one way a command reports bad input:
`robgen.cli.main` prints it as "error: ..." and exits with code 2.

Building the parsers imports neither torch nor the library, so that `--help` and argument errors
answer at once: the helpers that need them import them when a command calls them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

if TYPE_CHECKING:
    import torch

# Plain copies of library constants that argparse needs while parsing, before the library is
# imported (tests/test_startup.py pins them to robgen.attacks.ATTACKS and robgen.data.DATA_ENV).
ATTACK_NAMES = ("apgd", "fgsm", "hepgd", "pgd")
DATA_ENV = "ROBGEN_DATA"


class UsageError(Exception):
    """Bad command-line input: printed without a traceback, exit code 2."""


def _exact(text: str) -> float:
    """A decimal number or a fraction of two (8/255, 0.5/255), divided exactly before rounding to a float."""
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"one fraction bar at most: {text!r}")
    return float(Fraction(parts[0].strip()) / Fraction(parts[1].strip())) if len(parts) == 2 else float(Fraction(text))


def parse_number(text: str) -> float:
    """A finite float, also written as a fraction such as 8/255 or 0.5/255."""
    try:
        value = _exact(text) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (write e.g. 0.03 or 8/255)") from None
    if not math.isfinite(value):  # float("inf") and float("nan") parse
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r} (write e.g. 0.03 or 8/255)")
    return value


def parse_numbers(text: str, flag: str) -> Tuple[float, ...]:
    """Numbers separated by commas, each also written as a fraction (4/255,0.5/255); at least one, and no empty
    entry between commas (8/255,,16/255 is a number left out, most likely)."""
    example = {"--lambdas": "0,0.6,1.2", "--temperatures": "0.1,1,10"}.get(flag, "4/255,8/255")
    parts = text.split(",")
    if not text.strip():
        raise UsageError(f"{flag} is empty: give at least one number")
    if any(not part.strip() for part in parts):
        raise UsageError(f"{flag} {text!r} has an empty entry: give numbers separated by single commas, e.g. "
                         f"{example}")
    try:
        return tuple(_exact(part) for part in parts)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise UsageError(f"{flag} takes numbers separated by commas, e.g. {example}; got {text!r}") from None


def parse_temperatures(text: str, flag: str = "--temperatures") -> Tuple[float, ...]:
    """Temperatures separated by commas: each a finite number > 0, none twice."""
    values = parse_numbers(text, flag)
    bad = [value for value in values if not 0 < value < math.inf]
    if bad:
        raise UsageError(f"{flag} must be finite numbers > 0 (a temperature divides the logits), got {bad[0]:g}")
    twice = sorted({value for value in values if values.count(value) > 1})
    if twice:
        raise UsageError(f"{flag} names {', '.join(f'{value:g}' for value in twice)} twice: give each temperature once")
    return values


def input_paths(images: List[str]) -> set:
    """The input images as resolved paths, to tell them from the files a command writes or replaces."""
    return {Path(path).resolve() for path in images}


def flag_given(args, *names: str) -> bool:
    """Whether the command line as typed (`args.argv`) holds one of the flags `names`, also as --flag=value or
    abbreviated as argparse takes it (--ep for --eps; an abbreviation argparse took names one flag only): a default
    typed out counts too, which a comparison with the default cannot see."""
    typed = [word.split("=", 1)[0] for word in getattr(args, "argv", None) or () if word.startswith("--")]
    return any(len(word) > 2 and name.startswith(word) for word in typed for name in names)


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # meta, mps, xla ...: robgen runs and is tested on these two
        raise UsageError(f"--device {name!r}: robgen runs on cpu or cuda (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return device


def check_writable_folder(path: Path, flag: str = "--out", file: Optional[Path] = None) -> None:
    """Refuse, before any work starts, a folder that cannot be made or written into: a file on its way (the folder
    itself or one above it), or a first existing folder this user may not write. The work would otherwise run to
    its end and fail at its first write. `file`: `flag` names that file, to be written into `path` (its folder)."""
    from ..files import unwritable_folder

    path = Path(path)
    named = f"{flag} {file}: its folder {path}" if file is not None else f"{flag} {path}"
    problem = unwritable_folder(path)
    if problem is not None and problem.endswith("not writable by this user"):
        raise UsageError(f"{named}: {problem}; choose another {flag}")
    if problem is not None:
        advice = "choose another" if file is not None else f"{flag} names a folder to write into: choose another"
        raise UsageError(f"{named} {problem}; {advice}")


def make_folder(path: Path, flag: str = "--out") -> Path:
    """`path` created (with the folders above it), or a usage error that names it (a read-only place)."""
    check_writable_folder(path, flag)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {path} cannot be created ({error.strerror or error}); choose another {flag}") from None
    return Path(path)


def prepare_out_dir(path: Path, overwrite: bool, products: List[str]) -> Path:
    """Create the output folder; refuse to replace earlier results unless --overwrite."""
    existing = [name for name in products if (path / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{path} already holds {', '.join(existing)}; choose another --out or pass --overwrite")
    return make_folder(path)


def companion_output_path(args, model, name: str) -> Path:
    """Where a file that belongs with the model goes: `--out`, or `name` in its checkpoint folder."""
    from ..models.checkpoint import model_folder

    folder = model_folder(model)
    path = Path(args.out) if args.out else (folder / name if folder is not None else None)
    if path is None:
        raise UsageError(f"this model has no checkpoint folder to store {name} in: pass --out FILE")
    if path.is_dir() or str(args.out or "").endswith(("/", os.sep)):  # "newdir/": a folder, made if need be
        path = make_folder(path) / name
    else:  # "newdir/seeds.safetensors": its folder made too (removed again, empty, if the command fails)
        make_folder(path.parent)
    if path.exists() and not args.overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    return path


def user_path(text: str) -> str:
    """A path argument as a shell would read it: "~" is the home folder, also after "--out=" (no shell expands it
    there); a trailing "/" is kept (it says a folder). An empty path (an unset "$OUT") is refused, not taken
    for the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?): give a file or folder name")
    return str(Path(text).expanduser()) + (os.sep if text.endswith(("/", os.sep)) and len(text) > 1 else "")


def whole_number(text: str, least: int) -> int:
    """`text` as a whole number of at least `least`, or an argparse error that says so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (a batch size): 0 would loop forever or divide by zero deep inside."""
    return whole_number(text, 1)


def count(text: str) -> int:
    """A whole number >= 0 (data-loading processes: 0 loads in the main process)."""
    return whole_number(text, 0)


SEED_LIMIT = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit number


def seed_number(text: str) -> int:
    """A random seed: a whole number from 0 to 2^63 - 1 (a larger one failed deep inside torch, after the model
    had loaded, as "Overflow when unpacking long long")."""
    value = whole_number(text, 0)
    if value > SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at most 2^63 - 1 = {SEED_LIMIT}, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="shipped name, checkpoint folder, timm:<name> or hf-hub:<org>/<repo>")
    parser.add_argument("--random-weights", action="store_true", help="timm: models: random weights instead of downloading")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, default=None if required else "cifar10",
                        help="cifar10, cifar100, imagenette or an ImageFolder path")
    parser.add_argument("--data-root", help=f"folder holding the data sets (default ${DATA_ENV} or ~/.cache/robgen-data)")
    parser.add_argument("--download", action="store_true", help="download missing data sets through torchvision")


@contextlib.contextmanager
def data_root_of(args) -> Iterator[None]:
    """--data-root as the data root of the whole command (`robgen.data.data_root_as`): where named data sets are
    read from, and so also which folders are a named data set given as a path (a copy of Imagenette's
    imagenette2-160/ under --data-root, given as that folder, was a new data set of its own: a 5,000-image
    validation split, 4,500 of them images its models trained on)."""
    from ..data import data_root_as

    with data_root_as(getattr(args, "data_root", None) or None):
        yield


def add_output_arguments(parser: argparse.ArgumentParser, what: str = "output folder") -> None:
    parser.add_argument("--out", required=True, type=user_path, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def add_attack_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("--attack", default="pgd", choices=ATTACK_NAMES, help="attack (default pgd)")
    parser.add_argument("--eps", type=parse_number, default=8 / 255, help="threat-model radius (default 8/255)")
    parser.add_argument("--step-size", "--alpha", dest="step_size", type=parse_number,
                        help="step size (default 1/255 in L-inf, 2.5 eps/steps in L2; --alpha is torchattacks' name "
                             "for it)")
    parser.add_argument("--steps", type=int, default=steps, help=f"gradient steps (default {steps})")
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--lam", type=parse_number, default=1.2, help="HE-PGD energy weight (default 1.2)")
    parser.add_argument("--no-random-start", action="store_true", help="start PGD / HE-PGD at the clean image")
    parser.add_argument("--seed", type=seed_number, default=0,
                        help="seed of the random start (detect and fit-detector: also of the validation and test "
                             "images drawn for a model or data set that records no validation split)")
    parser.set_defaults(default_steps=steps)


def check_attack_flags(args) -> None:
    """Refuse a flag of `add_attack_arguments` that the chosen attack does not take (--steps for FGSM, --lam for
    all but HE-PGD), set away from its default or typed out: it would be ignored. Before the model loads: each
    command calls this first, and `build_attack` again."""
    from ..attacks.factory import ATTACKS, _settings_of, attack_key

    takes = _settings_of(ATTACKS[attack_key(args.attack)])
    given = {"steps": ("--steps", args.steps != getattr(args, "default_steps", args.steps)
                       or flag_given(args, "--steps")),  # a default typed out is given too (--attack fgsm --steps 10)
             "step_size": ("--step-size", args.step_size is not None),
             "lam": ("--lam", args.lam != 1.2 or flag_given(args, "--lam")),
             "random_start": ("--no-random-start", args.no_random_start)}
    unused = [flag for setting, (flag, set_here) in given.items() if set_here and setting not in takes]
    if unused:
        raise UsageError(f"--attack {args.attack} does not take {', '.join(unused)}: leave "
                         f"{'it' if len(unused) == 1 else 'them'} out, or pick an attack that does (HE-PGD takes --lam; "
                         "FGSM a single step of eps; APGD sets its own step size and always starts at random)")


def build_attack(args, model, device: torch.device):
    """The attack of the `add_attack_arguments` flags, seeded by --seed on `device` (`check_attack_flags` first)."""
    import torch

    from ..attacks import make_attack

    check_attack_flags(args)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        return make_attack(args.attack, model, eps=args.eps, step_size=args.step_size, steps=args.steps, lam=args.lam,
                           norm=args.norm, random_start=not args.no_random_start, generator=generator)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def open_model(args, device: torch.device, name: Optional[str] = None):
    """The model named by --model (or `name`, for commands that take several), on `device`."""
    from ..models import load_model

    single = name is None  # the command's one --model (commands of several pass each name)
    name = args.model if single else name
    if args.random_weights and single and not str(name).startswith("timm:"):
        raise UsageError(f"--random-weights applies to timm: names only; {name} is loaded as it was saved")
    timm_only = {"pretrained": not args.random_weights} if str(name).startswith("timm:") else {}
    try:  # (commands of several models: --random-weights for their timm: names, the others as saved)
        return load_model(name, device=device, **timm_only)
    except (ValueError, FileNotFoundError, RuntimeError) as error:  # RuntimeError: a download that failed, said so
        raise UsageError(str(error)) from None


def keyed_by_folder(names: List[str], what: str = "models") -> Dict[str, str]:
    """Each model (a name or a folder) under its folder's name, as tables, figures and file names show it; the
    same model given twice counts once; two models of one folder name (runs/a/best, runs/b/best) are refused,
    since one would replace the other."""
    keyed: Dict[str, str] = {}
    for name in names:
        key = Path(name).name
        if key in keyed and os.path.normpath(keyed[key]) != os.path.normpath(name):
            raise UsageError(f"two of the {what} share the folder name {key} ({keyed[key]}, {name}): copy or link "
                             "them to folders of distinct names")
        keyed.setdefault(key, name)
    return keyed


def read_images(paths: List[str], spec) -> torch.Tensor:
    """Image files as one (N, C, H, W) batch as the model of `spec` sees them; every unreadable file named in one error."""
    import torch

    from ..images import ImageError, load_model_input

    images, problems = [], []
    for path in paths:
        try:
            images.append(load_model_input(path, spec))
        except ImageError as error:
            problems.append(str(error))
    if problems:
        raise UsageError("cannot read the input images:\n  " + "\n  ".join(problems))
    return torch.stack(images)


def join_processes(args) -> torch.device:
    """This process's device, joining torchrun's process group if launched by it; a `--limit` smaller than
    the number of processes is refused on every rank before any work."""
    from .. import distributed

    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1 (the first N test images), got {limit}")
    device = distributed.setup(pick_device(args.device))
    if limit is not None:
        try:
            distributed.check_shareable(limit, "or raise --limit")
        except ValueError as error:
            raise UsageError(str(error)) from None
    return device
