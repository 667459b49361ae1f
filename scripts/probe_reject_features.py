"""Which per-image statistics tell a model's bare-PGD points from clean images, before any adaptive attack.

    python scripts/probe_reject_features.py --model cifar10-resnet10-robust [--val 1000] [--test 300] [--steps 50]

A screen for reject options on a robust model (the adaptive-evaluation issue's moonshot): a statistic whose
5%-FPR threshold (either tail, fixed on clean validation images the model's training held out) does not catch
the plain PGD points that fool the model cannot survive an attacker who knows it either. For each statistic it
prints the validation and adversarial means and, for a threshold at each tail, the fraction of the successful
PGD points flagged (Wilson 95% interval) and the false-positive rate on the clean test images. Statistics: the
energy E(x), the energy gap E(x, ŷ) - E(x) = -log p(ŷ|x), the top-2 logit margin, the L2 and L1 norms of
∇ₓE(x), and the change of E and of the prediction after one signed step of 2/255 or 8/255 down ∇ₓE(x).
PGD: L-inf 8/255, step 2.5 eps / steps, random start, seed 0, against the true labels.
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
from robgen.energy import energy  # noqa: E402
from robgen.experiments.pipeline import detection_splits  # noqa: E402
from robgen.metrics import wilson_interval  # noqa: E402


def statistics(model, images: torch.Tensor) -> dict:
    images = images.clone().requires_grad_(True)
    logits = model(images)
    e = energy(logits)
    (grad,) = torch.autograd.grad(e.sum(), images)
    top2 = logits.topk(2, 1).values
    out = {"E(x)": e.detach(), "energy gap": (-torch.log_softmax(logits, 1).max(1).values).detach(),
           "top-2 margin": (top2[:, 0] - top2[:, 1]).detach(), "|grad E|_2": grad.flatten(1).norm(dim=1),
           "|grad E|_1": grad.flatten(1).abs().sum(1)}
    prediction = logits.argmax(1)
    with torch.no_grad():
        for size in (2, 8):
            stepped = model((images - size / 255 * grad.sign()).clamp(0, 1))
            out[f"dE, step {size}/255"] = energy(stepped) - e.detach()
            out[f"flip, step {size}/255"] = (stepped.argmax(1) != prediction).double()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar10-resnet10-robust")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--val", type=int, default=1000, help="clean validation images for the thresholds")
    parser.add_argument("--test", type=int, default=300, help="test images attacked")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    model = robgen.load_model(args.model).eval()
    splits = detection_splits(model, args.data)
    xv, _ = datasets.load_tensors(datasets.first(splits.validation, args.val, "validation split"))
    x, y = datasets.load_tensors(datasets.first(splits.test, args.test, "test split"))
    eps = 8 / 255
    attack = PGD(model, eps=eps, step_size=2.5 * eps / args.steps, steps=args.steps,
                 generator=torch.Generator().manual_seed(0))
    x_adv = torch.cat([attack(x[i:i + args.batch_size], y[i:i + args.batch_size])
                       for i in range(0, len(x), args.batch_size)])
    parts = [(xv[i:i + args.batch_size],) for i in range(0, len(xv), args.batch_size)]
    val = {k: torch.cat(v) for k, v in zip(statistics(model, xv[:1]), zip(*[statistics(model, p[0]).values()
                                                                                for p in parts]))}
    clean, adv = statistics(model, x), statistics(model, x_adv)
    with torch.no_grad():
        correct, fooled = model(x).argmax(1) == y, model(x_adv).argmax(1) != y
    success = correct & fooled
    print(f"{args.model}: clean accuracy {correct.float().mean():.3f} on {len(x)} test images; PGD-{args.steps} 8/255 "
          f"fooled it on {int(success.sum())} of the {int(correct.sum())} it classified correctly; thresholds at 5% "
          f"of {len(xv)} clean validation images")
    print(f"{'statistic':>16} {'val mean':>9} {'adv mean':>9} | {'low tail: PGD flagged':>28} {'test FPR':>8} | "
          f"{'high tail: PGD flagged':>28} {'test FPR':>8}")
    for key in val:
        v = val[key].double()
        low, high = v.quantile(0.05), v.quantile(0.95)
        a, c = adv[key][success].double(), clean[key].double()
        cells = []
        for flagged, false in (((a < low), (c < low)), ((a > high), (c > high))):
            lo_ci, hi_ci = wilson_interval(int(flagged.sum()), len(a))
            cells.append(f"{flagged.double().mean():6.1%} [{lo_ci:6.1%}, {hi_ci:6.1%}] {false.double().mean():8.1%}")
        print(f"{key:>16} {v.mean():9.3f} {a.mean():9.3f} | {cells[0]:>28} | {cells[1]:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
