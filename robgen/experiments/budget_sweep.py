"""The quasi-robust budget sweep: which small training budget gives a model that stays accurate and draws.

A quasi-robust model (MAGIC, AAAI 2023) is adversarially trained with a budget so
small that its clean accuracy stays near a standard model's, yet its input
gradients become object-like. The budget is a trade-off, so it is chosen by a
measurement: for each candidate model (each trained, or fine-tuned from the
standard model, at one budget),
- its clean accuracy on test images, with a 95% Wilson interval, and
- how class-like its samples are to an independent robust judge: the judge's mean
  p(target class | sample) with a 95% interval (synthesis/quality.py draws them,
  same seeds and settings for every candidate: the Gaussian seeds are the
  reference model's, so only it needs a `seeds.safetensors`).
The pick is the candidate whose clean accuracy is within `max_drop` of the
reference (standard) model's and whose samples the judge rates highest.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .. import data as datasets
from ..metrics import rate_interval
from ..synthesis.quality import measure_quality
from ..synthesis.seeds import load_seeds
from .pipeline import model_outputs


def training_budget(spec) -> str:
    """The training budget a checkpoint's recipe records, e.g. "quasi L2 0.1", "fast L∞ 2/255", "standard"."""
    recipe = spec.training.get("config", {}) if isinstance(spec.training, dict) else {}
    mode = recipe.get("mode")
    if mode is None:
        return "?"
    if mode == "standard":
        return "standard"
    norm, eps = recipe.get("norm"), float(recipe.get("eps", 0))
    size = f"L∞ {eps * 255:.3g}/255" if norm == "linf" else f"L2 {eps:g}"
    tuned = " (fine-tuned)" if recipe.get("init_from") else ""
    return f"{mode} {size}{tuned}"


def budget_sweep(candidates: Dict[str, torch.nn.Module], reference: str, judge_name: str, judge: torch.nn.Module,
                 test_set, *, max_drop: float = 0.03, n: int = 16, seed: int = 0, batch_size: int = 250,
                 progress=True, **synthesis_settings) -> dict:
    """Clean accuracy and the judge's view of the samples of every candidate; the pick (see module docs).

    `candidates` maps names to models and includes the `reference` (the standard model) as a row.
    `synthesis_settings` go to `synthesize` (steps, eps, step_size, init).
    """
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop < 1):  # NaN fails this too
        raise ValueError(f"max_drop is a share of clean accuracy in [0, 1), e.g. 0.03 for 3 points, got {max_drop}")
    if reference not in candidates:
        raise ValueError(f"the reference model {reference!r} must be one of the candidates ({', '.join(candidates)})")
    if judge_name in candidates:
        raise ValueError(f"the judge {judge_name!r} is also a candidate: judge with an independent (robust) model")
    side = candidates[reference].spec.input_size
    for name, model in candidates.items():
        if tuple(model.spec.input_size) != tuple(side):
            raise ValueError(f"{name} takes {tuple(model.spec.input_size)} inputs and the reference {reference} "
                             f"{tuple(side)}: every candidate is measured on the same test images, so fine-tune "
                             f"the candidates at the reference's size (train --image-size {side[-1]})")
    if synthesis_settings.get("init") in (None, "gaussian") and synthesis_settings.get("seeds") is None:
        # One seed distribution for every candidate: the reference's (seeds are fitted on the data, not the
        # model), so that the candidates start from the same images and only one of them needs a seeds file.
        synthesis_settings = {**synthesis_settings, "seeds": load_seeds(candidates[reference])}
    quality = measure_quality(candidates, {judge_name: judge}, n=n, seed=seed, progress=progress, **synthesis_settings)
    judged = {row["generator"]: row for row in quality["rows"]}
    loader = datasets.make_loader(test_set, batch_size=batch_size)
    rows = []
    for name, model in candidates.items():
        correct = model_outputs(model, loader, progress=False).correct
        right = int(correct.sum())
        rows.append({
            "model": name, "budget": training_budget(model.spec), "n_test": len(correct), "n_correct": right,
            "clean_accuracy": right / len(correct), "clean_accuracy_ci": list(rate_interval(correct)),
            "judge_mean_probability": judged[name]["mean_target_probability"],
            "judge_mean_probability_ci": judged[name]["mean_target_probability_ci"],
            "judge_accuracy": judged[name]["judge_accuracy"], "judge_accuracy_ci": judged[name]["judge_accuracy_ci"],
        })
    base = next(row for row in rows if row["model"] == reference)
    for row in rows:  # one test set for all: compare counts, so a drop of exactly max_drop is within it
        row["accuracy_drop"] = base["clean_accuracy"] - row["clean_accuracy"]
        lost = base["n_correct"] - row["n_correct"]
        row["within_budget"] = row["model"] != reference and lost <= max_drop * row["n_test"] + 1e-9
    eligible = [row for row in rows if row["within_budget"]]
    pick: Optional[str] = max(eligible, key=lambda row: row["judge_mean_probability"])["model"] if eligible else None
    seeds_row = next(row for row in quality["rows"] if row["generator"] not in candidates)
    return {
        "rows": rows, "reference": reference, "judge": judge_name, "max_drop": max_drop, "pick": pick,
        "seeds_judge_mean_probability": seeds_row["mean_target_probability"], "n_per_class": n, "seed": seed,
        "samples": quality["samples"], "diversity": quality["diversity"],
    }


def sweep_markdown(result: dict) -> str:
    """The sweep table as Markdown."""
    def pct(row, key):
        low, high = row[f"{key}_ci"]
        return f"{100 * row[key]:.1f} [{100 * low:.1f}, {100 * high:.1f}]"

    lines = [
        f"Quasi-robust budget sweep: clean accuracy on {result['rows'][0]['n_test']} test images (95% Wilson interval) "
        f"and the robust judge `{result['judge']}`'s mean p(target class | sample) on {result['n_per_class']} samples per "
        f"class (95% interval, mean ± 1.96 s/√n). Eligible: clean accuracy within {100 * result['max_drop']:g} points "
        f"of `{result['reference']}`. The seeds alone, before any ascent, score "
        f"{result['seeds_judge_mean_probability']:.3f}.",
        "",
        "| model | training budget | clean accuracy % | drop (points) | judge p(target) | judge accuracy % | eligible |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        low, high = row["judge_mean_probability_ci"]
        mark = " **(pick)**" if row["model"] == result["pick"] else ""
        eligible = "reference" if row["model"] == result["reference"] else ("yes" if row["within_budget"] else "no")
        lines.append(f"| `{row['model']}`{mark} | {row['budget']} | {pct(row, 'clean_accuracy')} | "
                     f"{100 * row['accuracy_drop']:.1f} | {row['judge_mean_probability']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{pct(row, 'judge_accuracy')} | {eligible} |")
    lines += ["", f"Pick: `{result['pick']}`." if result["pick"] else "Pick: none of the candidates is eligible."]
    return "\n".join(lines) + "\n"
