"""The `attack` command: attack image files, write the adversarial PNGs and a JSON report.

Each PNG reads back, through the model's eval transform (`detect`, the app's Detect tab), as exactly the pixels
the model was attacked on (`robgen.images.save_model_input`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, List

from ..files import json_text, write_text_atomically
from .common import (
    UsageError, add_attack_arguments, add_model_arguments, add_output_arguments, build_attack, check_attack_flags,
    input_paths, open_model, pick_device, positive_int, prepare_out_dir, read_images,
)

if TYPE_CHECKING:
    import torch


def add_parsers(commands) -> None:
    attack = commands.add_parser("attack", help="attack image files; write adversarial PNGs and a JSON report")
    add_model_arguments(attack)
    add_attack_arguments(attack, steps=10)
    attack.add_argument("--target", help="class index or label for a targeted attack (PGD / FGSM)")
    attack.add_argument("--batch-size", type=positive_int, default=64, help="images attacked at once")
    add_output_arguments(attack)
    attack.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    attack.set_defaults(run=command_attack)


def top_prediction(logits: torch.Tensor, labels: List[str]) -> dict:
    probs = logits.float().softmax(-1)
    index = int(probs.argmax())
    return {"class": index, "label": labels[index], "probability": float(probs[index])}


def previous_pngs(out: Path) -> set:
    """The PNG names the results.json in `out` records (an earlier run's, which --overwrite replaces); none if
    there is none or it is not an attack's."""
    import json

    try:
        rows = json.loads((out / "results.json").read_text()).get("images", [])
        return {row[key] for row in rows for key in ("clean_png", "adversarial_png")
                if isinstance(row.get(key), str) and "/" not in row[key] and "\\" not in row[key]}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def output_stems(images: List[str]) -> List[str]:
    """The name each input's PNGs are written under (<stem>_clean.png, <stem>_adv.png): its file's stem, and for two
    inputs with one name, the second under a name no other input has taken."""
    stems, used = [], set()
    for i, path in enumerate(images):
        stem, number = Path(path).stem, i
        while stem in used:
            stem, number = f"{Path(path).stem}-{number}", number + 1
        used.add(stem)
        stems.append(stem)
    return stems


def check_outputs(out: Path, stems: List[str], images: List[str]) -> None:
    """Refuse, before the attack, to write over a file this run did not make: an input image, or a file in --out
    that is no earlier attack's output (--overwrite replaces only what that attack's results.json records)."""
    inputs = input_paths(images)
    recorded = previous_pngs(out)  # replaced with --overwrite (without it, their results.json stops the run)
    for name in (f"{stem}_{kind}.png" for stem in stems for kind in ("clean", "adv")):
        path = out / name
        if path.resolve() in inputs:
            raise UsageError(f"{path} is one of the input images, and this run would write {name} over it: choose "
                             "another --out")
        if path.exists() and name not in recorded:
            raise UsageError(f"{path} exists and is no output of an earlier attack recorded in {out / 'results.json'} "
                             "(--overwrite replaces only those): choose another --out, or move the file")


def command_attack(args) -> int:
    from ..experiments.single_image import attack_own_predictions, combine_outcomes
    from ..images import load_resized, reads_back_from_a_file, save_image, save_model_input
    from ..progress import progress_bar

    device = pick_device(args.device)
    check_attack_flags(args)  # before the model loads
    model = open_model(args, device)
    spec = model.spec
    x = read_images(args.images, spec)
    attack = build_attack(args, model, device)
    target_class = None
    if args.target is not None:
        try:
            target_class = spec.class_index(args.target)
        except ValueError as error:
            raise UsageError(str(error)) from None
    stems = output_stems(args.images)
    check_outputs(Path(args.out), stems, args.images)
    out = prepare_out_dir(Path(args.out), args.overwrite, ["results.json"])
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
    rows, framed = [], reads_back_from_a_file(spec)
    for i, (path, stem) in enumerate(zip(args.images, stems)):
        if framed:  # at crop_pct < 1 the files keep the photo's margin, which the model crops
            surround = load_resized(path, spec)
            save_model_input(x[i], out / f"{stem}_clean.png", spec, surround)
            save_model_input(x_adv[i], out / f"{stem}_adv.png", spec, surround)
        else:  # crop_pct > 1: no file reads back as the input; the input itself, as the app saves it
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
        "files": ("model inputs framed so that the eval transform reads them back" if framed else
                  f"the model inputs themselves: at crop_pct {spec.crop_pct} > 1 the eval transform pads a picture "
                  "with black, so no file reads back as the input; evaluate them as tensors of the input size"),
        "device": str(device), "images": rows, "trace": trace.to_dict(),
    }
    written = {row[key] for row in rows for key in ("clean_png", "adversarial_png")}
    inputs = input_paths(args.images)
    for name in previous_pngs(out) - written:  # --overwrite: the replaced run's own PNGs go with its results.json
        if (out / name).resolve() not in inputs:  # ... but not the images this run read
            (out / name).unlink(missing_ok=True)
    write_text_atomically(out / "results.json", json_text(report))
    for row in rows:
        print(
            f"{row['image']}: {row['clean']['label']} ({row['clean']['probability']:.2f}, E={row['clean']['energy']:.2f})"
            f" -> {row['adversarial']['label']} ({row['adversarial']['probability']:.2f}, E={row['adversarial']['energy']:.2f})"
        )
    print(f"wrote {len(rows)} adversarial PNGs and results.json to {out}")
    return 0
