"""The classifier commands: `train` (standard, robust or quasi-robust training into a checkpoint
folder), `eval` (clean and PGD / APGD accuracy, optionally recorded in the checkpoint) and
`models` (the shipped checkpoints, as a list or a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import List, Tuple

from .common import (
    UsageError, add_data_arguments, add_model_arguments, add_output_arguments, check_writable_folder, count, flag_given,
    join_processes, open_model, parse_number, pick_device, positive_int, seed_number, user_path,
)
from ..files import write_text_atomically


def add_parsers(commands) -> None:
    train = commands.add_parser("train", help="train a standard, robust (PGD, fast, TRADES) or quasi-robust model")
    add_data_arguments(train, required=False)
    train.add_argument("--arch", default="resnet10_cifar", help="timm architecture (default resnet10_cifar)")
    train.add_argument("--width", type=int, help="width of robgen's CIFAR ResNets (default 64)")
    train.add_argument("--mode", default="standard",
                       choices=["standard", "pgd", "fast", "quasi", "reject", "trades", "weat"],
                       help="reject: train a confidence reject option; trades: TRADES; weat: energy-weighted "
                            "TRADES (robgen/training/losses.py)")
    train.add_argument("--norm", choices=["linf", "l2"],
                       help="threat model (default linf; quasi without --eps: l2)")
    train.add_argument("--eps", type=parse_number,
                       help="training budget (default 8/255; quasi: L2 0.05); an eps given is used in every mode")
    train.add_argument("--attack-steps", type=int, default=7, help="PGD steps of --mode pgd, reject, trades, weat")
    train.add_argument("--trades-beta", type=parse_number, default=6.0,
                       help="--mode trades and weat: the weight of KL(p(x) || p(x*)) beside the clean cross-entropy "
                            "(default 6, TRADES' CIFAR-10 value)")
    train.add_argument("--reject-cap", type=parse_number, default=0.25,
                       help="--mode reject: the probability the most likely wrong class is held below at the attack's "
                            "point (default 0.25)")
    train.add_argument("--reject-weight", type=parse_number, default=1.0, help="--mode reject: that term's weight (default 1)")
    train.add_argument("--reject-adversarial-share", type=parse_number, default=0.0,
                       help="--mode reject: the share of the cross-entropy taken at the attack's point rather than the "
                            "clean image, in [0, 1] (default 0; 1 keeps adversarial training's robustness)")
    train.add_argument("--reject-attack", default="confident", choices=["confident", "pgd"],
                       help="--mode reject: the attack that makes the point x* the loss reads: confident (toward the "
                            "most confident mistake, default) or pgd (the cross-entropy's maximum, as --mode pgd)")
    train.add_argument("--attack-step-size", type=parse_number, help="attack step (default 2.5 eps/steps, or 1.25 eps)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=positive_int, default=128, help="per process")
    train.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"],
                       help="sgd: Nesterov momentum 0.9 (default); adam: Adam, weight decay as an L2 term")
    train.add_argument("--lr", type=parse_number, default=0.1)
    train.add_argument("--weight-decay", type=parse_number, default=5e-4)
    train.add_argument("--schedule", default="onecycle", choices=["onecycle", "cosine", "multistep"],
                       help="onecycle (default) and cosine step every iteration; multistep: x0.1 at each --milestones epoch")
    train.add_argument("--milestones", type=epoch_list, default=(30, 80),
                       metavar="E1,E2", help="epochs where --schedule multistep divides the rate by 10 (default 30,80)")
    train.add_argument("--augment", default="crop-flip", choices=["crop-flip", "flip", "none"],
                       help="training augmentation: crop-flip (default: random crop, or random resized crop above "
                            "64 px, and flip), flip (horizontal flips only: the official CIFAR-10 recipe), none")
    train.add_argument("--label-smoothing", type=parse_number, default=0.0)
    train.add_argument("--val-size", type=int,
                       help="images held out of train for validation (default: 5000; Imagenette 500, as the paper; "
                            "--init-from: its base's, or fewer)")
    train.add_argument("--eval-subset", type=int, default=500,
                       help="validation images for the per-epoch PGD check (500: a 95%% interval of about ±4 "
                            "points, enough to catch catastrophic overfitting but not to rank epochs 1-2 points "
                            "apart; eval --split val measures the whole held-out split)")
    train.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the per-epoch check (default 10)")
    train.add_argument("--train-limit", type=int, help="train on the first N images only")
    train.add_argument("--image-size", type=int,
                       help="input side in pixels (default: --init-from's; else the images' own, Imagenette 128)")
    train.add_argument("--crop-pct", type=parse_number,
                       help="eval transform: resize the short side to size / crop-pct, centre-crop (default: "
                            "--init-from's; else 1, Imagenette 0.875)")
    train.add_argument("--interpolation", choices=["bilinear", "bicubic", "lanczos", "nearest"],
                       help="resampling filter of the resizes (default: --init-from's; else bilinear)")
    train.add_argument("--seed", type=seed_number, default=0, help="initialisation, data order and attack starts (default 0)")
    train.add_argument("--split-seed", type=seed_number, default=None,
                       help="seed of the held-out validation split (default: --seed; --init-from: its base's); 0 "
                            "holds out the split that detect, fit-detector and reproduce use")
    train.add_argument("--workers", type=count, default=0, help="data-loading processes")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last memory format (default: on CUDA only)")
    train.add_argument("--device", default="auto")
    add_output_arguments(train, "checkpoint folder (written every epoch)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--init-from", metavar="MODEL",
                       help="start from this checkpoint's weights and input transform (fine-tuning; a name, folder "
                            "or hf-hub:...)")
    train.add_argument("--snapshot-every", type=int, default=0, metavar="N",
                       help="also keep every N-th epoch's checkpoint in <out>/epochs/epoch-NNN/ (default 0: none)")
    train.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                       help="pgd/fast: do not keep the best-PGD epoch in <out>/best/")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("eval", help="clean accuracy and accuracy under PGD (and APGD)")
    add_model_arguments(evaluate)
    add_data_arguments(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"],
                          help="val: the validation images the model's training held out of train (its recorded "
                               "size and seed), e.g. to choose between epochs without touching the test split")
    evaluate.add_argument("--val-size", type=int,
                          help="--split val: images held out (default: the split the model's training held out, "
                               "else 5000; Imagenette 500)")
    evaluate.add_argument("--limit", type=int, help="the first N images of the split")
    evaluate.add_argument("--exact", action="store_true",
                          help="only the exact images: the PNG files (CIFAR-10 archive), all of torchvision's "
                               "pickled CIFAR")
    evaluate.add_argument("--eps", type=parse_number, default=8 / 255)
    evaluate.add_argument("--norm", default="linf", choices=["linf", "l2"])
    evaluate.add_argument("--steps", type=int, default=20, help="PGD steps (default 20; 0: clean accuracy only)")
    evaluate.add_argument("--step-size", "--alpha", dest="step_size", type=parse_number, help="PGD step (default 2.5 eps / steps)")
    evaluate.add_argument("--apgd", action="store_true", help="also APGD-CE")
    evaluate.add_argument("--batch-size", type=positive_int, default=256)
    evaluate.add_argument("--seed", type=seed_number, default=0)
    evaluate.add_argument("--out", type=user_path, help="write the result as JSON to this file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace the file --out names")
    evaluate.add_argument("--record", action="store_true", help="store the result in the checkpoint's config.json")
    evaluate.set_defaults(run=command_eval)

    models = commands.add_parser("models", help="list the shipped checkpoints")
    models.add_argument("--markdown", action="store_true", help="a table of recipes and recorded accuracies")
    models.set_defaults(run=command_models)


def epoch_list(text: str) -> tuple:
    """'30,80' -> (30, 80), for --milestones."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of epochs, e.g. 30,80") from None


def command_train(args) -> int:
    from ..training import TrainConfig, train
    from ..training.checkpointing import earlier_run

    try:
        config = TrainConfig(
            data=args.data, architecture=args.arch, width=args.width, mode=args.mode, norm=args.norm, eps=args.eps,
            attack_steps=args.attack_steps, attack_step_size=args.attack_step_size, reject_cap=args.reject_cap,
            reject_weight=args.reject_weight, reject_adversarial_share=args.reject_adversarial_share,
            reject_attack=args.reject_attack, trades_beta=args.trades_beta, epochs=args.epochs,
            batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
            schedule=args.schedule, milestones=args.milestones, augment=args.augment, snapshot_every=args.snapshot_every,
            label_smoothing=args.label_smoothing, val_size=args.val_size, eval_subset=args.eval_subset,
            eval_steps=args.eval_steps,
            train_limit=args.train_limit, image_size=args.image_size, crop_pct=args.crop_pct,
            interpolation=args.interpolation, seed=args.seed, split_seed=args.split_seed, workers=args.workers,
            channels_last=args.channels_last, keep_best=args.keep_best, init_from=args.init_from,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out)
    check_writable_folder(out)
    earlier = [] if args.resume or args.overwrite else earlier_run(out)
    if earlier:
        raise UsageError(f"{out} already holds {', '.join(earlier)} of a training run; pass --resume to continue it "
                         "or --overwrite to start again, or choose another --out")
    from .. import distributed

    def show(row: dict) -> None:  # under torchrun, once (rank 0 writes the checkpoint and its record)
        if distributed.is_main():
            print(json.dumps(row), flush=True)

    device = pick_device(args.device)
    try:
        model = train(config, out, data_root=args.data_root, resume=args.resume, device=device, on_epoch=show,
                      download=args.download, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    if distributed.is_main():  # the other ranks' models carry no record of the run (KeyError: 'wall_seconds')
        print(f"wrote {out} ({model.spec.training['wall_seconds']:.0f} s on {model.spec.training['hardware']})")
    distributed.teardown()
    return 0


def command_eval(args) -> int:
    """Under torchrun each rank attacks its share of the batches, the counts are summed; rank 0 prints and writes."""
    from .. import data as datasets
    from .. import distributed
    from ..evaluation import evaluate_robustness
    from ..models.checkpoint import CONFIG_FILE, model_folder

    if args.steps == 0:  # clean accuracy only: an attack's flags would change nothing, and the record not say so
        unused = [flag for flag in ("--eps", "--norm") if flag_given(args, flag)]
        unused += ["--step-size"] if args.step_size is not None else []
        if unused:
            raise UsageError(f"--steps 0 measures clean accuracy only, which {', '.join(unused)} "
                             f"{'does' if len(unused) == 1 else 'do'} not change: leave "
                             f"{'it' if len(unused) == 1 else 'them'} out, or give --steps to attack too")
    device = join_processes(args)
    model = open_model(args, device)
    folder = model_folder(model)
    if args.record and folder is None:  # refused before the evaluation, not after it
        raise UsageError("--record writes into a local checkpoint folder's config.json; this model is not one")
    if args.record and not os.access(folder, os.W_OK | os.X_OK):  # written (atomically: a file beside it) at the end
        raise UsageError(f"--record writes into {folder / CONFIG_FILE}, but {folder} is not writable by this user: "
                         "copy the checkpoint folder somewhere writable, or keep the result apart with --out FILE")
    if args.out is not None and (Path(args.out).is_dir() or args.out.endswith(("/", os.sep))):
        raise UsageError(f"--out names a file to write the result to; {args.out} is a folder")
    if args.out is not None and Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"{args.out} exists: choose another --out, or pass --overwrite to replace it")
    if args.out is not None:
        check_writable_folder(Path(args.out).parent, file=Path(args.out))
    try:
        dataset = _eval_split(model, args)
        what, whole = f"{args.split} split", len(dataset)
        if args.exact:
            dataset, what = datasets.lossless_only(dataset), f"exact (PNG or pickled) images of the {args.split} split"
        only_png = len(dataset) < whole  # a part of the split (the archive's PNGs); all of it for pickled CIFAR
        dataset = datasets.first(dataset, args.limit, what)
        result = evaluate_robustness(model, dataset, eps=args.eps, norm=args.norm, steps=args.steps,
                                     step_size=args.step_size, apgd=args.apgd, batch_size=args.batch_size,
                                     seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    result.update(model=model.spec.source, data=str(args.data), split=args.split, exact_only=args.exact,
                  limit=args.limit, device=str(device), command="python -m robgen " + shlex.join(args.argv))
    if distributed.is_main():
        line = f"{what}, {result['n']} images: clean accuracy {result['clean_accuracy']:.4f}"
        if "pgd_accuracy" in result:
            line += f", PGD-{args.steps} ({args.norm}, eps {args.eps:.4g}) accuracy {result['pgd_accuracy']:.4f}"
        if args.apgd:
            line += f", APGD-{result['apgd']['steps']} accuracy {result['apgd_accuracy']:.4f}"
        print(line)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(args.out, json.dumps(result, indent=2) + "\n")
        if args.record:
            config = json.loads((folder / CONFIG_FILE).read_text())
            # the data set in one spelling ("cifar10" also when given as its folder), as the models table reads it
            # a validation split of another size (--val-size) than the one training held out: its own key
            # (cifar10-val40), not the whole split's record replaced
            sized = args.split == "val" and args.val_size is not None and args.val_size != datasets.recorded_val_size(
                model.spec, args.data)
            key = (f"{datasets.canonical_data(args.data)}-{args.split}{f'{args.val_size}' if sized else ''}"
                   f"{'-png' if args.exact and only_png else ''}{f'-first{args.limit}' if args.limit else ''}")
            records = config.setdefault("metrics", {}).setdefault("eval", {})
            if key in records and records[key].get("attack") != result.get("attack"):
                print(f"note: replaced the record {key!r} of {folder}, measured with another attack "
                      f"({_attack_words(records[key].get('attack'))}; now {_attack_words(result.get('attack'))})",
                      file=sys.stderr)
            records[key] = result
            write_text_atomically(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")  # never half a config
    distributed.teardown()
    return 0


def _eval_split(model, args):
    """The images `eval` measures: a split of the data set, or (--split val) the validation images held out of
    its train split by the model's training."""
    from .. import data as datasets

    if args.val_size is not None and args.split != "val":
        raise ValueError("--val-size sizes the held-out validation split: give it with --split val")
    split = "train" if args.split == "val" else args.split
    dataset = datasets.load_dataset(args.data, split, root=args.data_root, download=args.download, spec=model.spec)
    datasets.check_model_matches(model.spec, args.data, datasets.class_names(dataset))
    if args.split != "val":
        if datasets.one_folder(args.data) and datasets.recorded_val_size(model.spec, args.data) is not None:
            print(f"note: {args.data} has no test split (no train/ and test/ folders), so --split {args.split} "
                  "measures every image in it, the ones the model trained on included; --split val measures the "
                  "images its training held out", file=sys.stderr)
        return dataset
    return datasets.model_val_split(dataset, model.spec, args.data, args.val_size)[1]


# Where each data set's recorded accuracies live in a checkpoint's metrics["eval"] (keys written by
# `eval --record`), and how the table names them.
_EVAL_COLUMNS = {
    "cifar10": (("cifar10-test-png", "cifar10-test"), "932 PNG / 10k"),
    "imagenette": (("imagenette-test",), "3,925 val"),
}


def shipped_specs(names: List[str]) -> Tuple[List[Tuple[str, object]], List[str]]:
    """(name, spec) of every checkpoint that loads, and a line for each that does not (a newer robgen's, a broken
    copy): one such folder beside the others stopped the whole listing with a traceback."""
    from ..models import load_model

    loaded, broken = [], []
    for name in names:
        try:
            loaded.append((name, load_model(name).spec))
        except (OSError, ValueError, RuntimeError) as error:
            broken.append(f"{name}: does not load ({error})")
    return loaded, broken


def models_table(names: List[str]) -> str:
    """Markdown tables of shipped checkpoints, one per data set: recipe, hardware, wall time, recorded accuracies;
    below them, the checkpoints that do not load."""
    loaded, broken = shipped_specs(names)
    by_data = {}
    for name, spec in loaded:
        by_data.setdefault(str(spec.training.get("data", {}).get("name", "?")), []).append((name, spec))
    tables = []
    for data_name, models in by_data.items():
        keys, label = _EVAL_COLUMNS.get(data_name, ((f"{data_name}-test",), "test split"))
        lines = [
            f"| name | architecture | training | epochs | hardware | wall time | clean acc. ({label}) | robust acc. ({label}) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, spec in models:
            recipe = spec.training.get("config", {})
            evals = [spec.metrics.get("eval", {}).get(key, {}) for key in keys]

            def pct(key):  # "89.3 [87.1, 91.1]": with the 95% Wilson interval where the record has one
                def one(result):
                    if key not in result:
                        return "—"
                    low, high = result.get(f"{key}_ci") or (None, None)
                    return f"{100 * result[key]:.1f}" + (f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None else "")
                return " / ".join(one(result) for result in evals)

            attack = next((result["attack"] for result in evals if result.get("attack")), {})
            budget = f" ({_attack_words(attack)})" if attack else " (not measured)"
            mode = recipe.get("mode", "?")
            if mode != "standard":
                mode += f" ({_budget(recipe.get('norm'), recipe.get('eps', 0))})"
            if recipe.get("init_from"):
                source = Path(recipe["init_from"])  # a run's best/ folder is named by its run: "run/best"
                mode += f", fine-tuned from `{source.parent.name + '/' if source.name == 'best' else ''}{source.name}`"
            if spec.training.get("best_epoch"):
                mode += f", best PGD epoch {spec.training['best_epoch']}"
            size = "x".join(str(v) for v in spec.input_size[1:])
            lines.append(
                f"| `{name}` | {spec.architecture} width {spec.arch_kwargs.get('width', 64)}, {size} px | {mode} | "
                f"{spec.training.get('epochs_done', '?')} | {spec.training.get('hardware', '?')} | "
                f"{spec.training.get('wall_seconds', 0) / 60:.0f} min | {pct('clean_accuracy')} | "
                f"{pct('pgd_accuracy')}{budget} |"
            )
        tables.append(f"**{data_name}**\n\n" + "\n".join(lines))
    return "\n\n".join(tables + ["\n".join(f"- {line}" for line in broken)] if broken else tables)


def _budget(norm, eps) -> str:
    return f"L∞ {eps * 255:.3g}/255" if norm == "linf" else f"L2 {eps:g}"


def _attack_words(attack) -> str:
    """A recorded evaluation attack in words: "PGD-20 at L∞ 8/255"; "none" when there was none."""
    if not attack:
        return "none"
    return f"{str(attack.get('name', 'pgd')).upper()}-{attack.get('steps', '?')} at {_budget(attack.get('norm'), attack.get('eps', 0))}"


def command_models(args) -> int:
    from ..models import list_models

    names = list_models()
    if not names:
        print("no shipped checkpoints found")
        return 0
    if args.markdown:
        print(models_table(names))
    else:
        loaded, broken = shipped_specs(names)
        for name, spec in loaded:
            print(f"{name}: {spec.architecture} {spec.arch_kwargs}, {spec.num_classes} classes, "
                  f"trained {spec.training.get('config', {}).get('mode', '?')}")
        for line in broken:
            print(line)
    return 0
