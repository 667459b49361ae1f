"""The synthesis commands: `fit-seeds` (class-conditional Gaussian seeds, stored with the model),
`synthesize` (a PNG grid of samples per class), `gradmap` (input-gradient maps under several models),
`synthesis-quality` (how convincing to other models, and how diverse, each model's samples are) and
`budget-sweep` (the quasi-robust budget: clean accuracy and a robust judge's view of each candidate).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import List

from ..files import json_text, write_text_atomically
from .common import (
    UsageError, add_data_arguments, add_model_arguments, add_output_arguments, check_writable_folder,
    companion_output_path, count, input_paths, keyed_by_folder, open_model, parse_number, pick_device, positive_int,
    prepare_out_dir, read_images, seed_number, user_path,
)


def add_parsers(commands) -> None:
    seeds = commands.add_parser("fit-seeds", help="fit the class-conditional Gaussian seeds of synthesis; store them with the model")
    add_model_arguments(seeds)
    add_data_arguments(seeds)
    seeds.add_argument("--resolution", type=int, default=8, help="fit on images downsampled to this size (default 8)")
    seeds.add_argument("--rank", type=int, default=64, help="principal components kept per class (default 64)")
    seeds.add_argument("--limit", type=int, help="the first N training images (class-balanced)")
    seeds.add_argument("--workers", type=count, default=0, help="data-loading processes")
    seeds.add_argument("--out", type=user_path,
                       help="file or folder to write (default: seeds.safetensors in the checkpoint folder)")
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
    synth.add_argument("--seed", type=seed_number, default=0)
    synth.add_argument("--scale", type=int,
                       help="enlarge each sample this many times in the grid (default: to about 96 px; 3 for CIFAR-10)")
    add_output_arguments(synth)
    synth.set_defaults(run=command_synthesize)

    gradmap = commands.add_parser("gradmap", help="input-gradient maps of images under several models, side by side")
    gradmap.add_argument("--models", nargs="+", required=True, help="model names (e.g. cifar10-resnet10-standard cifar10-resnet10-robust)")
    gradmap.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    gradmap.add_argument("--device", default="auto")
    gradmap.add_argument("--out", required=True, type=user_path, help="the PNG figure to write")
    gradmap.add_argument("--overwrite", action="store_true")
    gradmap.add_argument("images", nargs="+", help="image files")
    gradmap.set_defaults(run=command_gradmap)

    quality = commands.add_parser("synthesis-quality",
                                  help="how convincing (to other models) and diverse each model's samples are")
    quality.add_argument("--models", nargs="+", required=True, help="generators, e.g. the robust, quasi-robust and standard models")
    quality.add_argument("--judges", nargs="+", required=True, help="models that judge every generator's samples")
    add_judged_synthesis_arguments(quality)
    add_output_arguments(quality)
    quality.set_defaults(run=command_synthesis_quality)

    sweep = commands.add_parser("budget-sweep",
                                help="pick the quasi-robust budget: clean accuracy and a robust judge's view of the samples")
    sweep.add_argument("--models", nargs="+", required=True,
                       help="the candidates (one per budget) and the standard model they are compared with")
    sweep.add_argument("--reference", help="the standard model among --models (default: the first)")
    sweep.add_argument("--judge", required=True, help="an independent robust model that judges the samples")
    add_data_arguments(sweep)
    sweep.add_argument("--limit", type=int, default=1000, help="test images for the clean accuracy (default 1000)")
    sweep.add_argument("--max-drop", type=parse_number, default=0.03, help="eligible: clean accuracy within this of the reference")
    add_judged_synthesis_arguments(sweep)
    add_output_arguments(sweep)
    sweep.set_defaults(run=command_budget_sweep)


def add_judged_synthesis_arguments(parser) -> None:
    """The samples that `synthesis-quality` and `budget-sweep` draw from every model for their judges."""
    parser.add_argument("--n", type=int, default=16, help="samples per class (default 16)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eps", type=parse_number, help="L2 budget of the ascent (default 0.1 sqrt(C H W))")
    parser.add_argument("--step-size", type=parse_number, help="L2 step (default 2.5 eps / steps)")
    parser.add_argument("--init", default="gaussian", choices=["gaussian", "uniform", "gray"])
    parser.add_argument("--seed", type=seed_number, default=0)
    parser.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--grid-columns", type=positive_int, default=8, help="samples per class shown in each grid PNG")


def command_fit_seeds(args) -> int:
    from .. import data as datasets
    from ..synthesis.seeds import SEEDS_FILE, SeedDistribution

    if args.resolution < 1 or args.rank < 0:
        raise UsageError(f"--resolution must be at least 1 and --rank at least 0, got {args.resolution} and "
                         f"{args.rank}")
    pick_device(args.device)  # refused as every command refuses it (cuda where there is none), though unused:
    model = open_model(args, pick_device("cpu"))  # the fit reads pixels only, on the CPU
    if args.resolution > min(model.spec.input_size[1:]):  # seeds are drawn at it and upsampled to the input
        raise UsageError(f"--resolution {args.resolution} is above the model's input side "
                         f"{min(model.spec.input_size[1:])}: seeds are fitted on images downsampled to it")
    path = companion_output_path(args, model, SEEDS_FILE)
    try:
        train = datasets.load_dataset(args.data, "train", root=args.data_root, download=args.download,
                                      spec=model.spec)
        # the data set's classes, by whatever names its folders give (Imagenette's WordNet ids), are the model's
        datasets.check_model_matches(model.spec, args.data, datasets.class_names(train), by_name=True)
        classes = list(model.spec.class_labels)  # what the seeds are named by, and checked against when used
        train = datasets.first(train, args.limit, "train split")
        seeds = SeedDistribution.fit(datasets.make_loader(train, batch_size=500, workers=args.workers), classes,
                                     resolution=args.resolution, rank=args.rank)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    seeds.save(path)
    print(f"fitted class-conditional seeds ({args.resolution}x{args.resolution}, rank {seeds.factors.shape[2]}) "
          f"on {len(train)} images of {args.data}; wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


def command_synthesize(args) -> int:
    import torch

    from ..engine.random import class_generator
    from ..models.state import pixels_for
    from ..plots import image_grid
    from ..progress import progress_bar
    from ..synthesis import sgld_sample, synthesize
    from ..synthesis.sgld import DEFAULT_STEP_SIZE as SGLD_STEP_SIZE

    device = pick_device(args.device)
    model = open_model(args, device)
    spec = model.spec
    try:
        classes = [spec.class_index(c) for c in (args.classes or range(spec.num_classes))]
    except ValueError as error:
        raise UsageError(str(error)) from None
    if len(set(classes)) < len(classes):  # results.json keeps one trace per class: a second row's would replace it
        twice = sorted({spec.class_labels[i] for i in classes if classes.count(i) > 1})
        raise UsageError(f"--classes names {', '.join(twice)} more than once: give each class once (--n draws "
                         "more images of each)")
    if args.scale is not None and args.scale < 1:
        raise UsageError(f"--scale must be at least 1 (times each sample is enlarged in the grid), got {args.scale}")
    ignored = ([flag for flag, given in (("--eps", args.eps is not None),
                                         ("--objective", args.objective != "log_prob")) if given]
               if args.method == "sgld" else (["--noise"] if args.noise != 0.01 else []))
    if ignored:  # another method's settings would be ignored (and not recorded)
        raise UsageError(f"--method {args.method} does not take {', '.join(ignored)} (--eps and --objective are "
                         "ascent's, --noise is sgld's): leave it out")
    step_size = SGLD_STEP_SIZE if args.method == "sgld" and args.step_size is None else args.step_size  # 0 refused
    init = args.init.lower() if args.init.lower() in ("gaussian", "uniform", "gray") else args.init
    if init == "gaussian":
        require_seeds([model])
    if init not in ("gaussian", "uniform", "gray"):
        if not Path(init).expanduser().is_file():  # `--init=~/bird.png`: no shell expands that `~`
            raise UsageError(f"--init {init}: neither gaussian, uniform, gray nor an image file")
        init = read_images([init], spec)  # (load_image expands the `~` itself)
    out = prepare_out_dir(Path(args.out), args.overwrite, ["grid.png", "results.json"])
    rows, traces, started = [], {}, time.perf_counter()
    for index in progress_bar(classes, desc=f"{args.method}: classes", progress=len(classes) > 1):
        # each class its own stream: its images the same whichever other classes --classes names, in any order
        generator = class_generator(args.seed, index, device)
        try:
            if args.method == "sgld":
                images, trace = sgld_sample(model, index, args.n, steps=args.steps,
                                            step_size=step_size, noise=args.noise, init=init,
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
        samples = pixels_for(model, grid.flatten(0, 1).to(device))  # float32 samples: a half model's type
        probs = model(samples).float().softmax(1).view(len(classes), args.n, -1).cpu()
    settings = ({"step_size": step_size, "noise": args.noise} if args.method == "sgld" else
                {"step_size": args.step_size, "eps": args.eps, "objective": args.objective})  # None: the default
    report = {
        "model": spec.source, "method": args.method, "init": args.init, "seed": args.seed, "steps": args.steps,
        "n": args.n, **settings, "seconds": time.perf_counter() - started,
        "classes": [{"class": spec.class_labels[i], "mean_target_probability": float(probs[row, :, i].mean())}
                    for row, i in enumerate(classes)],
        "traces": traces,
    }
    write_text_atomically(out / "results.json", json_text(report))
    for row in report["classes"]:
        print(f"{row['class']}: mean p(class | sample) = {row['mean_target_probability']:.3f} under {Path(spec.source).name}")
    print(f"wrote grid.png ({len(classes)} classes x {args.n} samples) and results.json to {out}")
    return 0


def gradient_map_formats() -> set:
    """The file endings matplotlib writes figures in (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def command_gradmap(args) -> int:
    from ..plots import gradient_maps
    from ..synthesis import input_gradient

    if args.out.endswith(("/", os.sep)):
        raise UsageError(f"--out {args.out} names a folder; --out names the figure's file, e.g. maps.png")
    out = Path(args.out)
    if out.is_dir():  # before the ending is added: a folder named without a dot got NAME.png beside it
        raise UsageError(f"--out {args.out} is a folder; --out names the figure's file, e.g. maps.png")
    if not out.suffix:  # matplotlib would write NAME.png: check and report that file
        out = out.with_name(out.name + ".png")
    formats = gradient_map_formats()
    if out.suffix.lstrip(".").lower() not in formats:  # "maps-eps0.03" reads as format "03"
        raise UsageError(f"--out {args.out}: the figure's format is its ending, and {out.suffix!r} is none of "
                         f"{', '.join('.' + name for name in sorted(formats))}: end it with .png")
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; --out names the figure's file, e.g. maps.png")
    if out.resolve() in input_paths(args.images):  # --overwrite replaces an earlier figure, not a photo given
        raise UsageError(f"--out {out} is one of the input images, and the figure would be written over it: choose "
                         "another --out")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; choose another --out or pass --overwrite")
    check_writable_folder(out.parent, file=out)
    device = pick_device(args.device)
    models = {key: open_model(args, device, name) for key, name in keyed_by_folder(args.models).items()}
    classes = {tuple(m.spec.class_labels) for m in models.values()}
    if len(classes) > 1:
        raise UsageError("the models classify different classes: compare models of one data set")
    # each model reads the images through its own eval transform (Imagenette: 128 or 160 px, the same crop)
    views = {name: read_images(args.images, model.spec).to(device) for name, model in models.items()}
    gradients = {name: input_gradient(model, views[name]).cpu() for name, model in models.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    gradient_maps(next(iter(views.values())).cpu(), gradients, out)
    print(f"wrote gradient maps of {len(args.images)} images under {len(models)} models to {out}")
    return 0


def require_seeds(models) -> None:
    """Every model's seed distribution (the default --init gaussian draws from it), here, before any work, and in the
    command's words."""
    from ..synthesis import load_seeds

    for model in models:
        try:
            load_seeds(model, instead="or pass --init uniform or gray")
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(str(error)) from None


def grid_files(generators) -> List[str]:
    """The sample grids `synthesis-quality` and `budget-sweep` write, one per generator: outputs like results.json,
    which --overwrite alone replaces."""
    return [f"grid_{name}.png" for name in generators]


def remove_replaced_grids(out: Path, generators) -> None:
    """The grids of the generators a replaced run's results.json names (--overwrite) that this run has not: they
    would stand beside results that do not name them."""
    try:
        replaced = json.loads((out / "results.json").read_text())
        names = {row["generator"] for row in replaced.get("diversity", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # none, or not this command's
        return
    for name in grid_files(sorted(names - set(generators))):
        (out / name).unlink(missing_ok=True)


def command_synthesis_quality(args) -> int:
    from ..plots import image_grid
    from ..synthesis.quality import measure_quality, quality_markdown

    generator_names, judge_names = keyed_by_folder(args.models), keyed_by_folder(args.judges, "judges")
    device = pick_device(args.device)
    loaded = {name: open_model(args, device, name) for name in dict.fromkeys(args.models + args.judges)}
    generators = {key: loaded[name] for key, name in generator_names.items()}
    judges = {key: loaded[name] for key, name in judge_names.items()}
    if args.init == "gaussian":
        require_seeds(generators.values())
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json", "results.md", *grid_files(generators)])
    started = time.perf_counter()
    try:
        result = measure_quality(generators, judges, n=args.n, seed=args.seed, steps=args.steps, eps=args.eps,
                                 step_size=args.step_size, init=args.init)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    remove_replaced_grids(out, generators)
    for name, grid in result.pop("samples").items():
        labels = next(iter(generators.values())).spec.class_labels
        image_grid(grid[:, : args.grid_columns], out / grid_files([name])[0], row_labels=labels)
    result.update(settings={"steps": args.steps, "eps": args.eps, "step_size": args.step_size, "init": args.init},
                  wall_seconds=time.perf_counter() - started, device=str(device))
    write_text_atomically(out / "results.json", json_text(result))
    write_text_atomically(out / "results.md", quality_markdown(result))
    print(quality_markdown(result))
    print(f"wrote results.json, results.md and grid_*.png to {out}")
    return 0


def command_budget_sweep(args) -> int:
    from .. import data as datasets
    from ..experiments.budget_sweep import budget_sweep, sweep_markdown
    from ..plots import image_grid

    keyed_by_folder(list(args.models) + [args.judge], "models (the judge included)")  # the table names them so
    if not 0 <= args.max_drop < 1:  # NaN fails this too; 3 (meant as points) would make every candidate eligible
        raise UsageError(f"--max-drop is a share of clean accuracy in [0, 1), e.g. 0.03 for 3 points, got {args.max_drop}")
    keys = keyed_by_folder(args.models)
    reference = Path(args.reference).name if args.reference else next(iter(keys))
    if not [key for key in keys if key != reference]:  # the sweep compares candidates with the reference
        raise UsageError(f"--models names only the reference ({reference}): add at least one candidate model to "
                         "compare with it")
    device = pick_device(args.device)
    candidates = {key: open_model(args, device, name) for key, name in keys.items()}
    judge = open_model(args, device, args.judge)
    if args.init == "gaussian":  # every candidate starts from the reference's seeds (experiments/budget_sweep.py)
        require_seeds([candidates[reference]] if reference in candidates else candidates.values())
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json", "results.md", *grid_files(candidates)])
    started = time.perf_counter()
    try:
        spec = candidates[reference].spec if reference in candidates else next(iter(candidates.values())).spec
        test = datasets.load_dataset(args.data, "test", root=args.data_root, download=args.download, spec=spec)
        for name, model in [*candidates.items(), (Path(args.judge).name, judge)]:
            datasets.check_model_matches(model.spec, args.data, datasets.class_names(test))
        test = datasets.first(test, args.limit, "test split")
        result = budget_sweep(candidates, reference, Path(args.judge).name, judge, test, max_drop=args.max_drop,
                              n=args.n, seed=args.seed, steps=args.steps, eps=args.eps, step_size=args.step_size,
                              init=args.init)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    remove_replaced_grids(out, candidates)
    for name, grid in result.pop("samples").items():
        image_grid(grid[:, : args.grid_columns], out / grid_files([name])[0], row_labels=spec.class_labels)
    result.update(settings={"steps": args.steps, "eps": args.eps, "step_size": args.step_size, "init": args.init},
                  data=str(args.data), wall_seconds=time.perf_counter() - started, device=str(device))
    write_text_atomically(out / "results.json", json_text(result))
    write_text_atomically(out / "results.md", sweep_markdown(result))
    print(sweep_markdown(result))
    print(f"wrote results.json, results.md and grid_*.png to {out}")
    return 0
