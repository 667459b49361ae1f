"""Where robust-margin's 5%-FPR threshold has to sit: how many clean validation images flip within its ball.

    python scripts/probe_robust_margin_flips.py --model cifar10-resnet10-robust [--val 2000] [--radii 2/255,3/255,4/255]
        [--test 500 --eps 8/255]

robust-margin (robgen/detection/reject.py) rejects an input whose predicted class's margin at the worst point of
an L-inf ball of radius rho exceeds a threshold t. Its guarantee (DARA at eps reaches the bare model's robust
accuracy at eps - rho) needs t = 0, that is: rejecting every clean image whose label flips within rho. Per radius
this prints, on the first `--val` validation images the model's training held out (`--split train`: training
images instead, to tell a generalisation gap from a model that is not smooth anywhere), the share of them that flip
(statistic > 0; Wilson 95% intervals; a lower bound, since the option's few inner steps are no exact max), apart
for the ones the model classifies correctly and wrongly, and the thresholds robgen's calibration sets at 5% of all
of them (`upper_threshold`, robgen's protocol) and at 5% of the correctly classified ones (the convention
../shared/FOLLOWUPS.md attributes to Chen et al. 2023), with how many of all images the latter rejects.

With `--test N` it also measures how much of the guarantee the calibrated threshold keeps, on the first N test
images against plain PGD (50 steps, step 2.5 eps / 50, random start, seed 0; no attacker that knows the detector,
so an upper bound on what the option catches): the bare model's robust accuracy at `--eps` and at eps - rho (what
the reduction guarantees an exact option at threshold 0 at eps, for rho <= eps / 2), and the share of PGD's
successes at eps whose statistic is above 0 (what the option would reject at threshold 0; its few inner steps
make this a lower bound for an exact one) and above each calibrated threshold (what it rejects).

With `--per-class` (and `--test`) it also tries thresholds per predicted class, each at 5% of the validation images
the model assigns to that class (so at most 5% of all of them rejected, as floor sums to at most the floor of the
sum): a class whose clean images rarely flip within rho gets a threshold near 0, a confusable one a high one. It
prints the validation and clean test FPR that gives and the share of PGD's successes above the threshold of the
class PGD moved them to. A screen, no more: an attacker who knows the thresholds would aim for the classes whose
threshold is high.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402
from robgen import data as datasets  # noqa: E402
from robgen.attacks import PGD  # noqa: E402
from robgen.cli.common import UsageError, parse_numbers  # noqa: E402
from robgen.detection.reject import make_reject_option  # noqa: E402
from robgen.detection.reject_base import upper_threshold  # noqa: E402
from robgen.experiments.pipeline import detection_splits  # noqa: E402
from robgen.metrics import rate_text  # noqa: E402
from robgen.models.state import eval_mode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-resnet10-robust")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--split", choices=("validation", "train"), default="validation",
                        help="whose first --val images to count the flips of: the validation split the model's "
                             "training held out (default, where the thresholds are calibrated) or the training "
                             "images it learnt from (is the share a generalisation gap?)")
    parser.add_argument("--radii", default="2/255,3/255,4/255")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--test", type=int, default=0, help="test images attacked with plain PGD (default 0: none)")
    parser.add_argument("--eps", default="8/255", help="PGD's L-inf radius with --test (default 8/255)")
    parser.add_argument("--per-class", action="store_true",
                        help="with --test: also thresholds per predicted class, each at 5%% of its validation images")
    parser.add_argument("--skip-guarantee", action="store_true",
                        help="with --test: skip PGD at eps - rho (the guarantee's robust accuracy), half the attacks")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    try:
        radii = parse_numbers(args.radii, "--radii")
    except UsageError as error:
        parser.error(str(error))
    if not all(0 < radius <= 1 for radius in radii):
        parser.error(f"--radii must lie in (0, 1] (pixels are in [0, 1]), e.g. 2/255; got {args.radii}")
    try:
        (eps,) = parse_numbers(args.eps, "--eps")
    except (UsageError, ValueError):
        parser.error(f"--eps takes one number, e.g. 8/255; got {args.eps!r}")
    if (args.per_class or args.skip_guarantee) and not args.test:
        parser.error("--per-class and --skip-guarantee measure PGD's successes: add --test N (e.g. --test 500)")
    if args.test and not all(0 < radius <= eps / 2 and eps <= 1 for radius in radii):
        parser.error(f"with --test every radius must be at most half of --eps (the reduction's condition), --eps in "
                     f"(0, 1]; got --radii {args.radii} --eps {args.eps}")
    model = robgen.load_model(args.model, device=args.device)
    splits = detection_splits(model, args.data)
    try:
        x, y = (t.to(args.device) for t in datasets.load_tensors(datasets.first(getattr(splits, args.split),
                                                                                 args.val, f"{args.split} split")))
        test = datasets.first(splits.test, args.test, "test split") if args.test else None
    except ValueError as error:  # more images asked for than the split holds
        parser.error(f"{error}: lower --val or --test")
    logits = outputs(model, x, args.batch_size)
    correct = logits.argmax(1) == y
    print(f"{args.model}: {len(x)} {args.split} images, clean accuracy {rate_text(correct)}")
    if args.test:
        test_x, test_y = (t.to(args.device) for t in datasets.load_tensors(test))
        test_logits = outputs(model, test_x, args.batch_size)
        test_correct = test_logits.argmax(1) == test_y
        points = pgd_points(model, test_x, test_y, eps, args.batch_size)
        adv_logits = outputs(model, points, args.batch_size)
        succeeded = test_correct & (adv_logits.argmax(1) != test_y)
        print(f"first {len(test_x)} test images: clean accuracy {rate_text(test_correct)}, robust accuracy under "
              f"PGD-50 "
              f"at {eps * 255:g}/255 {rate_text(test_correct & ~succeeded)} ({int(succeeded.sum())} successes)")
    for radius in radii:
        option = make_reject_option("robust-margin", radius=radius)
        text = f"{radius * 255:g}/255"
        values = statistic(option, model, x, logits, args.batch_size)
        at_all, at_correct = upper_threshold(values, 0.05), upper_threshold(values[correct], 0.05)
        print(f"rho = {text}: flip within rho: all {rate_text(values > 0)}, correctly classified "
              f"{rate_text(values[correct] > 0)}, misclassified {rate_text(values[~correct] > 0)}; threshold at 5% "
              f"of all "
              f"{at_all:.3f}, at 5% of the correctly classified {at_correct:.3f} (rejecting "
              f"{rate_text(values > at_correct)} of all)", flush=True)
        if args.test:
            if not args.skip_guarantee:
                smaller = pgd_points(model, test_x, test_y, eps - radius, args.batch_size)
                robust = test_correct & (outputs(model, smaller, args.batch_size).argmax(1) == test_y)
                print(f"    robust accuracy at eps - rho = {(eps - radius) * 255:g}/255: {rate_text(robust)} "
                      f"(the guarantee)")
            caught = statistic(option, model, points, adv_logits, args.batch_size)[succeeded]
            print(f"    PGD's successes at {eps * 255:g}/255 with statistic > 0: {rate_text(caught > 0)}, above the "
                  f"threshold {at_all:.3f}: {rate_text(caught > at_all)}, above the threshold at 5% of the correctly "
                  f"classified {at_correct:.3f}: {rate_text(caught > at_correct)}", flush=True)
        if args.test and args.per_class:
            thresholds = per_class_thresholds(values, logits.argmax(1), logits.shape[1])
            clean_test = statistic(option, model, test_x, test_logits, args.batch_size)
            over = lambda v, predicted: v > thresholds[predicted]  # noqa: E731
            print(f"    per predicted class, 5% of each class's validation images: thresholds "
                  f"{', '.join(f'{t:.3f}' for t in thresholds.tolist())}; validation FPR "
                  f"{rate_text(over(values, logits.argmax(1)))}, clean test FPR "
                  f"{rate_text(over(clean_test, test_logits.argmax(1)))}; PGD's successes above their "
                  f"class's threshold: {rate_text(over(caught, adv_logits.argmax(1)[succeeded]))}", flush=True)


def per_class_thresholds(values: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """robgen's 5% threshold among the validation images of each predicted class (+inf for a class with none)."""
    return torch.tensor([upper_threshold(values[predicted == k], 0.05) if (predicted == k).any() else float("inf")
                         for k in range(num_classes)], dtype=values.dtype, device=values.device)  # indexed by
    # the predicted classes, on the model's device


def outputs(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])


def statistic(option, model, images: torch.Tensor, logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([option.values(logits[s:s + batch_size], None, images[s:s + batch_size], model).detach()
                          for s in range(0, len(images), batch_size)])


def pgd_points(model, images: torch.Tensor, labels: torch.Tensor, eps: float, batch_size: int) -> torch.Tensor:
    attack = PGD(model, eps=eps, step_size=2.5 * eps / 50, steps=50, generator=torch.Generator().manual_seed(0))
    with eval_mode(model):
        return torch.cat([attack(images[s:s + batch_size], labels[s:s + batch_size])
                          for s in range(0, len(images), batch_size)])


if __name__ == "__main__":
    main()
