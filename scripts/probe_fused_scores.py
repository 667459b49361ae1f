"""How far the fused copy's reject score lies from the model's own at the iterates an adaptive attack passes through.

    python scripts/probe_fused_scores.py [--run results/adaptive/robust-margin-cifar10-resnet10-robust]
        [--detector robust-margin] [--test 200] [--steps 20]

The adaptive attacks step through the model's fused copy (batch norm folded into the convolutions), and
`EvasionTracker` judges each iterate on it; the model itself confirms only the evasions the copy reports. An
iterate the copy scores just above 0 but the model accepts would be missed. This measures the gap: (K+1) PGD at
8/255 from a random start on the first `--test` test images of a finished adaptive run, every fourth iterate kept,
each scored by the run's detector on the fused copy and on the model. Printed: the score differences, how many
iterates the two judge differently, and how many have a score closer to 0 than the largest difference (those the
copy could misjudge). robust-margin is the case to look at: its score runs the network again in 3 signed-gradient
steps, which could part ways on the copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robgen import data as datasets  # noqa: E402
from robgen.attacks.adaptive import KPlusOnePGD  # noqa: E402
from robgen.attacks.evasion import DefendedOutputs, EvasionTracker  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.engine.fused import inference_graph  # noqa: E402
from robgen.experiments.adaptive import load_run  # noqa: E402
from robgen.experiments.adaptive_suite import saved_detector  # noqa: E402
from robgen.models.state import eval_mode  # noqa: E402


class KeepingTracker(EvasionTracker):
    """An `EvasionTracker` that also keeps every fourth iterate it is shown."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kept, self.kept_labels = [], []

    def watch(self, index=None, verify=False):
        inner = super().watch(index, verify)

        def watch(step, points, outputs):
            if step % 4 == 3:
                self.kept.append(points.clone())
                self.kept_labels.append(self.y[self._index(index)])
            return inner(step, points, outputs)
        return watch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "results/adaptive/robust-margin-cifar10-resnet10-robust")
    parser.add_argument("--detector", default="robust-margin")
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    results = json.loads((args.run / "results.json").read_text())
    if args.detector not in results["detectors"]:
        raise SystemExit(f"--detector {args.detector}: {args.run} has {', '.join(results['detectors'])}")
    model, splits = load_run(results)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x, y = datasets.load_tensors(datasets.first(splits.test, args.test, "test split"))
    defended = DefendedClassifier(model, saved_detector(args.run, results, args.detector, model))
    fused = inference_graph(model, example=x)
    if fused is model:
        raise SystemExit("this model has no fused copy (fusion is off or it cannot be folded): nothing to compare")
    started = time.time()
    tracker = KeepingTracker(defended, x, y)
    KPlusOnePGD(defended, eps=8 / 255, steps=args.steps, generator=torch.Generator().manual_seed(0)).run(x, y, tracker)
    points, labels = torch.cat(tracker.kept), torch.cat(tracker.kept_labels)
    with torch.no_grad(), eval_mode(model):
        copy_logits, copy_score = DefendedOutputs(defended, network=fused)(points)[:2]
        own_logits, own_score = DefendedOutputs(defended, network=model)(points)[:2]
    gap = (copy_score - own_score).abs()
    evades_copy = (copy_logits.argmax(1) != labels) & (copy_score <= 0)
    evades_own = (own_logits.argmax(1) != labels) & (own_score <= 0)
    print(f"{len(points)} iterates of (K+1) PGD-{args.steps} at 8/255 on {len(x)} test images, "
          f"{args.detector}; {time.time() - started:.0f} s")
    print(f"|score on the copy - score on the model|: median {gap.median():.2e}, 99th percentile "
          f"{gap.quantile(0.99):.2e}, largest {gap.max():.2e} (median |score| {own_score.abs().median():.3f})")
    print(f"predicted class differs: {int((copy_logits.argmax(1) != own_logits.argmax(1)).sum())}; accepted on one "
          f"and rejected on the other: {int(((copy_score <= 0) != (own_score <= 0)).sum())}")
    print("evading on the model but not on the copy (what the tracker would miss): "
          f"{int((evades_own & ~evades_copy).sum())}; "
          f"the other way (its recheck drops them): {int((evades_copy & ~evades_own).sum())}")
    print(f"iterates scored closer to 0 than the largest difference: {int((own_score.abs() <= gap.max()).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
