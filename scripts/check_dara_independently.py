"""Cross-check a committed adaptive run with an attack written apart from robgen's attack code.

    python scripts/check_dara_independently.py results/adaptive/cifar10-resnet10-robust [--limit 500] [--steps 100]

`python -m robgen adaptive` reports detection-aware robust accuracy (DARA): the share of test images classified
correctly and accepted, for which its suite found no point in the ball that the model misclassifies and the detector
accepts. A DARA is only as good as the suite behind it, so this script attacks the same model, the same calibrated
detectors (read from the run's `detectors/`) and the same first test images with a different attack, implemented
here in plain torch on purpose (none of robgen.attacks or robgen.engine in the attack itself; what it attacks is
robgen's: the model's outputs and the detector's score come from `DefendedClassifier.outputs`, except robust-margin's,
whose score is written here too from its definition, `RobustMarginScore`, and must agree with robgen's on
validation images before the attack starts, so that a fault in robgen's engine loop or in its Danskin gradient
would not be shared): a multi-targeted max-min attack. For each
of the three most likely wrong classes t at the clean image, signed-gradient ascent with a cosine step schedule from
a random start on

    min( z_t(x) - max_{k != t} z_k(x),  -s * score(x) )

(the two conditions of an evasion, being classified as t and being accepted, score <= 0; s puts the score in logit
units: the ratio of the spreads of the margin and of the score over clean validation images). Every iterate counts.
Prints, per detector and eps, robgen's DARA beside this attack's, with 95% Wilson intervals, and says whether
this attack breaks an image robgen counts as defended (the suite would then be too weak): image by image where the
run names its images, else from the counts on the same images (a Wilson interval of one rate would let a paired
excess of a dozen images through). Where the
run's results.json names its defended images (runs made since it records them), it also compares image by image:
how many images robgen counts as defended this attack breaks, and the DARA against both attacks together (an image
defended only if neither finds an evasion: the stronger bound). It can only find robgen too optimistic, never
confirm a DARA as true robustness.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen import data as datasets  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.experiments.adaptive import load_run  # noqa: E402
from robgen.experiments.adaptive_report import flags_at  # noqa: E402
from robgen.experiments.adaptive_suite import saved_detector  # noqa: E402
from robgen.metrics import wilson_interval  # noqa: E402


def _margin(logits, labels):
    """max_{k != label} z_k - z_label: > 0 where the label is not the top class."""
    return logits.scatter(1, labels[:, None], float("-inf")).amax(1) - logits.gather(1, labels[:, None])[:, 0]


class RobustMarginScore:
    """robust-margin's reject score written here from its definition, not with robgen's code: the predicted class's
    margin at the worst point z of the L-inf ball of radius r around x that `steps` signed-gradient steps of
    2.5 r / steps (from z = x, each projected onto the ball and [0, 1]) find, minus the calibrated threshold; its
    gradient by Danskin's theorem (z moves with x, except in coordinates the pixel range holds at the ball's edge).
    `outputs(x)` returns (logits, score) as `DefendedClassifier.outputs` does."""

    def __init__(self, model, saved: dict) -> None:
        self.model = model
        self.radius, self.steps = float(saved["settings"]["radius"]), int(saved["settings"]["steps"])
        self.threshold = float(saved["thresholds"]["threshold"])

    def outputs(self, x):
        logits = self.model(x)
        predicted = logits.detach().argmax(1)
        start, r = x.detach(), self.radius
        z = start.clone()
        for _ in range(self.steps):
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                gradient, = torch.autograd.grad(_margin(self.model(z), predicted).sum(), z)
            with torch.no_grad():
                z = (start + (z + 2.5 * r / self.steps * gradient.sign() - start).clamp(-r, r)).clamp(0, 1)
        held = ((z <= 0) & (start - r < 0)) | ((z >= 1) & (start + r > 1))
        point = torch.where(held, z, x + (z - start))
        return logits, _margin(self.model(point), predicted) - self.threshold


def scored_here(run, results, name, model, defended, x_val, tolerance=1e-3):
    """What this script attacks for detector `name`: robust-margin scored here (checked against robgen's score on
    `x_val` first: a larger difference than `tolerance` stops the script), every other detector as robgen scores
    it."""
    if results["detectors"][name].get("kind", name) != "robust-margin":
        return defended
    own = RobustMarginScore(model, json.loads((run / results["detectors"][name]["file"]).read_text()))
    with torch.no_grad():
        gap = float((own.outputs(x_val)[1] - defended.outputs(x_val)[1]).abs().max())
    gradients = []  # and their gradients, where a fault in a surrogate would hide behind equal values
    for scorer in (own, defended):
        point = x_val[:16].clone().requires_grad_(True)
        gradients.append(torch.autograd.grad(scorer.outputs(point)[1].sum(), point)[0].flatten(1))
    cosine = float(torch.nn.functional.cosine_similarity(gradients[0] * 1e6, gradients[1] * 1e6).min())
    print(f"{name}: scored by this script from its definition; largest difference from robgen's score on "
          f"{len(x_val)} validation images {gap:.2e}, smallest cosine of the two gradients on 16 of them "
          f"{cosine:.6f}\n", flush=True)
    if not (gap <= tolerance and cosine >= 0.999):
        raise SystemExit(f"{name}: this script's score and robgen's differ on clean validation images (values by "
                         f"{gap:.3g}, gradients to a cosine of {cosine:.4f}): one of the two implementations is wrong")
    return own


def rate(count: int, n: int) -> str:
    low, high = wilson_interval(count, n)
    return f"{count / n:.1%} [{low:.1%}, {high:.1%}]"


def targeted_max_min(defended, x, y, target, eps, steps, scale, generator):
    """((N,) bool: some iterate of one max-min run toward `target` is misclassified and accepted, (N, ...) the first
    such iterate where found, else the clean image)."""
    found = torch.zeros(len(x), dtype=torch.bool)
    first = x.clone()
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for i in range(steps + 1):
        point = (x + delta).detach().requires_grad_(True)
        logits, score = defended.outputs(point)
        with torch.no_grad():
            new = (logits.argmax(1) != y) & (score <= 0) & ~found
            first[new] = point[new]
            found |= new
        if i == steps:
            break
        chosen = logits.gather(1, target[:, None])[:, 0]
        others = logits.scatter(1, target[:, None], float("-inf")).amax(1)
        objective = torch.minimum(chosen - others, -scale * score)
        gradient, = torch.autograd.grad(objective.sum(), point)
        step = eps / 4 * 0.5 * (1 + math.cos(math.pi * i / steps)) + eps / 50
        with torch.no_grad():
            delta = (delta + step * gradient.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return found, first


def check(defended, x, y, eps, steps, scale, batch, generator, targets=3):
    """(clean correct and accepted, evaded) per image, the attack run only where the clean image is defended."""
    with torch.no_grad():
        logits, score = zip(*(defended.outputs(x[i:i + batch]) for i in range(0, len(x), batch)))
    logits, score = torch.cat(logits), torch.cat(score)
    defended_clean = (logits.argmax(1) == y) & (score <= 0)
    evaded = torch.zeros(len(x), dtype=torch.bool)
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)  # the true class last
    for rank in range(min(targets, logits.shape[1] - 1)):  # wrong classes only (a binary model has one)
        todo = torch.nonzero(defended_clean & ~evaded)[:, 0]
        for start in range(0, len(todo), batch):
            rows = todo[start:start + batch]
            evaded[rows] |= targeted_max_min(defended, x[rows], y[rows], ranked[rows, rank], eps, steps, scale,
                                             generator)[0]
    return defended_clean, evaded


def compare_images(robgen_defended, clean, evaded) -> tuple:
    """(images robgen counts as defended that this attack breaks, images defended against both attacks, images
    robgen counts as defended whose clean image this script finds misclassified or rejected, so never attacked:
    a disagreement of the clean passes, e.g. across devices near a threshold, not a break): from the run's list
    of defended image indices and this attack's per-image flags."""
    theirs = flags_at(robgen_defended, len(clean))
    return int((theirs & clean & evaded).sum()), int((theirs & clean & ~evaded).sum()), int((theirs & ~clean).sum())


def at_least_broken(robgen_defended: int, defended_here: int, robgen_clean: int, clean_here: int) -> int:
    """How many of the images robgen counts as defended this attack breaks at least, from the counts alone (a run
    that does not name its images), on the same images: robgen's count beyond this attack's, less the images the two
    clean passes judge apart (correct and accepted in one, not in the other: never attacked here), taken to be the
    difference of their counts. That assumes one pass accepts all the other does (as where both run robgen's
    scoring on the same device): counts alone cannot see two images judged apart both ways (robgen's clean pass
    takes image 0, this one image 10 instead), which would make an image this attack breaks outside robgen's set
    look like one of robgen's, so a verdict from the counts says it rests on that."""
    return max(robgen_defended - defended_here - abs(robgen_clean - clean_here), 0)


def logit_units(defended, x_val) -> float:
    """The spread of the top-2 logit margin over that of the score on clean validation images."""
    with torch.no_grad():
        logits, score = defended.outputs(x_val)
    top2 = logits.topk(2, 1).values
    margin = top2[:, 0] - top2[:, 1]
    return float(margin.std() / score.std().clamp_min(1e-12)) if score.std() > 0 else 1.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a folder `python -m robgen adaptive` wrote (results.json, detectors/)")
    parser.add_argument("--limit", type=int, help="first test images (default: the run's)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--detector", action="append",
                        help="only these detectors, repeated or comma-separated (default: all the run has, and off)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = json.loads((args.run / "results.json").read_text())
    if args.limit is not None and not 1 <= args.limit <= results["n_test"]:
        raise SystemExit(f"--limit {args.limit}: {args.run} judged its first {results['n_test']} test images; "
                         f"check 1 to {results['n_test']} of them")
    model, splits = load_run(results)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    n = args.limit or results["n_test"]
    x, y = datasets.load_tensors(datasets.first(splits.test, n, "test split"))
    x_val, _ = datasets.load_tensors(datasets.first(splits.validation, min(256, len(splits.validation))))
    generator = torch.Generator().manual_seed(args.seed)
    names = [name for given in args.detector for name in given.split(",")] if args.detector else list(results["detectors"])
    unknown = sorted(set(names) - set(results["detectors"]))
    if unknown:
        raise SystemExit(f"--detector {', '.join(unknown)}: {args.run} has {', '.join(results['detectors'])}")
    print(f"{results['model']} ({results['data']}), first {n} test images, {args.steps} steps, 3 targets\n")
    # as the run calibrated them ("off": the detector switched off, the bare model's robust accuracy)
    attacked = {name: DefendedClassifier(model, saved_detector(args.run, results, name, model)) for name in names}
    attacked = {name: defended if name == "off" else scored_here(args.run, results, name, model, defended, x_val[:64])
                for name, defended in attacked.items()}
    print("| detector | eps | robgen's DARA (its run, these images) | this attack's DARA | robgen-defended images it breaks "
          "| DARA against both | verdict |\n|---|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        defended = attacked[name]
        scale = logit_units(defended, x_val) if name != "off" else 1.0
        for row in results["rows"]:
            if row["detector"] != name:
                continue
            clean, evaded = check(defended, x, y, row["eps"], args.steps, scale, args.batch, generator)
            count = int((clean & ~evaded).sum())
            theirs_count, theirs_n = row["dara"]["count"], row["dara"]["n"]
            both, compared = "n/a", True
            if "defended" in row:  # the run's first n images: compared image by image
                defended_here = [i for i in row["defended"] if i < n]
                theirs_count, theirs_n = len(defended_here), n
                breaks, together, unattacked = compare_images(defended_here, clean, evaded)
                broken = f"{breaks} of {len(defended_here)}" + (
                    f" ({unattacked} more its clean pass does not accept: not attacked)" if unattacked else "")
                both = rate(together, n)
            elif n == theirs_n:  # the same images, not named: as counts. Each image robgen counts as defended
                # beyond this attack's count is one it breaks, but for images the two clean passes judge apart
                breaks = at_least_broken(theirs_count, count, row["clean"]["accuracy"]["count"], int(clean.sum()))
                broken = (f"at least {breaks} (from the counts, taking both clean passes to accept the same "
                          "images: the run does not name its images)")
            else:  # other images (--limit), not named: nothing to compare
                breaks, compared = 0, False
                broken = f"n/a (the run's {theirs_n} images are not named; this checks its first {n})"
            # too optimistic: one image robgen calls defended broken (image by image, or as counts at least one)
            bad = compared and breaks > 0
            failed += bad
            verdict = ("robgen too optimistic" + ("" if "defended" in row else " (by the counts)") if bad
                       else "consistent" if compared else "not compared (other images)")
            print(f"| {name} | {row['eps_label']} | {rate(theirs_count, theirs_n)} | "
                  f"{rate(count, n)} | {broken} | {both} | {verdict} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
