"""robgen's web app: Attack, Detect and Synthesize on the shipped models (and Hub models when online).

    python app.py                  # http://127.0.0.1:7860
    python app.py --port 8000 --share

A thin layer: every handler turns the page's inputs into a file path and
numbers, makes one call into `robgen.web.handlers`, and turns the result into what
the page shows. The maths lives in the library.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from pathlib import Path

import gradio as gr

import robgen
from robgen import plots
from robgen.web import handlers as tabs
from robgen.web.model_cache import available_models, cached_model, hub_reachable
from robgen.web.space import SpaceSettings, gpu

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*.png"))
ADVERSARIAL_EXAMPLES = sorted(str(p) for p in (HERE / "examples" / "adversarial").glob("*.png"))
MAX_FILE_SIZE = "10mb"
CONCURRENCY = int(os.environ.get("ROBGEN_CONCURRENCY", "2"))

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


def friendly_errors(handler):
    """Show the library's messages about bad input in the page instead of a generic error."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, RuntimeError, TypeError) as error:
            message = re.sub(r"\S*/gradio/[0-9a-f]{16,}/", "", str(error))  # the upload's name, not the server's path
            raise gr.Error(message, print_exception=False) from None

    return wrapped


def need_image(image) -> str:
    """The uploaded file's path. Image events skip Gradio's own decoding (preprocess=False), so that
    robgen.load_image reads every upload and a bad one gets its message, not a decoder traceback."""
    path = image.get("path") if isinstance(image, dict) else getattr(image, "path", image)
    if not path:
        raise gr.Error("Upload an image or pick an example first.", print_exception=False)
    return path


@gpu
@friendly_errors
def attack(image, model_name, method, eps_255, steps, step_size_255, lam, target, seed, progress=gr.Progress()):
    model = cached_model(model_name)
    result = tabs.attack_image(model, need_image(image), method, eps=eps_255 / 255, steps=int(steps),
                               step_size=step_size_255 / 255, lam=lam, target=target or None, seed=int(seed),
                               progress=progress)
    return (tabs.display(result.clean), tabs.display(result.adversarial), tabs.display(result.perturbation),
            result.top_clean, result.top_adversarial, result.summary(),
            plots.trace_figure(result.trace, "energy and probability per step"))


@gpu
@friendly_errors
def detect(image, model_name):
    result = tabs.detect_image(cached_model(model_name), need_image(image))
    return tabs.display(result.image), result.summary(), result.top, tabs.detection_figure(result)


@gpu(duration=120)
@friendly_errors
def synthesize(model_name, target_class, n, steps, step_size, seed, progress=gr.Progress()):
    gallery, trace = tabs.synthesize_gallery(cached_model(model_name), target_class, n=int(n), steps=int(steps),
                                             step_size=step_size or None, seed=int(seed), progress=progress)
    return gallery, plots.trace_figure(trace, f"synthesising '{target_class}': mean over the samples")


@gpu
@friendly_errors
def gradient_maps(image, model_name):
    model = cached_model(model_name)
    siblings = [name for name in available_models() if cached_model(name).spec.class_labels == model.spec.class_labels]
    return tabs.gradient_gallery({name: cached_model(name) for name in siblings[:4]}, need_image(image))


@gpu
@friendly_errors
def translate(image, model_name, target_class, steps, progress=gr.Progress()):
    return tabs.translate_gallery(cached_model(model_name), need_image(image), target_class, steps=int(steps),
                                  progress=progress)


def class_choices(model_name):
    labels = cached_model(model_name).spec.class_labels
    return gr.Dropdown(choices=labels, value=labels[0]), gr.Dropdown(choices=[""] + labels, value=""), \
        gr.Dropdown(choices=labels, value=labels[min(5, len(labels) - 1)])


def build_app(models=None) -> gr.Blocks:
    models = models or available_models(online=hub_reachable())
    default = "cifar10-resnet10-standard" if "cifar10-resnet10-standard" in models else models[0]
    labels = cached_model(default).spec.class_labels
    with gr.Blocks(title="robgen") as app:
        gr.Markdown("# robgen — the generative model inside a classifier\n"
                    "Attack an image, detect adversarial examples by their energy, and draw images from robust models.")
        model_name = gr.Dropdown(models, value=default, label="model",
                                 info="shipped CIFAR-10 ResNet10s (32×32 inputs); ImageNet models from the Hub when online")
        with gr.Tab("Attack"):
            with gr.Row():
                with gr.Column():
                    attack_image = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"])
                    gr.Examples(EXAMPLES, inputs=attack_image)
                    method = gr.Radio(["fgsm", "pgd", "hepgd", "apgd"], value="pgd", label="attack",
                                      info="hepgd = High-Energy PGD: fools the model and keeps natural energy")
                    with gr.Row():
                        eps = gr.Slider(0.5, 32, value=8, step=0.5, label="eps (/255, L∞)")
                        steps = gr.Slider(1, 100, value=10, step=1, label="steps")
                    with gr.Row():
                        step_size = gr.Slider(0.25, 8, value=1, step=0.25, label="step size (/255)")
                        lam = gr.Slider(0, 4, value=1.2, step=0.1, label="λ (HE-PGD energy weight)")
                    with gr.Row():
                        target = gr.Dropdown([""] + labels, value="", label="target class (optional, PGD/FGSM)")
                        attack_seed = gr.Number(0, precision=0, label="seed")
                    attack_button = gr.Button("Attack", variant="primary")
                with gr.Column():
                    with gr.Row():
                        seen = gr.Image(label="as the model sees it", interactive=False, format="png")
                        adversarial = gr.Image(label="adversarial", interactive=False, format="png")
                        perturbation = gr.Image(label="perturbation (amplified)", interactive=False, format="png")
                    attack_summary = gr.Markdown()
                    with gr.Row():
                        top_before = gr.Label(num_top_classes=5, label="top-5 before")
                        top_after = gr.Label(num_top_classes=5, label="top-5 after")
                    attack_plot = gr.Plot(label="per step")
            attack_button.click(attack, [attack_image, model_name, method, eps, steps, step_size, lam, target, attack_seed],
                                [seen, adversarial, perturbation, top_before, top_after, attack_summary, attack_plot],
                                api_name="attack", preprocess=False)
        with gr.Tab("Detect"):
            with gr.Row():
                with gr.Column():
                    detect_image = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"])
                    gr.Examples(ADVERSARIAL_EXAMPLES + EXAMPLES, inputs=detect_image,
                                label="natural (*_clean) and PGD adversarial (*_adv) examples for the standard model")
                    detect_button = gr.Button("Detect", variant="primary")
                with gr.Column():
                    detect_seen = gr.Image(label="as the model sees it", interactive=False, format="png")
                    verdict = gr.Markdown()
                    detect_top = gr.Label(num_top_classes=5, label="prediction")
                    detect_plot = gr.Plot(label="calibration energies")
            detect_button.click(detect, [detect_image, model_name], [detect_seen, verdict, detect_top, detect_plot],
                                api_name="detect", preprocess=False)
        with gr.Tab("Synthesize"):
            with gr.Row():
                with gr.Column():
                    synth_class = gr.Dropdown(labels, value=labels[0], label="class")
                    with gr.Row():
                        synth_n = gr.Slider(1, 16, value=8, step=1, label="images")
                        synth_steps = gr.Slider(1, 200, value=60, step=1, label="steps")
                    with gr.Row():
                        synth_step = gr.Number(None, label="step size (L2; empty = 2.5·eps/steps)")
                        synth_seed = gr.Number(0, precision=0, label="seed")
                    synth_button = gr.Button("Synthesize", variant="primary")
                    gr.Markdown("Pick a robust or quasi-robust model above: a standard model only makes adversarial noise.")
                with gr.Column():
                    gallery = gr.Gallery(label="samples", columns=4, height="auto", format="png")
                    synth_plot = gr.Plot(label="per step")
            synth_button.click(synthesize, [model_name, synth_class, synth_n, synth_steps, synth_step, synth_seed],
                               [gallery, synth_plot], api_name="synthesize")
            gr.Markdown("### Gradient maps and image-to-class translation of an upload")
            with gr.Row():
                with gr.Column():
                    explain_image = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"])
                    gr.Examples(EXAMPLES, inputs=explain_image)
                    maps_button = gr.Button("Gradient maps (all models of this data set)")
                    translate_class = gr.Dropdown(labels, value=labels[min(5, len(labels) - 1)], label="translate toward")
                    translate_steps = gr.Slider(1, 200, value=60, step=1, label="translation steps")
                    translate_button = gr.Button("Translate")
                with gr.Column():
                    maps = gr.Gallery(label="-∇ₓ loss and |∇ₓ loss| per model", columns=4, height="auto", format="png")
                    path = gr.Gallery(label="translation path", columns=6, height="auto", format="png")
            maps_button.click(gradient_maps, [explain_image, model_name], maps, api_name="gradient_maps", preprocess=False)
            translate_button.click(translate, [explain_image, model_name, translate_class, translate_steps], path,
                                   api_name="translate", preprocess=False)
        with gr.Tab("About"):
            gr.Markdown(ABOUT)
        model_name.change(class_choices, model_name, [synth_class, target, translate_class], api_visibility="private")
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="robgen's web app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (needs the internet)")
    args = parser.parse_args()
    for name in SpaceSettings.load().preload_models:
        if name in robgen.list_models():
            cached_model(name)
    app = build_app()
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
               show_error=True, footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
