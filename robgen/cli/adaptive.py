r"""The `adaptive` command: detectors under attacks that know them, as detection-aware robust accuracy
(robgen/experiments/adaptive.py).

    python -m robgen adaptive --model cifar10-resnet10-standard --data cifar10 --detector energy,band \
        --eps 4/255,8/255,64/255 --limit 500 --steps 100 --restarts 3 --out runs/adaptive
    python -m robgen adaptive ... --estimate-only          # the model passes it would make, then stop
    python -m robgen adaptive --model cifar10-resnet10-robust --data cifar10 --detector robust-margin \
        --radius 1/255 --inner-steps 5 ...                 # a detector's own settings (--temperature(s) too)

Every input is checked before any work: the detectors, the eps list, the numbers, a model without a
recorded validation split for the data set, and saved detectors (--detector-file) calibrated for
another model are refused with a message that says what to do.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Tuple

from .common import (
    UsageError, add_data_arguments, add_model_arguments, check_writable_folder, join_processes, open_model,
    parse_number, parse_numbers, parse_temperatures, positive_int, seed_number, user_path,
)

# A plain copy of robgen.detection.reject.KINDS, for parsing before the library is imported (a test pins it)
DETECTORS = ("energy", "band", "class-energy", "multi-t", "mahalanobis", "energy-gap", "robust-margin")
FPR_AMONG = ("all", "correct")  # robgen.detection.reject.FPR_AMONG, as DETECTORS is its KINDS (a test keeps both equal)
PRODUCTS = ["results.json", "results.md", "adaptive_dara.png"]
# the detectors' own settings the command sets: flag -> (setting, the kinds that take it); a test pins the kinds
SETTING_FLAGS = {
    "temperature": ("temperature", ("energy", "band", "energy-gap")),
    "temperatures": ("temperatures", ("multi-t",)),
    "radius": ("radius", ("robust-margin",)),
    "inner_steps": ("steps", ("robust-margin",)),
}


def add_parsers(commands) -> None:
    adaptive = commands.add_parser(
        "adaptive", help="detectors under adaptive attacks that know them: detection-aware robust accuracy")
    add_model_arguments(adaptive)
    add_data_arguments(adaptive)
    adaptive.add_argument("--detector", action="append", default=[], metavar="KIND",
                          help=f"{', '.join(DETECTORS)}; repeat or separate by commas (default energy)")
    adaptive.add_argument("--detector-file", action="append", default=[], metavar="JSON", type=user_path,
                          help="a saved reject option (RejectOption.save) calibrated for this model, evaluated as "
                               "it is; repeat")
    adaptive.add_argument("--temperature", type=parse_number,
                          help="the energy's temperature T of energy, band and energy-gap (default 1)")
    adaptive.add_argument("--temperatures",
                          help="multi-t's temperatures, separated by commas (default 0.1,0.2,0.5,1,2,10,20)")
    adaptive.add_argument("--radius", type=parse_number,
                          help="robust-margin's ball, L-inf in (0, 1], e.g. 2/255 (the default)")
    adaptive.add_argument("--inner-steps", type=int, help="robust-margin's steps inside its ball (default 3)")
    adaptive.add_argument("--eps", default="8/255",
                          help="L-inf radii in (0, 1], separated by commas, e.g. 4/255,8/255,64/255 (default 8/255)")
    adaptive.add_argument("--limit", type=int, default=500, help="first N test images (default 500)")
    adaptive.add_argument("--steps", type=int, default=100, help="steps of every attack (default 100)")
    adaptive.add_argument("--restarts", type=int, default=3, help="restarts of every adaptive attack (default 3)")
    adaptive.add_argument("--target-classes", type=int,
                          help="target classes of the targeted attacks, APGD-T and logit matching, one run each, "
                               "the likeliest first (default: as many as --restarts; AutoAttack's APGD-T takes 9)")
    adaptive.add_argument("--target-fpr", type=parse_number, default=0.05,
                          help="the share of clean validation images (those --fpr-among names) a threshold may "
                               "reject (default 0.05)")
    adaptive.add_argument("--fpr-among", choices=FPR_AMONG, default="all",
                          help="the validation images --target-fpr is counted among: all (default), or correct, the "
                               "ones the model classifies correctly (Chen et al. 2023's stratified convention: the "
                               "misclassified ones may be rejected beyond it, so more of all clean images are)")
    adaptive.add_argument("--lambdas", default="0.6,1.2,2",
                          help="HE-PGD's λ for the non-adaptive references, separated by commas (default 0.6,1.2,2)")
    adaptive.add_argument("--batch-size", type=positive_int, default=100)
    adaptive.add_argument("--seed", type=seed_number, default=0)
    adaptive.add_argument("--skip-evaded", action="store_true",
                          help="run each adaptive attack after the first only on the images no earlier one evaded: "
                               "the same DARA for about half the passes on a robust model, the per-attack rates then "
                               "among the images each attack ran on")
    adaptive.add_argument("--estimate-only", action="store_true",
                          help="print the model passes the run would make and stop (no --out needed)")
    adaptive.add_argument("--out", type=user_path,
                          help="output folder: results.json, results.md, adaptive_dara.png, detectors/")
    adaptive.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    adaptive.add_argument("--keep-stages", action="store_true",
                          help="keep the finished stages in OUT/.stages after the run (a few kB each), so that "
                               "--report-only can write its report again")
    adaptive.add_argument("--report-only", action="store_true",
                          help="write the results and report of a run finished with --keep-stages again from its "
                               "stages, with today's report code: the same command and software, no attack made")
    adaptive.set_defaults(run=command_adaptive)


def parse_detectors(values: List[str]) -> Tuple[str, ...]:
    """The --detector values (repeated and/or comma-separated), each a known kind; energy when none."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in DETECTORS]
    if unknown:
        raise UsageError(f"unknown detector {unknown[0]!r}: choose from {', '.join(DETECTORS)}")
    if len(set(names)) < len(names):
        raise UsageError(f"--detector names a detector twice ({', '.join(names)})")
    return tuple(names)


def detector_settings(args, detectors: Tuple[str, ...]) -> Dict[str, Dict[str, object]]:
    """The settings flags given, as {kind: {setting: value}} for the named kinds that take each; a flag that no
    named detector takes is refused (it would change nothing)."""
    settings: Dict[str, Dict[str, object]] = {}
    for flag, (name, kinds) in SETTING_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        takers = [kind for kind in detectors if kind in kinds]
        if not takers:
            named = f"--detector {','.join(detectors)}" if detectors else "no --detector"
            raise UsageError(f"--{flag.replace('_', '-')} sets {', '.join(kinds[:-1]) + ' or ' if kinds[1:] else ''}"
                             f"{kinds[-1]}, which this run does not name ({named}): add one, or drop the flag (a "
                             "--detector-file detector keeps the settings it was calibrated with)")
        if flag == "temperatures":
            value = parse_temperatures(value)
        for kind in takers:
            settings.setdefault(kind, {})[name] = value
    return settings


def parse_eps(text: str) -> Tuple[float, ...]:
    values = parse_numbers(text, "--eps")
    bad = [value for value in values if not 0 < value <= 1]
    if bad:
        raise UsageError(f"--eps must be in (0, 1] (pixels are in [0, 1]: write 8/255, not 8), got {bad[0]:g}")
    return values


def _check_arguments(args) -> dict:
    """Everything argparse cannot check, before the model is loaded: the settings as keywords."""
    for flag in ("limit", "steps", "restarts", "batch_size", "target_classes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0 < args.target_fpr < 1:
        raise UsageError(f"--target-fpr must be in (0, 1), e.g. 0.05, got {args.target_fpr:g}")
    if not args.out and not args.estimate_only:
        raise UsageError("--out is required (the output folder), unless --estimate-only")
    if args.out and not args.estimate_only:
        check_writable_folder(Path(args.out))
    if args.report_only and args.estimate_only:
        raise UsageError("--report-only writes a finished run's report again and --estimate-only counts the passes "
                         "of a run to come: give one of them")
    if args.report_only and args.out:
        from ..experiments.adaptive import STAGES, require_kept_stages

        try:
            require_kept_stages(Path(args.out) / STAGES, args.overwrite)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if not (Path(args.out) / "results.json").is_file():  # stages of a run cut short: some are missing
            raise UsageError(f"{args.out} holds no results.json: the run that kept these stages has not finished, "
                             "so a report would lack its missing stages; run the same command without --report-only "
                             "to continue it (its finished stages are read back)")
    for path in args.detector_file or ():
        if not Path(path).is_file():
            raise UsageError(f"--detector-file {path} does not exist: give the JSON a reject option was saved to")
    detectors = parse_detectors(args.detector)
    if not detectors and not args.detector_file:
        detectors = ("energy",)
    return dict(detectors=detectors, eps_list=parse_eps(args.eps), limit=args.limit, steps=args.steps,
                restarts=args.restarts, target_classes=args.target_classes, target_fpr=args.target_fpr,
                fpr_among=args.fpr_among, seed=args.seed, batch_size=args.batch_size,
                lambdas=parse_numbers(args.lambdas, "--lambdas"), skip_evaded=args.skip_evaded,
                detector_settings=detector_settings(args, detectors))


def _detector_files(paths: List[str], model, kinds: Tuple[str, ...]) -> list:
    """The saved reject options, each refused unless calibrated for this model, and named once with --detector."""
    from ..detection.reject import RejectOption

    options = []
    for path in paths:
        try:
            option = RejectOption.load(path, model=model)
        except ValueError as error:
            raise UsageError(f"--detector-file {path}: {error}") from None
        if option.kind in kinds or option.kind in [o.kind for o in options]:
            raise UsageError(f"--detector-file {path} is a {option.kind!r} detector, which is already named: "
                             "give each kind once")
        options.append(option)
    return options


def command_adaptive(args) -> int:
    """Under torchrun each rank attacks its share of the test images; rank 0 prints and writes."""
    from .. import data as datasets
    from .. import distributed
    from ..experiments.adaptive import STAGES, AdaptiveSettings, adaptive_evaluation, detector_profiles, \
        estimate_passes, require_validation_split, shares_references
    from ..experiments.adaptive_report import points_text
    from ..experiments.pipeline import detection_splits

    keywords = _check_arguments(args)
    try:  # the settings' own checks, before the model is loaded (detector files are named after loading it)
        AdaptiveSettings(**{**keywords, "detectors": keywords["detectors"] or ("energy",)})
    except ValueError as error:
        raise UsageError(str(error)) from None
    device = join_processes(args)
    model = open_model(args, device)
    try:
        require_validation_split(model.spec, args.data)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.target_classes is not None and args.target_classes > model.spec.num_classes - 1:
        raise UsageError(f"--target-classes {args.target_classes}: a {model.spec.num_classes}-class model has "
                         f"{model.spec.num_classes - 1} classes to aim an image at; give at most that many")
    try:  # the images exist (--estimate-only counts passes on them), before any work
        splits = detection_splits(model, args.data, data_root=args.data_root, download=args.download)
        datasets.first(splits.test, args.limit, "test split")
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    given = _detector_files(args.detector_file, model, keywords["detectors"])
    settings = AdaptiveSettings(**{**keywords, "detectors": (*keywords["detectors"], *(o.kind for o in given))})
    profiles = detector_profiles(settings.detectors, {option.kind: option for option in given},
                                 settings.detector_settings)
    estimate = estimate_passes(
        settings, settings.limit, len(splits.validation),
        settings.reference_images(len(splits.train)) if "mahalanobis" in keywords["detectors"] else 0,
        shares_references(profiles),
        {name: option.passes_per_score for name, option in profiles.items()})
    if distributed.is_main():
        print(f"estimate: {estimate['forward_backward_passes']:,} forward+backward and {estimate['forward_passes']:,} "
              f"forward image-passes at most ({estimate['suites']} suites of {len(settings.attacks)} attacks on "
              f"{settings.limit} test images)")
    if args.estimate_only:
        distributed.teardown()
        return 0
    out = Path(args.out)
    existing = [name for name in PRODUCTS if (out / name).exists()]
    if existing and not (args.overwrite or args.report_only):
        raise UsageError(f"{out} already holds {', '.join(existing)}; choose another --out or pass --overwrite")
    created = not out.exists()
    stage_dir = out / STAGES  # an interrupted run's finished stages: the same command continues it
    if args.report_only and distributed.is_main():
        print(f"writing the report again from the stages in {stage_dir}; no attack is made")
    elif stage_dir.is_dir() and distributed.is_main():
        print(f"{stage_dir} holds the stages of an earlier run: those of this same run (command, settings, "
              "detectors, weights, code) are read back, not recomputed; "
              + ("those of another run are removed" if args.overwrite
                 else "another run's are refused, left as they are"))
    keywords["detectors"] = (*keywords["detectors"], *given)
    try:
        results = adaptive_evaluation(model, args.data, out_dir=out if distributed.is_main() else None,
                                      data_root=args.data_root, download=args.download, stage_dir=stage_dir,
                                      replace_stale_stages=args.overwrite, keep_stages=args.keep_stages,
                                      report_only=args.report_only, **keywords)
    except (FileNotFoundError, ValueError) as error:
        if created and distributed.is_main():  # a refused run leaves nothing behind
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: finished stages stay for the next run
        raise UsageError(str(error)) from None
    if distributed.is_main():
        for row in sorted(results["rows"], key=lambda row: (row["detector"], row["eps"])):
            dara = row["dara"]
            gain = row.get("gain_over_bare")
            print(f"{row['detector']:>14} at {row['eps_label']:>7}: DARA {100 * dara['rate']:.1f}% "
                  f"[{100 * dara['ci'][0]:.1f}, {100 * dara['ci'][1]:.1f}] of {dara['n']}"
                  + (f"; against the bare model {points_text(gain)}" if gain is not None else ""))
        for check in results["sanity"]:
            if check["passed"] is False:
                print(f"sanity check FAILED: {check['check']} ({check['subject']}): {check['detail']}")
        print(f"wrote results.json, results.md and adaptive_dara.png to {out} ({results['wall_seconds']:.0f} s)")
    distributed.teardown()
    return 0
