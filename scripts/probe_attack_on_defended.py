"""One attack of the suite against the images a finished adaptive run left defended: what it adds to that run.

    python scripts/probe_attack_on_defended.py results/adaptive/cifar10-resnet10-quasirobust [--attack "k+1 apgd-t"]
        [--eps 8/255] [--steps 100] [--restarts 3] [--detector robust-margin]

A run made before an attack joined the suite (robgen/experiments/adaptive_suite.py), or before the suite judged
every point a reference (PGD or HE-PGD on the bare model, `--attack "pgd (bare model)"`) passes through, need not
be made again to see what the change adds: an image it did not leave defended stays broken, so only the defended images
(results.json's per-row "defended") are attacked, with the run's model and its calibrated detectors
(detectors/), and each row's DARA is given before and after. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen import data as datasets  # noqa: E402
from robgen.attacks.suite import run_suite  # noqa: E402
from robgen.detection.dara import rate  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.experiments.adaptive import AdaptiveSettings, load_run  # noqa: E402
from robgen.experiments.adaptive_report import OFF, flags_at  # noqa: E402
from robgen.experiments.adaptive_suite import make_suite_attack, saved_detector, suite_names  # noqa: E402


def pct(entry: dict) -> str:
    return f"{100 * entry['rate']:.1f}% [{100 * entry['ci'][0]:.1f}, {100 * entry['ci'][1]:.1f}]"


def probe(run: Path, attack: str = "k+1 apgd-t", eps: float = 8 / 255, steps: Optional[int] = None,
          restarts: Optional[int] = None, seed: int = 0, detectors: Optional[List[str]] = None) -> List[dict]:
    """Per row of the finished run at `eps` (of `detectors` only, if given): its DARA, how many of its defended
    images `attack` breaks, the DARA with it. The model is loaded by the name (or path) the run recorded."""
    results = json.loads((run / "results.json").read_text())
    if not all("defended" in row for row in results["rows"]):
        raise SystemExit(f"{run}/results.json names no defended images (a run older than the per-image record): "
                         "run the adaptive evaluation again")
    run_settings = results["settings"]
    settings = AdaptiveSettings(detectors=("energy",), steps=steps or run_settings["steps"],
                                restarts=restarts or run_settings["restarts"], lambdas=tuple(run_settings["lambdas"]),
                                target_classes=run_settings.get("target_classes"))  # APGD-T's and matching's, as run
    batch_size = run_settings["batch_size"]
    model, splits = load_run(results)
    x, y = datasets.load_tensors(datasets.first(splits.test, results["n_test"], "test split"))
    pool = min(run_settings["match_targets"], len(splits.validation))  # logit matching's targets, as the run took
    targets = datasets.load_tensors(datasets.first(splits.validation, pool, "validation split"))
    if detectors is not None and not set(detectors) <= {row["detector"] for row in results["rows"]}:
        raise SystemExit(f"--detector {','.join(detectors)}: {run} has rows for "
                         f"{', '.join(sorted({row['detector'] for row in results['rows']}))}")
    at_eps = sorted({row["eps"] for row in results["rows"]})
    if not any(abs(value - eps) <= 1e-9 for value in at_eps):
        raise SystemExit(f"--eps {eps:.6g}: {run} has rows at {', '.join(f'{value * 255:g}/255' for value in at_eps)}")
    found = []
    for row in results["rows"]:
        if abs(row["eps"] - eps) > 1e-9 or (detectors is not None and row["detector"] not in detectors):
            continue
        name = row["detector"]
        defended = DefendedClassifier(model, saved_detector(run, results, name, model))
        index = torch.tensor(row["defended"], dtype=torch.long)
        left = flags_at(row["defended"], len(x))
        if len(index):
            generator = torch.Generator().manual_seed(seed)
            made = make_suite_attack(attack, defended, eps, settings, generator, targets)
            evaded = run_suite(defended, x[index], y[index], {attack: made}, eps=eps, batch_size=batch_size).evaded
            left[index[evaded]] = False
        found.append({"detector": name, "dara": row["dara"], "broken": len(index) - int(left.sum()),
                      "defended": len(index), "dara_with_it": rate(left)})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished `python -m robgen adaptive` folder")
    parser.add_argument("--attack", default="k+1 apgd-t", help="an attack of the suite: "
                        + ", ".join(suite_names((0.6, 1.2, 2.0))))
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's")
    parser.add_argument("--restarts", type=int, default=None, help="default: the run's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", help="only these rows, comma-separated (default: every row at --eps)")
    args = parser.parse_args()
    detectors = None if args.detector is None else args.detector.split(",")
    rows = probe(args.run, args.attack, float(Fraction(args.eps)), args.steps, args.restarts, args.seed, detectors)
    print(f"{args.attack} on the images {args.run} left defended at {args.eps}\n")
    print("| detector | the run's DARA | images the attack breaks | DARA with it |\n|---|---|---|---|")
    for row in rows:
        print(f"| {'detector off' if row['detector'] == OFF else row['detector']} | {pct(row['dara'])} | "
              f"{row['broken']} of {row['defended']} | {pct(row['dara_with_it'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
