"""The adaptive suite two ways, side by side: what `--skip-evaded` saves, and that it finds the same DARA.

On a shipped model (default `cifar10-resnet10-robust`, where the saving matters: some image of every
batch holds out, so stopping a batch once all of it evaded saves nothing) with an energy reject
option (5% FPR on 512 CIFAR-10 training images), the adaptive attacks of
`python -m robgen adaptive` on the first `--limit` test images (their true labels), through the
experiment's own `run_suites`:

- skipping: each adaptive attack after the first runs only on the images still defended (clean-correct,
  accepted, evaded by no earlier attack): `AdaptiveSettings(skip_evaded=True)`;
- full: every attack on every image;

(and once per run, in both ways alike, the non-adaptive reference PGD on the bare model);

prints each way's time per round (alternating which goes first), the median ratio skipping / full, the
images each attack ran on, the share of image-attacks and of the attacks' passes skipping saves, and both ways'
DARA with its interval (the same in distribution: skipping an
image an earlier attack evaded cannot change whether it is defended; the random draws differ).

    python benchmarks/adaptive_skip.py [--rounds 2] [--limit 100] [--steps 20] [--restarts 1]
        [--model cifar10-resnet10-robust] [--device cpu]
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
from robgen.data import load_dataset  # noqa: E402
from robgen.detection.dara import rate  # noqa: E402
from robgen.detection.reject import make_reject_option  # noqa: E402
from robgen.experiments.adaptive import AdaptiveSettings, estimate_passes, run_suites, still_defended  # noqa: E402
from robgen.experiments.adaptive_suite import ADAPTIVE, SuiteStageStore  # noqa: E402
from robgen.experiments.pipeline import model_outputs, tensor_batches  # noqa: E402


def split(name: str, start: int, n: int):
    data = load_dataset("cifar10", split=name)
    pairs = [data[i] for i in range(start, start + n)]
    return torch.stack([image for image, _ in pairs]), torch.tensor([int(label) for _, label in pairs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--model", default="cifar10-resnet10-robust")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = robgen.load_model(args.model).to(device).eval()
    calibration, _ = split("train", 0, 512)
    reject = {"energy": make_reject_option("energy", target_fpr=0.05).calibrate(model, calibration.to(device))}
    x, y = split("test", 0, args.limit)
    targets = split("train", 512, 100)
    clean = model_outputs(model, tensor_batches(x, y, 50), progress=False)  # the reference PGD: once, shared
    times, dara, attacked = {True: [], False: []}, {}, {True: {}, False: {}}
    for round_ in range(args.rounds):
        for skip in ((True, False) if round_ % 2 == 0 else (False, True)):
            settings = AdaptiveSettings(detectors=("energy",), limit=args.limit, steps=args.steps,
                                        restarts=args.restarts, batch_size=50, seed=round_, skip_evaded=skip)
            settings.lambdas = ()  # no HE-PGD: the references (here plain PGD) run on all images either way
            store = SuiteStageStore(None, {})
            start = time.perf_counter()
            flags, _ = run_suites(model, reject, settings, x, y, targets, store, clean, progress=False)
            times[skip].append(time.perf_counter() - start)
            stages = flags["energy"][settings.eps_list[0]]
            dara.setdefault(skip, []).append(rate(still_defended(stages)))
            for name in (name for name in ADAPTIVE if name in stages):  # summed over the rounds
                attacked[skip][name] = attacked[skip].get(name, 0) + int(stages[name]["attacked"].sum())
            print(f"round {round_ + 1}, {'skipping' if skip else 'full':>8}: {times[skip][-1]:7.1f} s, "
                  f"DARA {100 * dara[skip][-1]['rate']:.1f}% [{100 * dara[skip][-1]['ci'][0]:.1f}, "
                  f"{100 * dara[skip][-1]['ci'][1]:.1f}]", flush=True)
    print(f"\nimages each attack ran on (of {args.limit} x {args.rounds} rounds), skipping: {attacked[True]}")
    print(f"image-attacks skipping / full: {sum(attacked[True].values()) / sum(attacked[False].values()):.2f}")
    # each attack's image-runs weighted by its forward+backward passes per image (the estimate's, before either
    # way's early stopping): Orthogonal PGD costs twice (K+1) PGD's, APGD one step more per restart
    cost = estimate_passes(settings, args.limit, 0)["per_image_per_suite"]
    passes = {skip: sum(cost[name]["forward_backward"] * count for name, count in attacked[skip].items())
              for skip in (True, False)}
    print(f"the adaptive attacks' forward+backward passes skipping / full: {passes[True] / passes[False]:.2f} "
          "(weighted by each attack's passes per image, before either way's early stopping)")
    ratio = statistics.median(a / b for a, b in zip(times[True], times[False]))
    print(f"median time skipping / full: {ratio:.2f} ({args.rounds} rounds, {args.limit} images, "
          f"{args.steps} steps, {args.restarts} restart(s), {args.model} on {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
