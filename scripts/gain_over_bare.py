"""What each detector of finished adaptive runs adds to the bare model, image by image (no model, no attack).

    python scripts/gain_over_bare.py results/adaptive/*/results.json

Runs made since 2026-12-06 print this in their results.md ("What each detector adds to the bare model"); for
older runs it is computed here from the same per-image records of results.json (each row's "defended" test
images, the bare model's "robust" ones) with the report's own functions: DARA minus the bare model's robust
accuracy under the same suite, with the 95% interval of the paired difference, and the images only one side
holds. A run that recorded no per-image flags is named and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen.experiments.adaptive_report import add_gains, gain_section  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="results.json files `python -m robgen adaptive` wrote")
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
        add_gains(results["rows"], results["bare"], results["n_test"])
        lines = gain_section(results)
        print("\n".join(lines[1:]) if lines else "no per-image records (a run made before they were kept)")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
