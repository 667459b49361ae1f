"""Mend the "first to evade" counts of adaptive runs made before 2026-12-05, from their results.json alone.

    python scripts/fix_found_first.py results/adaptive/*/results.json

Before that fix, `adaptive_report._first_evader` counted every image an attack evaded first, those the model
gets wrong or rejects on clean inputs included (never defended, so no attack breaks them): the counts summed to
more than the images the suite broke, the excess on the suite's first attack. The right count needs each
stage's per-image flags, which results.json does not keep; it follows from the old one exactly where only the
first attack was credited with anything (no later attack then evaded an image the first had not): the first
attack broke every image the suite broke, the images defended on clean inputs minus the DARA's count. Elsewhere
the count is unknown and set to None (results.md then gives the rate alone and says why). Counts that already add
up to the images the suite broke are right (a run made after the fix) and kept. Rewrites results.json and
results.md in place where a row changed; a file already mended, or with nothing to mend, is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robgen.experiments.adaptive_report import markdown  # noqa: E402
from robgen.files import json_text  # noqa: E402

MENDED = "found_first_mended"  # the key a mended results.json carries


def mend_row(row: dict) -> str:
    """Mend one row's "found_first" in place; say what was done."""
    counts = row.get("found_first")
    if counts is None:
        return "unknown already"
    broken = row["clean"]["accuracy"]["count"] - row["dara"]["count"]
    if sum(counts.values()) == broken:  # right already: a run after the fix, or one no undefended image reached
        return "right already"
    first, *later = counts
    if any(counts[name] for name in later):
        row["found_first"] = None
        return f"unknown (later attacks credited {sum(counts[name] for name in later)})"
    row["found_first"] = {name: (broken if name == first else 0) for name in counts}
    return f"{first}: {counts[first]} -> {broken}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of `python -m robgen adaptive`")
    args = parser.parse_args()
    for path in args.results:
        results = json.loads(path.read_text())
        if results.get(MENDED):
            print(f"{path}: mended already")
            continue
        said = [mend_row(row) for row in results["rows"]]
        for row, what in zip(results["rows"], said):
            print(f"{path} {row['detector']} {row['eps_label']}: {what}")
        if all(what in ("right already", "unknown already") for what in said):  # nothing to write: the files kept
            print(f"{path}: nothing to mend, left as it is")
            continue
        results[MENDED] = True
        path.write_text(json_text(results))
        (path.parent / "results.md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
