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
import sys
from typing import List, Optional

from . import ablation, adaptive, attack, detection, reproduce, synthesis, training, zoo
from .common import UsageError

__all__ = ["UsageError", "build_parser", "main"]

COMMAND_GROUPS = (attack, detection, training, reproduce, synthesis, zoo, ablation, adaptive)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robgen", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
