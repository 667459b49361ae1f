"""The app's example images: free photos, and natural/adversarial pairs made by a shipped model.

    examples/<photo>.png                                  scikit-image's public-domain / CC0 photos
    examples/adversarial/<model>/<photo>_clean.png        the photo as <model>'s eval transform resizes it (the cover
                                                          size around its crop)
    examples/adversarial/<model>/<photo>_adv.png          the same, PGD applied to the crop <model> sees
    examples/adversarial/<model>/<photo>_adaptive.png     the same, attacked by one who knows <model>'s detector

A pair is adversarial only for the weights that made it, so each folder is named after its model;
`scripts/make_app_examples.py` writes one from the model. The attack is the CLI `attack` command's
default (and the one `fit-detector` calibrates the shipped detector on): L-inf PGD, eps 8/255, 10 steps
of 1/255 from a random start, seed 0; for a model with crop_pct 1 (CIFAR-10's),
`python -m robgen attack --model NAME --out DIR examples/*.png` writes the same files. The `_adaptive`
file is `evade_detector` against the model's shipped detector (the Attack tab's "adaptive"): misclassified,
yet the Detect tab accepts it as natural.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..attacks import make_attack
from ..detection.detector import EnergyDetector
from ..experiments.single_image import attack_own_predictions, evade_detector
from ..images import load_model_input, load_resized, save_model_input
from ..models.state import model_device

# The CLI's `attack` defaults, which are also `fit-detector`'s calibration attack.
EXAMPLE_ATTACK = dict(attack="pgd", eps=8 / 255, step_size=1 / 255, steps=10)
EXAMPLE_ADAPTIVE = dict(eps=8 / 255, steps=40, restarts=4)  # `evade_detector`'s settings for the `_adaptive` files
CLEAN_SUFFIX, ADVERSARIAL_SUFFIX, ADAPTIVE_SUFFIX = "_clean", "_adv", "_adaptive"


def make_adversarial_examples(model, photos: Sequence[Union[str, Path]], out: Union[str, Path],
                              seed: int = 0, detector: Optional[EnergyDetector] = None) -> List[dict]:
    """Write `<photo>_clean.png` and `<photo>_adv.png` (PGD against the model's prediction) to `out`, and
    with a `detector`, `<photo>_adaptive.png` (`evade_detector`: misclassified and accepted by it).

    Each file is the photo resized as the model's eval transform resizes it, before the centre crop
    (so 146x146 for a 128-px model with crop_pct 0.875, 32x32 for CIFAR-10's crop_pct 1), its crop
    replaced by the attacked pixels (`save_model_input`, which checks it): reading the file back through
    that transform resizes nothing and crops exactly those pixels, so an upload of `_adv.png` is the
    adversarial example the model was given.
    Returns one row per photo: file names, the top label and the energy before and after the attack.
    """
    out = Path(out)
    photos = [Path(photo) for photo in photos]
    if not photos:
        raise ValueError("no photos to attack: pass image files (the app uses examples/*.png)")
    spec, device = model.spec, model_device(model)
    resized = torch.stack([load_resized(photo, spec) for photo in photos])
    x = torch.stack([load_model_input(photo, spec) for photo in photos]).to(device)
    settings = dict(EXAMPLE_ATTACK)
    attack = make_attack(settings.pop("attack"), model, generator=torch.Generator(device=device).manual_seed(seed),
                         **settings)
    outcome = attack_own_predictions(model, x, attack)
    evasion = (evade_detector(model, x, detector, generator=torch.Generator(device=device).manual_seed(seed),
                              **EXAMPLE_ADAPTIVE) if detector is not None else None)
    rows = []
    for i, photo in enumerate(photos):
        def written(image, suffix):  # the resized photo with its crop replaced by `image`, read back as `image`
            return save_model_input(image, out / f"{photo.stem}{suffix}.png", spec, surround=resized[i])

        clean = written(outcome.clean[i], CLEAN_SUFFIX)
        adversarial = written(outcome.adversarial[i], ADVERSARIAL_SUFFIX)
        if evasion is not None:
            written(evasion.adversarial[i], ADAPTIVE_SUFFIX)
        (clean_label, _), = outcome.top(i, k=1, adversarial=False).items()
        (adversarial_label, _), = outcome.top(i, k=1).items()
        rows.append({"clean": clean.name, "adversarial": adversarial.name, "clean_label": clean_label,
                     "adversarial_label": adversarial_label, "clean_energy": float(outcome.clean_energy[i]),
                     "adversarial_energy": float(outcome.adversarial_energy[i])})
        if evasion is not None:
            rows[-1].update(adaptive=f"{photo.stem}{ADAPTIVE_SUFFIX}.png", adaptive_evaded=bool(evasion.evaded[i]))
    return rows


def adversarial_examples(folder: Union[str, Path]) -> Dict[str, List[str]]:
    """{model name: its example files, sorted} for each `folder/<model>/` holding `*_adv.png` files."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {}
    for sub in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = sorted(str(path) for path in sub.glob("*.png")
                       if path.stem.endswith((CLEAN_SUFFIX, ADVERSARIAL_SUFFIX, ADAPTIVE_SUFFIX)))
        if any(Path(name).stem.endswith(ADVERSARIAL_SUFFIX) for name in files):
            found[sub.name] = files
    return found


def adversarial_photo(files: Sequence[str], prefer: str = "chelsea") -> str:
    """The adversarial file of `prefer` among `files`, else the first adversarial file."""
    adversarial = [name for name in files if Path(name).stem.endswith(ADVERSARIAL_SUFFIX)]
    if not adversarial:
        raise ValueError(f"no *{ADVERSARIAL_SUFFIX}.png among {list(files)}")
    return next((name for name in adversarial if Path(name).stem == prefer + ADVERSARIAL_SUFFIX), adversarial[0])
