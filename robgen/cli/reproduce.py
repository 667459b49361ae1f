"""The `reproduce` command: the paper's Table 1 and Figs. 2-3, the baseline detectors and the adaptive attacker."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .common import (
    UsageError, add_data_arguments, add_model_arguments, add_output_arguments, join_processes, open_model,
    parse_number, parse_numbers, positive_int, prepare_out_dir, seed_number,
)

PRODUCTS = ["results.json", "results.md"]


def add_parsers(commands) -> None:
    repro = commands.add_parser("reproduce", help="the paper's Table 1 and Figs. 2-3, baselines, adaptive attacker")
    add_model_arguments(repro)
    add_data_arguments(repro)
    repro.add_argument("--limit", type=int, help="first N images of the validation and test splits (default: all)")
    repro.add_argument("--attacks", default="pgd-8,pgd-16,apgd-8", help="comma-separated, from pgd-8, pgd-16, apgd-8")
    repro.add_argument("--steps", type=int, default=40, help="attack steps (the paper: 40)")
    repro.add_argument("--lam", type=parse_number, help="HE-PGD's λ (default: the data set's; the paper: 1.2)")
    repro.add_argument("--lambdas", default="0,0.3,0.6,1.2,2,4",
        help="HE-PGD's λ values of the adaptive sweep (default 0,0.3,0.6,1.2,2,4); each other than 0 and --lam is "
             "one more attack on the test split, so e.g. 0,1.2 adds none")
    repro.add_argument("--hepgd-steps",
        help="comma-separated HE-PGD step counts run besides --steps (default: the official notebook's, "
             "Imagenette 10; none for CIFAR-10)")
    repro.add_argument("--val-size", type=int,
        help="validation images held out of train (default: the split the model's training held out, else 5000; Imagenette 500)")
    repro.add_argument("--reference-size", type=int, default=2000,
        help="clean training images for the baselines' reference statistics (default 2000)")
    repro.add_argument("--batch-size", type=positive_int, default=250)
    repro.add_argument("--seed", type=seed_number, default=0)
    add_output_arguments(repro)
    repro.set_defaults(run=command_reproduce)


def _step_counts(text):
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--hepgd-steps takes whole numbers separated by commas, e.g. 10,20; got {text!r}") from None


def command_reproduce(args) -> int:
    """Under torchrun each rank attacks its share of the batches and gets every output back; rank 0 prints and writes."""
    from .. import distributed
    from ..experiments.reproduce import STAGES, ReproduceSettings, reproduce
    from ..experiments.reproduce_report import figures_in
    from ..experiments.stages import read_back_words

    device = join_processes(args)
    model = open_model(args, device)
    try:
        settings = ReproduceSettings(
            attacks=tuple(name.strip() for name in args.attacks.split(",") if name.strip()), steps=args.steps,
            lam=args.lam, hepgd_steps=_step_counts(args.hepgd_steps), lambdas=parse_numbers(args.lambdas, "--lambdas"),
            limit=args.limit, val_size=args.val_size, reference_size=args.reference_size, batch_size=args.batch_size,
            seed=args.seed,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out)
    created = not out.exists()
    # on every rank, so that a refusal stops them all; the figures too (a folder's own figure was drawn over)
    prepare_out_dir(out, args.overwrite, PRODUCTS + (figures_in(out) if out.is_dir() else []))
    stage_dir = out / STAGES  # an interrupted run's finished attacks: the same command continues it
    if stage_dir.is_dir() and distributed.is_main():
        print(f"{stage_dir} holds the stages of an earlier run: those of this same run (command, settings, "
              "data, weights, code) are read back, not recomputed; "
              + ("those of another run are removed" if args.overwrite
                 else "another run's are refused, left as they are"))
    try:
        results = reproduce(model, args.data, out if distributed.is_main() else None, data_root=args.data_root,
                            settings=settings, download=args.download, stage_dir=stage_dir,
                            replace_stale_stages=args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        if created and distributed.is_main():  # a refused run leaves nothing behind
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        raise UsageError(str(error)) from None
    if distributed.is_main():
        for row in results["table1"]:
            if row["official_protocol"]:
                print(f"{row['attack']:>22}: detection {row['detection_rate']:.3f}, FPR {row['false_positive_rate']:.3f}, "
                      f"AUROC {row['auroc']:.3f}")
        for row in results.get("unfitted", []):
            print(f"{row['attack']:>22}: no detector fitted, because {row['reason']}")
        cost = results["cost"]
        print(f"cost: {cost['forward_backward_passes']:,} forward+backward and {cost['forward_passes']:,} forward "
              f"image-passes; floor {cost['floor_seconds']:.0f} s of {cost['wall_seconds']:.0f} s wall")
        continued = results["continued"]
        earlier = (f"; {read_back_words(continued)} ({continued['their_seconds']:.0f} s) came from the "
                   "interrupted run") if read_back_words(continued) else ""
        print(f"wrote results.json, results.md and figures to {out} ({results['wall_seconds']:.0f} s{earlier})")
    distributed.teardown()
    return 0
