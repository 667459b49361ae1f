"""The `zoo` command: the energy detector against every attack of the zoo (robgen/attacks/zoo.py)."""

from __future__ import annotations

from pathlib import Path

from .common import (
    UsageError, add_data_arguments, add_model_arguments, add_output_arguments, open_model, parse_number, pick_device,
    positive_int, prepare_out_dir, seed_number,
)

# The zoo's attacks, a plain copy of robgen.attacks.zoo.ZOO_NAMES for parsing without importing torch
# (tests/test_startup.py pins the two together).
ZOO_NAMES = ("FGSM", "PGD-10", "PGD-40", "PGD-L2", "PGD-T", "HE-PGD", "APGD-CE", "APGD-DLR", "APGD-T", "CW-L2",
             "DeepFool", "FAB-L2", "Square", "AutoAttack")


def add_parsers(commands) -> None:
    zoo = commands.add_parser("zoo", help="the energy detector against the whole attack zoo (table and ΔE figure)")
    add_model_arguments(zoo)
    add_data_arguments(zoo)
    zoo.add_argument("--limit", type=int, help="first N images of the validation and test splits (default: all)")
    zoo.add_argument("--attacks", default=",".join(ZOO_NAMES), help=f"comma-separated, from {', '.join(ZOO_NAMES)} "
                     "(default: all)")
    zoo.add_argument("--eps", type=parse_number, default=8 / 255,
                     help="L-inf radius of the bounded attacks (default 8/255)")
    zoo.add_argument("--l2-eps", type=parse_number, default=0.5, help="L2 radius of PGD-L2 (default 0.5)")
    zoo.add_argument("--lam", type=parse_number, default=1.2, help="HE-PGD energy weight (default 1.2)")
    zoo.add_argument("--square-queries", type=int, default=1000, help="Square's query budget (default 1000)")
    zoo.add_argument("--rule", default="youden", choices=["gmean", "youden", "fpr"],
                     help="threshold rule (default youden, as the official notebooks)")
    zoo.add_argument("--temperature", default="search",
                     help="energy temperature, or 'search' (default: by validation AUROC)")
    zoo.add_argument("--val-size", type=int,
        help="validation images held out of train (default: the split the model's training held out, else 5000; Imagenette 500)")
    zoo.add_argument("--batch-size", type=positive_int, default=250)
    zoo.add_argument("--seed", type=seed_number, default=0)
    zoo.add_argument("--no-fusion", action="store_true", help="attack the model itself, not its fused copy")
    add_output_arguments(zoo)
    zoo.set_defaults(run=command_zoo)


def command_zoo(args) -> int:
    from ..attacks.zoo import ZooSettings
    from ..experiments.zoo import ZooStudySettings, run_zoo
    from ..experiments.zoo_report import PRODUCTS
    from .detection import parse_temperature

    device = pick_device(args.device)
    try:
        temperature = parse_temperature(args.temperature)
        settings = ZooStudySettings(
            attacks=tuple(name.strip() for name in args.attacks.split(",") if name.strip()),
            threat=ZooSettings(eps=args.eps, l2_eps=args.l2_eps, lam=args.lam, square_queries=args.square_queries),
            rule=args.rule, temperature=temperature, batch_size=args.batch_size, seed=args.seed,
            fused=False if args.no_fusion else None,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    model = open_model(args, device)
    out = prepare_out_dir(Path(args.out), args.overwrite, list(PRODUCTS))

    def report(name: str, row: dict) -> None:
        if "error" in row:
            print(f"{name:>10}: failed ({row['error']})", flush=True)
            return
        refitted = row["refitted"]
        refit = (f"no detector refitted ({refitted['error']})" if "error" in refitted
                 else f"{refitted['detection_rate']['value']:.3f} (refitted)")
        print(f"{name:>10}: success {row['success_rate']['value']:.3f}, ΔE {row['delta_energy']['value']:+.3f}, "
              f"detected {row['fitted_on_pgd40']['detection_rate']['value']:.3f} (fit on PGD-40), {refit}, "
              f"{row['seconds']:.0f} s", flush=True)

    try:
        results = run_zoo(model, args.data, out, val_size=args.val_size, limit=args.limit, data_root=args.data_root,
                          download=args.download, settings=settings, on_attack=report)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {', '.join(PRODUCTS)} to {out} ({results['wall_seconds']:.0f} s)")
    return 0
