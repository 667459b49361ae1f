"""Reproduce Table 1 and Figs. 2-3 of Beadini & Masi (2023), with baselines and an adaptive attacker.

One call (`reproduce`, or `python -m robgen reproduce`) does all of it on the
same clean and adversarial examples:

- **Table 1**: the energy detector against PGD 8/255, PGD 16/255 and APGD
  8/255 (40 steps; PGD and HE-PGD step 1/255 with a random start): threshold
  fitted on the validation split (held out of train), evaluated on the test
  split; G-mean and Youden rules; T = 1 and the temperature search.
- **Baselines**: Mahalanobis and LID (baselines.py) on the same examples.
- **Figs. 2-3**: E(x) histograms, clean vs PGD and vs HE-PGD (λ = 1.2), and
  mean ± std of E(x) against the number of steps with the accuracy above.
- **Adaptive attacker**: HE-PGD for several λ against the detector fitted on
  PGD, and two attempts to rescue it (a two-sided band on E(x), and a
  threshold on the class energy E(x, ŷ) = -max f(x)).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from . import data as datasets
from . import distributed, plots
from .attacks import APGD, PGD, HighEnergyPGD, Trace
from .baselines import LIDScorer, MahalanobisScorer, penultimate_features
from .detector import EnergyDetector
from .energy import energy
from .metrics import choose_threshold, detection_metrics
from .progress import progress_bar

# The paper's Table 1 (CIFAR-10, ResNet10). Its "FPR" column for PGD prints 1.6%, which is 1 - 98.4%,
# the false-negative rate; we quote it as printed and report FPR and FNR separately.
PAPER_TABLE1 = {
    "pgd-8": {"detection_rate": 0.984, "printed_fpr_column": 0.016},
    "apgd-8": {"detection_rate": 0.855},
}
TABLE_ATTACKS = {"pgd-8": ("pgd", 8 / 255), "pgd-16": ("pgd", 16 / 255), "apgd-8": ("apgd", 8 / 255)}
FIGURE_STEPS = (0, 1, 2, 5, 10, 20, 40)


@dataclass
class ReproduceSettings:
    """The experiment's settings; stored in results.json."""

    attacks: Tuple[str, ...] = ("pgd-8", "pgd-16", "apgd-8")
    steps: int = 40
    alpha: float = 1 / 255
    lam: float = 1.2
    lambdas: Tuple[float, ...] = (0.0, 0.3, 0.6, 1.2, 2.0, 4.0)
    val_size: int = 5000
    limit: Optional[int] = None
    batch_size: int = 250
    reference_size: int = 2000  # clean training images: Mahalanobis class statistics, LID reference
    lid_reference: int = 100
    band_quantile: float = 0.975  # upper edge of the two-sided band, on clean validation energies
    seed: int = 0
    extra: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.attacks if name not in TABLE_ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack {unknown[0]!r}: choose from {', '.join(TABLE_ATTACKS)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class Outputs:
    """What the model says about one set of images."""

    logits: torch.Tensor
    features: torch.Tensor
    trace: Optional[Trace] = None

    @property
    def energy(self) -> torch.Tensor:
        return energy(self.logits, check=False)


def _outputs(model, x: torch.Tensor, batch_size: int, attack=None, labels=None, progress=True, desc="") -> Outputs:
    device = next(model.parameters()).device
    logits, features, traces, sizes = [], [], [], []
    for start in progress_bar(range(0, len(x), batch_size), desc=desc, progress=progress):
        batch = x[start:start + batch_size].to(device)
        if attack is not None:
            batch, trace = attack(batch, labels[start:start + batch_size].to(device), return_trace=True)
            traces.append(trace)
            sizes.append(len(batch))
        f, l = penultimate_features(model, batch, batch_size)
        features.append(f)
        logits.append(l)
    return Outputs(torch.cat(logits), torch.cat(features), Trace.combine(traces, sizes) if traces else None)


def _generator(model, settings: ReproduceSettings) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(settings.seed)


def _make_hepgd(model, settings: ReproduceSettings, lam: float) -> HighEnergyPGD:
    """HE-PGD at 8/255 with the paper's step 1/255 and random start."""
    return HighEnergyPGD(model, eps=8 / 255, alpha=settings.alpha, steps=settings.steps, lam=lam,
                         generator=_generator(model, settings))


def _make_attack(name: str, model, settings: ReproduceSettings):
    """One of the Table 1 attacks by name (see TABLE_ATTACKS)."""
    generator = _generator(model, settings)
    kind, eps = TABLE_ATTACKS[name]
    if kind == "apgd":
        return APGD(model, eps=eps, steps=settings.steps, generator=generator)
    return PGD(model, eps=eps, alpha=settings.alpha, steps=settings.steps, generator=generator)


def _success_mask(clean: Outputs, adversarial: Outputs, labels: torch.Tensor) -> torch.Tensor:
    """Examples the model got right before and wrong after the attack."""
    return (clean.logits.argmax(1) == labels) & (adversarial.logits.argmax(1) != labels)


def _score_rule(clean_val, adv_val, clean_test, adv_test) -> dict:
    """Fit a G-mean threshold on scores where low = adversarial; evaluate on test."""
    threshold = choose_threshold(clean_val, adv_val, "gmean")
    return detection_metrics(clean_test, adv_test, threshold)


def reproduce(model, data: str = "cifar10", out_dir: Optional[Path] = None, data_root=None,
              settings: Optional[ReproduceSettings] = None, progress=True, download: bool = False) -> dict:
    """Run every experiment; write results.json, results.md and the figures to `out_dir` (if given)."""
    settings = settings or ReproduceSettings()
    started = time.perf_counter()
    size = model.spec.input_size[1]
    train = datasets.load_dataset(data, "train", root=data_root, download=download, image_size=size)
    test = datasets.load_dataset(data, "test", root=data_root, download=download, image_size=size)
    classes = datasets.class_names(test)
    if len(classes) != model.spec.num_classes:
        raise ValueError(f"the model has {model.spec.num_classes} classes but {data} has {len(classes)}: "
                         "pick a model trained on this data set")
    train_part, val = datasets.train_val_split(train, settings.val_size, seed=settings.seed)
    val = datasets.first(val, settings.limit, "validation split")
    test = datasets.first(test, settings.limit, "test split")
    reference = datasets.first(train_part, min(settings.reference_size, len(train_part)), "training split")
    x_val, y_val = datasets.load_tensors(val)
    x_test, y_test = datasets.load_tensors(test)
    x_ref, y_ref = datasets.load_tensors(reference)
    b = settings.batch_size

    clean = {"val": _outputs(model, x_val, b, progress=False), "test": _outputs(model, x_test, b, progress=False)}
    ref = _outputs(model, x_ref, b, progress=False)
    adversarial: Dict[str, Dict[str, Outputs]] = {}
    names = list(dict.fromkeys(["pgd-8", *settings.attacks]))
    for name in names:
        attack = _make_attack(name, model, settings)
        adversarial[name] = {
            split: _outputs(model, x, b, attack, y, progress, desc=f"{name} ({split})")
            for split, x, y in (("val", x_val, y_val), ("test", x_test, y_test))
        }
    he_name = f"hepgd-8-lam{settings.lam:g}"
    he_attack = _make_hepgd(model, settings, settings.lam)
    adversarial[he_name] = {
        split: _outputs(model, x, b, he_attack, y, progress, desc=f"HE-PGD λ={settings.lam:g} ({split})")
        for split, x, y in (("val", x_val, y_val), ("test", x_test, y_test))
    }

    # Table 1 (+ HE-PGD, which the paper shows evading the detector)
    table = []
    for name in [*settings.attacks, he_name]:
        adv = adversarial[name]
        success = _success_mask(clean["test"], adv["test"], y_test)
        for rule in ("gmean", "youden"):
            for temperature in (1.0, "search"):
                detector = EnergyDetector(rule=rule, temperature=temperature)
                detector.fit(clean["val"].logits, adv["val"].logits)
                row = detector.evaluate(clean["test"].logits, adv["test"].logits)
                flagged = detector.predict(adv["test"].logits)
                row.update(
                    attack=name, search_temperature=temperature == "search",
                    detection_rate_successful=float(flagged[success].double().mean()) if success.any() else float("nan"),
                    attack_success_rate=_rate(success, clean["test"].logits.argmax(1) == y_test),
                    clean_accuracy=_accuracy(clean["test"], y_test), adversarial_accuracy=_accuracy(adv["test"], y_test),
                    paper=PAPER_TABLE1.get(name, {}) if rule == "gmean" and temperature == 1.0 else {},
                )
                table.append(row)

    # Baselines on the same examples
    mahalanobis = MahalanobisScorer().fit(ref.features, y_ref, model.spec.num_classes)
    lid = LIDScorer(reference_size=settings.lid_reference).fit_reference(ref.features, ref.logits)
    baselines = []
    for name in settings.attacks:
        adv = adversarial[name]
        m = {split: (-mahalanobis.score(clean[split].features), -mahalanobis.score(adv[split].features))
             for split in ("val", "test")}
        row = _score_rule(m["val"][0], m["val"][1], m["test"][0], m["test"][1])
        baselines.append({"detector": "Mahalanobis (penultimate, tied covariance)", "attack": name,
                          "needs_adversarial_training": False, **row})
        lid_features = {split: (lid.lid_features(clean[split].features, clean[split].logits),
                                lid.lid_features(adv[split].features, adv[split].logits)) for split in ("val", "test")}
        lid.fit(*lid_features["val"])
        scores = {split: (-lid.score(c), -lid.score(a)) for split, (c, a) in lid_features.items()}
        row = _score_rule(scores["val"][0], scores["val"][1], scores["test"][0], scores["test"][1])
        baselines.append({"detector": "LID (penultimate + logits, logistic regression)", "attack": name,
                          "needs_adversarial_training": True, **row})

    adaptive = _adaptive_study(model, settings, clean, adversarial, he_name, x_test, y_test, progress)
    curves = {name: _curve(clean["test"], adversarial[name]["test"], y_test, settings.steps)
              for name in ("pgd-8", he_name)}
    results = {
        "paper": "Beadini & Masi, Exploring the Connection between Robust and Generative Models, Ital-IA 2023",
        "model": model.spec.source, "architecture": model.spec.architecture, "arch_kwargs": model.spec.arch_kwargs,
        "data": str(data), "n_validation": len(y_val), "n_test": len(y_test), "n_reference": len(y_ref),
        "settings": asdict(settings), "hardware": distributed.hardware(next(model.parameters()).device),
        "table1": table, "baselines": baselines, "adaptive": adaptive, "curves": curves,
        "energy_means": {"clean": float(clean["test"].energy.mean()),
                         **{name: float(adv["test"].energy.mean()) for name, adv in adversarial.items()}},
        "wall_seconds": time.perf_counter() - started,
    }
    if out_dir is not None:
        write_report(results, clean, adversarial, he_name, Path(out_dir))
    return results


def _accuracy(outputs: Outputs, labels: torch.Tensor) -> float:
    return float((outputs.logits.argmax(1) == labels).double().mean())


def _rate(hits: torch.Tensor, among: torch.Tensor) -> float:
    return float(hits[among].double().mean()) if among.any() else float("nan")


def _curve(clean: Outputs, adversarial: Outputs, labels: torch.Tensor, steps: int) -> dict:
    """Energy mean/std and accuracy at FIGURE_STEPS (step 0 = clean images)."""
    trace = adversarial.trace
    rows = {"steps": [0], "energy_mean": [float(clean.energy.mean())], "energy_std": [float(clean.energy.std())],
            "accuracy": [_accuracy(clean, labels)]}
    for step in FIGURE_STEPS[1:]:
        if step <= steps:
            rows["steps"].append(step)
            rows["energy_mean"].append(trace.energy_mean[step])
            rows["energy_std"].append(trace.energy_std[step])
            rows["accuracy"].append(trace.accuracy[step])
    return rows


def _adaptive_study(model, settings, clean, adversarial, he_name, x_test, y_test, progress) -> dict:
    """HE-PGD against λ; the one-sided detector (fit on PGD) and two rescue attempts."""
    pgd_val = adversarial["pgd-8"]["val"]
    one_sided = EnergyDetector("gmean").fit(clean["val"].logits, pgd_val.logits)
    upper = float(torch.quantile(clean["val"].energy.double(), settings.band_quantile))
    class_val = (-clean["val"].logits.max(1).values, -pgd_val.logits.max(1).values)
    class_threshold = choose_threshold(*class_val, "gmean")
    clean_test_energy = clean["test"].energy
    clean_class_energy = -clean["test"].logits.max(1).values
    correct = clean["test"].logits.argmax(1) == y_test
    fpr = {
        "one_sided": float((clean_test_energy <= one_sided.threshold).double().mean()),
        "band": float(((clean_test_energy <= one_sided.threshold) | (clean_test_energy >= upper)).double().mean()),
        "class_energy": float((clean_class_energy <= class_threshold).double().mean()),
    }
    rows = []
    for lam in settings.lambdas:
        if lam == 0:
            adv = adversarial["pgd-8"]["test"]  # HE-PGD with λ = 0 is PGD (a tested identity)
        elif lam == settings.lam:
            adv = adversarial[he_name]["test"]
        else:
            attack = _make_hepgd(model, settings, lam)
            adv = _outputs(model, x_test, settings.batch_size, attack, y_test, progress, desc=f"HE-PGD λ={lam:g}")
        e = adv.energy
        class_e = -adv.logits.max(1).values
        rows.append({
            "lam": lam, "attack_success_rate": _rate(_success_mask(clean["test"], adv, y_test), correct),
            "adversarial_accuracy": _accuracy(adv, y_test), "energy_mean": float(e.mean()),
            "detection_rate_one_sided": float((e <= one_sided.threshold).double().mean()),
            "detection_rate_band": float(((e <= one_sided.threshold) | (e >= upper)).double().mean()),
            "detection_rate_class_energy": float((class_e <= class_threshold).double().mean()),
        })
    return {"thresholds": {"one_sided": one_sided.threshold, "band_upper": upper, "class_energy": class_threshold},
            "false_positive_rate_on_clean_test": fpr, "rows": rows, "clean_energy_mean": float(clean_test_energy.mean())}


def write_report(results: dict, clean, adversarial, he_name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lam = results["settings"]["lam"]
    plots.energy_histogram(clean["test"].energy, adversarial["pgd-8"]["test"].energy, out / "fig2a_energy_hist_pgd.png",
                           "Fig. 2a: E(x), clean vs PGD 8/255")
    plots.energy_histogram(clean["test"].energy, adversarial[he_name]["test"].energy, out / "fig3a_energy_hist_hepgd.png",
                           f"Fig. 3a: E(x), clean vs HE-PGD (λ={lam:g})", adversarial_label="HE-PGD")
    for name, file, title in (("pgd-8", "fig2b_energy_vs_steps_pgd.png", "Fig. 2b: PGD 8/255"),
                              (he_name, "fig3b_energy_vs_steps_hepgd.png", f"Fig. 3b: HE-PGD 8/255, λ={lam:g}")):
        curve = results["curves"][name]
        plots.energy_vs_steps(curve["steps"], curve["energy_mean"], curve["energy_std"], curve["accuracy"], out / file, title)
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


def markdown_report(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Reproduction: Beadini & Masi (Ital-IA 2023), Table 1 and Figs. 2-3",
        "",
        f"Model `{results['model']}` ({results['architecture']} {results['arch_kwargs']}), data {results['data']}: "
        f"threshold fitted on {results['n_validation']} validation images (held out of train), evaluated on the first "
        f"{results['n_test']} test images. Attacks: {s['steps']} steps, PGD and HE-PGD step {s['alpha'] * 255:g}/255 with a "
        f"random start, APGD-CE (torchattacks) with {s['steps']} iterations. Hardware: {results['hardware']}; "
        f"wall time {results['wall_seconds']:.0f} s.",
        "",
        "## Table 1: the energy detector",
        "",
        "Rates in %. Adversarial = E(x) <= threshold. \"succ.\" = detection rate on the examples that fooled the model "
        "(clean correct, adversarial wrong). The paper's numbers stand beside the G-mean, T = 1 rows.",
        "",
        "| attack | rule | T | detection | FPR | FNR | AUROC | det. (succ.) | attack success | paper detection | paper \"FPR\" column |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["table1"]:
        paper = row.get("paper", {})
        t = f"{row['temperature']:g}" + (" (search)" if row["search_temperature"] else "")
        lines.append(
            f"| {row['attack']} | {row['rule']} | {t} | {_pct(row['detection_rate'])} | {_pct(row['false_positive_rate'])} | "
            f"{_pct(row['false_negative_rate'])} | {row['auroc']:.3f} | {_pct(row['detection_rate_successful'])} | "
            f"{_pct(row['attack_success_rate'])} | {_pct(paper.get('detection_rate'))} | {_pct(paper.get('printed_fpr_column'))} |"
        )
    lines += [
        "",
        "The paper's \"FPR\" column for PGD (1.6%) equals 100% − 98.4%, i.e. the false-negative rate; we report FPR and FNR.",
        "",
        "## Baselines on the same examples (G-mean threshold on validation)",
        "",
        "| detector | attack | needs adversarial examples to train | detection | FPR | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["baselines"]:
        lines.append(f"| {row['detector']} | {row['attack']} | {'yes' if row['needs_adversarial_training'] else 'no'} | "
                     f"{_pct(row['detection_rate'])} | {_pct(row['false_positive_rate'])} | {row['auroc']:.3f} |")
    lines += ["", "The energy detector needs adversarial examples only to choose its threshold (as does the Mahalanobis "
              "baseline here); LID trains a logistic regression on them.", ""]
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
        lines.append(f"| {row['lam']:g} | {_pct(row['attack_success_rate'])} | {row['energy_mean']:.2f} | "
                     f"{_pct(row['detection_rate_one_sided'])} | {_pct(row['detection_rate_band'])} | "
                     f"{_pct(row['detection_rate_class_energy'])} |")
    lines += ["", "## Figures", "",
              "![Fig. 2a](fig2a_energy_hist_pgd.png) ![Fig. 2b](fig2b_energy_vs_steps_pgd.png)", "",
              "![Fig. 3a](fig3a_energy_hist_hepgd.png) ![Fig. 3b](fig3b_energy_vs_steps_hepgd.png)", "",
              "![Adaptive](adaptive_lambda.png)", ""]
    return "\n".join(lines)
