"""Table 1's rows (the official protocol) from the stages of a `reproduce` run that was stopped after its attacks.

`python -m robgen reproduce` keeps each finished stage (clean and attacked logits of the validation and test splits)
in `<out>/.stages/` and writes its report only at the end, after the HE-PGD λ sweep and the baselines. This prints,
from the stages alone, what the report's Table 1 would say for each attack whose two stages are there: the official
protocol (Youden's J, temperature searched on validation), the same detector at the paper's false-positive rate, and
that detector on the HE-PGD stages (which the paper shows evading it). The same functions as the report
(`pipeline.fit_detector`, `pipeline.evaluate_detector`) and the ablation (`ablation.detection_at_fpr`); rerunning
the `reproduce` command resumes from the stages.

    python scripts/table1_from_stages.py results/cifar10-official-recipe [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen.experiments.ablation import detection_at_fpr  # noqa: E402
from robgen.experiments.pipeline import evaluate_detector, fit_detector  # noqa: E402
from robgen.experiments.stages import read_stage  # noqa: E402

KEEP = ("detection_rate", "detection_rate_ci", "false_positive_rate", "false_positive_rate_ci", "auroc", "auroc_ci",
        "temperature", "detection_rate_successful", "n_successful", "n_perturbed", "n_attacked", "clean_accuracy",
        "adversarial_accuracy")


def table1(run_dir: Path) -> dict:
    stages = Path(run_dir) / ".stages"
    if not (stages / "clean-val.safetensors").exists():
        raise SystemExit(f"{stages} holds no clean-val stage: run `python -m robgen reproduce ... --out {run_dir}` first")
    key = json.loads((stages / "key.json").read_text())
    clean = {split: read_stage(stages / f"clean-{split}.safetensors")[0] for split in ("val", "test")}
    names = sorted({path.name.rsplit("-", 1)[0] for path in stages.glob("*-val.safetensors")} - {"clean"})
    attacked = {name: {split: read_stage(stages / f"{name}-{split}.safetensors")[0] for split in ("val", "test")}
                for name in names if (stages / f"{name}-test.safetensors").exists()}
    rows = {}
    for name in (name for name in attacked if not name.startswith("hepgd")):
        official = fit_detector(clean["val"], attacked[name]["val"], "youden", "search")
        row = {k: v for k, v in evaluate_detector(official, clean["test"], attacked[name]["test"]).items() if k in KEEP}
        row["threshold"] = float(official.threshold)
        row["at_paper_fpr"] = detection_at_fpr(clean["val"], attacked[name]["val"], clean["test"],
                                               attacked[name]["test"], official.temperature)
        row["hepgd_detection_rate"] = {
            other: official.evaluate(clean["test"].logits, attacked[other]["test"].logits)["detection_rate"]
            for other in attacked if other.startswith("hepgd")}
        rows[name] = row
    return {"model": key.get("model"), "n_validation": key.get("n_validation"), "n_test": key.get("n_test"),
            "settings": key.get("settings"), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    result = table1(Path(args.run_dir))
    print(f"{result['n_validation']} validation / {result['n_test']} test images")
    for name, row in result["rows"].items():
        pct = lambda value, ci=None: f"{100 * value:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")
        fpr = row["at_paper_fpr"]
        print(f"{name}: clean {pct(row['clean_accuracy'])}; official protocol (T={row['temperature']:g}): detection "
              f"{pct(row['detection_rate'], row['detection_rate_ci'])} at FPR "
              f"{pct(row['false_positive_rate'], row['false_positive_rate_ci'])}, AUROC {row['auroc']:.4f}; "
              f"successful examples {pct(row['detection_rate_successful'])} of {row['n_successful']}; at the paper's FPR: "
              f"{pct(fpr['detection_rate'], fpr['detection_rate_ci'])} at {pct(fpr['false_positive_rate'], fpr['false_positive_rate_ci'])}; "
              + ", ".join(f"{other} detected {pct(rate)}" for other, rate in row["hepgd_detection_rate"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
