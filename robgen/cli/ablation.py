"""The `ablation` command: which difference from the paper's model moves the energy detector (ablation.py)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import (
    UsageError, add_data_arguments, check_writable_folder, pick_device, positive_int, seed_number, user_path,
)


def add_parsers(commands) -> None:
    ablation = commands.add_parser(
        "ablation", help="the detector under the official protocol on several models, grouped by the factor they vary")
    ablation.add_argument("--row", action="append", default=[], metavar="FACTOR/LABEL=MODEL",
                          help="a model to measure as the value LABEL of FACTOR (repeat), e.g. "
                               "width/w32=cifar10-resnet10-standard or schedule/e10=runs/RUN/epochs/epoch-010")
    ablation.add_argument("--pixels", action="append", default=[], metavar="FACTOR/LABEL=MODEL",
                          help="the pixel factor on MODEL: exact PNG test images against their JPEG q75 copies")
    add_data_arguments(ablation)
    ablation.add_argument("--limit", type=int, default=2000,
                          help="first N validation and N test images per row (default 2000)")
    ablation.add_argument("--batch-size", type=positive_int, default=250)
    ablation.add_argument("--val-size", type=positive_int,
                          help="validation images held out of train (default: the split each model's training held "
                               "out, else 5000; Imagenette 500)")
    ablation.add_argument("--seed", type=seed_number, default=0, help="seed of the attack's random starts")
    ablation.add_argument("--device", default="auto")
    ablation.add_argument("--out", required=True, type=user_path,
                          help="folder: rows/ (one file per measured row, reused by later runs), results.md, "
                               "results.json, ablation.png")
    ablation.add_argument("--overwrite", action="store_true",
                          help="write into a folder whose results.json is another command's, and measure again "
                               "rows kept there with other settings or weights")
    ablation.set_defaults(run=command_ablation)


def _foreign_results(out: Path) -> bool:
    """Whether `out` holds a results.json that is not an ablation report (another command's results), or files of
    the report's names (results.md, the figures) beside no ablation's results.json and rows."""
    from ..experiments.ablation import ROWS
    from ..experiments.ablation_report import REPORT_FILES

    path = out / "results.json"
    if not path.is_file():
        return not (out / ROWS).is_dir() and any((out / name).exists() for name in REPORT_FILES)
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return True
    rows = data.get("rows") if isinstance(data, dict) else None
    return not (isinstance(rows, list) and all(isinstance(row, dict) and "factor" in row for row in rows))


def command_ablation(args) -> int:
    from ..experiments.ablation import ablation_rows, parse_spec, read_rows
    from ..experiments.ablation_report import REPORT_FILES, write_report

    try:
        specs = [parse_spec(text) for text in args.row] + [parse_spec(text, pixels=True) for text in args.pixels]
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out)
    check_writable_folder(out)
    if _foreign_results(out) and not args.overwrite:
        held = [name for name in ("results.json", *REPORT_FILES) if (out / name).exists()]
        raise UsageError(f"{out} holds another command's results ({', '.join(held)}): choose another --out or pass "
                         "--overwrite")
    if not specs and not read_rows(out):
        raise UsageError(f"nothing to measure and no rows in {out}/rows: give --row or --pixels")
    try:
        records = ablation_rows(specs, args.data, out, limit=args.limit, seed=args.seed, batch_size=args.batch_size,
                                val_size=args.val_size,
                                data_root=args.data_root, download=args.download, device=pick_device(args.device),
                                overwrite=args.overwrite)
        paths = write_report(records, out)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0
