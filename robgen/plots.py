"""The paper's figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .files import write_atomically  # noqa: E402


def save_figure(figure, path: Path, dpi: Optional[float] = None) -> Path:
    """Write `figure` to `path` in the format its suffix names (.png, .pdf, .svg), all or nothing
    (`robgen.files.write_atomically`: an interrupted run leaves the old figure, not half of a new one), and close
    it; its folder is made where missing, as `save_image` makes one. Returns `path`."""
    path = Path(path).expanduser()
    image_format = path.suffix[1:].lower() or "png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if image_format == "png":
            write_atomically(path, lambda temporary: save_png(opaque_png(figure, dpi), temporary))
        else:
            write_atomically(path, lambda temporary: figure.savefig(temporary, format=image_format, dpi=dpi))
    finally:
        plt.close(figure)
    return path


def opaque_png(figure, dpi: Optional[float] = None) -> Image.Image:
    """`figure` drawn as matplotlib draws a PNG, as an RGB image where every pixel is opaque (matplotlib writes
    RGBA whatever the alpha: a quarter of a big grid's bytes), RGBA where something is transparent."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(buffer)
    image.load()
    if image.mode == "RGBA" and image.getextrema()[3] == (255, 255):
        image = image.convert("RGB")
    return image


def save_png(image: Image.Image, target) -> None:
    """`image` as a PNG with the resolution (dpi, which LaTeX sizes a picture by) and text (Software) matplotlib
    wrote into it."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in image.info.items():  # a PNG's text chunks are in its info too (and survive convert())
        if isinstance(value, str):
            info.add_text(key, value)
    options = {"dpi": image.info["dpi"]} if "dpi" in image.info else {}
    image.save(target, format="PNG", pnginfo=info, **options)


def energy_histogram_figure(clean: torch.Tensor, adversarial: torch.Tensor, title: str = "",
                            adversarial_label: str = "PGD", threshold: Optional[float] = None,
                            mark: Optional[float] = None, temperature: float = 1.0):
    """Histograms of E(x) for clean and adversarial images; optionally the threshold and one image's energy.
    Energies at another `temperature` T are E_T(x) = -T logsumexp(f(x) / T), and the axis says so."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    clean, adversarial = (torch.as_tensor(side, dtype=torch.float64).flatten() for side in (clean, adversarial))
    dropped = int((~torch.isfinite(clean)).sum() + (~torch.isfinite(adversarial)).sum())
    clean, adversarial = clean[torch.isfinite(clean)], adversarial[torch.isfinite(adversarial)]  # NaN/inf: no bin
    if len(clean) or len(adversarial):
        drawn = torch.cat([clean, adversarial])
        values = [float(drawn.min()), float(drawn.max())]
        values += [v for v in (threshold, mark) if v is not None and v == v and abs(v) != float("inf")]
        low, high = min(values), max(values)
        if high - low < 1e-9:  # every energy equal: a window of width 1 around it, not bins of width 0
            low, high = low - 0.5, high + 0.5
        bins = torch.linspace(low, high, 60).tolist()
        axis.hist(clean.tolist(), bins=bins, alpha=0.6, label="clean", color="tab:blue")
        axis.hist(adversarial.tolist(), bins=bins, alpha=0.6, label=plain(adversarial_label), color="tab:red")
    if dropped:
        title = f"{title} ({dropped} NaN or infinite energies not drawn)".strip()
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label="threshold")
    if mark is not None:
        axis.axvline(mark, color="tab:green", linewidth=2.5, label="this image")
    axis.set_xlabel("E(x) = -logsumexp f(x)   (lower = more likely)" if temperature == 1 else
                    f"E_T(x) = -T logsumexp(f(x) / T), T = {temperature:g}   (lower = more likely)")
    axis.set_ylabel("images")
    axis.set_title(plain(title))
    axis.legend(fontsize=8)
    figure.tight_layout()
    plt.close(figure)
    return figure


def energy_histogram(clean: torch.Tensor, adversarial: torch.Tensor, path: Path, title: str,
                     adversarial_label: str = "PGD") -> Path:
    """Fig. 2a / 3a: histograms of E(x) for clean and adversarial images, as a PNG."""
    return save_figure(energy_histogram_figure(clean, adversarial, title, adversarial_label), path)


def trace_figure(trace, title: str = "", threshold: Optional[float] = None):
    """Energy E(x) and the class probability after every step of an attack or synthesis (a `Trace`).

    `threshold`: a detector's energy threshold (at the trace's temperature), drawn as a dashed line.
    """
    figure, axis = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    temperature = getattr(trace, "temperature", 1.0)
    name = "E(x)" if temperature == 1.0 else f"E_T(x), T = {temperature:g}"
    axis.plot(trace.step, trace.energy_mean, marker="o", markersize=3, color="tab:red", label=name)
    if threshold is not None:
        axis.axhline(threshold, color="tab:red", linestyle="--", linewidth=1,
                     label="detector threshold (flagged at or below)")
        axis.legend(fontsize=7, loc="best")
    axis.set_xlabel("step")
    axis.set_ylabel(f"energy {name}", color="tab:red")
    targeted = bool(trace.target_prob) and not any(p != p for p in trace.target_prob)
    probs, name = (trace.target_prob, "p(target | x)") if targeted else (trace.true_prob, "p(original class | x)")
    if len(probs):  # none for unconditional sampling (no class to follow): the energy alone
        twin = axis.twinx()
        twin.plot(trace.step, probs, marker="s", markersize=3, color="tab:blue", label=name)
        twin.set_ylim(-0.02, 1.02)
        twin.set_ylabel(name, color="tab:blue")
    axis.set_title(plain(title), fontsize=9)
    figure.tight_layout()
    plt.close(figure)
    return figure


def energy_vs_steps(steps: Sequence[int], means: Sequence[float], stds: Sequence[float], accuracies: Sequence[float],
                    path: Path, title: str, clean: Optional[dict] = None) -> Path:
    """Fig. 2b / 3b: mean ± std of E(x) against attack steps, the accuracy written above each point.

    Step 0 is the attack's random start; `clean` ({"energy_mean", "energy_std", "accuracy"})
    adds the clean images' energy as a dashed reference line with its ± std band.
    """
    figure, axis = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    positions = list(range(len(steps)))
    if clean is not None:
        mean, std = clean["energy_mean"], clean["energy_std"]
        axis.axhline(mean, color="tab:blue", linestyle="--", linewidth=1,
                     label=f"clean images (accuracy {100 * clean['accuracy']:.0f}%)")
        axis.axhspan(mean - std, mean + std, color="tab:blue", alpha=0.1)
        axis.legend(fontsize=8, loc="lower left")
    axis.errorbar(positions, means, yerr=stds, marker="o", capsize=4, color="tab:red")
    for x, mean, std, accuracy in zip(positions, means, stds, accuracies):
        axis.annotate(f"{100 * accuracy:.0f}%", (x, mean + std), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize=8)
    axis.set_xticks(positions, [str(s) for s in steps])
    axis.set_xlabel("attack steps (accuracy above each point)")
    axis.set_ylabel("E(x), mean ± std")
    axis.set_title(plain(title))
    axis.margins(y=0.15)
    figure.tight_layout()
    return save_figure(figure, path)


def adaptive_sweep(lams: Sequence[float], series: dict, path: Path, title: str) -> Path:
    """Detection rate and attack success of HE-PGD against λ (one line per series)."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, values in series.items():
        axis.plot(list(lams), list(values), marker="o", label=label)
    axis.set_xlabel("HE-PGD λ")
    axis.set_ylabel("rate")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(plain(title))
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def plain(text) -> str:
    """`text` (a class label, a model name) drawn as written: matplotlib reads what lies between two "$" as maths
    ("$5 and $10 bills" lost its dollars and spaces; an odd label could fail the whole figure)."""
    return str(text).replace("$", r"\$")


def picture(x: torch.Tensor):
    """A (C, H, W) image in [0, 1] as the (H, W, 3) 8-bit array `imshow` draws (a grayscale model's one channel as
    gray), each pixel rounded to its nearest level as `images.tensor_to_pil` writes it (matplotlib truncates a
    float image: 0.999 became 254, and every grid pixel one level darker than the PNG of the same image)."""
    levels = (x.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return levels.expand(3, -1, -1).permute(1, 2, 0).numpy()


def image_grid(grid: torch.Tensor, path: Path, row_labels: Sequence[str] = (), scale: Optional[int] = None) -> Path:
    """A (rows, columns, C, H, W) tensor of images in [0, 1] as one PNG, each row labelled on its left.

    `scale`: each pixel drawn as scale x scale (None: enough to show an image about 96 px tall, so
    3 for 32-px CIFAR images and 1 for 128-px Imagenette ones)."""
    rows, columns = grid.shape[:2]
    scale = max(1, round(96 / grid.shape[-2])) if scale is None else int(scale)
    height, width = grid.shape[-2] * scale, grid.shape[-1] * scale
    dpi = 100
    label_width = 1.2 if row_labels is not None and len(row_labels) else 0.0
    figure = plt.figure(figsize=(label_width + columns * (width + 4) / dpi, rows * (height + 4) / dpi), dpi=dpi)
    for r in range(rows):
        for c in range(columns):
            left = (label_width + c * (width + 4) / dpi) / figure.get_figwidth()
            bottom = 1 - (r + 1) * (height + 4) / dpi / figure.get_figheight()
            axis = figure.add_axes([left, bottom, width / dpi / figure.get_figwidth(), height / dpi / figure.get_figheight()])
            axis.imshow(picture(grid[r, c]), interpolation="nearest")
            axis.set_axis_off()
        if label_width:
            figure.text(0.02, 1 - (r + 0.5) * (height + 4) / dpi / figure.get_figheight(), plain(row_labels[r]),
                        va="center", ha="left", fontsize=9)
    return save_figure(figure, path, dpi=dpi)


def shared_prefix(names: List[str]) -> str:
    """The prefix of whole dash-separated words that every one of two or more names shares ("" if none)."""
    if len(names) < 2:
        return ""
    words = [name.split("-") for name in names]
    shared = []
    for column in zip(*(w[:-1] for w in words)):
        if len(set(column)) > 1:
            break
        shared.append(column[0])
    return "-".join(shared) + "-" if shared else ""


def gradient_maps(images: torch.Tensor, gradients: dict, path: Path) -> Path:
    """Fig. 4: each image, then for every model its -∇ₓ loss as a signed RGB map and a magnitude map.

    The maps may have other sizes than `images` (models of one data set at different input sizes): every
    panel is drawn at the same size.

    Model names that share a prefix (imagenette-resnet10-...) are titled by what differs, the prefix
    once above the figure."""
    from .synthesis.gradmaps import magnitude_map, signed_map

    names = list(gradients)
    prefix = shared_prefix(names)
    columns = 1 + 2 * len(names)
    figure, axes = plt.subplots(len(images), columns, figsize=(1.6 * columns, 1.7 * len(images) + 0.4), dpi=120,
                                squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(picture(image), interpolation="nearest")
        for k, name in enumerate(names):
            grad = gradients[name][row:row + 1]
            axes[row, 1 + 2 * k].imshow(picture(signed_map(-grad)[0]), interpolation="nearest")
            axes[row, 2 + 2 * k].imshow(magnitude_map(grad)[0, 0].numpy(), cmap="inferno", vmin=0, vmax=1,
                                        interpolation="nearest")
            if row == 0:
                axes[row, 1 + 2 * k].set_title(plain(f"{name[len(prefix):]}\n-∇ₓ loss"), fontsize=7)
                axes[row, 2 + 2 * k].set_title(plain(f"{name[len(prefix):]}\n|∇ₓ loss|"), fontsize=7)
        if row == 0:
            axes[row, 0].set_title("image", fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    if prefix:
        figure.suptitle(plain(prefix.rstrip("-")), fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)
