"""Write the app's Detect-tab examples for shipped models: each free photo as the model sees it, and its PGD version.

    python scripts/make_app_examples.py                       # the Detect tab's model of each data set
    python scripts/make_app_examples.py --model imagenette-resnet10-standard
    python scripts/make_app_examples.py --model NAME --out /tmp/examples      # default examples/adversarial

For each model it writes `OUT/<model>/<photo>_clean.png` (the photo resized as the model's eval
transform resizes it, cut to the cover size around its centre crop: 146x146 for a 128-px model with
crop_pct 0.875) and
`<photo>_adv.png` (the same with L-inf PGD, eps 8/255, 10 steps of 1/255 from a random start, seed 0,
applied to the crop the model sees, against its own prediction: the attack the shipped detector was
calibrated on; `robgen.web.examples.make_adversarial_examples`), and `<photo>_adaptive.png` (an
attacker who knows the shipped detector: `evade_detector`, eps 8/255, 40 steps, 4 penalty rounds, seed 0:
misclassified yet accepted as natural), from the photos in examples/*.png (scikit-image's
public-domain and CC0 images: examples/README.md). Then it prints what the model and its shipped
detector say about every file. Run it again whenever a model's weights change: an adversarial
example belongs to the weights that made it. Exits 1 when a model has no detector (after writing its
clean and PGD files), or, with --strict, when the detector misses a PGD example, flags a natural one,
or an adaptive one is flagged or keeps its class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import robgen  # noqa: E402
from robgen.experiments.calibration import load_shipped_detector  # noqa: E402
from robgen.images import load_model_input  # noqa: E402
from robgen.web.examples import make_adversarial_examples  # noqa: E402
from robgen.web.model_cache import default_models, model_spec  # noqa: E402

PHOTOS = sorted((REPO / "examples").glob("*.png"))
OUT = REPO / "examples" / "adversarial"


def detect_defaults() -> list:
    """For each data set (class list) of the shipped models, the model the app's Detect tab starts on with it."""
    groups = {}
    for name in robgen.list_models():
        groups.setdefault(tuple(model_spec(name).class_labels), []).append(name)
    return [default_models(names)[0] for names in groups.values()]


def check(model, folder: Path, rows: list) -> list:
    """Print the model's label and energy, and its detector's verdict, for each written file; the problems."""
    detector = load_shipped_detector(model)
    problems = []
    print(f"{folder}: threshold {detector.threshold:.3f} (adversarial when E(x) <= threshold)")
    for row in rows:
        for kind in ("clean", "adversarial", "adaptive"):
            if kind not in row:
                continue
            x = load_model_input(folder / row[kind], model.spec)[None]
            with torch.no_grad():
                logits = model(x)
            flagged = bool(detector.predict(logits)[0])
            label = model.spec.class_labels[int(logits.argmax())]
            energy = float(detector.energies(logits)[0])
            wrong = flagged != (kind == "adversarial")  # the adaptive ones are made to pass: accepted is right
            if kind == "adaptive" and label == row["clean_label"]:
                wrong = True  # not adversarial at all
            print(f"  {row[kind]:24} {label:>20}  E(x) = {energy:8.3f}  {'adversarial' if flagged else 'natural':11}"
                  + ("  <- not as meant (see the docstring)" if wrong else ""))
            if wrong:
                problems.append(f"{folder.name}/{row[kind]}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append",
                        help="a model name or folder (repeatable; default: for each data set, the model the Detect "
                             "tab starts on with it: its standard model with a detector)")
    parser.add_argument("--out", default=str(OUT),
                        help="where the per-model folders go (default examples/adversarial)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the detector gets an example wrong")
    args = parser.parse_args(argv)
    names = args.model or detect_defaults()
    problems, undetected = [], []
    for name in names:
        model = robgen.load_model(name)
        folder = Path(args.out) / Path(str(name)).name
        try:
            detector = load_shipped_detector(model)
        except FileNotFoundError as error:  # its examples without the detector's verdicts; the next models go on
            make_adversarial_examples(model, PHOTOS, folder)
            print(f"{name}: {error}", file=sys.stderr)
            undetected.append(str(name))
            continue
        rows = make_adversarial_examples(model, PHOTOS, folder, detector=detector)
        problems += check(model, folder, rows)
    if problems:
        print(f"the shipped detector gets {len(problems)} of these wrong: {', '.join(problems)}")
    if undetected:
        print(f"no detector for {', '.join(undetected)}: their examples hold no verdicts", file=sys.stderr)
    return 1 if undetected or (problems and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
