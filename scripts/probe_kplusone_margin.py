"""Which (K+1) loss breaks the images an adaptive run's first attack, (K+1) PGD on the margin, left defended.

    python scripts/probe_kplusone_margin.py runs/nette-rm-correct --model imagenette-resnet10-robust \
        --data imagenette --detector robust-margin --eps 4/255 [--images 40] [--steps 50]

Reads the run's kept stage of (K+1) PGD (`<run>/.stages/<detector>-eps<eps>-k_1_pgd.safetensors`, kept batch by
batch or whole) and its calibrated detector (`<run>/.stages/detectors/<detector>.json`), takes the first `--images`
test images that stage left defended (classified correctly, accepted, not evaded), and attacks them again, one
restart of `--steps` steps each, with: (K+1) PGD on the margin with its plain guard max(G_y, G_K) (the suite's first
attack until 2026-12-07), on the margin as the suite now takes it (for a detector that `scores_the_prediction`,
the detector's logit left out of the guard while the model still predicts the true class: `kplusone_margin`'s
`class_first`), and on the cross-entropy; (K+1) APGD-CE; and plain PGD on the bare model, whose final points the
detector judges. Prints how many of the images each evades (misclassified and accepted at some iterate; plain PGD:
at its final point).

Why the guard matters: a score that depends on the predicted class (robust-margin: the predicted class's margin at
the worst point within rho) jumps where the prediction flips; near the boundary, while the model still predicts y,
a rejected point's plain guard is the detector's logit, and lowering it makes y robust at rho: the step pulls back
toward y.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402
import robgen.attacks.adaptive as adaptive_attacks  # noqa: E402
from robgen import data as datasets  # noqa: E402
from robgen.attacks.evasion import EvasionTracker  # noqa: E402
from robgen.cli.common import parse_number  # noqa: E402
from robgen.detection.dara import eps_label  # noqa: E402
from robgen.detection.defended import DefendedClassifier  # noqa: E402
from robgen.detection.reject import RejectOption  # noqa: E402
from robgen.experiments.adaptive import STAGES  # noqa: E402
from robgen.experiments.pipeline import detection_splits  # noqa: E402
from robgen.experiments.stages import parts_folder, read_tensors, stage_file  # noqa: E402


def first_stage(folder: Path, name: str) -> dict:
    """The (K+1) PGD stage's per-image flags: the finished stage, else its kept batches put together."""
    whole = stage_file(folder, name)
    if whole.exists():
        return read_tensors(whole)[0]
    batches = sorted(parts_folder(folder, name).glob("batch-*.safetensors"))
    if not batches:
        raise SystemExit(f"{folder} holds no stage {name!r}, finished or begun")
    parts = [read_tensors(path)[0] for path in batches]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the --out folder of an adaptive run that kept its stages")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--detector", required=True)
    parser.add_argument("--eps", type=parse_number, required=True)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    folder = args.run / STAGES
    model = robgen.load_model(args.model).eval()
    defended = DefendedClassifier(model, RejectOption.load(folder / "detectors" / f"{args.detector}.json", model=model))
    flags = first_stage(folder, f"{args.detector}-eps{eps_label(args.eps)}-k+1 pgd")
    kept = (flags["clean_correct"].bool() & flags["clean_accepted"].bool() & ~flags["evaded"].bool()).nonzero()[:, 0]
    chosen = kept[: args.images]
    x, y = datasets.load_tensors(datasets.first(detection_splits(model, args.data).test, len(flags["labels"])))
    x, y = x[chosen], y[chosen]
    if not torch.equal(y, flags["labels"][chosen].to(y.dtype)):
        raise SystemExit("the test images' labels differ from the stage's: another data set or split")
    print(f"{len(y)} of the {len(kept)} images (K+1) PGD left defended; {args.steps} steps, one restart each")
    # the margin as the suite took it before 2026-12-07: the detector's logit in the guard whatever is predicted
    adaptive_attacks.KPLUSONE_LOSSES["margin, plain guard"] = (
        lambda combined, labels, **_: adaptive_attacks.kplusone_margin(combined, labels))
    suites = "class first" if defended.reject.scores_the_prediction else "plain guard"
    attacks = {f"(K+1) PGD, {name}": lambda g, loss=loss: adaptive_attacks.KPlusOnePGD(
        defended, eps=args.eps, steps=args.steps, restarts=1, loss=loss, generator=g)
        for name, loss in (("margin, plain guard", "margin, plain guard"), (f"margin as the suite takes it ({suites})",
                                                                           "margin"), ("cross-entropy", "ce"))}
    attacks["(K+1) APGD-CE"] = lambda g: adaptive_attacks.KPlusOneAPGD(defended, eps=args.eps, steps=args.steps,
                                                                      restarts=1, loss="ce", generator=g)
    for name, build in attacks.items():
        tracker = EvasionTracker(defended, x, y)
        build(torch.Generator().manual_seed(1)).run(x, y, tracker)
        print(f"{name}: evades {int(tracker.evaded.sum())} of {len(y)}", flush=True)
    points = robgen.PGD(model, eps=args.eps, steps=args.steps, generator=torch.Generator().manual_seed(2))(x, y)
    with torch.no_grad():
        logits, score = defended.outputs(points)
    wrong = logits.argmax(1) != y
    print(f"plain PGD on the bare model: misclassifies {int(wrong.sum())} of {len(y)}, of which the detector accepts "
          f"{int((wrong & (score <= 0)).sum())} (final points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
