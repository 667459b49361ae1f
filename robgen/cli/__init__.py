"""The command line: `python -m robgen COMMAND ...` (attack, detect, train, eval, reproduce, synthesize, ...).

Each command parses its arguments, makes library calls and writes files; the
maths lives in the library. Errors in the input end the command with exit
code 2 and a message that says what to fix, before any long work starts.

One module per command group, each holding its parsers (`add_parsers`) next
to its commands:

- `attack`: attack
- `detection`: detect, fit-detector
- `training`: train, eval, models
- `reproduce`: reproduce
- `synthesis`: fit-seeds, synthesize, gradmap, synthesis-quality, budget-sweep
- `zoo`: zoo (the energy detector against the whole attack zoo)
- `ablation`: ablation (what moves the detector: one row per model, grouped by factor)
- `adaptive`: adaptive (detectors under attacks that know them: detection-aware robust accuracy)
- `common`: the argument groups, loaders and `UsageError` they share
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

from . import ablation, adaptive, attack, detection, reproduce, synthesis, training, zoo
from ..files import first_missing, remove_if_empty
from .common import UsageError, data_root_of

__all__ = ["UsageError", "build_parser", "main"]

COMMAND_GROUPS = (attack, detection, training, reproduce, synthesis, zoo, ablation, adaptive)
SHARED_BY_TORCHRUN = ("train", "eval", "reproduce", "adaptive")  # the commands whose ranks each take a share


def _launched_by_torchrun() -> int:
    """The number of processes torchrun started (1 when it did not)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robgen", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given, for records that quote it
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = getattr(args, "out", None)
    new_out = first_missing(Path(out)) if out else None  # made by this run, if it makes it (with its parents)
    finished = False
    processes = _launched_by_torchrun()
    if processes > 1 and args.command not in SHARED_BY_TORCHRUN:  # each rank would run all of it, writing one out
        print(f"error: {args.command} runs in one process, and torchrun started {processes}, each of which would do "
              f"all of the work and write the same files: start it with `python -m robgen {args.command} ...` "
              f"(torchrun shares the work of {', '.join(SHARED_BY_TORCHRUN)})", file=sys.stderr)
        return 2
    try:
        with data_root_of(args):
            code = args.run(args)
        finished = code == 0
        return code
    except UsageError as error:
        print(f"error: {as_flags(str(error), args)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as error:  # a file that is no usable image, found part-way, or a data set
        # that could not be downloaded (robgen.images.ImageError, robgen.data.DownloadError: those modules, which
        # import torch, are loaded once such an error exists; --help stays light)
        images, data = sys.modules.get("robgen.images"), sys.modules.get("robgen.data")
        if not ((images is not None and isinstance(error, images.ImageError))
                or (data is not None and isinstance(error, data.DownloadError))):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if new_out is not None and not finished:
            remove_if_empty(new_out)


def as_flags(message: str, args) -> str:
    """A library's message about one of its parameters (\"limit must be >= 1\", \"val_size must be ...\") in the
    words of the command line, where the command has that parameter as a flag (--limit, --val-size)."""
    match = re.match(r"([a-z][a-z0-9]*(?:_[a-z0-9]+)*)( \(.*?\))? (must|is|has) ", message)
    if match is None or not hasattr(args, match.group(1)) or match.group(1) in ("argv", "run", "command"):
        return message
    return "--" + match.group(1).replace("_", "-") + message[len(match.group(1)):]


