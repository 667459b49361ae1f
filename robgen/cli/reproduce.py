"""The `reproduce` command: the paper's Table 1 and Figs. 2-3, the baseline detectors and the adaptive attacker."""

from __future__ import annotations

from pathlib import Path

from .common import (
    UsageError, add_data_arguments, add_model_arguments, add_output_arguments, open_model, pick_device, prepare_out_dir,
)


def add_parsers(commands) -> None:
    repro = commands.add_parser("reproduce", help="the paper's Table 1 and Figs. 2-3, baselines, adaptive attacker")
    add_model_arguments(repro)
    add_data_arguments(repro)
    repro.add_argument("--limit", type=int, help="first N images of the validation and test splits (default: all)")
    repro.add_argument("--attacks", default="pgd-8,pgd-16,apgd-8", help="comma-separated, from pgd-8, pgd-16, apgd-8")
    repro.add_argument("--steps", type=int, default=40, help="attack steps (the paper: 40)")
    repro.add_argument("--val-size", type=int,
        help="validation images held out of train (default: the split the model's training held out, else 5000; Imagenette 500)")
    repro.add_argument("--batch-size", type=int, default=250)
    repro.add_argument("--seed", type=int, default=0)
    add_output_arguments(repro)
    repro.set_defaults(run=command_reproduce)


def command_reproduce(args) -> int:
    from ..experiments.reproduce import ReproduceSettings, reproduce

    device = pick_device(args.device)
    model = open_model(args, device)
    try:
        settings = ReproduceSettings(
            attacks=tuple(name.strip() for name in args.attacks.split(",") if name.strip()), steps=args.steps,
            limit=args.limit, val_size=args.val_size, batch_size=args.batch_size, seed=args.seed,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json", "results.md"])
    try:
        results = reproduce(model, args.data, out, data_root=args.data_root, settings=settings, download=args.download)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    for row in results["table1"]:
        if row["official_protocol"]:
            print(f"{row['attack']:>16}: detection {row['detection_rate']:.3f}, FPR {row['false_positive_rate']:.3f}, "
                  f"AUROC {row['auroc']:.3f}")
    print(f"wrote results.json, results.md and figures to {out} ({results['wall_seconds']:.0f} s)")
    return 0
