"""The adaptive attacks two ways, side by side: what the fused copy, or stopping once all evaded, saves.

On a shipped model (default `cifar10-resnet10-standard`) with an energy reject option (5% FPR,
calibrated on the first 512 CIFAR-10 training images, or on random pixels where the data set is
absent: this times the attacks, it measures no detector), prints in one run, for each of (K+1)
APGD-CE, Penalty PGD and Orthogonal PGD (with `--compare early-stop`, also (K+1) PGD):

`--compare fused` (default):
- fused: the attack as `python -m robgen adaptive` runs it (steps through the model's fused copy,
  robgen/engine/fused.py; first evasions confirmed by the model itself);
- unfused: the same attack with `attack.fused = False`;

`--compare early-stop`:
- stopping: the attack as `run_suite` runs it, stopping on a batch once every image of it has evaded
  (`EvasionTracker(stop_when_all_evaded=True)`);
- full: every step of every run;

the median time over rounds (the two on the same batch, alternating which goes first, after one untimed run of
each on 4 images) and the ratio
first / second, and checks that both find evasions on the same images (early-stop: the same first
evading points too).

    python benchmarks/adaptive_speed.py [--compare fused|early-stop] [--rounds 3] [--batch 32] [--steps 20]
        [--restarts 1] [--model cifar10-resnet10-standard] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402
from robgen.attacks.adaptive import KPlusOneAPGD, KPlusOnePGD, PenaltyPGD  # noqa: E402
from robgen.attacks.evasion import EvasionTracker  # noqa: E402
from robgen.attacks.orthogonal import OrthogonalPGD  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.detection.reject import make_reject_option  # noqa: E402


def images(n: int, offset: int, train: bool, device: torch.device):
    """n CIFAR-10 images (train or test split) from `offset`, or random pixels where the data set is absent."""
    try:
        from robgen.data import load_dataset

        data = load_dataset("cifar10", split="train" if train else "test")
        xs = torch.stack([data[i][0] for i in range(offset, offset + n)])
    except Exception as error:  # noqa: BLE001  (absent data: random pixels still time the attacks)
        print(f"CIFAR-10 not found ({type(error).__name__}): random pixels")
        xs = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(offset))
    return xs.to(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=("fused", "early-stop"), default="fused")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--model", default="cifar10-resnet10-standard")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = robgen.load_model(args.model).to(device).eval()
    reject = make_reject_option("energy", target_fpr=0.05).calibrate(model, images(512, 0, True, device))
    defended = DefendedClassifier(model, reject)
    common = dict(eps=8 / 255, steps=args.steps, restarts=args.restarts)
    builders = {
        "k+1 apgd-ce": lambda g: KPlusOneAPGD(defended, loss="ce", generator=g, **common),
        "penalty": lambda g: PenaltyPGD(defended, generator=g, **common),
        "orthogonal": lambda g: OrthogonalPGD(defended, generator=g, **common),
    }
    if args.compare == "early-stop":
        builders = {"k+1 pgd": lambda g: KPlusOnePGD(defended, generator=g, **common), **builders}
    first, second = ("fused", "unfused") if args.compare == "fused" else ("stopping", "full")
    print(f"{'attack':>14} {first + ' s':>10} {second + ' s':>10} {'ratio':>7}  same evasions")
    def run(build, way: bool, x, y, seed: int):
        """(seconds, tracker) of one run of the attack `build` makes, `way` the first contender or the second."""
        attack = build(torch.Generator(device=device).manual_seed(seed))
        if args.compare == "fused":
            attack.fused = way
        tracker = EvasionTracker(defended, x, y, stop_when_all_evaded=args.compare == "early-stop" and way)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        attack.run(x, y, tracker)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, tracker

    for name, build in builders.items():
        times = {True: [], False: []}
        same = True
        warm_x = images(min(args.batch, 4), 0, False, device)
        with torch.no_grad():
            warm_y = model(warm_x).argmax(1)
        for way in (True, False):  # untimed: each contender's first run (the fused copy built, the first passes)
            run(build, way, warm_x, warm_y, 0)
        for round_ in range(args.rounds):
            x = images(args.batch, round_ * args.batch, False, device)
            with torch.no_grad():
                y = model(x).argmax(1)
            found = {}
            for way in ((True, False) if round_ % 2 == 0 else (False, True)):
                seconds, found[way] = run(build, way, x, y, round_)
                times[way].append(seconds)
            same &= bool(torch.equal(found[True].evaded, found[False].evaded))
            if args.compare == "early-stop":
                same &= bool(torch.equal(found[True].images, found[False].images))
        first_s, second_s = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name:>14} {first_s:10.2f} {second_s:10.2f} {first_s / second_s:7.2f}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
