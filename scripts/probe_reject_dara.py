"""A quick adaptive screen of one reject option: DARA under a short suite, beside the bare model's robust accuracy.

    python scripts/probe_reject_dara.py --model cifar10-resnet10-robust --detector energy-gap [--test 200] [--steps 50]
    python scripts/probe_reject_dara.py --detector robust-margin --radius 2/255 [--inner-steps 3]
    python scripts/probe_reject_dara.py --detector robust-margin --radius 2/255 --fpr-among correct

`--fpr-among correct`: the 5% counted among the validation images the model classifies correctly (Chen et al. 2023's
stratified convention) instead of among all of them; the script then prints the share of all validation and of all
clean test images rejected, which is above 5% when the misclassified images score high.

Cheaper than `python -m robgen adaptive` (which runs the whole suite with restarts on at least 500 images and is
what results are reported from): the option is calibrated at 5% FPR on 2,000 clean validation images the model's
training held out, then four attacks at L-inf 8/255 run on the first test images, against the detector switched
off and against the option: PGD on the bare model, (K+1) APGD-CE and APGD-DLR (one run each) and Penalty PGD
(3 rounds of its weight search). Every iterate counts. Prints, for both, the clean accuracy with rejection, DARA
(Wilson 95% intervals), each attack's evasion rate, and the fraction of bare-PGD successes the option rejects.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402
from robgen import data as datasets  # noqa: E402
from robgen.attacks import PGD  # noqa: E402
from robgen.attacks.adaptive import KPlusOneAPGD, PenaltyPGD  # noqa: E402
from robgen.attacks.suite import run_suite  # noqa: E402
from robgen.cli.common import parse_number  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.detection.reject import FPR_AMONG, make_reject_option  # noqa: E402
from robgen.experiments.adaptive_suite import DetectorOff  # noqa: E402
from robgen.experiments.pipeline import detection_splits  # noqa: E402
from robgen.metrics import rate_text  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar10-resnet10-robust")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--detector", default="energy-gap", help="a reject-option kind (robgen.detection.reject.KINDS)")
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eps", type=parse_number, default=8 / 255)
    parser.add_argument("--radius", type=parse_number, default=None, help="robust-margin's ball, e.g. 2/255")
    parser.add_argument("--inner-steps", type=int, default=None, help="robust-margin's steps inside its ball")
    parser.add_argument("--fpr-among", choices=FPR_AMONG, default="all",
                        help="the validation images the 5%% FPR is counted among (default all; correct: Chen et al. 2023)")
    parser.add_argument("--skip-bare", action="store_true",
                        help="attack only the option, not the detector switched off (same seeds: same bare numbers)")
    args = parser.parse_args(argv)
    settings = {name: value for name, value in (("radius", args.radius), ("steps", args.inner_steps))
                if value is not None}
    model = robgen.load_model(args.model).eval()
    splits = detection_splits(model, args.data)
    xv, yv = datasets.load_tensors(datasets.first(splits.validation, args.val, "validation split"))
    x, y = datasets.load_tensors(datasets.first(splits.test, args.test, "test split"))
    option = make_reject_option(args.detector, target_fpr=0.05, **settings).calibrate(
        model, xv, fpr_among=args.fpr_among, labels=yv if args.fpr_among == "correct" else None)
    with torch.no_grad():
        off = DetectorOff(target_fpr=0.0).fit(model(xv[:8]), model=model)
    fit = option.validation
    print(f"{args.model}: {option!r} {option.thresholds()}, FPR {fit['false_positive_rate']:.1%} of the {fit['n']} "
          f"validation images it counts among ({args.fpr_among})"
          + (f"; of all {fit['n_all']} it rejects {fit['rejection_rate_all']:.1%}" if "n_all" in fit else ""))
    eps, steps = args.eps, args.steps
    for label, reject in (() if args.skip_bare else (("detector off (bare model)", off),)) + ((args.detector, option),):
        started = time.perf_counter()
        defended = DefendedClassifier(model, reject)
        seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        attacks = {"pgd (bare model)": PGD(model, eps=eps, step_size=2.5 * eps / steps, steps=steps, generator=seeded()),
                   "k+1 apgd-ce": KPlusOneAPGD(defended, eps=eps, steps=steps, loss="ce", generator=seeded()),
                   "k+1 apgd-dlr": KPlusOneAPGD(defended, eps=eps, steps=steps, loss="dlr", generator=seeded()),
                   "penalty pgd": PenaltyPGD(defended, eps=eps, steps=steps, restarts=3, generator=seeded())}
        result = run_suite(defended, x, y, attacks, eps=eps, batch_size=100)
        pgd = result.attacks["pgd (bare model)"]
        caught = pgd.rejected[pgd.misclassified & result.clean_correct]
        defended_clean = result.clean_correct & result.clean_accepted  # what an attack can evade at all
        print(f"{label}: clean accuracy with rejection {rate_text(defended_clean)} (clean test images rejected "
              f"{rate_text(~result.clean_accepted)}), "
              f"DARA {rate_text(defended_clean & ~result.evaded)}; evaded per attack (of the {int(defended_clean.sum())} "
              "images defended on clean inputs): "
              + ", ".join(f"{name} {outcome.evaded[defended_clean].double().mean():.1%}"
                          for name, outcome in result.attacks.items())
              + f"; bare-PGD successes rejected {rate_text(caught)} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
