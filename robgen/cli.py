"""The command line: `python -m robgen {attack,detect} ...`.

Each command parses its arguments, makes library calls and writes files; the
maths lives in the library. Errors in the input end the command with exit
code 2 and a message that says what to fix, before any long work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import List, Optional

import torch

from . import data as datasets
from .attacks import ATTACKS, make_attack
from .detector import EnergyDetector
from .energy import compute_energies, energy
from .images import ImageError, load_image, save_image
from .models import load_model

logger = logging.getLogger("robgen")


class UsageError(Exception):
    """Bad command-line input: printed without a traceback, exit code 2."""


def parse_number(text: str) -> float:
    """A float, also written as a fraction such as 8/255."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (write e.g. 0.03 or 8/255)") from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return torch.device(name)


def prepare_out_dir(path: Path, overwrite: bool, products: List[str]) -> Path:
    """Create the output folder; refuse to replace earlier results unless --overwrite."""
    existing = [name for name in products if (path / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{path} already holds {', '.join(existing)}; choose another --out or pass --overwrite")
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="shipped name, checkpoint folder, timm:<name> or hf-hub:<org>/<repo>")
    parser.add_argument("--random-weights", action="store_true", help="timm: models: random weights instead of downloading")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")


def add_attack_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("--attack", default="pgd", choices=sorted(ATTACKS), help="attack (default pgd)")
    parser.add_argument("--eps", type=parse_number, default=8 / 255, help="threat-model radius (default 8/255)")
    parser.add_argument("--alpha", type=parse_number, default=1 / 255, help="step size (default 1/255)")
    parser.add_argument("--steps", type=int, default=steps, help=f"gradient steps (default {steps})")
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--lam", type=parse_number, default=1.2, help="HE-PGD energy weight (default 1.2)")
    parser.add_argument("--no-random-start", action="store_true", help="start PGD / HE-PGD at the clean image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start")


def build_attack(args, model, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(args.seed)
    settings = dict(eps=args.eps, norm=args.norm, generator=generator)
    if args.attack in ("pgd", "hepgd"):
        settings.update(alpha=args.alpha, steps=args.steps, random_start=not args.no_random_start)
    if args.attack == "hepgd":
        settings.update(lam=args.lam)
    if args.attack == "apgd":
        settings.update(steps=args.steps)
    try:
        return make_attack(args.attack, model, **settings)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def open_model(args, device: torch.device):
    try:
        return load_model(args.model, pretrained=not args.random_weights, device=device)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


def top_prediction(logits: torch.Tensor, labels: List[str]) -> dict:
    probs = logits.float().softmax(-1)
    index = int(probs.argmax())
    return {"class": index, "label": labels[index], "probability": float(probs[index])}


def command_attack(args) -> int:
    device = pick_device(args.device)
    model = open_model(args, device)
    spec = model.spec
    images, problems = [], []
    for path in args.images:
        try:
            images.append(load_image(path, size=spec.input_size[1:]))
        except ImageError as error:
            problems.append(str(error))
    if problems:
        raise UsageError("cannot read the input images:\n  " + "\n  ".join(problems))
    attack = build_attack(args, model, device)
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json"])
    x = torch.stack(images).to(device)
    with torch.no_grad():
        clean_logits = model(x)
    labels = clean_logits.argmax(1)
    target = None
    if args.target is not None:
        try:
            target = torch.full_like(labels, spec.class_index(args.target))
        except ValueError as error:
            raise UsageError(str(error)) from None
    started = time.perf_counter()
    try:
        x_adv, trace = attack(x, labels, target=target, return_trace=True, progress=None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    # What the user gets is an 8-bit PNG: quantise, stay inside the threat model, and report on those pixels.
    x_adv = attack.constraint.project((x_adv * 255).round() / 255, x)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        adv_logits = model(x_adv)
    clean_energy, adv_energy = energy(clean_logits), energy(adv_logits)
    rows = []
    for i, path in enumerate(args.images):
        stem = Path(path).stem
        save_image(x[i], out / f"{stem}_clean.png")
        save_image(x_adv[i], out / f"{stem}_adv.png")
        delta = (x_adv[i] - x[i]).flatten()
        rows.append({
            "image": str(path), "clean_png": f"{stem}_clean.png", "adversarial_png": f"{stem}_adv.png",
            "clean": {**top_prediction(clean_logits[i], spec.class_labels), "energy": float(clean_energy[i])},
            "adversarial": {**top_prediction(adv_logits[i], spec.class_labels), "energy": float(adv_energy[i])},
            "linf": float(delta.abs().max()), "l2": float(delta.norm()),
        })
    report = {
        "model": spec.source, "attack": repr(attack), "target": args.target, "seconds": seconds,
        "device": str(device), "images": rows, "trace": trace.to_dict(),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['image']}: {row['clean']['label']} ({row['clean']['probability']:.2f}, E={row['clean']['energy']:.2f})"
            f" -> {row['adversarial']['label']} ({row['adversarial']['probability']:.2f}, E={row['adversarial']['energy']:.2f})"
        )
    print(f"wrote {len(rows)} adversarial PNGs and results.json to {out}")
    return 0


def command_detect(args) -> int:
    device = pick_device(args.device)
    model = open_model(args, device)
    try:
        train = datasets.load_dataset(args.data, "train", root=args.data_root, download=args.download,
                                      image_size=model.spec.input_size[1])
        test = datasets.load_dataset(args.data, "test", root=args.data_root, download=args.download,
                                     image_size=model.spec.input_size[1])
        classes = datasets.class_names(test)
        if len(classes) != model.spec.num_classes:
            raise UsageError(
                f"the model has {model.spec.num_classes} classes but {args.data} has {len(classes)}: "
                "pick a model trained on this data set"
            )
        _, val = datasets.train_val_split(train, args.val_size, seed=args.seed)
        val = datasets.first(val, args.limit, "validation split")
        test = datasets.first(test, args.limit, "test split")
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    attack = build_attack(args, model, device)
    out = prepare_out_dir(Path(args.out), args.overwrite, ["detector.json", "metrics.json"])
    detector = EnergyDetector(rule=args.rule, temperature=args.temperature, target_fpr=args.target_fpr)
    started = time.perf_counter()
    records = {}
    for name, subset in (("validation", val), ("test", test)):
        loader = datasets.make_loader(subset, batch_size=args.batch_size, workers=args.workers)
        clean = compute_energies(model, loader, desc=f"{name}: clean")
        adv = compute_energies(model, loader, attack=attack, desc=f"{name}: {args.attack}")
        records[name] = (clean, adv)
    (val_clean, val_adv), (test_clean, test_adv) = records["validation"], records["test"]
    detector.fit(val_clean.logits, val_adv.logits)
    metrics = detector.evaluate(test_clean.logits, test_adv.logits)
    metrics.update(
        model=model.spec.source, data=str(args.data), attack=repr(attack), n_validation=len(val), n_test=len(test),
        clean_accuracy=test_clean.accuracy, adversarial_accuracy=test_adv.accuracy,
        attack_success_rate=float((test_adv.predictions != test_clean.labels)[test_clean.predictions == test_clean.labels]
                                  .float().mean()) if (test_clean.predictions == test_clean.labels).any() else float("nan"),
        seconds=time.perf_counter() - started, device=str(device),
    )
    detector.save(out / "detector.json")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"threshold {detector.threshold:.4f} (rule {args.rule}, T={detector.temperature:g}) on {len(val)} validation images; "
        f"test ({len(test)} images): detection rate {metrics['detection_rate']:.3f}, FPR {metrics['false_positive_rate']:.3f}, "
        f"FNR {metrics['false_negative_rate']:.3f}, AUROC {metrics['auroc']:.3f}; "
        f"accuracy clean {metrics['clean_accuracy']:.3f} -> adversarial {metrics['adversarial_accuracy']:.3f}"
    )
    print(f"wrote detector.json and metrics.json to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robgen", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    attack = commands.add_parser("attack", help="attack image files; write adversarial PNGs and a JSON report")
    add_model_arguments(attack)
    add_attack_arguments(attack, steps=10)
    attack.add_argument("--target", help="class index or label for a targeted attack (PGD / FGSM)")
    attack.add_argument("--out", required=True, help="output folder")
    attack.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    attack.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    attack.set_defaults(run=command_attack)

    detect = commands.add_parser("detect", help="fit the energy detector on validation data, evaluate it on test data")
    add_model_arguments(detect)
    add_attack_arguments(detect, steps=40)
    detect.add_argument("--data", required=True, help="cifar10, cifar100, imagenette or an ImageFolder path")
    detect.add_argument("--data-root", help=f"folder holding the data sets (default ${datasets.DATA_ENV} or ~/.cache/robgen-data)")
    detect.add_argument("--download", action="store_true", help="download missing data sets through torchvision")
    detect.add_argument("--rule", default="gmean", choices=["gmean", "youden", "fpr"])
    detect.add_argument("--temperature", default="1", help="energy temperature, or 'search' (by validation AUROC)")
    detect.add_argument("--target-fpr", type=float, default=0.05, help="false-positive budget of --rule fpr")
    detect.add_argument("--val-size", type=int, default=5000, help="validation images held out of train (default 5000)")
    detect.add_argument("--limit", type=int, help="use the first N images of the validation and test splits")
    detect.add_argument("--batch-size", type=int, default=256)
    detect.add_argument("--workers", type=int, default=0, help="data-loading processes")
    detect.add_argument("--out", required=True, help="output folder")
    detect.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    detect.set_defaults(run=command_detect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "temperature", None) not in (None, "search"):
        try:
            args.temperature = float(args.temperature)
        except ValueError:
            print(f"error: --temperature must be a number or 'search', got {args.temperature!r}", file=sys.stderr)
            return 2
    try:
        return args.run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
