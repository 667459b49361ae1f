"""What an unfinished adaptive run has found so far, read from its finished stages (no model, no attack).

    python scripts/adaptive_progress.py results/adaptive/imagenette-resnet10-robust

`python -m robgen adaptive` writes results.json only at the end; a run of hours keeps each finished (detector,
eps, attack) stage in `<out>/.stages/` (per-image flags). Per detector and eps this prints the DARA after each
finished stage, in the suite's order (an upper bound until the suite is complete: a later attack only removes
images), the non-adaptive references (each point they passed through judged by every detector as they ran),
and the bare model's accuracy under the references (an upper bound on its robust accuracy under the whole suite,
which the detector-off suite gives); where the detector-off suite has begun, each detector's DARA minus the bare
model's robust accuracy, paired image by image (the report's "what each detector adds"), each eps's own suite.
Brackets: 95% Wilson intervals (the paired difference: Agresti & Min's). Last, the stage under way: how many of
its batches are finished and kept (`<stage>.parts/`, read back if the run stops and is continued).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen.detection.dara import eps_label, gain_over_bare, rate  # noqa: E402
from robgen.experiments.adaptive_report import points_text  # noqa: E402
from robgen.experiments.adaptive import STAGES  # noqa: E402
from robgen.experiments.adaptive_suite import ADAPTIVE, suite_names  # noqa: E402
from robgen.experiments.stages import KEY_FILE, parts_folder, read_tensors, stage_file  # noqa: E402


def read(path: Path) -> dict:
    return read_tensors(path)[0]


def shown(flags: torch.Tensor) -> str:
    if not flags.numel():  # e.g. the successes of a reference that succeeded nowhere: no rate to give
        return "n/a (none to count)"
    entry = rate(flags)
    low, high = entry["ci"]
    return f"{100 * entry['rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({entry['count']}/{entry['n']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the --out folder of an adaptive run under way")
    args = parser.parse_args()
    folder = args.run / STAGES
    if not (folder / KEY_FILE).is_file():
        print(f"{folder} holds no stages of an adaptive run", file=sys.stderr)
        return 2
    settings = json.loads((folder / KEY_FILE).read_text())["settings"]
    attacks = suite_names(settings["lambdas"])
    for eps in settings["eps_list"]:
        label = eps_label(eps)
        references = {name: read(stage_file(folder, f"reference-eps{label}-{name}")) for name in attacks
                      if name not in ADAPTIVE and stage_file(folder, f"reference-eps{label}-{name}").exists()}
        so_far = {}  # detector -> (its images defended so far, whether its suite is complete)
        for detector in (*settings["detectors"], "off"):
            # the adaptive attacks, and the references where they ran per detector (one that reads the images)
            stages = {name: read(stage_file(folder, f"{detector}-eps{label}-{name}")) for name in attacks
                      if stage_file(folder, f"{detector}-eps{label}-{name}").exists()}
            if not stages:
                print(f"\n{detector} at {label}: no stage finished yet")
                continue
            first = next(iter(stages.values()))
            correct, accepted = first["clean_correct"].bool(), first["clean_accepted"].bool()
            print(f"\n{detector} at {label}: clean accuracy {shown(correct)}, "
                  f"with rejection {shown(correct & accepted)}")
            defended = correct & accepted
            for name, flags in stages.items():
                defended &= ~flags["evaded"].bool()
                print(f"  DARA after {name}: {shown(defended)}")
            # the references run once for every detector, each point they passed through judged by each
            missing = [name for name in attacks if name not in stages and (name in ADAPTIVE or name not in references)]
            for name, points in references.items():
                if f"{detector}/evaded" not in points:  # a stage of an older run, judged at its final point only
                    print(f"  {name}: its stage predates the judging of every point; rerun to count it")
                    missing.append(name)
                    continue
                defended &= ~points[f"{detector}/evaded"].bool()
                fooled = points["final_logits"].argmax(1) != points["labels"]
                rejected = points[f"{detector}/rejected"].bool()
                print(f"  DARA after {name}: {shown(defended)}; of its successes on the bare model (final points) "
                      f"the detector rejects {shown(rejected[correct & fooled])}")
            so_far[detector] = (defended, not missing)
            print(f"  {'complete' if not missing else 'still to run: ' + ', '.join(missing)}"
                  + (" (logit matching writes no stage where it is skipped, for want of accepted targets of two "
                     "classes: results.json names it then)" if "logit matching" in missing else ""))
        if "off" in so_far:  # each detector against the bare model (the detector switched off), image by image
            robust, off_complete = so_far["off"]
            for detector, (defended, complete) in so_far.items():
                if detector != "off":
                    print(f"\n{detector} at {label} against the detector switched off, paired: "
                          f"{points_text(gain_over_bare(robust, defended))}"
                          + ("" if complete and off_complete else " (so far: a suite is still running)"))
        clean = next((read(path) for path in sorted(folder.glob(f"*-eps{label.replace('/', '_')}-*.safetensors"))
                      if not path.name.startswith("reference-")), None)
        if references and clean is not None:
            robust, final_only = clean["clean_correct"].bool(), []
            for name, points in references.items():
                if "off/evaded" in points:  # misclassified at some point the reference passed through
                    robust &= ~points["off/evaded"].bool()
                else:  # a stage of an older run: its final points are all it kept (an upper bound then)
                    robust &= points["point_logits"].argmax(1) == points["labels"]
                    final_only.append(name)
            note = f" ({', '.join(final_only)} judged at their final points only)" if final_only else ""
            print(f"\nbare model at {label} under the references alone ({', '.join(references)}): {shown(robust)}"
                  f"{note}")
    # a stage under way keeps its batches as they finish (a finished stage's, left by a stop, are not under way)
    key = json.loads((folder / KEY_FILE).read_text())
    names = {parts_folder(folder, name).name: name for name in stage_names(settings, attacks)}
    total = -(-key["n_test"] // settings["batch_size"])
    for parts in sorted(folder.glob("*.parts")):
        if stage_file(folder, names.get(parts.name, parts.name[:-len(".parts")])).exists():
            continue
        batches = len(list(parts.glob("batch-*.safetensors")))
        print(f"\nunder way: {names.get(parts.name, parts.name)}, {batches} of its {total} batches of "
              f"{settings['batch_size']} images finished and kept")
    return 0


def stage_names(settings: dict, attacks) -> list:
    """Every stage a run with these settings can write (each detector's attacks and the shared references)."""
    labels = [eps_label(eps) for eps in settings["eps_list"]]
    return [f"{who}-eps{label}-{name}" for who in ("reference", *settings["detectors"], "off") for label in labels
            for name in attacks]


if __name__ == "__main__":
    sys.exit(main())
