"""The reproduction's report: figures, results.json and results.md from `reproduce`'s results."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from .. import plots
from ..files import json_text, write_text_atomically
from ..metrics import auroc_interval_words
from .pipeline import definitions_markdown
from .stages import read_back_words

DATA_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenette": "Imagenette"}


def data_title(data: str) -> str:
    return DATA_TITLES.get(str(data).lower(), str(data))


FIGURES = ("fig2a_energy_hist_pgd.png", "fig2b_energy_vs_steps_pgd.png", "fig3a_energy_hist_hepgd.png",
           "fig3b_energy_vs_steps_hepgd.png", "adaptive_lambda.png")  # and one Fig. 3a per other HE-PGD step count:
HEPGD_STEP_FIGURES = "fig3a_energy_hist_hepgd_*steps.png"  # `hepgd_figure_name`


def hepgd_figure_name(run: dict) -> str:
    """Fig. 3a of one HE-PGD run: the main run's keeps the plain name, others carry their step count."""
    return "fig3a_energy_hist_hepgd.png" if run["main"] else f"fig3a_energy_hist_hepgd_{run['steps']}steps.png"


def figures_in(folder: Path) -> List[str]:
    """The reproduction's figures `folder` holds (outputs that only --overwrite replaces)."""
    folder = Path(folder)
    return [name for name in FIGURES if (folder / name).exists()] + sorted(
        path.name for path in folder.glob(HEPGD_STEP_FIGURES))


def remove_other_step_figures(out: Path, runs: List[dict]) -> None:
    """Remove the Fig. 3a of HE-PGD step counts that are not among `runs`: a replaced run's (--overwrite), which
    would stand beside a report that does not name them."""
    drawn = {hepgd_figure_name(run) for run in runs}
    for path in Path(out).glob(HEPGD_STEP_FIGURES):
        if path.name not in drawn:
            path.unlink()


def write_report(results: dict, clean, adversarial, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    title = data_title(results["data"])
    lam = results["settings"]["lam"]
    main = next(run for run in results["hepgd_runs"] if run["main"])
    remove_other_step_figures(out, results["hepgd_runs"])
    plots.energy_histogram(clean["test"].energy(), adversarial["pgd-8"]["test"].energy(), out / "fig2a_energy_hist_pgd.png",
                           f"Fig. 2a ({title}): E(x), clean vs PGD 8/255")
    for run in results["hepgd_runs"]:
        plots.energy_histogram(clean["test"].energy(), adversarial[run["name"]]["test"].energy(), out / hepgd_figure_name(run),
                               f"Fig. 3a ({title}): E(x), clean vs HE-PGD (λ={lam:g}, {run['steps']} steps)",
                               adversarial_label="HE-PGD")
    for name, file, caption in (("pgd-8", "fig2b_energy_vs_steps_pgd.png", f"Fig. 2b ({title}): PGD 8/255"),
                                (main["name"], "fig3b_energy_vs_steps_hepgd.png", f"Fig. 3b ({title}): HE-PGD 8/255, λ={lam:g}")):
        curve = results["curves"][name]
        plots.energy_vs_steps(curve["steps"], curve["energy_mean"], curve["energy_std"], curve["accuracy"], out / file,
                              caption, clean=curve.get("clean"))
    rows = results["adaptive"]["rows"]
    plots.adaptive_sweep([r["lam"] for r in rows], {
        "attack success": [r["attack_success_rate"] for r in rows],
        "detected: E(x) <= t (fit on PGD)": [r["detection_rate_one_sided"] for r in rows],
        "detected: two-sided band on E(x)": [r["detection_rate_band"] for r in rows],
        "detected: E(x, ŷ) <= t": [r["detection_rate_class_energy"] for r in rows],
    }, out / "adaptive_lambda.png", f"Adaptive attacker ({title}): HE-PGD 8/255 against λ")
    write_text_atomically(out / "results.json", json_text(results))
    write_text_atomically(out / "results.md", markdown_report(results))


def _pct(value) -> str:
    return "—" if value is None or value != value else f"{100 * value:.1f}"


def _paper(value) -> str:
    """A paper number in %, to the two decimals the paper prints."""
    return "—" if value is None else f"{100 * value:.2f}"


def _interval(row: dict, key: str) -> str:
    low, high = row.get(f"{key}_ci") or (None, None)
    return f" [{_pct(low)}, {_pct(high)}]" if low is not None and low == low else ""  # none for an empty rate


def _pct_ci(row: dict, key: str) -> str:
    """"98.4 [97.2, 99.1]": a rate in % with its 95% interval, when the row has one."""
    return _pct(row[key]) + _interval(row, key)


def _auroc_ci(row: dict) -> str:
    low, high = row.get("auroc_ci") or (None, None)
    return f"{row['auroc']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and low == low else "")


def _printed_column_notes(results: dict) -> list:
    """What the paper's "FPR" column is, row by row, read off its own numbers (not assumed)."""
    notes = []
    for attack, numbers in results["paper_facts"]["table1"].items():
        detection, printed = numbers["detection_rate"], numbers.get("printed_fpr_column")
        if printed is None:
            continue
        if abs(detection + printed - 1) < 5e-5:
            what = (f"equals 100 − {_paper(detection)}: it is the miss rate (FNR) of the detection column, not a "
                    "false-positive rate, so compare it with our FNR")
        else:
            what = (f"is not 100 − {_paper(detection)} (= {_paper(1 - detection)}), so it is not the miss rate; it may be "
                    "the false-positive rate its header names: compare it with our FPR")
        notes.append(f"- {attack}: the printed \"FPR\" {_paper(printed)} {what}.")
    return notes


def markdown_report(results: dict) -> str:
    s = results["settings"]
    facts = results["paper_facts"]
    title = data_title(results["data"])
    other_hepgd = [run for run in results["hepgd_runs"] if not run["main"]]
    apgd_words = (f", APGD-CE (torchattacks) with {s['steps']} iterations"  # only where an APGD row was run
                  if any(str(name).startswith("apgd") for name in s.get("attacks", ("apgd",))) else "")
    lines = [
        f"# Reproduction on {title}: Beadini & Masi (Ital-IA 2023), Table 1 and Figs. 2-3",
        "",
        f"Model `{results['model']}` ({results['architecture']} {results['arch_kwargs']}, input "
        f"{'×'.join(str(v) for v in results['input_size'])}), data {results['data']}: threshold fitted on "
        f"{results['n_validation']} validation images (held out of train), evaluated on the first {results['n_test']} test "
        f"images; clean test accuracy {_pct_ci(results, 'clean_accuracy')}%. Attacks: {s['steps']} steps, PGD and HE-PGD "
        f"step {s['step_size'] * 255:g}/255 with a random start{apgd_words}; "
        f"HE-PGD λ = {s['lam']:g} at {', '.join(str(k) for k in s['hepgd_steps'])} steps. Hardware: {results['hardware']}; "
        f"wall time {results['wall_seconds']:.0f} s (see Cost).",
        "",
        "Every rate and every AUROC comes with its 95% interval in brackets: Wilson's score interval for proportions "
        f"(detection, FPR, FNR, attack success, accuracy), {auroc_interval_words(results)} for AUROC.",
        "",
        "## Table 1: the energy detector",
        "",
        "Rates in %. Adversarial = E(x) <= threshold. \"detection\" is over all attacked test images, \"det. (succ.)\" "
        "over the successful ones; the counts column gives how many test images were successful / perturbed / attacked "
        "(torchattacks' APGD returns the clean image where it fails or the model was already wrong). The "
        "official protocol (Youden's J, temperature searched over {0.1, 0.2, 0.5, 1, 2, 10, 20} by validation AUROC) "
        "comes first for each attack, with the paper's numbers beside it; G-mean and T = 1 rows follow for comparison. "
        "Each row's threshold (and temperature) is fitted on that row's own attack's validation examples, HE-PGD's "
        "rows too: a detector fitted to the attack, not the PGD-fitted detector HE-PGD is meant to evade (the "
        "adaptive section below is that one).",
        "",
        *definitions_markdown(results["definitions"]),
        "",
        "| attack | steps | rule | T | detection | FPR | FNR | AUROC | det. (succ.) | attack success | "
        "successful / perturbed / attacked | paper detection | paper \"FPR\" column |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["table1"]:
        paper = row.get("paper", {})
        t = f"{row['temperature']:g}" + (" (search)" if row["search_temperature"] else "")
        lines.append(
            f"| {row['attack']} | {row['steps']} | {row['rule']} | {t} | {_pct_ci(row, 'detection_rate')} | "
            f"{_pct_ci(row, 'false_positive_rate')} | {_pct_ci(row, 'false_negative_rate')} | {_auroc_ci(row)} | "
            f"{_pct_ci(row, 'detection_rate_successful')} | {_pct_ci(row, 'attack_success_rate')} | "
            f"{row['n_successful']} / {row['n_perturbed']} / {row['n_attacked']} | "
            f"{_paper(paper.get('detection_rate'))} | {_paper(paper.get('printed_fpr_column'))} |"
        )
    for row in results.get("unfitted", []):
        lines.append(f"\nNot in the table: {row['attack']}, because {row['reason']}.")
    lines += ["", "What the paper's numbers are:"]
    lines += _printed_column_notes(results) or ["- the paper reports no Table 1 numbers for this data set."]
    notebook = facts.get("notebook_hepgd")
    if notebook:
        ours = [row for row in results["table1"] if row["official_protocol"] and row["attack"].startswith("hepgd-")]
        measured = "; ".join(f"{row['steps']} steps: {_pct_ci(row, 'adversarial_accuracy')}%" for row in ours)
        lines.append(f"- the official notebook's HE-PGD run (λ = {notebook['lam']:g}, {notebook['steps']} steps) leaves "
                     f"{notebook['correct']} of {notebook['n_test']:,} test images correctly classified "
                     f"({_paper(notebook['correct'] / notebook['n_test'])}%); adversarial accuracy here "
                     f"(λ = {s['lam']:g}): {measured}.")
    lines += [f"- {note}" for note in facts["notes"]]
    lines += [
        "",
        "## Baselines on the same examples (Youden threshold on validation)",
        "",
        "| detector | attack | needs adversarial examples to train | detection | FPR | AUROC | paper (cited): detection / \"FPR\" |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["baselines"]:
        cited = row.get("paper_cited") or {}
        paper = f"{_paper(cited['detection_rate'])} / {_paper(cited.get('printed_fpr_column'))}" if cited else "—"
        lines.append(f"| {row['detector']} | {row['attack']} | {'yes' if row['needs_adversarial_training'] else 'no'} | "
                     f"{_pct_ci(row, 'detection_rate')} | {_pct_ci(row, 'false_positive_rate')} | {_auroc_ci(row)} | {paper} |")
    for row in results.get("unfitted", []):  # the baselines are fitted on the same perturbed examples
        lines.append(f"\nNo baseline rows for {row['attack']}, because {row['reason']} (as for Table 1).")
    lines += ["", "The energy detector needs adversarial examples only to choose its threshold (as does the Mahalanobis "
              "baseline here); LID and KD+BU train a logistic regression on them. The paper's baseline numbers are cited "
              "from Aldahdooh et al. 2022, not measured on the paper's examples; the rows here are measured on the same "
              "examples as the energy detector. The ResNets have no dropout layer, so KD+BU's MC-dropout passes drop "
              "penultimate features (p = 0.5) before the final linear layer.", ""]
    adaptive = results["adaptive"]
    fpr = {name: {"rate": value, "rate_ci": adaptive["false_positive_rate_on_clean_test_ci"][name]}
           for name, value in adaptive["false_positive_rate_on_clean_test"].items()}
    lines += [
        "## Adaptive attacker: HE-PGD against λ",
        "",
        f"HE-PGD at {s['steps']} steps; detectors fitted on clean vs PGD 8/255 validation images (Youden's J at "
        "T = 1, not the temperature search of Table 1's official rows: the band and class energy are read at T = 1 "
        "too). Mean clean test energy "
        f"{adaptive['clean_energy_mean']:.2f}. False-positive rates on clean test images: one-sided "
        f"{_pct_ci(fpr['one_sided'], 'rate')}%, two-sided band {_pct_ci(fpr['band'], 'rate')}% (upper edge at the "
        f"{100 * s['band_quantile']:g}th percentile of clean validation energies), class energy "
        f"{_pct_ci(fpr['class_energy'], 'rate')}%.",
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
              "![Fig. 3a](fig3a_energy_hist_hepgd.png) ![Fig. 3b](fig3b_energy_vs_steps_hepgd.png)", ""]
    lines += [f"![Fig. 3a, {run['steps']} steps]({hepgd_figure_name(run)})" for run in other_hepgd]
    lines += (["", f"Fig. 3b plots the {s['steps']}-step HE-PGD run; the other runs' curves are in results.json."]
              if other_hepgd else [])
    lines += ["", "![Adaptive](adaptive_lambda.png)", ""]
    lines += cost_section(results["cost"], results.get("continued"))
    return "\n".join(lines)


def cost_section(cost: dict, continued: Optional[dict] = None) -> list:
    """The Cost section: passes counted where the attacks run, one batch pass timed here, floor against wall time.

    `continued`: how many stages a continued run read back from the interrupted one, and their seconds."""
    size = cost["batch_size"]
    fb_floor = cost["forward_backward_passes"] * cost["seconds_per_forward_backward_batch"] / size
    f_floor = cost["forward_passes"] * cost["seconds_per_forward_batch"] / size
    ranks = "" if cost["world_size"] == 1 else f", shared by {cost['world_size']} ranks"
    lines = [
        "## Cost",
        "",
        "Model passes counted where the attacks run, in image-passes (one image through the model once; a batch pass "
        f"of {size} images is {size} image-passes): PGD and HE-PGD make `steps` forward+backward passes per image, "
        "APGD (torchattacks) steps + 1 on the images the model classifies correctly plus a forward on all; every run "
        "adds the forward passes of its trace and of the features read after it. The time of one batch pass was "
        f"measured on this hardware (the fastest of {cost['timing_repeats']} after a warm-up, on random pixels; "
        f"{cost['timing_seconds']:.1f} s in all, part of the wall time).",
        "",
        f"| pass | image-passes | batches of {size} | measured s per batch | floor (s) |",
        "|---|---|---|---|---|",
        f"| forward + backward | {cost['forward_backward_passes']:,} | {cost['forward_backward_batches']:,.1f} | "
        f"{cost['seconds_per_forward_backward_batch']:.4g} | {fb_floor:.1f} |",
        f"| forward only | {cost['forward_passes']:,} | {cost['forward_batches']:,.1f} | "
        f"{cost['seconds_per_forward_batch']:.4g} | {f_floor:.1f} |",
        f"| **floor** (passes × time per pass{ranks}) | | | | **{cost['floor_seconds']:.1f}** |",
        f"| **wall time** | | | | **{cost['wall_seconds']:.1f}** |",
        "",
        *([f"This run continued an interrupted one: {read_back_words(continued)} were read back, "
           f"and the {continued['their_seconds']:.0f} s they took then are part of the wall time.", ""]
          if read_back_words(continued) else []),
        f"The passes account for {100 * cost['floor_fraction_of_wall']:.0f}% of the wall time. Not counted: "
        f"{cost['not_counted']}.",
        "",
        "| run | split | steps | images | forward+backward | forward |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {run['run']} | {run['split']} | {run['steps']} | {run['images']} | {run['forward_backward']:,} | "
              f"{run['forward']:,} |" for run in cost["runs"]]
    return lines + [""]
