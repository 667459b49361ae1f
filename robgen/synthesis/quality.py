"""How convincing and how diverse synthesised images are, judged by other models.

For every generator model, `measure_quality` synthesises `n` images of every
class (same seeds, same settings) and asks every judge model for
p(target class | image). A judge that is not the generator is an
independent opinion; the generator judging itself is not (on a standard
model its "samples" are adversarial examples that fool it and nobody else).
Diversity is the mean pairwise L2 distance between the samples of one
class, next to the same number for the seeds they started from.

Models of one data set may take different input sizes (Imagenette: 128 or
160 px). A judge then sees each sample resized to its own input size
(bilinear, antialiased): a sample is the whole crop its generator sees, so
it maps onto the whole crop the judge sees (this assumes one crop_pct, as
every shipped model has). Distances stay at the generator's own size (an L2
distance grows with the square root of the pixel count, as the default
synthesis budget does; an explicit `eps` is the same total budget at every
size). "Same seeds" then means the same random draws: each generator starts
from its own seed file at its own size, and the "seeds only" row is the
first generator's.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..engine.random import class_generator
from ..metrics import mean_interval, rate_interval
from ..models.fingerprint import weights_fingerprint
from ..models.state import eval_mode, model_device, model_dtype
from ..progress import progress_bar
from .ascent import synthesize
from .seeds import SeedDistribution, initial_images

SEEDS_ROW = "seeds only (no ascent)"


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of images (N >= 2) of one set."""
    flat = images.flatten(1).double()
    if len(flat) < 2:
        raise ValueError("diversity needs at least 2 images per class")
    # exact differences: the matrix-product shortcut, taken past 25 images, left identical images 3e-7 apart
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    n = len(flat)
    return float(distances.sum() / (n * (n - 1)))


def measure_quality(
    generators: Dict[str, torch.nn.Module],
    judges: Dict[str, torch.nn.Module],
    n: int = 16,
    seed: int = 0,
    seeds: Optional[SeedDistribution] = None,
    progress=True,
    **settings,
) -> dict:
    """Judge-probability matrix, judge accuracy and diversity of samples from each generator.

    `settings` go to `synthesize` (steps, eps, step_size, init, objective).
    Returns a dict with `rows` (one per generator x judge), `diversity` (one
    per generator) and the samples themselves under `samples` (name -> (K, n, C, H, W)).
    """
    check_comparable(generators, judges, n)
    rows, diversity, samples = [], [], {}
    seed_grid = None
    for gen_name, generator_model in generators.items():
        num_classes = generator_model.spec.num_classes
        device = model_device(generator_model)
        started = time.perf_counter()
        per_class, seed_images = [], []
        for k in progress_bar(range(num_classes), desc=f"synthesising from {gen_name}", progress=progress):
            rng = class_generator(seed, k, device)  # the same draws for every generator
            per_class.append(synthesize(generator_model, k, n, generator=rng, seeds=seeds, **settings).cpu())
            init = settings.get("init", "gaussian")
            rng = class_generator(seed, k, device)
            seed_images.append(initial_images(init, torch.full((n,), k, device=device), generator_model, rng,
                                              device, seeds).cpu())
        seconds = time.perf_counter() - started
        grid = torch.stack(per_class)  # (K, n, C, H, W)
        samples[gen_name] = grid
        seed_grid = torch.stack(seed_images) if seed_grid is None else seed_grid
        rows += judge_samples(grid, gen_name, judges, generator_model)
        diversity.append({
            "generator": gen_name,
            "mean_pairwise_l2": sum(mean_pairwise_distance(c) for c in per_class) / num_classes,
            "seed_mean_pairwise_l2": sum(mean_pairwise_distance(c) for c in seed_images) / num_classes,
            "mean_l2_from_seed": float((grid - torch.stack(seed_images)).flatten(2).norm(dim=2).mean()),
            "seconds": seconds,
        })
    # The control: the starting seeds themselves, before any ascent (the same for every generator).
    rows += judge_samples(seed_grid, SEEDS_ROW, judges, None)
    input_sizes = {name: list(model.spec.input_size) for name, model in {**generators, **judges}.items()}
    return {"rows": rows, "diversity": diversity, "samples": samples, "n_per_class": n, "seed": seed,
            "input_sizes": input_sizes}


def check_comparable(generators: Dict[str, torch.nn.Module], judges: Dict[str, torch.nn.Module], n: int) -> None:
    """Refuse, before any synthesis, what would fail after it: fewer than 2 samples per class, or
    generators and judges that do not share one set of classes and one number of channels (input sides
    may differ: judges resize)."""
    if int(n) < 2:
        raise ValueError(f"n={n}: diversity needs at least 2 samples per class, give n >= 2")
    models = {**generators, **judges}
    shapes = {name: (tuple(model.spec.class_labels), model.spec.input_size[0]) for name, model in models.items()}
    first_name, first = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if shape != first:
            differ = (f"{len(shape[0])} classes against {len(first[0])}" if len(shape[0]) != len(first[0]) else
                      f"{shape[1]} channels against {first[1]}" if shape[1] != first[1] else
                      "other class labels: " + ", ".join(f"{a!r} for {b!r}" for a, b in zip(shape[0], first[0])
                                                          if a != b)[:200])
            raise ValueError(f"{name} and {first_name} classify different data ({differ}): give generators and "
                             "judges of one data set")


def as_judge_input(images: torch.Tensor, judge) -> torch.Tensor:
    """(N, C, H, W) samples resized to the judge's input side (bilinear, antialiased); unchanged when it matches."""
    size = tuple(judge.spec.input_size[1:])
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def judge_samples(grid: torch.Tensor, name: str, judges: Dict[str, torch.nn.Module], generator_model) -> list:
    """One row per judge: mean p(target | sample) and accuracy for a (K, n, C, H, W) grid of class samples."""
    num_classes, n = grid.shape[:2]
    targets = torch.arange(num_classes).repeat_interleave(n)
    rows = []
    # the generator judging itself is the same weights, however loaded (two loads of one checkpoint are two
    # objects)
    own = weights_fingerprint(generator_model) if generator_model is not None else None
    for judge_name, judge in judges.items():
        judge_device = model_device(judge)
        with torch.no_grad(), eval_mode(judge):  # batch norm on its running statistics, which stay as they were
            samples = as_judge_input(grid.flatten(0, 1), judge).to(judge_device, model_dtype(judge))  # float32
            probs = judge(samples).float().softmax(1).cpu()  # samples of a half-precision generator, say
        target_probs = probs.gather(1, targets.view(-1, 1)).squeeze(1)
        hits = probs.argmax(1) == targets
        rows.append({
            "generator": name, "judge": judge_name,
            "independent": judge is not generator_model and weights_fingerprint(judge) != own,
            "mean_target_probability": float(target_probs.double().mean()),  # as its interval: in float32 a near-
            # certain judge's mean rounded to 1.0, above its own interval, and tied candidates in a budget sweep
            "mean_target_probability_ci": list(mean_interval(target_probs, within=(0.0, 1.0))),  # mean ± 1.96 s/√n over the samples
            "judge_accuracy": float(hits.float().mean()),
            "judge_accuracy_ci": list(rate_interval(hits)),  # Wilson
            "per_class_target_probability": target_probs.view(num_classes, n).mean(1).tolist(),
        })
    return rows


def _interval(row: dict, key: str, scale: float, digits: int) -> str:
    """"[low, high]" of `row[key + '_ci']` (results from before intervals were recorded have none: "")."""
    low, high = row.get(f"{key}_ci") or (None, None)
    if low is None or low != low:
        return ""
    return f"[{scale * max(low, 0.0):.{digits}f}, {scale * min(high, 1.0):.{digits}f}]"


def quality_markdown(result: dict) -> str:
    """The judge matrix and the diversity table as Markdown."""
    generators = list(dict.fromkeys(row["generator"] for row in result["rows"]))
    judges = list(dict.fromkeys(row["judge"] for row in result["rows"]))
    cell = {(row["generator"], row["judge"]): row for row in result["rows"]}
    lines = [
        f"Mean p(target class | sample) given by each judge ({result['n_per_class']} samples per class) with its 95% "
        "interval (mean ± 1.96 s/√n over the samples), then the judge's accuracy with its 95% Wilson interval; "
        "* = the generator judging its own samples, not independent.",
        "",
        "| samples from \\ judged by | " + " | ".join(judges) + " |",
        "|---|" + "---|" * len(judges),
    ]
    for gen in generators:
        cells = []
        for judge in judges:
            row = cell[(gen, judge)]
            mark = "" if row["independent"] else "*"
            cells.append(f"{row['mean_target_probability']:.3f}{mark} {_interval(row, 'mean_target_probability', 1, 3)}; "
                         f"{100 * row['judge_accuracy']:.0f}% {_interval(row, 'judge_accuracy', 100, 0)}")
        lines.append(f"| {gen} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| samples from | mean pairwise L2 within a class | same for the seeds | mean L2 moved from the seed | seconds |",
        "|---|---|---|---|---|",
    ]
    for row in result["diversity"]:
        lines.append(f"| {row['generator']} | {row['mean_pairwise_l2']:.2f} | {row['seed_mean_pairwise_l2']:.2f} | "
                     f"{row['mean_l2_from_seed']:.2f} | {row['seconds']:.0f} |")
    sides = {name: size[-1] for name, size in result.get("input_sizes", {}).items()}
    if len(set(sides.values())) > 1:
        listed = ", ".join(f"{name} {side} px" for name, side in sides.items())
        lines += ["", f"Input sides differ ({listed}): each judge saw every sample resized to its own input side "
                      "(bilinear, antialiased); the distances are at each generator's own size (L2 grows with "
                      "the square root of the pixel count)."]
    return "\n".join(lines) + "\n"
