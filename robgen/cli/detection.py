"""The energy-detector commands: `detect` (fit on validation data, evaluate on test data, write
detector.json and metrics.json) and `fit-detector` (fit the detector the app uses and store it
with the model, with its calibration energies).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..files import json_text, write_text_atomically
from .common import (
    UsageError, add_attack_arguments, add_data_arguments, add_model_arguments, add_output_arguments, build_attack,
    check_attack_flags, companion_output_path, count, open_model, parse_number, parse_temperatures, pick_device,
    positive_int, prepare_out_dir, user_path,
)

# The official temperature grid, a plain copy of robgen.detection.TEMPERATURES for parsing without
# importing the library (tests/test_startup.py pins the two together).
TEMPERATURES = (0.1, 0.2, 0.5, 1.0, 2.0, 10.0, 20.0)


def add_parsers(commands) -> None:
    detect = commands.add_parser("detect", help="fit the energy detector on validation data, evaluate it on test data")
    add_model_arguments(detect)
    add_attack_arguments(detect, steps=40)
    add_data_arguments(detect)
    add_protocol_arguments(detect)
    detect.add_argument("--val-size", type=int,
        help="validation images held out of train (default: the split the model's training held out, else 5000; Imagenette 500)")
    detect.add_argument("--limit", type=int, help="use the first N images of the validation and test splits")
    detect.add_argument("--batch-size", type=positive_int, default=256)
    detect.add_argument("--workers", type=count, default=0, help="data-loading processes")
    add_output_arguments(detect)
    detect.set_defaults(run=command_detect)

    fit_detector = commands.add_parser("fit-detector", help="fit the energy detector the app uses; store it with the model")
    add_model_arguments(fit_detector)
    add_attack_arguments(fit_detector, steps=10)
    add_data_arguments(fit_detector)
    add_protocol_arguments(fit_detector)
    fit_detector.add_argument("--limit", type=int, default=500, help="validation images to fit on, test images to check on")
    fit_detector.add_argument("--val-size", type=int,
        help="validation images held out of train (default: the split the model's training held out, else 5000; Imagenette 500)")
    fit_detector.add_argument("--batch-size", type=positive_int, default=250)
    fit_detector.add_argument("--out", type=user_path,
                              help="file or folder to write (default: detector.json in the checkpoint folder)")
    fit_detector.add_argument("--overwrite", action="store_true")
    fit_detector.set_defaults(run=command_fit_detector)


def add_protocol_arguments(parser) -> None:
    """The detector's threshold rule and temperature; the defaults are the official protocol."""
    parser.add_argument("--rule", default="youden", choices=["youden", "gmean", "fpr"],
                        help="threshold rule (default youden, as the official code)")
    parser.add_argument("--temperature", default="search",
                        help="energy temperature, or 'search' (by validation AUROC over --temperatures; the default)")
    parser.add_argument("--temperatures", type=parse_grid, default=TEMPERATURES,
                        help="the grid searched (default the official 0.1,0.2,0.5,1,2,10,20)")
    parser.add_argument("--target-fpr", type=parse_number, default=0.05, help="false-positive budget of --rule fpr")


def parse_grid(text: str) -> tuple:
    """--temperatures: comma-separated numbers > 0, e.g. 0.1,0.5,1,2 (`parse_temperatures`)."""
    try:
        return parse_temperatures(str(text))
    except UsageError as error:  # argparse names the flag itself: "argument --temperatures: ..."
        raise argparse.ArgumentTypeError(str(error).replace("--temperatures ", "", 1)) from None


def parse_temperature(text: str):
    """--temperature: a number, or 'search' (picked by validation AUROC)."""
    if text == "search":
        return text
    try:  # 1/2 too, as every other number; NaN and infinity get the detector's own message (checked_protocol)
        return parse_number(text) if "/" in text else float(text)
    except (argparse.ArgumentTypeError, ValueError):
        raise UsageError(f"--temperature must be a number or 'search', got {text!r}") from None


def checked_protocol(args):
    """The temperature of --temperature, once the detector's settings (--rule, --temperature, --temperatures,
    --target-fpr) are known to be valid: refused here, not after both splits have been attacked."""
    from ..detection import EnergyDetector

    temperature = parse_temperature(args.temperature)
    if args.target_fpr != 0.05 and args.rule != "fpr":
        raise UsageError(f"--target-fpr is the budget of --rule fpr; with --rule {args.rule} it would be ignored")
    if tuple(args.temperatures) != TEMPERATURES and temperature != "search":
        raise UsageError("--temperatures is the grid --temperature search searches; with --temperature "
                         f"{args.temperature} it would be ignored")
    try:
        EnergyDetector(args.rule, temperature, args.target_fpr, args.temperatures)
    except ValueError as error:
        raise UsageError(str(error).replace("target_fpr", "--target-fpr")) from None
    return temperature


def command_detect(args) -> int:
    from ..experiments.pipeline import detection_experiment, detection_splits

    temperature = checked_protocol(args)
    check_attack_flags(args)  # before the model and the data load
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
    try:  # e.g. an attack that changed none of the images: nothing to fit a detector on (says what to change)
        result = detection_experiment(model, splits, attack, rule=args.rule, temperature=temperature,
                                      temperatures=args.temperatures, target_fpr=args.target_fpr,
                                      batch_size=args.batch_size, workers=args.workers)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    detector, metrics = result.detector.bind(model), result.report
    metrics.update(model=model.spec.source, seconds=time.perf_counter() - started, device=str(device))
    detector.save(out / "detector.json")
    write_text_atomically(out / "metrics.json", json_text(metrics))
    print(
        f"threshold {detector.threshold:.4f} (rule {args.rule}, T={detector.temperature:g}) on {metrics['n_validation']} "
        f"validation images; test ({metrics['n_test']} images): detection rate {metrics['detection_rate']:.3f}, "
        f"FPR {metrics['false_positive_rate']:.3f}, FNR {metrics['false_negative_rate']:.3f}, AUROC {metrics['auroc']:.3f}; "
        f"accuracy clean {metrics['clean_accuracy']:.3f} -> adversarial {metrics['adversarial_accuracy']:.3f}"
    )
    print(f"wrote detector.json and metrics.json to {out}")
    return 0


def command_fit_detector(args) -> int:
    from ..experiments.calibration import DETECTOR_FILE, calibrate_detector

    temperature = checked_protocol(args)
    check_attack_flags(args)  # before the model and the data load
    device = pick_device(args.device)
    model = open_model(args, device)
    path = companion_output_path(args, model, DETECTOR_FILE)
    attack = build_attack(args, model, device)
    try:
        detector = calibrate_detector(model, args.data, attack, n=args.limit, rule=args.rule, temperature=temperature,
                                      temperatures=args.temperatures, val_size=args.val_size,
                                      data_root=args.data_root, download=args.download, batch_size=args.batch_size,
                                      seed=args.seed, target_fpr=args.target_fpr)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    detector.save(path)
    test = detector.calibration["test"]
    print(f"threshold {detector.threshold:.4f} (rule {detector.rule}, T={detector.temperature:g}) on {args.limit} "
          f"validation images; on {args.limit} test images: "
          f"detection rate {test['detection_rate']:.3f}, FPR {test['false_positive_rate']:.3f}, AUROC {test['auroc']:.3f}")
    print(f"wrote {path}")
    return 0
