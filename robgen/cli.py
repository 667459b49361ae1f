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
from .energy import energy
from .engine import Trace
from .experiments.single_image import attack_own_predictions, combine_outcomes
from .images import ImageError, load_image, save_image
from .models import load_model
from .progress import progress_bar

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


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, default=None if required else "cifar10",
                        help="cifar10, cifar100, imagenette or an ImageFolder path")
    parser.add_argument("--data-root", help=f"folder holding the data sets (default ${datasets.DATA_ENV} or ~/.cache/robgen-data)")
    parser.add_argument("--download", action="store_true", help="download missing data sets through torchvision")


def add_output_arguments(parser: argparse.ArgumentParser, what: str = "output folder") -> None:
    parser.add_argument("--out", required=True, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def add_attack_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("--attack", default="pgd", choices=sorted(ATTACKS), help="attack (default pgd)")
    parser.add_argument("--eps", type=parse_number, default=8 / 255, help="threat-model radius (default 8/255)")
    parser.add_argument("--step-size", "--alpha", dest="step_size", type=parse_number, default=1 / 255,
                        help="step size (default 1/255; --alpha is torchattacks' name for it)")
    parser.add_argument("--steps", type=int, default=steps, help=f"gradient steps (default {steps})")
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--lam", type=parse_number, default=1.2, help="HE-PGD energy weight (default 1.2)")
    parser.add_argument("--no-random-start", action="store_true", help="start PGD / HE-PGD at the clean image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start")


def build_attack(args, model, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        return make_attack(args.attack, model, eps=args.eps, step_size=args.step_size, steps=args.steps, lam=args.lam,
                                    norm=args.norm, random_start=not args.no_random_start, generator=generator)
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


def read_images(paths: List[str], size) -> torch.Tensor:
    """Image files as one (N, C, H, W) batch at the model's size; every unreadable file named in one error."""
    images, problems = [], []
    for path in paths:
        try:
            images.append(load_image(path, size=size))
        except ImageError as error:
            problems.append(str(error))
    if problems:
        raise UsageError("cannot read the input images:\n  " + "\n  ".join(problems))
    return torch.stack(images)


def command_attack(args) -> int:
    device = pick_device(args.device)
    model = open_model(args, device)
    spec = model.spec
    x = read_images(args.images, spec.input_size[1:])
    attack = build_attack(args, model, device)
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json"])
    target_class = None
    if args.target is not None:
        try:
            target_class = spec.class_index(args.target)
        except ValueError as error:
            raise UsageError(str(error)) from None
    started = time.perf_counter()
    outcomes = []
    for start in progress_bar(range(0, len(x), args.batch_size), desc=f"{args.attack}", progress=len(x) > args.batch_size):
        try:
            outcomes.append(attack_own_predictions(model, x[start:start + args.batch_size].to(device), attack, target_class))
        except ValueError as error:
            raise UsageError(str(error)) from None
    seconds = time.perf_counter() - started
    outcome = combine_outcomes(outcomes)
    x_adv, trace = outcome.adversarial, outcome.trace
    clean_logits, adv_logits = outcome.clean_logits, outcome.adversarial_logits
    clean_energy, adv_energy = outcome.clean_energy, outcome.adversarial_energy
    rows, used = [], set()
    for i, path in enumerate(args.images):
        stem = Path(path).stem
        if stem in used:  # two inputs with one name: keep both
            stem = f"{stem}-{i}"
        used.add(stem)
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
    from .experiments.pipeline import detection_experiment, detection_splits

    device = pick_device(args.device)
    model = open_model(args, device)
    try:
        splits = detection_splits(model, args.data, val_size=args.val_size, limit=args.limit, seed=args.seed,
                                  data_root=args.data_root, download=args.download)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    attack = build_attack(args, model, device)
    out = prepare_out_dir(Path(args.out), args.overwrite, ["detector.json", "metrics.json"])
    started = time.perf_counter()
    result = detection_experiment(model, splits, attack, rule=args.rule, temperature=args.temperature,
                                  target_fpr=args.target_fpr, batch_size=args.batch_size, workers=args.workers)
    detector, metrics = result.detector, result.report
    metrics.update(model=model.spec.source, seconds=time.perf_counter() - started, device=str(device))
    detector.save(out / "detector.json")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"threshold {detector.threshold:.4f} (rule {args.rule}, T={detector.temperature:g}) on {metrics['n_validation']} "
        f"validation images; test ({metrics['n_test']} images): detection rate {metrics['detection_rate']:.3f}, "
        f"FPR {metrics['false_positive_rate']:.3f}, FNR {metrics['false_negative_rate']:.3f}, AUROC {metrics['auroc']:.3f}; "
        f"accuracy clean {metrics['clean_accuracy']:.3f} -> adversarial {metrics['adversarial_accuracy']:.3f}"
    )
    print(f"wrote detector.json and metrics.json to {out}")
    return 0


def command_train(args) -> int:
    from .training import TrainConfig, train

    try:
        config = TrainConfig(
            data=args.data, architecture=args.arch, width=args.width, mode=args.mode, norm=args.norm, eps=args.eps,
            attack_steps=args.attack_steps, attack_step_size=args.attack_step_size, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
            label_smoothing=args.label_smoothing, val_size=args.val_size, eval_subset=args.eval_subset,
            train_limit=args.train_limit, image_size=args.image_size, seed=args.seed, workers=args.workers,
            channels_last=args.channels_last,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out)
    if not args.resume and (out / "config.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a checkpoint; pass --resume to continue it or --overwrite to start again")
    if args.overwrite and not args.resume:
        for name in ("log.jsonl", "trainer_state.pt"):
            (out / name).unlink(missing_ok=True)
    device = pick_device(args.device)
    try:
        model = train(config, out, data_root=args.data_root, resume=args.resume, device=device,
                      on_epoch=lambda row: print(json.dumps(row), flush=True), download=args.download)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {out} ({model.spec.training['wall_seconds']:.0f} s on {model.spec.training['hardware']})")
    return 0


def command_eval(args) -> int:
    from . import distributed
    from .evaluation import evaluate_robustness
    from .models.checkpoint import CONFIG_FILE, is_checkpoint_dir

    device = distributed.setup(pick_device(args.device))
    model = open_model(args, device)
    try:
        dataset = datasets.load_dataset(args.data, args.split, root=args.data_root, download=args.download,
                                        image_size=model.spec.input_size[1])
        if len(datasets.class_names(dataset)) != model.spec.num_classes:
            raise UsageError(f"the model has {model.spec.num_classes} classes but {args.data} has "
                             f"{len(datasets.class_names(dataset))}")
        what = f"{args.split} split"
        if args.exact:
            dataset, what = datasets.lossless_only(dataset), f"PNG (exact) images of the {args.split} split"
        dataset = datasets.first(dataset, args.limit, what)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    result = evaluate_robustness(model, dataset, eps=args.eps, norm=args.norm, steps=args.steps, step_size=args.step_size,
                                 apgd=args.apgd, batch_size=args.batch_size, seed=args.seed)
    result.update(model=model.spec.source, data=str(args.data), split=args.split, exact_only=args.exact,
                  limit=args.limit, device=str(device), command="python -m robgen " + " ".join(sys.argv[1:]))
    if distributed.is_main():
        line = f"{what}, {result['n']} images: clean accuracy {result['clean_accuracy']:.4f}, PGD-{args.steps} " \
               f"({args.norm}, eps {args.eps:.4g}) accuracy {result['pgd_accuracy']:.4f}"
        if args.apgd:
            line += f", APGD accuracy {result['apgd_accuracy']:.4f}"
        print(line)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        if args.record:
            folder = Path(model.spec.source)
            if not is_checkpoint_dir(folder):
                raise UsageError("--record writes into a local checkpoint folder's config.json; this model is not one")
            config = json.loads((folder / CONFIG_FILE).read_text())
            key = f"{args.data}-{args.split}{'-png' if args.exact else ''}{f'-first{args.limit}' if args.limit else ''}"
            config.setdefault("metrics", {}).setdefault("eval", {})[key] = result
            (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    distributed.teardown()
    return 0


def command_reproduce(args) -> int:
    from .experiments.reproduce import ReproduceSettings, reproduce

    device = pick_device(args.device)
    model = open_model(args, device)
    try:
        settings = ReproduceSettings(
            attacks=tuple(name.strip() for name in args.attacks.split(",") if name.strip()), steps=args.steps,
            limit=args.limit, val_size=args.val_size, batch_size=args.batch_size, seed=args.seed,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json", "results.md"])
    try:
        results = reproduce(model, args.data, out, data_root=args.data_root, settings=settings, download=args.download)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    for row in results["table1"]:
        if row["rule"] == "gmean" and not row["search_temperature"]:
            print(f"{row['attack']:>16}: detection {row['detection_rate']:.3f}, FPR {row['false_positive_rate']:.3f}, "
                  f"AUROC {row['auroc']:.3f}")
    print(f"wrote results.json, results.md and figures to {out} ({results['wall_seconds']:.0f} s)")
    return 0


def companion_file(args, model, name: str) -> Path:
    """Where a file that belongs with the model goes: `--out`, or `name` in its checkpoint folder."""
    from .models.checkpoint import model_folder

    folder = model_folder(model)
    path = Path(args.out) if args.out else (folder / name if folder is not None else None)
    if path is None:
        raise UsageError(f"this model has no checkpoint folder to store {name} in: pass --out FILE")
    if path.is_dir():
        path = path / name
    if path.exists() and not args.overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    return path


def command_fit_detector(args) -> int:
    from .experiments.calibration import DETECTOR_FILE, calibrate_detector

    device = pick_device(args.device)
    model = open_model(args, device)
    path = companion_file(args, model, DETECTOR_FILE)
    attack = build_attack(args, model, device)
    try:
        detector = calibrate_detector(model, args.data, attack, n=args.limit, rule=args.rule, val_size=args.val_size,
                                      data_root=args.data_root, download=args.download, batch_size=args.batch_size,
                                      seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    detector.save(path)
    test = detector.calibration["test"]
    print(f"threshold {detector.threshold:.4f} on {args.limit} validation images; on {args.limit} test images: "
          f"detection rate {test['detection_rate']:.3f}, FPR {test['false_positive_rate']:.3f}, AUROC {test['auroc']:.3f}")
    print(f"wrote {path}")
    return 0


def command_fit_seeds(args) -> int:
    from .synthesis.seeds import SEEDS_FILE, SeedDistribution

    device = pick_device("cpu")
    model = open_model(args, device)
    path = companion_file(args, model, SEEDS_FILE)
    try:
        train = datasets.load_dataset(args.data, "train", root=args.data_root, download=args.download,
                                      image_size=model.spec.input_size[1])
        classes = datasets.class_names(train)
        if classes != list(model.spec.class_labels):
            raise UsageError(f"{args.data} has the classes {classes}, the model {model.spec.class_labels}")
        train = datasets.first(train, args.limit, "train split")
        seeds = SeedDistribution.fit(datasets.make_loader(train, batch_size=500, workers=args.workers), classes,
                                     resolution=args.resolution, rank=args.rank)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    seeds.save(path)
    print(f"fitted class-conditional seeds ({args.resolution}x{args.resolution}, rank {min(args.rank, 3 * args.resolution**2)}) "
          f"on {len(train)} images of {args.data}; wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


def command_synthesize(args) -> int:
    from .plots import image_grid
    from .synthesis import sgld_sample, synthesize
    from .synthesis.sgld import DEFAULT_STEP_SIZE as SGLD_STEP_SIZE

    device = pick_device(args.device)
    model = open_model(args, device)
    spec = model.spec
    try:
        classes = [spec.class_index(c) for c in (args.classes or range(spec.num_classes))]
    except ValueError as error:
        raise UsageError(str(error)) from None
    init = args.init
    if init not in ("gaussian", "uniform", "gray"):
        init = read_images([init], spec.input_size[1:])
    out = prepare_out_dir(Path(args.out), args.overwrite, ["grid.png", "results.json"])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rows, traces, started = [], {}, time.perf_counter()
    for index in progress_bar(classes, desc=f"{args.method}: classes", progress=len(classes) > 1):
        try:
            if args.method == "sgld":
                images, trace = sgld_sample(model, index, args.n, steps=args.steps,
                                            step_size=args.step_size or SGLD_STEP_SIZE, noise=args.noise, init=init,
                                            generator=generator, return_trace=True)
            else:
                images, trace = synthesize(model, index, args.n, steps=args.steps, step_size=args.step_size,
                                           eps=args.eps, init=init, objective=args.objective, generator=generator,
                                           return_trace=True)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(str(error)) from None
        rows.append(images.cpu())
        traces[spec.class_labels[index]] = trace.to_dict()
    grid = torch.stack(rows)  # (classes, n, C, H, W)
    image_grid(grid, out / "grid.png", row_labels=[spec.class_labels[i] for i in classes], scale=args.scale)
    with torch.no_grad():
        probs = model(grid.flatten(0, 1).to(device)).float().softmax(1).view(len(classes), args.n, -1).cpu()
    report = {
        "model": spec.source, "method": args.method, "init": args.init, "seed": args.seed, "steps": args.steps,
        "seconds": time.perf_counter() - started,
        "classes": [{"class": spec.class_labels[i], "mean_target_probability": float(probs[row, :, i].mean())}
                    for row, i in enumerate(classes)],
        "traces": traces,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    for row in report["classes"]:
        print(f"{row['class']}: mean p(class | sample) = {row['mean_target_probability']:.3f} under {Path(spec.source).name}")
    print(f"wrote grid.png ({len(classes)} classes x {args.n} samples) and results.json to {out}")
    return 0


def command_gradmap(args) -> int:
    from .plots import gradient_maps
    from .synthesis import input_gradient

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; choose another --out or pass --overwrite")
    device = pick_device(args.device)
    models = {}
    for name in args.models:
        args.model = name
        models[Path(name).name] = open_model(args, device)
    sizes = {tuple(m.spec.input_size) for m in models.values()}
    if len(sizes) > 1:
        raise UsageError(f"the models take different input sizes {sorted(sizes)}: compare models of one data set")
    size = next(iter(models.values())).spec.input_size
    x = read_images(args.images, size[1:]).to(device)
    gradients = {name: input_gradient(model, x).cpu() for name, model in models.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    gradient_maps(x.cpu(), gradients, out)
    print(f"wrote gradient maps of {len(args.images)} images under {len(models)} models to {out}")
    return 0


def command_synthesis_quality(args) -> int:
    from .plots import image_grid
    from .synthesis.quality import measure_quality, quality_markdown

    device = pick_device(args.device)
    loaded = {}
    for name in dict.fromkeys(args.models + args.judges):
        args.model = name
        loaded[name] = open_model(args, device)
    generators = {Path(name).name: loaded[name] for name in args.models}
    judges = {Path(name).name: loaded[name] for name in args.judges}
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json", "results.md"])
    started = time.perf_counter()
    try:
        result = measure_quality(generators, judges, n=args.n, seed=args.seed, steps=args.steps, eps=args.eps,
                                 step_size=args.step_size, init=args.init)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    for name, grid in result.pop("samples").items():
        labels = next(iter(generators.values())).spec.class_labels
        image_grid(grid[:, : args.grid_columns], out / f"grid_{name}.png", row_labels=labels)
    result.update(settings={"steps": args.steps, "eps": args.eps, "step_size": args.step_size, "init": args.init},
                  wall_seconds=time.perf_counter() - started, device=str(device))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(quality_markdown(result))
    print(quality_markdown(result))
    print(f"wrote results.json, results.md and grid_*.png to {out}")
    return 0


def models_table(names: List[str]) -> str:
    """A Markdown table of shipped checkpoints: recipe, hardware, wall time and recorded accuracies."""
    lines = [
        "| name | architecture | training | epochs | hardware | wall time | clean acc. (932 PNG / 10k) | PGD-20 acc. (932 PNG / 10k) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        spec = load_model(name).spec
        recipe = spec.training.get("config", {})
        evals = spec.metrics.get("eval", {})
        png, full = evals.get("cifar10-test-png", {}), evals.get("cifar10-test", {})

        def pct(result, key):
            return f"{100 * result[key]:.1f}" if key in result else "—"

        attack = png.get("attack") or full.get("attack") or {}
        budget = f"{attack.get('norm', '?')} {attack.get('eps', 0) * (255 if attack.get('norm') == 'linf' else 1):.3g}" \
            + ("/255" if attack.get("norm") == "linf" else "")
        mode = recipe.get("mode", "?")
        if mode != "standard":
            norm, eps = recipe.get("norm"), recipe.get("eps", 0)
            mode += f" ({norm} {eps * 255:.3g}/255)" if norm == "linf" else f" ({norm} {eps:g})"
        lines.append(
            f"| `{name}` | {spec.architecture} width {spec.arch_kwargs.get('width', 64)} | {mode} | "
            f"{spec.training.get('epochs_done', '?')} | {spec.training.get('hardware', '?')} | "
            f"{spec.training.get('wall_seconds', 0) / 60:.0f} min | {pct(png, 'clean_accuracy')} / {pct(full, 'clean_accuracy')} | "
            f"{pct(png, 'pgd_accuracy')} / {pct(full, 'pgd_accuracy')} at {budget} |"
        )
    return "\n".join(lines)


def command_models(args) -> int:
    from .models import list_models

    names = list_models()
    if not names:
        print("no shipped checkpoints found")
        return 0
    if args.markdown:
        print(models_table(names))
    else:
        for name in names:
            spec = load_model(name).spec
            print(f"{name}: {spec.architecture} {spec.arch_kwargs}, {spec.num_classes} classes, "
                  f"trained {spec.training.get('config', {}).get('mode', '?')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robgen", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    attack = commands.add_parser("attack", help="attack image files; write adversarial PNGs and a JSON report")
    add_model_arguments(attack)
    add_attack_arguments(attack, steps=10)
    attack.add_argument("--target", help="class index or label for a targeted attack (PGD / FGSM)")
    attack.add_argument("--batch-size", type=int, default=64, help="images attacked at once")
    add_output_arguments(attack)
    attack.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    attack.set_defaults(run=command_attack)

    detect = commands.add_parser("detect", help="fit the energy detector on validation data, evaluate it on test data")
    add_model_arguments(detect)
    add_attack_arguments(detect, steps=40)
    add_data_arguments(detect)
    detect.add_argument("--rule", default="gmean", choices=["gmean", "youden", "fpr"])
    detect.add_argument("--temperature", default="1", help="energy temperature, or 'search' (by validation AUROC)")
    detect.add_argument("--target-fpr", type=float, default=0.05, help="false-positive budget of --rule fpr")
    detect.add_argument("--val-size", type=int, default=5000, help="validation images held out of train (default 5000)")
    detect.add_argument("--limit", type=int, help="use the first N images of the validation and test splits")
    detect.add_argument("--batch-size", type=int, default=256)
    detect.add_argument("--workers", type=int, default=0, help="data-loading processes")
    add_output_arguments(detect)
    detect.set_defaults(run=command_detect)

    train = commands.add_parser("train", help="train a standard, robust (PGD / fast) or quasi-robust classifier")
    add_data_arguments(train, required=False)
    train.add_argument("--arch", default="resnet10_cifar", help="timm architecture (default resnet10_cifar)")
    train.add_argument("--width", type=int, help="width of robgen's CIFAR ResNets (default 64)")
    train.add_argument("--mode", default="standard", choices=["standard", "pgd", "fast", "quasi"])
    train.add_argument("--norm", default="linf", choices=["linf", "l2"])
    train.add_argument("--eps", type=parse_number, default=8 / 255, help="training budget (quasi default: L2 0.05)")
    train.add_argument("--attack-steps", type=int, default=7, help="PGD steps of --mode pgd")
    train.add_argument("--attack-step-size", type=parse_number, help="attack step (default 2.5 eps/steps, or 1.25 eps)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=128, help="per process")
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--schedule", default="onecycle", choices=["onecycle", "cosine"])
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--val-size", type=int, default=5000, help="images held out of train for validation")
    train.add_argument("--eval-subset", type=int, default=500, help="validation images for the per-epoch PGD check")
    train.add_argument("--train-limit", type=int, help="train on the first N images only")
    train.add_argument("--image-size", type=int, help="resize + crop images to this size")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0, help="data-loading processes")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last memory format (default: on CUDA only)")
    train.add_argument("--device", default="auto")
    add_output_arguments(train, "checkpoint folder (written every epoch)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("eval", help="clean accuracy and accuracy under PGD (and APGD)")
    add_model_arguments(evaluate)
    add_data_arguments(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "test"])
    evaluate.add_argument("--limit", type=int, help="the first N images of the split")
    evaluate.add_argument("--exact", action="store_true", help="only the PNG images (CIFAR-10 archive: exact pixels)")
    evaluate.add_argument("--eps", type=parse_number, default=8 / 255)
    evaluate.add_argument("--norm", default="linf", choices=["linf", "l2"])
    evaluate.add_argument("--steps", type=int, default=20)
    evaluate.add_argument("--step-size", "--alpha", dest="step_size", type=parse_number, help="PGD step (default 2.5 eps / steps)")
    evaluate.add_argument("--apgd", action="store_true", help="also APGD-CE")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", help="write the result as JSON here")
    evaluate.add_argument("--record", action="store_true", help="store the result in the checkpoint's config.json")
    evaluate.set_defaults(run=command_eval)

    repro = commands.add_parser("reproduce", help="the paper's Table 1 and Figs. 2-3, baselines, adaptive attacker")
    add_model_arguments(repro)
    add_data_arguments(repro)
    repro.add_argument("--limit", type=int, help="first N images of the validation and test splits (default: all)")
    repro.add_argument("--attacks", default="pgd-8,pgd-16,apgd-8", help="comma-separated, from pgd-8, pgd-16, apgd-8")
    repro.add_argument("--steps", type=int, default=40, help="attack steps (the paper: 40)")
    repro.add_argument("--val-size", type=int, default=5000, help="validation images held out of train")
    repro.add_argument("--batch-size", type=int, default=250)
    repro.add_argument("--seed", type=int, default=0)
    add_output_arguments(repro)
    repro.set_defaults(run=command_reproduce)

    fit_detector = commands.add_parser("fit-detector", help="fit the energy detector the app uses; store it with the model")
    add_model_arguments(fit_detector)
    add_attack_arguments(fit_detector, steps=10)
    add_data_arguments(fit_detector)
    fit_detector.add_argument("--rule", default="gmean", choices=["gmean", "youden", "fpr"])
    fit_detector.add_argument("--limit", type=int, default=500, help="validation images to fit on, test images to check on")
    fit_detector.add_argument("--val-size", type=int, default=5000, help="validation images held out of train")
    fit_detector.add_argument("--batch-size", type=int, default=250)
    fit_detector.add_argument("--out", help="file or folder to write (default: detector.json in the checkpoint folder)")
    fit_detector.add_argument("--overwrite", action="store_true")
    fit_detector.set_defaults(run=command_fit_detector)

    seeds = commands.add_parser("fit-seeds", help="fit the class-conditional Gaussian seeds of synthesis; store them with the model")
    add_model_arguments(seeds)
    add_data_arguments(seeds)
    seeds.add_argument("--resolution", type=int, default=8, help="fit on images downsampled to this size (default 8)")
    seeds.add_argument("--rank", type=int, default=64, help="principal components kept per class (default 64)")
    seeds.add_argument("--limit", type=int, help="the first N training images (class-balanced)")
    seeds.add_argument("--workers", type=int, default=0, help="data-loading processes")
    seeds.add_argument("--out", help="file or folder to write (default: seeds.safetensors in the checkpoint folder)")
    seeds.add_argument("--overwrite", action="store_true")
    seeds.set_defaults(run=command_fit_seeds)

    synth = commands.add_parser("synthesize", help="draw images of classes from a (robust) classifier; write a PNG grid")
    add_model_arguments(synth)
    synth.add_argument("--classes", nargs="+", help="class indices or labels (default: all classes)")
    synth.add_argument("--n", type=int, default=8, help="samples per class (default 8)")
    synth.add_argument("--method", default="ascent", choices=["ascent", "sgld"],
                       help="ascent: L2-budgeted gradient ascent on the class; sgld: Langevin on E(x, y)")
    synth.add_argument("--steps", type=int, default=60)
    synth.add_argument("--step-size", type=parse_number,
                       help="ascent: L2 step (default 2.5 eps / steps); sgld: step on -grad E (default 1)")
    synth.add_argument("--eps", type=parse_number, help="ascent: L2 budget (default 0.1 sqrt(C H W))")
    synth.add_argument("--objective", default="log_prob", choices=["log_prob", "class_energy"])
    synth.add_argument("--noise", type=parse_number, default=0.01, help="sgld: noise standard deviation (default 0.01)")
    synth.add_argument("--init", default="gaussian", help="gaussian (shipped seeds), uniform, gray, or an image file")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", type=int, default=3, help="enlarge each sample this many times in the grid")
    add_output_arguments(synth)
    synth.set_defaults(run=command_synthesize)

    gradmap = commands.add_parser("gradmap", help="input-gradient maps of images under several models, side by side")
    gradmap.add_argument("--models", nargs="+", required=True, help="model names (e.g. standard, quasi-robust, robust)")
    gradmap.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    gradmap.add_argument("--device", default="auto")
    gradmap.add_argument("--out", required=True, help="the PNG figure to write")
    gradmap.add_argument("--overwrite", action="store_true")
    gradmap.add_argument("images", nargs="+", help="image files")
    gradmap.set_defaults(run=command_gradmap)

    quality = commands.add_parser("synthesis-quality",
                                  help="how convincing (to other models) and diverse each model's samples are")
    quality.add_argument("--models", nargs="+", required=True, help="generators, e.g. the robust, quasi-robust and standard models")
    quality.add_argument("--judges", nargs="+", required=True, help="models that judge every generator's samples")
    quality.add_argument("--n", type=int, default=16, help="samples per class (default 16)")
    quality.add_argument("--steps", type=int, default=60)
    quality.add_argument("--eps", type=parse_number, help="L2 budget (default 0.1 sqrt(C H W))")
    quality.add_argument("--step-size", type=parse_number, help="L2 step (default 2.5 eps / steps)")
    quality.add_argument("--init", default="gaussian", choices=["gaussian", "uniform", "gray"])
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--grid-columns", type=int, default=8, help="samples per class shown in each grid PNG")
    quality.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    quality.add_argument("--device", default="auto")
    add_output_arguments(quality)
    quality.set_defaults(run=command_synthesis_quality)

    models = commands.add_parser("models", help="list the shipped checkpoints")
    models.add_argument("--markdown", action="store_true", help="a table of recipes and recorded accuracies")
    models.set_defaults(run=command_models)
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
