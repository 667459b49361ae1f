"""Two reject options as one at a shared 5% FPR budget: energy-gap OR robust-margin, against plain PGD's successes.

    python scripts/probe_union_budget.py [--model cifar10-resnet10-robust] [--val 2000] [--test 500] [--radius 2/255]

A screen for the moonshot of results/adaptive/README.md (avenue 4): the energy gap (-log p(ŷ|x)) and robust-margin
catch partly different points, so their union might catch more than either. Each threshold is set at the same share
a of the first `--val` clean validation images the model's training held out (robgen's `upper_threshold`), with a
the largest (in steps of 0.1%) at which the union rejects at most 5% of them. Printed: the share of PGD-50's
successes at 8/255 on the first `--test` test images (step 2.5 eps / 50, random start, seed 0) each option flags
alone at 5% and the union flags (Wilson 95% intervals), with the clean test FPR. No attacker that knows the
detector: an upper bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402
from probe_robust_margin_flips import outputs, pgd_points, statistic  # noqa: E402  (the same PGD and batching)
from robgen import data as datasets  # noqa: E402
from robgen.cli.common import UsageError, parse_numbers  # noqa: E402
from robgen.detection.reject import make_reject_option  # noqa: E402
from robgen.detection.reject_base import upper_threshold  # noqa: E402
from robgen.experiments.pipeline import detection_splits  # noqa: E402
from robgen.metrics import rate_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-resnet10-robust")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--radius", default="2/255", help="robust-margin's ball (default 2/255)")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    try:
        (radius,) = parse_numbers(args.radius, "--radius")
    except (UsageError, ValueError):
        parser.error(f"--radius takes one number, e.g. 2/255; got {args.radius!r}")
    if not 0 < radius <= 1:
        parser.error(f"--radius must lie in (0, 1] (pixels are in [0, 1]), e.g. 2/255; got {args.radius}")
    model = robgen.load_model(args.model, device="cpu")
    splits = detection_splits(model, args.data)
    try:
        xv, _ = datasets.load_tensors(datasets.first(splits.validation, args.val, "validation split"))
        x, y = datasets.load_tensors(datasets.first(splits.test, args.test, "test split"))
    except ValueError as error:  # more images asked for than the split holds
        parser.error(f"{error}: lower --val or --test")
    size = args.batch_size
    points = pgd_points(model, x, y, 8 / 255, size)
    options = {"energy gap": make_reject_option("energy-gap"),
               "robust-margin": make_reject_option("robust-margin", radius=radius)}

    def statistics(images):
        logits = outputs(model, images, size)
        return {name: statistic(option, model, images, logits, size).double() for name, option in options.items()}

    val, attacked, clean = statistics(xv), statistics(points), statistics(x)
    correct = outputs(model, x, size).argmax(1) == y
    succeeded = correct & (outputs(model, points, size).argmax(1) != y)
    print(f"{args.model}: clean accuracy {rate_text(correct)} on {len(x)} test images; PGD-50 at 8/255 succeeded on "
          f"{int(succeeded.sum())}; thresholds from {len(xv)} validation images; robust-margin at {radius * 255:g}/255")

    def flags(stats, thresholds):
        return torch.stack([stats[name] > thresholds[name] for name in options]).any(0)

    def report(label, thresholds):
        print(f"{label:>32}: PGD successes flagged {rate_text(flags(attacked, thresholds)[succeeded])}, validation FPR "
              f"{flags(val, thresholds).double().mean():.1%}, clean test FPR {rate_text(flags(clean, thresholds))}")

    for name in options:
        report(f"{name} alone at 5%", {name: upper_threshold(val[name], 0.05), **{n: float("inf") for n in options
                                                                                 if n != name}})
    shared = None
    for per_mille in range(10, 51):
        thresholds = {name: upper_threshold(val[name], per_mille / 1000) for name in options}
        if flags(val, thresholds).double().mean() <= 0.05:
            shared = (per_mille, thresholds)
    if shared is None:
        print("no shared budget of at least 1% keeps the union at 5%")
        return
    report(f"union, each at {shared[0] / 10:.1f}%", shared[1])
    alone = {name: attacked[name] > upper_threshold(val[name], 0.05) for name in options}
    both = int((alone["energy gap"] & alone["robust-margin"] & succeeded).sum())
    print(f"PGD successes flagged by both at 5% each: {both}")


if __name__ == "__main__":
    main()
