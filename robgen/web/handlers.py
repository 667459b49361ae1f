"""What each tab of the Gradio app computes, one function per tab, free of any UI code.

`app.py` turns an upload into a file path and a few numbers, calls one of
these, and shows the result. Everything here works on the library's own
types (tensors in [0, 1], `Trace`, `EnergyDetector`) plus PIL images and
matplotlib figures ready to display, so it is tested without a browser.

    model = cached_model("cifar10-resnet10-standard")        # robgen.web.model_cache
    result = attack_image(model, "examples/chelsea.png", attack="pgd", eps=8/255, steps=10)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from ..attacks import make_attack
from ..attacks.factory import attack_key, stronger_with
from ..detection import EnergyDetector
from ..engine import Trace
from ..experiments.calibration import calibration_energies, load_shipped_detector
from ..experiments.single_image import attack_own_predictions, evade_detector, top_classes
from ..images import (cover_size, framed_model_input, load_model_input, load_resized, reads_back_from_a_file,
                      tensor_to_pil, upright_size)
from ..models.state import eval_mode, model_device, pixels_for
from ..plots import energy_histogram_figure
from ..synthesis import input_gradient, magnitude_map, signed_map, synthesize, translate
from ..synthesis.seeds import load_seeds

ImageInput = Union[str, Path, torch.Tensor]
DISPLAY_SIZE = 192  # small model inputs are enlarged (nearest neighbour) to this many pixels for display
UPSAMPLED_NOTE = 2.0  # an upload the eval transform enlarges at least this much gets a note: the model sees a blur
CLASSES_LISTED = 20  # a model with more classes has the first ones listed, then a count
DATA_SET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenette": "Imagenette"}


def model_input(model, image: ImageInput, working: bool = False) -> torch.Tensor:
    """A (1, C, H, W) batch on the model's device, in its floating-point type: a file read as the model sees it
    (`load_model_input`); a tensor checked as [0, 1] pixels of the model's input size (`pixels_for`), which the
    detector's threshold and the attack's budget were set for. `working`: in the type an attack keeps its iterates
    in (float32 for a float16 or bfloat16 model, whose grid would move the 8-bit pixels the budget is counted on)."""
    if not isinstance(image, (str, Path, torch.Tensor)):  # a numpy array or a PIL image (a Gradio component's
        raise TypeError(  # other types): torch's "expected str, bytes or os.PathLike object" named no fix
            f"the image must be a file path or a (C, H, W) tensor of [0, 1] pixels, got {type(image).__name__}: "
            "save it as a file first (the file is read as the model reads its images), or convert it, e.g. "
            "torch.from_numpy(array).permute(2, 0, 1) / 255 for an 8-bit H x W x 3 array")
    x = image if isinstance(image, torch.Tensor) else load_model_input(image, model.spec)
    if x.ndim == 4 and x.shape[0] != 1:
        raise ValueError(f"one image at a time: give a (C, H, W) tensor or a (1, C, H, W) batch, got a batch of "
                         f"{x.shape[0]} {tuple(x.shape)}; for many images call robgen's attacks and detectors directly")
    x = (x if x.ndim == 4 else x.unsqueeze(0)).to(model_device(model))
    return pixels_for(model, x, name="image", model_size=True, working=working)


def enlargement(width: int, height: int, spec) -> float:
    """How much the eval transform of `spec` enlarges a `width` x `height` image (below 1: shrinks it): to cover
    input size / crop_pct (`robgen.images.cover_size`) before its centre crop."""
    rows, columns = cover_size(tuple(spec.input_size[1:]), spec.crop_pct)
    return max(rows / height, columns / width)


def upsampling_note(model, image: ImageInput) -> str:
    """A sentence about an upload far smaller than the model's input (enlarged `UPSAMPLED_NOTE` times or more),
    else "". Such an upload is no error: the eval transform upsamples it."""
    if isinstance(image, torch.Tensor):
        return ""
    from PIL import Image

    source = Path(image).expanduser() if isinstance(image, (str, Path)) else image  # ~ as load_model_input reads it
    with Image.open(source) as picture:  # the header only: `load_model_input` has already read and checked it
        width, height = upright_size(picture)  # a photo stored sideways, as it is read
    factor = enlargement(width, height, model.spec)
    if factor < UPSAMPLED_NOTE:
        return ""
    rows, columns = model.spec.input_size[1:]
    return (f"Note: the image is {width}×{height} pixels, far smaller than the {columns}×{rows} the model sees, "
            f"so it was enlarged {factor:.1f}× (with {model.spec.interpolation} interpolation): the model sees a blurred "
            f"picture, and its answer says less about the photo than it would for a larger one.")


def data_set_name(spec) -> str:
    """The name of the data set a model was trained on, from its spec ("" when the spec does not say)."""
    training = spec.training or {}
    data = training.get("data")
    name = (data.get("name") if isinstance(data, dict) else data) or (training.get("config") or {}).get("data")
    return DATA_SET_NAMES.get(str(name).lower(), str(name)) if name else ""


def describe_classes(spec, name: str = "") -> str:
    """Which classes the model knows, for the page: every image gets one of them."""
    labels = spec.class_labels
    listed = ", ".join(labels[:CLASSES_LISTED])
    if len(labels) > CLASSES_LISTED:
        listed += f", … and {len(labels) - CLASSES_LISTED} more"
    rows, columns = spec.input_size[1:]
    about = ", ".join(part for part in (data_set_name(spec), f"{columns}×{rows} inputs") if part)
    return (f"**{name or spec.source or spec.architecture}** ({about}) knows {len(labels)} classes: {listed}. "
            "It files every image under one of them, so photos of these work best.")


def display(x: torch.Tensor, size: int = DISPLAY_SIZE):
    """One (C, H, W) or (1, C, H, W) image as a PIL image, enlarged without smoothing when small."""
    from PIL import Image

    picture = tensor_to_pil(x.squeeze(0) if x.ndim == 4 else x)
    if max(picture.size) < size:
        factor = max(1, size // max(picture.size))
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture


@dataclass
class AttackResult:
    clean: torch.Tensor  # (1, C, H, W) as the model sees it
    adversarial: torch.Tensor  # (1, C, H, W), quantised to 8 bits and inside the threat model
    top_clean: Dict[str, float]
    top_adversarial: Dict[str, float]
    energy_clean: float
    energy_adversarial: float
    trace: Trace
    attack: str
    note: str = ""  # about the upload (see `upsampling_note`)
    verdict: str = ""  # the adaptive attack: what the Detect tab's detector says of both images
    threshold: Optional[float] = None  # the adaptive attack: the detector's threshold, drawn on the trace
    target: str = ""  # the targeted attack's class label ("" untargeted)
    framed: Optional[torch.Tensor] = None  # (C, H', W'): `adversarial` framed as a file should hold it (see `saved`)
    # what may make the attack stronger, of the settings it takes (FGSM: only eps; APGD: no step size)
    stronger_with: str = "more steps, a larger eps or a larger step size"

    def saved(self):
        """The adversarial image as a PIL image to save: read back through the model's eval transform (the Detect
        tab, `load_model_input`) it is exactly `adversarial`, unlike the enlarged picture shown beside it. For a
        crop_pct < 1 model it is the resized photo with the model's crop replaced (`framed_model_input`); for a
        crop_pct > 1 one (framed None) the model input itself, which its eval transform, padding with black, does not
        read back exactly."""
        return tensor_to_pil(self.framed if self.framed is not None else self.adversarial[0])

    def outcome(self) -> str:
        """Whether the attack did what it was asked: moved the label (untargeted) or reached `target`."""
        clean_label, adv_label = next(iter(self.top_clean)), next(iter(self.top_adversarial))
        if self.target:
            return ("Target reached." if adv_label == self.target else
                    f"**Target not reached**: the model says {adv_label}, not {self.target}. "
                    f"Allow {self.stronger_with}.")
        return "" if adv_label != clean_label else ("**The label did not change**: the model still says "
                                                    f"{clean_label}. Allow {self.stronger_with}.")

    @property
    def perturbation(self) -> torch.Tensor:
        """The change, amplified to the full range for display: gray = no change."""
        delta = (self.adversarial - self.clean)[0]
        peak = float(delta.abs().max())
        return (0.5 + delta / (2 * peak)).clamp(0, 1) if peak > 0 else torch.full_like(delta, 0.5)

    def energy_change(self) -> str:
        if self.energy_adversarial < self.energy_clean:
            return "lower: looks *more* likely to the model"
        return "higher" if self.energy_adversarial > self.energy_clean else "unchanged"

    def summary(self) -> str:
        clean_label, clean_p = next(iter(self.top_clean.items()))
        adv_label, adv_p = next(iter(self.top_adversarial.items()))
        delta = (self.adversarial - self.clean).flatten()
        outcome = self.outcome()
        return (
            f"{self.attack}: **{clean_label}** ({clean_p:.1%}) → **{adv_label}** ({adv_p:.1%}). "
            f"Energy E(x) {' → '.join(_apart(self.energy_clean, self.energy_adversarial, digits=2))} "
            f"({self.energy_change()}). "
            f"Change: L∞ {float(delta.abs().max()) * 255:.1f}/255, L2 {float(delta.norm()):.3f}."
        ) + (f" {outcome}" if outcome and not self.verdict else "") + (
            f"\n\n{self.verdict}" if self.verdict else "") + (f"\n\n*{self.note}*" if self.note else "")


ADAPTIVE = "adaptive"  # the Attack tab's name for `evade_detector`: the attacker who knows the Detect tab's detector


def attack_image(model, image: ImageInput, attack: str = "pgd", eps: float = 8 / 255, steps: int = 10,
                 step_size: float = 1 / 255, lam: float = 1.2, target: Optional[Union[int, str]] = None,
                 seed: int = 0, progress: Optional[Callable] = None) -> AttackResult:
    """Attack one image against the model's own prediction (or toward `target`) with FGSM / PGD / HE-PGD / APGD,
    or, with attack="adaptive", away from it while the model's shipped energy detector accepts the result."""
    x = model_input(model, image, working=True)  # a bfloat16 clean image and result were 8.5/255 apart at 8/255
    target = None if target is None or not str(target).strip() else target  # a box of spaces is an empty box
    if str(attack).lower() == ADAPTIVE:
        if target is not None:
            raise ValueError("the adaptive attack is untargeted here: clear the target class or use PGD / FGSM")
        return evade_shipped_detector(model, image, x, eps, steps, step_size, seed, progress)
    try:
        key = attack_key(attack)
    except ValueError:  # the Attack tab offers the adaptive attack too: the registry's list lacks it
        raise ValueError(f"unknown attack {attack!r}: choose from fgsm, pgd, hepgd, apgd, {ADAPTIVE}") from None
    attacker = make_attack(key, model, eps=eps, step_size=step_size, steps=steps, lam=lam,
                           generator=torch.Generator(device=x.device).manual_seed(int(seed)))
    target_index = None
    if target is not None:
        if key in ("hepgd", "apgd"):
            raise ValueError(f"{attack} is untargeted here: clear the target class or use PGD / FGSM")
        target_index = model.spec.class_index(target)
        with torch.no_grad(), eval_mode(model):  # the attack would only make the model surer ("Target reached.")
            predicted = int(model(pixels_for(model, x)).argmax(1)[0])
        if predicted == target_index:
            raise ValueError(f"the model already calls this image {model.spec.class_labels[target_index]!r}: pick "
                             "another target class, or clear it for an untargeted attack")
    outcome = attack_own_predictions(model, x, attacker, target_index, progress=progress)
    return AttackResult(
        clean=outcome.clean, adversarial=outcome.adversarial, top_clean=outcome.top(0, adversarial=False),
        top_adversarial=outcome.top(0), energy_clean=float(outcome.clean_energy[0]),
        energy_adversarial=float(outcome.adversarial_energy[0]), trace=outcome.trace, attack=repr(attacker),
        note=upsampling_note(model, image), framed=framed_for_file(model, image, outcome.adversarial[0]),
        target=model.spec.class_labels[target_index] if target_index is not None else "",
        stronger_with=stronger_with(key),
    )


def framed_for_file(model, image: ImageInput, adversarial: torch.Tensor) -> Optional[torch.Tensor]:
    """`adversarial` (C, H, W) as a file should hold it (`framed_model_input`), framed by the uploaded photo; None
    for a crop_pct > 1 model, whose eval transform pads the picture with black, so that no file reads back as the
    input: then the input itself is saved (`AttackResult.saved`)."""
    if not reads_back_from_a_file(model.spec):
        return None
    surround = None if isinstance(image, torch.Tensor) else load_resized(image, model.spec)
    return framed_model_input(adversarial.cpu(), model.spec, surround)


def shipped_detector(model) -> EnergyDetector:
    """The detector shipped in the model's checkpoint folder, or a message for the page (no server path in it)."""
    try:
        return load_shipped_detector(model)
    except FileNotFoundError:
        name = model.spec.source or "this model"
        raise ValueError(f"{name} has no energy detector fitted for it, so the Detect tab and the adaptive attack "
                         "cannot use it: pick one of the shipped models (`python -m robgen fit-detector --model "
                         f"{name} --data DATASET` fits one)") from None


def evade_shipped_detector(model, image: ImageInput, x: torch.Tensor, eps: float, steps: int, step_size: float,
                           seed: int, progress: Optional[Callable]) -> AttackResult:
    """`evade_detector` against the detector the Detect tab uses, as the Attack tab shows it."""
    detector = shipped_detector(model)
    outcome = evade_detector(model, x, detector, eps=eps, steps=steps, step_size=step_size,
                             generator=torch.Generator(device=x.device).manual_seed(int(seed)), progress=progress)
    energy_at_t = detector.energies(outcome.adversarial_logits)[0]
    clean_at_t = detector.energies(outcome.clean_logits)[0]
    shown, threshold = _apart(float(energy_at_t), float(outcome.threshold))
    if bool(outcome.evaded[0]):
        verdict = (f"**The Detect tab's detector accepts it as natural**: E_T(x) = {shown} > threshold "
                   f"{threshold} (T = {outcome.temperature:g}), and the model calls it "
                   f"**{next(iter(outcome.top(0)))}**. The Detect tab's `*_adaptive` examples are images made this way.")
    elif bool(outcome.flagged[0]):
        verdict = (f"**Not found**: the 8-bit result is still flagged (E_T(x) = {shown} ≤ threshold "
                   f"{threshold}). Allow more steps or a larger eps.")
    else:
        verdict = ("**Not found**: the model still gives the image its original class. Allow more steps or a larger "
                   "eps.")
    if bool(outcome.flagged_clean[0]):
        verdict += (f" Note: the detector already flags the clean image (E_T(x) = {float(clean_at_t):.3f}), so the "
                    "attack had to raise the energy too.")
    return AttackResult(
        clean=outcome.clean, adversarial=outcome.adversarial, top_clean=outcome.top(0, adversarial=False),
        top_adversarial=outcome.top(0), energy_clean=float(outcome.clean_energy[0]),
        energy_adversarial=float(outcome.adversarial_energy[0]), trace=outcome.trace, attack=outcome.attack,
        note=upsampling_note(model, image), verdict=verdict, threshold=outcome.threshold,
        framed=framed_for_file(model, image, outcome.adversarial[0]),
    )


@dataclass
class DetectResult:
    image: torch.Tensor
    energy: float
    threshold: float
    flagged: bool
    top: Dict[str, float]
    detector: EnergyDetector
    note: str = ""  # about the upload (see `upsampling_note`)

    def summary(self) -> str:
        verdict = "**adversarial**" if self.flagged else "**natural**"
        relation = "≤" if self.flagged else ">"
        calibration = self.detector.calibration
        test = calibration.get("test", {})
        measured = (f" On {calibration.get('n_test', '?')} test images this threshold caught "
                    f"{_rate(test, 'detection_rate')} of {calibration.get('attack', 'attacked')} examples "
                    f"with {_rate(test, 'false_positive_rate')} false positives.") if test else ""
        temperature = self.detector.temperature
        name, at = (("E(x)", "") if temperature == 1 else
                    ("E_T(x)", f" (T = {temperature:g}, the detector's temperature)"))
        energy, threshold = _apart(self.energy, self.threshold)
        return (f"{name} = {energy} {relation} threshold {threshold}{at}: flagged as {verdict} "
                f"(adversarial examples get *lower* energy).{measured}" + uninformative_warning(test)
                + (f"\n\n*{self.note}*" if self.note else ""))


def _rate(test: dict, name: str) -> str:
    """A calibration rate with its 95% interval, as detector.json records them ("77.0% [73.1, 80.5]")."""
    value, interval = test.get(name, float("nan")), test.get(f"{name}_ci")
    shown = f"{value:.1%}"
    return f"{shown} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else shown


def _apart(energy: float, threshold: float, digits: int = 3) -> Tuple[str, str]:
    """Two numbers (an energy and the threshold, or the energies before and after an attack) with enough digits
    to show which is larger (`digits` decimals, more when they agree that far: "-46.061 > -46.061" beside a
    verdict, or "-6.92 → -6.92 (lower)", read as a contradiction)."""
    for digits in range(digits, 10):
        shown = f"{energy:.{digits}f}", f"{threshold:.{digits}f}"
        if shown[0] != shown[1] or energy == threshold:
            return shown
    return f"{energy!r}", f"{threshold!r}"


UNINFORMATIVE_AUROC = 0.6


def uninformative_warning(test: dict) -> str:
    """A warning for a detector whose test AUROC may be below `UNINFORMATIVE_AUROC` (its 95% interval
    reaches under it): its verdicts say little (a robust model keeps its energy under attack)."""
    interval = test.get("auroc_ci")
    if not interval or not interval[0] < UNINFORMATIVE_AUROC:
        return ""
    auroc = test.get("auroc", float("nan"))
    return (f"\n\n**This model's detector barely separates attacked images from natural ones**: AUROC {auroc:.2f} "
            f"[{interval[0]:.2f}, {interval[1]:.2f}] on its test images (0.5 is chance). The energy of this model "
            "hardly moves under the attack (robust models keep their energy), so its verdicts say little; "
            "pick a standard model to see the paper's detector at work.")


def detect_image(model, image: ImageInput, detector: Optional[EnergyDetector] = None) -> DetectResult:
    """Energy of one image against the detector shipped with the model (or `detector`)."""
    detector = detector if detector is not None else shipped_detector(model)
    x = model_input(model, image)
    with torch.no_grad(), eval_mode(model):  # a model in train mode: its running statistics, left as they were
        logits = model(x).float()
    value = float(detector.energies(logits)[0])
    return DetectResult(x.cpu(), value, float(detector.threshold), bool(detector.predict(logits)[0]),
                        top_classes(logits, model.spec.class_labels), detector, upsampling_note(model, image))


def detection_figure(result: DetectResult):
    """The calibration set's clean and adversarial energies, the threshold, and this image."""
    clean, adversarial = calibration_energies(result.detector)
    return energy_histogram_figure(clean, adversarial, "calibration set", "adversarial", result.threshold,
                                   result.energy, temperature=result.detector.temperature)


def synthesize_gallery(model, target_class, n: int = 8, steps: int = 60, step_size: Optional[float] = None,
                       seed: int = 0, progress: Optional[Callable] = None) -> Tuple[List[Tuple[object, str]], Trace]:
    """`n` images of a class, each captioned with the model's probability of that class.

    They start from the class's seed distribution (Santurkar et al. 2019), or from uniform noise for a model
    with no seeds.safetensors (a Hub model: `python -m robgen fit-seeds` makes one), as the captions say."""
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    index = model.spec.class_index(target_class)
    try:
        seeds, start = load_seeds(model), ""
    except FileNotFoundError:
        seeds, start = None, " (from noise: this model has no seeds)"
    images, trace = synthesize(model, index, n, steps=steps, step_size=step_size, generator=generator,
                               init="gaussian" if seeds is not None else "uniform", seeds=seeds,
                               progress=progress, return_trace=True)
    with torch.no_grad(), eval_mode(model):
        probs = model(pixels_for(model, images)).float().softmax(1)[:, index]  # float32 samples: a half model's type
    label = model.spec.class_labels[index]
    return [(display(image), f"p({label}) = {float(p):.2f}{start}")
            for image, p in zip(images.cpu(), probs.cpu())], trace


def gradient_gallery(models: Dict[str, torch.nn.Module], image: ImageInput) -> List[Tuple[object, str]]:
    """For each model: its view of the image, -∇ₓ loss as a signed RGB map and |∇ₓ loss|."""
    gallery = []
    for name, model in models.items():
        x = model_input(model, image)
        grad = input_gradient(model, x).cpu()
        magnitude = magnitude_map(grad)[0].expand(3, -1, -1)
        gallery += [(display(signed_map(-grad)[0]), f"{name}: -∇ₓ loss"), (display(magnitude), f"{name}: |∇ₓ loss|")]
    return gallery


def translate_gallery(model, image: ImageInput, target_class, steps: int = 60, eps: Optional[float] = None,
                      snapshots: int = 5, progress: Optional[Callable] = None) -> List[Tuple[object, str]]:
    """The path of an image toward a class, captioned with p(target) and the step."""
    x = model_input(model, image)
    result = translate(model, x, target_class, steps=steps, eps=eps, snapshots=snapshots, progress=progress)
    label = model.spec.class_labels[model.spec.class_index(target_class)]
    return [(display(frame[0]), f"step {step}: p({label}) = {float(p):.2f}")
            for frame, step, p in zip(result.path.cpu(), result.steps_at, result.target_prob[:, 0])]
