"""What each detector of finished adaptive runs adds to the bare model, image by image (no model, no attack).

    python scripts/gain_over_bare.py results/adaptive/*/results.json

Runs made since 2026-12-06 print this in their results.md ("What each detector adds to the bare model"); for
older runs it is computed here from the same per-image records of results.json (each row's "defended" test
images, the bare model's "robust" ones) with the report's own functions: DARA minus the bare model's robust
accuracy under the same suite, with the 95% interval of the paired difference, and the images only one side
holds. A run that recorded no per-image flags is named and skipped.

    python scripts/gain_over_bare.py --rescore results/adaptive/*/results.json

Runs made before 2026-12-06 also lack which clean test images each detector rejected, which splits "robust only
without it" into the detector's false positives and the images its suite broke where the detector-off suite missed
a mistake. `--rescore` finds them again: the run's model (refused if its weights changed) and its detectors as it
saved them score its first test images; a detector whose count of rejected images differs from the run's is
refused, not guessed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen.experiments.adaptive_report import OFF, add_gains, gain_section, indices  # noqa: E402


def rescore_rejections(run: Path, results: dict, batch: int = 100) -> None:
    """Give each detector's rows of a run made before they recorded it their "rejected_clean" test images: the run's
    model and saved detectors score its first n_test clean test images again (the same images, the same thresholds).
    A count that differs from the run's own is refused."""
    import torch

    from robgen import data as datasets
    from robgen.detection.defended import DefendedClassifier
    from robgen.experiments.adaptive import load_run
    from robgen.experiments.adaptive_suite import saved_detector

    model, splits = load_run(results)
    x, _ = datasets.load_tensors(datasets.first(splits.test, results["n_test"], "test split"))
    for name in results["detectors"]:
        rows = [row for row in results["rows"] if row["detector"] == name and row.get("rejected_clean") is None]
        if name == OFF or not rows:
            continue
        defended = DefendedClassifier(model, saved_detector(run, results, name, model))
        rejected = torch.cat([~defended.accepts(x[start:start + batch]) for start in range(0, len(x), batch)])
        for row in rows:
            if int(rejected.sum()) != row["clean"]["rejection_rate"]["count"]:
                raise SystemExit(f"{run}: {name} rejects {int(rejected.sum())} of the clean test images scored again, "
                                 f"the run {row['clean']['rejection_rate']['count']}: not the run's images or detector")
            row["rejected_clean"] = indices(rejected)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="results.json files `python -m robgen adaptive` wrote")
    parser.add_argument("--rescore", action="store_true",
                        help="for runs that did not record them, find the clean images each detector rejects by "
                             "scoring them again (loads the model and the data)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.results if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)} (give the results.json of finished runs)")
    for path in args.results:
        print(f"# {path}")
        try:
            results = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            results = {}
        if not isinstance(results, dict) or not {"rows", "bare", "n_test"} <= set(results):
            print("not the results.json of a `python -m robgen adaptive` run (no rows, bare or n_test)\n")
            continue
        if args.rescore:
            rescore_rejections(path.parent, results)
        add_gains(results["rows"], results["bare"], results["n_test"])
        lines = gain_section(results)
        print("\n".join(lines[1:]) if lines else "no per-image records (a run made before they were kept)")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
