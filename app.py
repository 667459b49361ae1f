"""robgen's web app: Attack, Detect and Synthesize on the shipped models (and Hub models when online).

    python app.py                  # http://127.0.0.1:7860
    python app.py --port 8000 --share
    gradio app.py                  # reload mode while editing: serves the module-level `demo`

A thin layer: every handler turns the page's inputs into a file path and
numbers, makes one call into `robgen.web.handlers`, and turns the result into what
the page shows. The maths lives in the library.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import tempfile
from pathlib import Path

import gradio as gr
import gradio.utils

from robgen import plots
from robgen.web import handlers as tabs
from robgen.web.examples import adversarial_examples, adversarial_photo
from robgen.web.model_cache import (available_models, cached_model, default_models, hub_reachable, loadable,
                                    model_spec, most_robust, preload, same_classes)
from robgen.web.space import gpu

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*.png"))  # free photos (examples/README.md)
# <model>/<photo>_clean.png, _adv.png and _adaptive.png: natural, PGD-adversarial and detector-aware examples, made by
# scripts/make_app_examples.py
ADVERSARIAL_EXAMPLES = HERE / "examples" / "adversarial"
PHOTO = str(HERE / "examples" / "chelsea.png")  # what the image inputs hold before an upload (the API's default)
INPUT_HEIGHT = 240  # pixels: the image inputs keep one size, whatever the picture's
MAX_FILE_SIZE = "10mb"


def concurrency(text: str) -> int:
    """$ROBGEN_CONCURRENCY: how many model events run at once, a whole number >= 1 (0 held every event in the
    queue for ever, with no word)."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise SystemExit(f"ROBGEN_CONCURRENCY must be a whole number of at least 1 (the model events run at once), "
                         f"got {text!r}")
    return number


CONCURRENCY = concurrency(os.environ.get("ROBGEN_CONCURRENCY", "2"))
# The sliders' ranges. The handlers check them too: an API call skips the page's own checks of the image events
# (preprocess=False, so that robgen reads every upload), and a million steps would hold a worker for hours.
# eps in whole 8-bit levels: an uploaded picture's pixels are on them, and so is the attacked picture it gets back
# (quantised inside the ball), so a half level moves nothing and 2.5/255 is 2/255
EPS_255, STEPS, STEP_SIZE_255, LAMBDA, SYNTHESIS_STEPS = (1, 32), (1, 100), (0.25, 8), (0, 4), (1, 200)
SYNTHESIS_IMAGES, SYNTHESIS_STEP = (1, 16), (1e-4, 100.0)  # samples; an L2 step typed in
COMPUTE = "compute"  # the events that run a model share one queue group: CONCURRENCY of them at once in all
OFFERED = set()  # the model names some page built here offers; a request for any other is refused
ENLARGED_BUTTONS = ["fullscreen"]  # a picture enlarged for display, downloaded, would be read as another image
DELETE_CACHE = (3600, 6 * 3600)  # every hour, delete this app's result files older than six hours

ABOUT = """
## What this is
A classifier's logits *f(x)* define an **energy** — *E(x) = −logsumexp f(x)* — and, for a class *y*,
*E(x, y) = −f(x)[y]*: low energy means the model finds the image likely. Beadini & Masi (Ital-IA 2023)
observe that untargeted PGD adversarial examples get *lower* energy than natural images, so a threshold on
*E(x)* detects them with no training (**Detect** tab). **High-Energy PGD** ascends
*CE(f(x+δ), y) + λ·E(x+δ)* to fool the classifier while keeping natural energy, evading that detector
(**Attack** tab, method `hepgd`). Robust and quasi-robust classifiers are also *generative*: their input
gradients look like objects, and gradient ascent on a class draws images (**Synthesize** tab).

## Cite
```
@inproceedings{beadini2023robustgenerative,
  title     = {Exploring the Connection between Robust and Generative Models},
  author    = {Beadini, Senad and Masi, Iacopo},
  booktitle = {Ital-IA 2023: 3rd National Conference on Artificial Intelligence},
  year      = {2023}
}
```

## From Python
```python
import robgen
model = robgen.load_model("cifar10-resnet10-standard")
x = robgen.load_image("examples/chelsea.png", size=32).unsqueeze(0)
y = model(x).argmax(1)
x_adv = robgen.PGD(model, eps=8/255, step_size=1/255, steps=10)(x, y)
print(robgen.energy(model(x)), robgen.energy(model(x_adv)))      # the adversarial energy is lower
images = robgen.synthesize(robgen.load_model("cifar10-resnet10-robust"), "horse", n=8)
```
The same from the command line: `python -m robgen attack|detect|synthesize|gradmap ...` (see the README).
"""


def without_server_paths(message: str) -> str:
    """`message` with the folders of gradio's upload folder left out (an upload's hash folder, this app's
    robgen/ for results): the file's own name stays, the server's layout does not show."""
    folder = re.escape(str(Path(gradio.utils.get_upload_folder())))
    return re.sub(rf"(?:{folder}|\S*/gradio)/(?:[0-9a-f]{{16,}}|robgen)/", "", message)


def friendly_errors(handler):
    """Show the library's messages about bad input in the page instead of a generic error."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, RuntimeError, TypeError) as error:
            message = without_server_paths(str(error))
            raise gr.Error(message, print_exception=False) from None

    return wrapped


def need_model(model_name) -> str:
    """A model the page offers (an API call could name any checkpoint folder or Hub model, which would load it)."""
    if model_name not in OFFERED:
        raise gr.Error(f"unknown model {model_name!r}: pick one of {', '.join(sorted(OFFERED))}", print_exception=False)
    return model_name


def within(value, bounds, label: str) -> float:
    """`value` if inside the slider's `bounds`, else a message that gives them."""
    low, high = bounds
    if value is None or value != value or not low <= float(value) <= high:
        raise gr.Error(f"{label} must be from {low:g} to {high:g}, got {value}", print_exception=False)
    return float(value)


def whole(value, bounds, label: str) -> int:
    """`value` if a whole number inside the slider's `bounds` (an API call may send 2.5), else a message."""
    value = within(value, bounds, label)
    if value != int(value):
        raise gr.Error(f"{label} must be a whole number, got {value:g}", print_exception=False)
    return int(value)


def need_image(image) -> str:
    """The uploaded file's path. Image events skip Gradio's own decoding (preprocess=False), so that
    robgen's image reader reads every upload and a bad one gets its message, not a decoder traceback."""
    path = image.get("path") if isinstance(image, dict) else getattr(image, "path", image)
    if path is None or (isinstance(path, str) and not path):
        raise gr.Error("Upload an image or pick an example first.", print_exception=False)
    if not isinstance(path, (str, os.PathLike)):  # an array or a PIL image: a component that decodes uploads itself
        raise gr.Error(f"expected an uploaded image file, got {type(path).__name__}", print_exception=False)
    return path


MAX_SEED = 2 ** 63 - 1


def seed_number(seed) -> int:
    """A seed field's value as the int torch takes, or a message that says what to enter (a cleared field is None)."""
    try:  # an API call may send it as text
        number = seed
        if isinstance(seed, str):  # whole digits exactly (a float would round 2**53 + 1)
            number = int(seed.strip()) if seed.strip().isdigit() else float(seed)
        if number is None or number != number or not float(number).is_integer() or not 0 <= number <= MAX_SEED:
            raise ValueError
    except (TypeError, ValueError):
        raise gr.Error(f"Enter a whole-number seed from 0 to {MAX_SEED}.", print_exception=False) from None
    return int(number)


def image_file(picture, name: str = "image") -> str:
    """`picture` written to a PNG file of its own in Gradio's cache folder; its path is what the page gets.

    Gradio stores a PIL or numpy output under a name made from a hash of its bytes and rewrites that
    file on every request (processing_utils.save_pil_to_cache), so when two visitors get the same
    result, one request truncates the file while the other streams it ("Too little data for declared
    Content-Length"). A file per result is written once, before anyone knows its name, and never again.
    """
    folder = Path(gradio.utils.get_upload_folder()) / "robgen"
    folder.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".png", dir=folder)
    with os.fdopen(handle, "wb") as file:
        picture.save(file, format="PNG")
    return path


def gallery_files(items, name: str):
    return [(image_file(picture, name), caption) for picture, caption in items]


@gpu
@friendly_errors
def attack(image, model_name, method, eps_255, steps, step_size_255, lam, target, seed, progress=gr.Progress()):
    eps_255, steps = within(eps_255, EPS_255, "eps (/255)"), whole(steps, STEPS, "steps")
    if eps_255 != int(eps_255):
        raise gr.Error(f"eps (/255) must be a whole number: the picture's pixels move in steps of 1/255, so "
                       f"{eps_255:g}/255 would attack as {int(eps_255)}/255", print_exception=False)
    step_size_255, lam = within(step_size_255, STEP_SIZE_255, "step size (/255)"), within(lam, LAMBDA, "λ")
    model = cached_model(need_model(model_name))  # loaded once the numbers are known to be good
    result = tabs.attack_image(model, need_image(image), method, eps=eps_255 / 255, steps=int(steps),
                               step_size=step_size_255 / 255, lam=lam, target=target, seed=seed_number(seed),
                               progress=progress)  # (a blank target box is no target: the handler reads it so)
    return (image_file(tabs.display(result.clean), "seen"), image_file(tabs.display(result.adversarial), "adversarial"),
            image_file(tabs.display(result.perturbation), "perturbation"), result.top_clean, result.top_adversarial,
            result.summary(), plots.trace_figure(result.trace, "energy and probability per step", result.threshold),
            image_file(result.saved(), "adversarial-exact"))


def check_in_detect(adversarial_file):
    """The Attack tab's adversarial file (the exact pixels, not the enlarged picture) in the Detect tab, shown.
    A model change clears the file (`build_app`): it belongs to the model that made it."""
    if not adversarial_file:
        raise gr.Error("Run an attack first (a change of model clears the last one).", print_exception=False)
    if not Path(adversarial_file).is_file():
        raise gr.Error("The last attack's result has expired (results are kept six hours): run the attack again.",
                       print_exception=False)
    return adversarial_file, gr.Tabs(selected="detect")


@gpu
@friendly_errors
def detect(image, model_name):
    result = tabs.detect_image(cached_model(need_model(model_name)), need_image(image))
    return image_file(tabs.display(result.image), "seen"), result.summary(), result.top, tabs.detection_figure(result)


@gpu(duration=120)
@friendly_errors
def synthesize(model_name, target_class, n, steps, automatic_step_size, step_size, seed, progress=gr.Progress()):
    """`automatic_step_size` (the default) takes the library's L2 step, 2.5·eps/steps, and ignores `step_size`."""
    n, steps = whole(n, SYNTHESIS_IMAGES, "images"), whole(steps, SYNTHESIS_STEPS, "steps")
    step_size = None if automatic_step_size else within(step_size, SYNTHESIS_STEP, "step size (L2)")
    seed = seed_number(seed)
    model = cached_model(need_model(model_name))  # loaded once the numbers are known to be good
    gallery, trace = tabs.synthesize_gallery(model, target_class, n=n, steps=steps, step_size=step_size, seed=seed,
                                             progress=progress)
    label = model.spec.class_labels[model.spec.class_index(target_class)]  # as typed: "7", " Horse "
    return (gallery_files(gallery, "sample"),
            plots.trace_figure(trace, f"synthesising '{label}': mean over the samples"))


@gpu
@friendly_errors
def gradient_maps(image, model_name):
    labels = model_spec(need_model(model_name)).class_labels
    # a shipped model's siblings are the shipped ones the page offers; a Hub model's, the other Hub models it offers
    # (the page offers those that load: a broken checkpoint folder beside them is no sibling to load)
    shipped = [name for name in available_models() if name in OFFERED]
    pool = shipped if model_name in shipped else sorted(name for name in OFFERED if name not in available_models())
    models = {model_name: cached_model(model_name)}
    for name in pool:  # the others of its classes shown beside it where they load: one that fails (a download, a
        if len(models) == 4:  # checkpoint rewritten since start-up) is left out with a log line, not the request
            break
        try:
            if name != model_name and model_spec(name).class_labels == labels:
                models[name] = cached_model(name)
        except Exception as error:  # noqa: BLE001  (whatever a load raises: the chosen model's maps still come)
            logging.getLogger(__name__).warning("gradient maps: %s left out, it failed to load: %s", name, error)
    return gallery_files(tabs.gradient_gallery(models, need_image(image)), "gradient")


@gpu
@friendly_errors
def translate(image, model_name, target_class, steps, progress=gr.Progress()):
    steps = whole(steps, SYNTHESIS_STEPS, "translation steps")
    path = tabs.translate_gallery(cached_model(need_model(model_name)), need_image(image), target_class, steps=steps,
                                  progress=progress)  # the model loaded once the number is known to be good
    return gallery_files(path, "step")


def kept(value, labels, fallback):
    """A class picked before a model change, if the new model has it; else `fallback`."""
    return value if value in labels else fallback


def follow_model(model_name, synthesis_model, target, models, example_makers):
    """After the Attack/Detect model changes: its classes as targets (the picked target kept where it has it) and
    in the notes, the Synthesize tab on a model of its data set (the most robust one, unless it is there already),
    the Detect examples of its data set."""
    spec = model_spec(model_name)
    note = tabs.describe_classes(spec, model_name)
    synthesis = synthesis_model if same_classes(synthesis_model, model_name) else most_robust(models, like=model_name)
    return (gr.Dropdown(choices=[""] + spec.class_labels, value=kept(target, spec.class_labels, "")),
            gr.Dropdown(choices=models, value=synthesis),
            note, note, *[gr.Dataset(visible=same_classes(maker, model_name)) for maker in example_makers])


def models_info(names) -> str:
    """The model picker's help: the shipped data sets and their input sizes, then the Hub models."""
    kinds = []
    for name in names:
        spec = model_spec(name)
        kind = f"{tabs.data_set_name(spec) or name} {spec.input_size[2]}×{spec.input_size[1]}"
        if kind not in kinds:
            kinds.append(kind)
    return f"shipped: {', '.join(kinds)} px; ImageNet models from the Hub when online"


def detect_default(default, example_sets) -> str:
    """The Detect tab's first image: an adversarial example made by the default model (or one of its classes)."""
    makers = sorted(example_sets, key=lambda maker: maker != default)  # the default model's own first
    maker = next((maker for maker in makers if same_classes(maker, default)), None)
    return adversarial_photo(example_sets[maker]) if maker else PHOTO


def class_choices(model_name, synthesis_class=None, translate_class=None):
    """The Synthesize tab's class pickers for a model: the classes picked before, where it has them."""
    labels = model_spec(model_name).class_labels
    return (gr.Dropdown(choices=labels, value=kept(synthesis_class, labels, labels[0])),
            gr.Dropdown(choices=labels, value=kept(translate_class, labels, labels[min(5, len(labels) - 1)])))


def build_app(models=None, adversarial_examples_folder=ADVERSARIAL_EXAMPLES) -> gr.Blocks:
    """The page. Building it loads the shipped models' specs and starts no server.

    `models`: the names offered (default: the shipped checkpoints, and the Hub models when online); the tabs'
    defaults come from `default_models`. `adversarial_examples_folder`: the Detect tab's examples, a folder per
    model that made them (robgen.web.examples). The class pickers list the default model's classes but take any
    value (`allow_custom_value`), so that an API call may name a model of another data set with one of its
    classes; the handlers check the class against the model's own (an unknown one gets the list of its classes).
    """
    models = loadable(models or available_models(online=hub_reachable()))
    OFFERED.update(models)
    compute = dict(concurrency_id=COMPUTE, concurrency_limit=CONCURRENCY)  # one group for every event that computes
    default, synthesis_default = default_models(models)
    shipped = [name for name in models if name in available_models()]  # cheap to load; Hub models load when used
    labels, synthesis_labels = model_spec(default).class_labels, model_spec(synthesis_default).class_labels
    example_sets = {maker: files for maker, files in adversarial_examples(adversarial_examples_folder).items()
                    if maker in shipped}
    classes_note = tabs.describe_classes(model_spec(default), default)
    with gr.Blocks(title="robgen", delete_cache=DELETE_CACHE) as app:
        gr.Markdown("# robgen — the generative model inside a classifier\n"
                    "Attack an image, detect adversarial examples by their energy, and draw images from robust models.")
        with gr.Tabs() as tab_set:
            with gr.Tab("Attack", id="attack"):
                model_name = gr.Dropdown(models, value=default, label="model (Attack and Detect)",
                                         info=models_info([default] + shipped))  # the default's data set first
                attack_classes = gr.Markdown(classes_note)
                with gr.Row():
                    with gr.Column():
                        attack_image = gr.Image(PHOTO, type="filepath", label="image", sources=["upload", "clipboard"],
                                                height=INPUT_HEIGHT)
                        gr.Examples(EXAMPLES, inputs=attack_image)
                        method = gr.Radio(["fgsm", "pgd", "hepgd", "apgd", tabs.ADAPTIVE], value="pgd", label="attack",
                                          info="hepgd = High-Energy PGD: fools the model and keeps natural energy; "
                                               "adaptive = knows the Detect tab's detector: fools the model and stays "
                                               "accepted as natural")
                        with gr.Row():
                            eps = gr.Slider(*EPS_255, value=8, step=1, label="eps (/255, L∞)")
                            steps = gr.Slider(*STEPS, value=10, step=1, label="steps")
                        with gr.Row():
                            step_size = gr.Slider(*STEP_SIZE_255, value=1, step=0.25, label="step size (/255)")
                            lam = gr.Slider(*LAMBDA, value=1.2, step=0.1, label="λ (HE-PGD energy weight)")
                        with gr.Row():
                            target = gr.Dropdown([""] + labels, value="", label="target class (optional, PGD/FGSM)",
                                                 allow_custom_value=True)
                            attack_seed = gr.Number(0, precision=0, label="seed")
                        attack_button = gr.Button("Attack", variant="primary")
                    with gr.Column():
                        with gr.Row():
                            # enlarged for display, so no download button: the file below is the image itself
                            seen = gr.Image(label="as the model sees it", interactive=False, format="png",
                                            buttons=ENLARGED_BUTTONS)
                            adversarial = gr.Image(label="adversarial", interactive=False, format="png",
                                                   buttons=ENLARGED_BUTTONS)
                            perturbation = gr.Image(label="perturbation (amplified)", interactive=False, format="png")
                        attack_summary = gr.Markdown()
                        with gr.Row():
                            top_before = gr.Label(num_top_classes=5, label="top-5 before")
                            top_after = gr.Label(num_top_classes=5, label="top-5 after")
                        attack_plot = gr.Plot(label="per step")
                        # the adversarial image as a file whose eval transform gives back exactly the attacked
                        # pixels (the pictures above are enlarged for display: the model would read another image)
                        adversarial_file = gr.File(label="the adversarial image, as the model reads it back "
                                                         "(download it, or check it in the Detect tab)",
                                                   interactive=False)
                        to_detect = gr.Button("Check it in the Detect tab")
                attacking = attack_button.click(
                    attack, [attack_image, model_name, method, eps, steps, step_size, lam, target, attack_seed],
                    [seen, adversarial, perturbation, top_before, top_after, attack_summary, attack_plot,
                     adversarial_file],
                    api_name="attack", preprocess=False, **compute)
            with gr.Tab("Detect", id="detect"):
                gr.Markdown("Uses the model picked in the Attack tab, and the energy threshold shipped with it.")
                detect_classes = gr.Markdown(classes_note)
                with gr.Row():
                    with gr.Column():
                        detect_image = gr.Image(detect_default(default, example_sets), type="filepath", label="image",
                                                sources=["upload", "clipboard"], height=INPUT_HEIGHT)
                        # one per model that made examples; those of the picked model's classes show
                        example_datasets = []
                        for maker, files in example_sets.items():
                            example_datasets.append(gr.Examples(
                                files, inputs=detect_image, visible=same_classes(maker, default),
                                label=f"natural (*_clean), PGD-adversarial (*_adv) and adaptive (*_adaptive: made by "
                                      f"an attacker who knows the detector, so it passes as natural) examples made by "
                                      f"{maker}").dataset)
                        gr.Examples(EXAMPLES, inputs=detect_image, label="photos (public domain / CC0)")
                        detect_button = gr.Button("Detect", variant="primary")
                    with gr.Column():
                        detect_seen = gr.Image(label="as the model sees it", interactive=False, format="png",
                                               buttons=ENLARGED_BUTTONS)
                        verdict = gr.Markdown()
                        detect_top = gr.Label(num_top_classes=5, label="prediction")
                        detect_plot = gr.Plot(label="calibration energies")
                detecting = detect_button.click(detect, [detect_image, model_name],
                                                [detect_seen, verdict, detect_top, detect_plot],
                                                api_name="detect", preprocess=False, **compute)
                checking = to_detect.click(check_in_detect, adversarial_file, [detect_image, tab_set],
                                           api_visibility="private").then(
                    detect, [detect_image, model_name], [detect_seen, verdict, detect_top, detect_plot],
                    preprocess=False, api_visibility="private", **compute)
            with gr.Tab("Synthesize"):
                synthesis_model = gr.Dropdown(models, value=synthesis_default, label="model to draw from",
                                              info="robust or quasi-robust: a standard model only makes "
                                                   "adversarial noise")
                with gr.Row():
                    with gr.Column():
                        synth_class = gr.Dropdown(synthesis_labels, value=synthesis_labels[0], label="class",
                                                  allow_custom_value=True)
                        with gr.Row():
                            synth_n = gr.Slider(*SYNTHESIS_IMAGES, value=8, step=1, label="images")
                            synth_steps = gr.Slider(*SYNTHESIS_STEPS, value=60, step=1, label="steps")
                        with gr.Row():
                            synth_auto = gr.Checkbox(True, label="automatic step size", info="L2 step 2.5·eps/steps")
                            # no minimum or maximum here: Gradio checks them also while the field is hidden (a
                            # value typed, then "automatic" ticked again, refused every run with no field named);
                            # the handler checks the value where it is used, naming the field
                            synth_step = gr.Number(0.25, label="step size (L2)", visible=False,
                                                   info=f"{SYNTHESIS_STEP[0]:g} to {SYNTHESIS_STEP[1]:g}")
                            synth_seed = gr.Number(0, precision=0, label="seed")
                        synth_button = gr.Button("Synthesize", variant="primary")
                    with gr.Column():
                        gallery = gr.Gallery(label="samples", columns=4, height="auto", format="png")
                        synth_plot = gr.Plot(label="per step")
                synthesizing = synth_button.click(synthesize, [synthesis_model, synth_class, synth_n, synth_steps, synth_auto,
                                                synth_step, synth_seed],
                                   [gallery, synth_plot], api_name="synthesize", **compute)
                synth_auto.change(lambda automatic: gr.Number(visible=not automatic), synth_auto, synth_step,
                                  api_visibility="private")
                gr.Markdown("### Gradient maps and image-to-class translation of an upload")
                with gr.Row():
                    with gr.Column():
                        explain_image = gr.Image(PHOTO, type="filepath", label="image", sources=["upload", "clipboard"],
                                                 height=INPUT_HEIGHT)
                        gr.Examples(EXAMPLES, inputs=explain_image)
                        maps_button = gr.Button("Gradient maps (up to 4 models of this data set)")
                        translate_class = gr.Dropdown(synthesis_labels,
                                                      value=synthesis_labels[min(5, len(synthesis_labels) - 1)],
                                                      label="translate toward", allow_custom_value=True)
                        translate_steps = gr.Slider(*SYNTHESIS_STEPS, value=60, step=1,
                                                    label="translation steps")
                        translate_button = gr.Button("Translate")
                    with gr.Column():
                        maps = gr.Gallery(label="-∇ₓ loss and |∇ₓ loss| per model", columns=4, height="auto",
                                          format="png")
                        path = gr.Gallery(label="translation path", columns=6, height="auto", format="png")
                mapping = maps_button.click(gradient_maps, [explain_image, synthesis_model], maps, api_name="gradient_maps",
                                  preprocess=False, **compute)
                translating = translate_button.click(translate, [explain_image, synthesis_model, translate_class, translate_steps],
                                       path, api_name="translate", preprocess=False, **compute)
            with gr.Tab("About"):
                gr.Markdown(ABOUT)
        model_name.change(functools.partial(follow_model, models=models, example_makers=list(example_sets)),
                          [model_name, synthesis_model, target],
                          [target, synthesis_model, attack_classes, detect_classes, *example_datasets],
                          api_visibility="private")
        # every result shown was the previous model's (its verdict beside the new model's classes); a run still
        # going is too, and would land after the change
        shown = [seen, adversarial, perturbation, top_before, top_after, attack_summary, attack_plot, adversarial_file,
                 detect_seen, verdict, detect_top, detect_plot]
        model_name.change(lambda: [None] * len(shown), None, shown, cancels=[attacking, detecting, checking],
                          api_visibility="private")
        synthesis_model.change(class_choices, [synthesis_model, synth_class, translate_class],
                               [synth_class, translate_class], api_visibility="private")
        drawn = [gallery, synth_plot, maps, path]  # the Synthesize tab's results: the previous model's, likewise
        synthesis_model.change(lambda: [None] * len(drawn), None, drawn, cancels=[synthesizing, mapping, translating],
                               api_visibility="private")
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    return app


MODELS = loadable(available_models(online=hub_reachable()))  # a local folder that fails to load is logged, not offered
demo = build_app(MODELS)  # module level, so that `gradio app.py` (reload mode) finds it; starts no server


def main() -> None:
    parser = argparse.ArgumentParser(description="robgen's web app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (needs the internet)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    preload(MODELS)  # every model offered, on the CPU, before any GPU call (ZeroGPU runs each call in a fork)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
                show_error=True, footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
