"""Why Orthogonal PGD stalls on some detectors: the angle between the classifier's and the detector's gradients.

    python scripts/probe_gradient_alignment.py [--model cifar10-resnet10-standard] [--detectors energy,energy-gap]
        [--test 64] [--val 1000]

Orthogonal PGD (Bryniarski et al. 2022) steps on the classification margin's gradient with its component along
the detector's gradient removed, and once the label flips on the detector's gradient with its component along
the classifier's removed. That helps when the two fight (their cosine is negative: the paper's one-sided energy,
which PGD lowers) and removes the useful direction when they agree (a confidence score such as the energy gap,
which rises with the wrong class's margin). Each detector is calibrated at 5% FPR on the first `--val` clean
validation images the model's training held out; PGD-5 (step 1/255, 8/255 ball) on the bare model takes the first
`--test` test images just past the boundary; at the points it flipped this prints the cosine between
∇ₓ margin(x) and ∇ₓ(−score(x)) (median and 10th / 90th percentiles).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402
from robgen import data as datasets  # noqa: E402
from robgen.attacks.adaptive import classification_margin  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.detection.reject import make_reject_option  # noqa: E402
from robgen.experiments.pipeline import detection_splits  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar10-resnet10-standard")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--detectors", default="energy,energy-gap")
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--val", type=int, default=1000)
    args = parser.parse_args()
    model = robgen.load_model(args.model).eval()
    splits = detection_splits(model, args.data)
    clean, _ = datasets.load_tensors(datasets.first(splits.validation, args.val, "validation split"))
    x, y = datasets.load_tensors(datasets.first(splits.test, args.test, "test split"))
    points = robgen.PGD(model, eps=8 / 255, step_size=1 / 255, steps=5,
                        generator=torch.Generator().manual_seed(0))(x, y).requires_grad_(True)
    for kind in args.detectors.split(","):
        defended = DefendedClassifier(model, make_reject_option(kind, target_fpr=0.05).calibrate(model, clean))
        logits, score = defended.outputs(points)
        flipped = logits.argmax(1) != y
        (toward_class,) = torch.autograd.grad(classification_margin(logits, y).sum(), points, retain_graph=True)
        (toward_accept,) = torch.autograd.grad((-score).sum(), points)
        cosine = F.cosine_similarity(toward_class.flatten(1), toward_accept.flatten(1))[flipped]
        if not len(cosine):  # nothing to measure the cosine on (a robust model, few test images)
            print(f"{kind}: 0 of {len(y)} points flipped: no cosine to measure (use more --test images)")
            continue
        print(f"{kind}: {int(flipped.sum())} of {len(y)} points flipped; cosine(∇ margin, ∇ -score) median "
              f"{float(cosine.median()):.2f}, 10th percentile {float(cosine.quantile(0.1)):.2f}, 90th "
              f"{float(cosine.quantile(0.9)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
