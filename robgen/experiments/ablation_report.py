"""The detection ablation's table (`results.md`), data (`results.json`) and figures (`ablation.png`,
`ablation_epochs.png`).

One table row per measured row (ablation.py), grouped by factor in the order the factors first appear; the
paper's number beside the table. `ablation.png` has one panel per factor: the two error rates of each row (missed
attacks and false positives) with their 95% intervals, rows in the order given. `ablation_epochs.png` follows
each training run measured at two or more epochs (its snapshots): detection at the paper's FPR and clean accuracy
against the epoch, one line per recipe.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Tuple

from ..files import json_text, write_text_atomically
from ..metrics import PAIRED_INTERVAL

PAPER_CIFAR10 = {"detection_rate": 0.9838, "false_positive_rate": 0.0167}  # notebook: TPR 98.38 / FPR 1.67
PAPER_CLEAN_ACCURACY = 0.876  # the official CIFAR-10 model's test accuracy (PAPER.md)


def flat_rows(records: List[dict]) -> List[dict]:
    """One dict per measured row: factor, label, model facts and rates (pixel records give two rows)."""
    rows = []
    for record in records:
        for measured in record["rows"]:
            label = record["spec"]["label"] + (f" ({measured['pixels']})" if "pixels" in measured else "")
            rows.append({"factor": record["spec"]["factor"], "label": label, "model": record["model"], **measured})
    return rows


def _pct(value, interval=None) -> str:
    if value is None or value != value:
        return "n/a"
    text = f"{100 * value:.1f}"
    if interval:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def _recipe(model: dict) -> str:
    recipe = model.get("recipe", {})
    parts = [f"w{model.get('width')}"]
    if recipe:
        parts.append(f"{recipe.get('optimizer', 'sgd')} lr {recipe.get('lr')}")
        schedule = recipe.get("schedule")
        if schedule == "multistep":
            schedule += " " + ",".join(str(m) for m in recipe.get("milestones", []))
        parts += [str(schedule), str(recipe.get("augment", "crop-flip")), f"batch {recipe.get('batch_size')}"]
    if recipe.get("init_from"):
        parts.append(f"from {recipe['init_from']}")  # a fine-tune: its epochs count from that checkpoint
    parts.append(f"epoch {model.get('epochs_done')}/{recipe.get('epochs', '?')}")
    return ", ".join(parts)


AGRESTI_MIN = "Agresti & Min's interval for paired proportions (robgen.metrics.paired_difference_interval)"


def _agresti_min(rows: List[dict]) -> set:
    """Which interval the paired rows among `rows` carry: {True} Agresti & Min's (rows that record it), {False}
    the normal interval over images (the rows made before), both, or none."""
    return {row.get("minus_exact_interval") == PAIRED_INTERVAL for row in rows if "detection_rate_minus_exact" in row}


def _paired_words(rows: List[dict]) -> str:
    """How the paired differences' intervals were made; where rows of both kinds show, the older ones are marked
    one by one (" (normal interval)")."""
    kinds = _agresti_min(rows)
    if kinds == {True}:
        return AGRESTI_MIN
    if kinds == {True, False}:
        return f"{AGRESTI_MIN}, or where a row says so the normal interval over images of the rows measured before"
    return "normal interval over images"


def _cell(text) -> str:
    """`text` as one markdown table cell: a "|" in a factor or label the user named would split it into two."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def by_factor(rows: List[dict]) -> Dict[str, List[dict]]:
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        groups.setdefault(row["factor"], []).append(row)
    return groups


def _at_fpr(row: dict) -> str:
    entry = row.get("at_paper_fpr")
    if not entry:
        return "n/a (pixel row: one detector, Youden's)" if row.get("pixels") else "not measured"
    return (f"{_pct(entry['detection_rate'], entry['detection_rate_ci'])} "
            f"({_pct(entry['false_positive_rate'], entry['false_positive_rate_ci'])})")


def markdown(rows: List[dict], settings: dict) -> str:
    lines = [
        "# CIFAR-10 detection ablation: what moves the energy detector",
        "",
        f"Official protocol on every row: PGD 8/255, 40 steps of 1/255 from a random start, on the first "
        f"{settings.get('limit')} validation images (held out of each model's training) and the first "
        f"{settings.get('limit')} test images; Youden's J, temperature searched by validation AUROC. Pixel rows: "
        "the same detector (fitted on the validation images) on the exact PNG test images among those, and on "
        "the same images JPEG-compressed at the archive's quality 75. 95% intervals: Wilson for rates; the "
        f"paired JPEG - exact difference: {_paired_words(rows)}.",
        "",
        f"Paper (official width-64 model, all 10,000 test images): detection {_pct(PAPER_CIFAR10['detection_rate'])}, "
        f"FPR {_pct(PAPER_CIFAR10['false_positive_rate'])}.",
        "",
        f"The last column reads the same images at the paper's false-positive rate: the threshold with at most "
        f"{100 * PAPER_CIFAR10['false_positive_rate']:g}% validation FPR, its test detection (test FPR in brackets "
        "after it); \"not measured\" marks a model row measured before robgen recorded it (the same command "
        "measures it again and fills it).",
        "",
        "| factor | row | model | clean acc. | detection | FPR | AUROC | T | detection of successful "
        "| at the paper's FPR: detection (test FPR) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for factor, group in by_factor(rows).items():
        for row in group:
            lines.append(
                f"| {_cell(factor)} | {_cell(row['label'])} | {_cell(_recipe(row['model']))} | "
                f"{_pct(row.get('clean_accuracy'), row.get('clean_accuracy_ci'))} | "
                f"{_pct(row.get('detection_rate'), row.get('detection_rate_ci'))} | "
                f"{_pct(row.get('false_positive_rate'), row.get('false_positive_rate_ci'))} | "
                f"{row.get('auroc', float('nan')):.3f} | {row.get('temperature', float('nan')):g} | "
                f"{_pct(row.get('detection_rate_successful'))} | {_at_fpr(row)} |")
    paired = [row for row in rows if "detection_rate_minus_exact" in row]
    mixed = len(_agresti_min(rows)) == 2  # then the older rows are marked
    if paired:
        lines += ["", "Pixels, paired on the same test images (JPEG minus exact, points):", ""]
        for row in paired:
            d, f = row["detection_rate_minus_exact_ci"], row["false_positive_rate_minus_exact_ci"]
            mark = " (normal interval)" if mixed and row.get("minus_exact_interval") != PAIRED_INTERVAL else ""
            lines.append(f"- {row['label']}: detection {100 * row['detection_rate_minus_exact']:+.1f} "
                         f"[{100 * d[0]:+.1f}, {100 * d[1]:+.1f}], FPR {100 * row['false_positive_rate_minus_exact']:+.1f} "
                         f"[{100 * f[0]:+.1f}, {100 * f[1]:+.1f}] ({row['n_test']} images){mark}")
    return "\n".join(lines) + "\n"


def figure(rows: List[dict], path: Path) -> Path:
    """The two error rates, missed attacks (100 - detection) and false positives, with 95% intervals, one panel per
    factor, the paper's as dotted lines: both near 0 is the paper's detector; error rates keep the points apart
    that a 0-100 detection axis would squash together."""
    from ..plots import plt, save_figure  # matplotlib is imported (without a display) only when a figure is drawn

    groups = by_factor(rows)
    columns = min(3, len(groups))  # wrapped, so that many factors stay readable
    lines = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns + 1, 3.9 * lines), dpi=110, squeeze=False,
                             sharey=True)
    for spare in list(axes.flat)[len(groups):]:
        spare.set_visible(False)
    series = (("detection_rate", True, "tab:red", "missed attacks"), ("false_positive_rate", False, "tab:blue",
                                                                       "false positives"))
    top = 100 * max(PAPER_CIFAR10["false_positive_rate"], 1 - PAPER_CIFAR10["detection_rate"])
    for axis, (factor, group) in zip(axes.flat, groups.items()):
        xs = list(range(len(group)))
        for key, missed, colour, name in series:
            value = [100 * (1 - row[key] if missed else row[key]) for row in group]
            low, high = zip(*[[100 * (1 - b if missed else b) for b in row[f"{key}_ci"]] for row in group])
            if missed:
                low, high = high, low  # 1 - x reverses the interval
            top = max(top, *high)
            shifted = [x + (-0.06 if missed else 0.06) for x in xs]  # side by side where the two rates meet
            axis.errorbar(shifted, value, yerr=[[v - lo for v, lo in zip(value, low)], [hi - v for v, hi in zip(value, high)]],
                          marker="o", capsize=3, color=colour, label=name, linestyle="none")
        axis.axhline(100 * (1 - PAPER_CIFAR10["detection_rate"]), color="tab:red", linestyle=":", linewidth=1)
        axis.axhline(100 * PAPER_CIFAR10["false_positive_rate"], color="tab:blue", linestyle=":", linewidth=1)
        axis.set_xticks(xs)
        axis.set_xticklabels([row["label"] for row in group], rotation=30, ha="right", fontsize=7)
        axis.set_xlim(-0.5, len(group) - 0.5)
        axis.set_title(factor, fontsize=9)
    axes[0][0].set_ylim(0, 1.05 * top)  # shared by every panel: set once, after all are drawn, so none is cut off
    for axis in axes[:, 0]:
        axis.set_ylabel("% of test images (dotted: the paper)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def training_curves(rows: List[dict]) -> List[Tuple[str, List[dict]]]:
    """The runs measured at two or more epochs: (a name for the recipe, its model rows sorted by epoch).

    Rows belong to one run when their width and recorded recipe agree (the epoch aside) and their checkpoints
    are snapshots of one run folder (`<run>/epochs/epoch-NNN`, `<run>/best`: two runs of one recipe, on two
    machines, are two lines); a model measured as two rows counts once. Pixel rows and rows without a paper-FPR
    reading are left out. Ordered as the recipes first appear.
    """
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        model = row["model"]
        if row.get("pixels") or not row.get("at_paper_fpr") or model.get("epochs_done") is None:
            continue
        run = re.sub(r"/(epochs/epoch-\d+|best)/?$", "", str(model.get("source", "")))
        key = json.dumps({"width": model.get("width"), "recipe": model.get("recipe", {}), "run": run},
                         sort_keys=True)
        if model.get("source") and any(kept["model"].get("source") == model["source"] for kept in groups.get(key, [])):
            continue
        groups.setdefault(key, []).append(row)
    curves = []
    for group in groups.values():
        if len({row["model"]["epochs_done"] for row in group}) >= 2:
            name = _recipe(group[0]["model"]).rsplit(", epoch", 1)[0]
            curves.append((name, sorted(group, key=lambda row: row["model"]["epochs_done"])))
    return curves


def epochs_figure(curves: List[Tuple[str, List[dict]]], path: Path) -> Path:
    """Detection at the paper's FPR (left) and clean accuracy (right) against the epoch, with 95% intervals, one
    line per run (`training_curves`); the paper's detection and clean accuracy dotted."""
    from ..plots import plt, save_figure  # matplotlib is imported (without a display) only when a figure is drawn

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, group in curves:
        epochs = [row["model"]["epochs_done"] for row in group]
        for axis, value, interval in (
                (left, lambda row: row["at_paper_fpr"]["detection_rate"],
                 lambda row: row["at_paper_fpr"]["detection_rate_ci"]),
                (right, lambda row: row["clean_accuracy"], lambda row: row.get("clean_accuracy_ci"))):
            ys = [100 * value(row) for row in group]
            bounds = [interval(row) or (value(row), value(row)) for row in group]
            errors = [[y - 100 * b[0] for y, b in zip(ys, bounds)], [100 * b[1] - y for y, b in zip(ys, bounds)]]
            axis.errorbar(epochs, ys, yerr=errors, marker="o", capsize=3, label=name)
    left.axhline(100 * PAPER_CIFAR10["detection_rate"], color="grey", linestyle=":", linewidth=1)
    right.axhline(100 * PAPER_CLEAN_ACCURACY, color="grey", linestyle=":", linewidth=1)
    left.set_ylabel(f"PGD detected at {100 * PAPER_CIFAR10['false_positive_rate']:g}% validation FPR (%)")
    right.set_ylabel("clean accuracy (%)")
    for axis in (left, right):
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    left.set_title("detection at the paper's FPR (dotted: the paper)", fontsize=9)
    right.set_title("clean accuracy (dotted: the paper's model)", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def settings_differ(first: dict, second: dict) -> List[str]:
    """The settings two rows of one report must share and do not: all but "pixels" (which marks the pixel rows)."""
    names = (set(first) | set(second)) - {"pixels"}
    return sorted(name for name in names if first.get(name) != second.get(name))


REPORT_FILES = ("results.md", "ablation.png", "ablation_epochs.png")  # beside results.json


def write_report(records: List[dict], out_dir: Path) -> List[Path]:
    out_dir = Path(out_dir)
    rows = flat_rows(records)
    if not rows:
        raise ValueError(f"no ablation rows under {out_dir}: measure some first")
    settings = {name: value for name, value in records[0]["settings"].items() if name != "pixels"}
    for record in records[1:]:
        differ = settings_differ(records[0]["settings"], record["settings"])
        if differ:
            raise ValueError(f"{out_dir}/rows holds rows measured with other settings ({', '.join(differ)} differ): "
                             "measure every row with the same --data, --limit, --seed, --val-size and --batch-size, "
                             "of models that read the images at the same input size (test_images), or write to another "
                             "--out")
    write_text_atomically(out_dir / "results.json", json_text({"settings": settings, "rows": rows}))
    table, figure_file, epochs_file = (out_dir / name for name in REPORT_FILES)
    write_text_atomically(table, markdown(rows, settings))
    written = [out_dir / "results.json", table, figure(rows, figure_file)]
    curves = training_curves(rows)
    if curves:
        written.append(epochs_figure(curves, epochs_file))
    else:  # an earlier report's, of rows with training curves: not this report's
        epochs_file.unlink(missing_ok=True)
    return written
