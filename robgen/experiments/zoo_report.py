"""The zoo study's report: results.json, results.md and the ΔE figure from `zoo_study`'s results."""

from __future__ import annotations

from pathlib import Path
from typing import List

from ..files import json_text, write_text_atomically
from ..metrics import auroc_interval_words
from ..plots import plt, save_figure
from .pipeline import definitions_markdown

FIGURE = "delta_energy.png"
PRODUCTS = ("results.json", "results.md", FIGURE)


def write_report(results: dict, out: Path) -> None:
    """Write results.json, results.md and delta_energy.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    delta_energy_figure(results, out / FIGURE)
    write_text_atomically(out / "results.json", json_text(results))
    write_text_atomically(out / "results.md", markdown_report(results))


def _missing(value) -> bool:
    return value is None or value != value


def delta_energy_figure(results: dict, path: Path) -> Path:
    """Per-image ΔE = E(adv) - E(clean) for every attack that ran (box plot, mean marked); below 0 = lower energy."""
    names = [row["attack"] for row in results["rows"] if row["attack"] in results["delta_energy"]]
    values = [results["delta_energy"][name] for name in names]
    figure, axis = plt.subplots(figsize=(7.0, 0.42 * max(len(names), 3) + 1.2), dpi=120)
    if names:
        try:
            axis.boxplot(values, orientation="horizontal", showfliers=False, widths=0.6)
        except TypeError:  # matplotlib < 3.10
            axis.boxplot(values, vert=False, showfliers=False, widths=0.6)
        axis.scatter([sum(v) / len(v) for v in values], range(1, len(names) + 1), marker="D", color="tab:red",
                     zorder=3, label="mean")
        axis.set_yticks(range(1, len(names) + 1), names)
        axis.invert_yaxis()
        axis.legend(fontsize=8, loc="lower right")
    axis.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
    axis.set_xlabel("ΔE = E(adversarial) − E(clean), per test image   (< 0: the attack lowered the energy)")
    model = results["model"] or results["architecture"]
    axis.set_title(f"Energy change per attack ({model}, {results['data']}, n = {results['n_test']})", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def _pct(cell: dict) -> str:
    """"98.4 [97.2, 99.1]": a proportion in % with its interval."""
    value, (low, high) = cell["value"], cell["ci"]
    if _missing(value):
        return "—"
    return f"{100 * value:.1f}" + ("" if _missing(low) else f" [{100 * low:.1f}, {100 * high:.1f}]")


def _num(cell: dict, digits: int = 2, scale: float = 1.0) -> str:
    value, (low, high) = cell["value"], cell["ci"]
    if _missing(value):
        return "—"
    text = f"{scale * value:.{digits}f}"
    return text + ("" if _missing(low) else f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]")


def _plain(cell: dict, digits: int = 2, scale: float = 1.0) -> str:
    return "—" if _missing(cell["value"]) else f"{scale * cell['value']:.{digits}f}"


def _threat(row: dict, threat_settings: dict) -> str:
    if row["threat"] == "linf":
        return f"L∞ {threat_settings['eps'] * 255:.3g}/255"
    if row["threat"] == "l2":
        return f"L2 {threat_settings['l2_eps']:g}"
    return "min. L2 (unbounded)"


def markdown_report(results: dict) -> str:
    settings, threat = results["settings"], results["settings"]["threat"]
    detector = results["detector"]
    fpr_words = (f" (at most {100 * detector['target_fpr']:g}% of the clean validation images flagged)"
                 if settings["rule"] == "fpr" and "target_fpr" in detector else "")
    ran = [row for row in results["rows"] if "error" not in row]
    failed = [row for row in results["rows"] if "error" in row]
    lines: List[str] = [
        "# The energy detector against the attack zoo",
        "",
        f"Model `{results['model']}` ({results['architecture']} {results['arch_kwargs']}), data {results['data']}: "
        f"{results['n_validation']} validation images (held out of train) to fit thresholds, {results['n_test']} test "
        f"images to measure; clean test accuracy {_pct(results['clean_accuracy'])}%, mean clean E(x) "
        f"{_num(results['clean_energy_mean'])}. Hardware: {results['hardware']}; wall time "
        f"{results['wall_seconds']:.0f} s.",
        "",
        f"The paper's detector: E(x) = −T·logsumexp(f(x)/T) ≤ threshold, fitted on {results['fit_attack']} "
        f"(L∞ {threat['eps'] * 255:.3g}/255, step {threat['step_size'] * 255:.3g}/255, 40 steps, random start) "
        f"examples of the validation split ({results['n_validation_perturbed_fit_attack']} of "
        f"{results['n_validation']} perturbed), rule {settings['rule']}{fpr_words}, temperature {settings['temperature']} "
        f"(chosen: T = {detector['temperature']:g}, threshold {detector['threshold']:.4f}). "
        f"Intervals are 95%: Wilson for rates, {auroc_interval_words(results)} for AUROC, the normal approximation "
        "for means.",
        "",
        "Which examples count:",
        "",
        *definitions_markdown(results["definitions"]),
        "",
        "## What the attacks do (test split)",
        "",
        "Perturbed: attacked test images the attack changed at all, of all attacked. Success: clean-correct images "
        "the attack makes wrong (for PGD-T too: any wrong class, not only the target). Perturbation sizes: mean over "
        "all attacked test images / over the successful ones (many attacks leave images they do not fool, or that "
        "were misclassified already, unchanged). ΔE = E(adv) − E(clean) at T = 1, per image. s: the seconds the attack "
        "took on both splits, validation and test.",
        "",
        "| attack | threat | access | perturbed / attacked | success % | adv. accuracy % "
        "| L∞ ×255: all / successful | L2: all / successful | mean ΔE | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ran:
        lines.append(
            f"| {row['attack']} | {_threat(row, threat)} | {row['access']} | "
            f"{row['n_perturbed']} / {row['n_attacked']} | {_pct(row['success_rate'])} | "
            f"{_pct(row['adversarial_accuracy'])} | {_plain(row['linf'], 2, 255)} / "
            f"{_plain(row['linf_successful'], 2, 255)} | {_plain(row['l2'], 3)} / {_plain(row['l2_successful'], 3)} | "
            f"{_num(row['delta_energy'])} | {row['seconds']:.0f} |"
        )
    for title, key, note in (
        (f"The detector fitted on {results['fit_attack']} (the paper's)", "fitted_on_pgd40",
         "One threshold for every attack: what the paper's detector does against attacks it was not fitted on."),
        ("The detector refitted on each attack", "refitted",
         "Threshold (and temperature) fitted on the attack's own perturbed validation examples: the best a threshold "
         "on E(x) can do against it."),
    ):
        lines += ["", f"## {title}", "", note + " Detection over all attacked test images, and over the successful "
                  "ones (n: how many).", "",
                  "| attack | detection, all attacked % | FPR % | AUROC | detection, successful % (n) | T "
                  "| threshold |",
                  "|---|---|---|---|---|---|---|"]
        for row in ran:
            rates = row[key]
            if "error" in rates:  # nothing to fit on: the attack changed no validation image
                lines.append(f"| {row['attack']} | — | — | — | — | — | not fitted: {rates['error'].replace('|', '/')} |")
                continue
            successful = rates["detection_rate_successful"]
            lines.append(
                f"| {row['attack']} | {_pct(rates['detection_rate'])} | {_pct(rates['false_positive_rate'])} | "
                f"{_num(rates['auroc'], 3)} | {_pct(successful)} ({successful['n']}) | {rates['temperature']:g} | "
                f"{rates['threshold']:.3f} |"
            )
    if failed:
        lines += ["", "## Attacks that failed on this model", "", "| attack | error |", "|---|---|"]
        lines += [f"| {row['attack']} | {row['error'].replace('|', '/')} |" for row in failed]
    lines += [
        "",
        "## Notes",
        "",
        "- Minimum-norm attacks (CW-L2, DeepFool, FAB-L2) have no budget: compare their perturbation sizes, not "
        "only their success rates, with the bounded attacks'.",
        "- The refitted detectors are fitted on the perturbed validation images only; an attack that changed none "
        "of them has none (\"not fitted\"), its effect measured all the same.",
        f"- HE-PGD ascends CE + λ·E (λ = {threat['lam']:g}): it is built to keep E(x) at the level of natural "
        "images, so a low detection rate there is the paper's Claim 4, not a bug.",
        "- Attacks: " + "; ".join(f"{row['attack']}: {row['reference']}" for row in results["rows"]) + ".",
        "",
        f"![ΔE per attack]({FIGURE})",
        "",
    ]
    return "\n".join(lines)
