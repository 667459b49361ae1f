"""The reproduction's report: figures, results.json and results.md from `reproduce`'s results."""

from __future__ import annotations

import json
from pathlib import Path

from .. import plots


def write_report(results: dict, clean, adversarial, he_name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lam = results["settings"]["lam"]
    plots.energy_histogram(clean["test"].energy(), adversarial["pgd-8"]["test"].energy(), out / "fig2a_energy_hist_pgd.png",
                           "Fig. 2a: E(x), clean vs PGD 8/255")
    plots.energy_histogram(clean["test"].energy(), adversarial[he_name]["test"].energy(), out / "fig3a_energy_hist_hepgd.png",
                           f"Fig. 3a: E(x), clean vs HE-PGD (λ={lam:g})", adversarial_label="HE-PGD")
    for name, file, title in (("pgd-8", "fig2b_energy_vs_steps_pgd.png", "Fig. 2b: PGD 8/255"),
                              (he_name, "fig3b_energy_vs_steps_hepgd.png", f"Fig. 3b: HE-PGD 8/255, λ={lam:g}")):
        curve = results["curves"][name]
        plots.energy_vs_steps(curve["steps"], curve["energy_mean"], curve["energy_std"], curve["accuracy"], out / file, title,
                              clean=curve.get("clean"))
    rows = results["adaptive"]["rows"]
    plots.adaptive_sweep([r["lam"] for r in rows], {
        "attack success": [r["attack_success_rate"] for r in rows],
        "detected: E(x) <= t (fit on PGD)": [r["detection_rate_one_sided"] for r in rows],
        "detected: two-sided band on E(x)": [r["detection_rate_band"] for r in rows],
        "detected: E(x, ŷ) <= t": [r["detection_rate_class_energy"] for r in rows],
    }, out / "adaptive_lambda.png", "Adaptive attacker: HE-PGD 8/255 against λ")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown_report(results))


def _pct(value) -> str:
    return "—" if value is None or value != value else f"{100 * value:.1f}"


def _pct_ci(row: dict, key: str) -> str:
    """"98.4 [97.2, 99.1]": a rate in % with its 95% interval, when the row has one."""
    low, high = row.get(f"{key}_ci") or (None, None)
    return _pct(row[key]) + (f" [{_pct(low)}, {_pct(high)}]" if low is not None else "")


def _auroc_ci(row: dict) -> str:
    low, high = row.get("auroc_ci") or (None, None)
    return f"{row['auroc']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and low == low else "")


def markdown_report(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Reproduction: Beadini & Masi (Ital-IA 2023), Table 1 and Figs. 2-3",
        "",
        f"Model `{results['model']}` ({results['architecture']} {results['arch_kwargs']}), data {results['data']}: "
        f"threshold fitted on {results['n_validation']} validation images (held out of train), evaluated on the first "
        f"{results['n_test']} test images. Attacks: {s['steps']} steps, PGD and HE-PGD step {s['step_size'] * 255:g}/255 with a "
        f"random start, APGD-CE (torchattacks) with {s['steps']} iterations. Hardware: {results['hardware']}; "
        f"wall time {results['wall_seconds']:.0f} s.",
        "",
        "## Table 1: the energy detector",
        "",
        "Rates in %, with 95% intervals in brackets (Wilson for rates, a bootstrap over images for AUROC). Adversarial = "
        "E(x) <= threshold. \"succ.\" = detection rate on the examples that fooled the model (clean correct, adversarial "
        "wrong). The official protocol (Youden's J, temperature searched over {0.1, 0.2, 0.5, 1, 2, 10, 20} by validation "
        "AUROC) comes first for each attack, with the paper's numbers beside it; G-mean and T = 1 rows follow for comparison.",
        "",
        "| attack | rule | T | detection | FPR | FNR | AUROC | det. (succ.) | attack success | paper detection | paper \"FPR\" column |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["table1"]:
        paper = row.get("paper", {})
        t = f"{row['temperature']:g}" + (" (search)" if row["search_temperature"] else "")
        lines.append(
            f"| {row['attack']} | {row['rule']} | {t} | {_pct_ci(row, 'detection_rate')} | {_pct_ci(row, 'false_positive_rate')} | "
            f"{_pct(row['false_negative_rate'])} | {_auroc_ci(row)} | {_pct(row['detection_rate_successful'])} | "
            f"{_pct(row['attack_success_rate'])} | {_pct(paper.get('detection_rate'))} | {_pct(paper.get('printed_fpr_column'))} |"
        )
    lines += [
        "",
        "The paper's \"FPR\" column for PGD (1.6%) equals 100% − 98.4%, i.e. the false-negative rate; we report FPR and FNR.",
        "",
        "## Baselines on the same examples (Youden threshold on validation)",
        "",
        "| detector | attack | needs adversarial examples to train | detection | FPR | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["baselines"]:
        lines.append(f"| {row['detector']} | {row['attack']} | {'yes' if row['needs_adversarial_training'] else 'no'} | "
                     f"{_pct_ci(row, 'detection_rate')} | {_pct_ci(row, 'false_positive_rate')} | {_auroc_ci(row)} |")
    lines += ["", "The energy detector needs adversarial examples only to choose its threshold (as does the Mahalanobis "
              "baseline here); LID and KD+BU train a logistic regression on them. The paper cites KD+BU (92.3 / 1.0) and LID "
              "(94.4 / 1.8) on CIFAR-10 PGD-8 from Aldahdooh et al. 2022; the rows here are measured on the same examples "
              "as the energy detector. The ResNets have no dropout layer, so KD+BU's MC-dropout passes drop penultimate "
              "features (p = 0.5) before the final linear layer.", ""]
    adaptive = results["adaptive"]
    fpr = adaptive["false_positive_rate_on_clean_test"]
    lines += [
        "## Adaptive attacker: HE-PGD against λ",
        "",
        f"Detectors fitted on clean vs PGD 8/255 validation images. Mean clean test energy {adaptive['clean_energy_mean']:.2f}. "
        f"False-positive rates on clean test images: one-sided {_pct(fpr['one_sided'])}%, two-sided band "
        f"{_pct(fpr['band'])}% (upper edge at the {100 * s['band_quantile']:g}th percentile of clean validation energies), "
        f"class energy {_pct(fpr['class_energy'])}%.",
        "",
        "| λ | attack success | mean E(x) | detected: E(x) <= t | detected: band | detected: E(x, ŷ) <= t |",
        "|---|---|---|---|---|---|",
    ]
    for row in adaptive["rows"]:
        lines.append(f"| {row['lam']:g} | {_pct_ci(row, 'attack_success_rate')} | {row['energy_mean']:.2f} | "
                     f"{_pct_ci(row, 'detection_rate_one_sided')} | {_pct_ci(row, 'detection_rate_band')} | "
                     f"{_pct_ci(row, 'detection_rate_class_energy')} |")
    lines += ["", "## Figures", "",
              "![Fig. 2a](fig2a_energy_hist_pgd.png) ![Fig. 2b](fig2b_energy_vs_steps_pgd.png)", "",
              "![Fig. 3a](fig3a_energy_hist_hepgd.png) ![Fig. 3b](fig3b_energy_vs_steps_hepgd.png)", "",
              "![Adaptive](adaptive_lambda.png)", ""]
    return "\n".join(lines)
