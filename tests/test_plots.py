import math

import pytest
import torch

from robgen.plots import energy_histogram_figure


def bars(figure):
    return [patch for patch in figure.axes[0].patches if patch.get_height() > 0]


def test_the_energy_histogram_draws_the_finite_energies_and_says_how_many_it_left_out():
    """One NaN or inf energy made the bins NaN (an empty plot); all-equal energies made bins of width 0."""
    clean = torch.linspace(-12, -8, 100)
    adversarial = torch.linspace(-20, -15, 100)
    plain = energy_histogram_figure(clean, adversarial, "calibration set")
    broken = energy_histogram_figure(torch.cat([clean, torch.tensor([math.nan])]),
                                     torch.cat([adversarial, torch.tensor([-math.inf])]), "calibration set")
    assert len(bars(broken)) == len(bars(plain)) > 20
    assert broken.axes[0].get_title() == "calibration set (2 NaN or infinite energies not drawn)"
    flat = energy_histogram_figure(torch.full((10,), -5.0), torch.full((10,), -5.0), threshold=-5.0)
    (left, right) = flat.axes[0].get_xlim()
    assert right - left > 0.5 and all(patch.get_width() > 0 for patch in bars(flat))


def test_one_side_without_finite_energies_still_draws_the_other():
    figure = energy_histogram_figure(torch.linspace(-12, -8, 100), torch.full((5,), math.inf), "calibration set")
    assert len(bars(figure)) > 20 and "(5 NaN or infinite energies not drawn)" in figure.axes[0].get_title()


def test_class_labels_with_dollar_signs_are_drawn_as_written(tmp_path):
    """matplotlib took what lies between two "$" for maths: a row labelled "$5 or $10 bill" lost its dollars and
    spacing, and a label such as "$\\x$" failed the whole figure."""
    from robgen import plots

    labels = ["$5 or $10 bill", "$\\x$ sign"]
    path = plots.image_grid(torch.rand(2, 1, 3, 8, 8), tmp_path / "grid.png", row_labels=labels)
    assert path.is_file()
    figure = plots.plt.figure()
    text = figure.text(0, 0, plots.plain(labels[0]))
    figure.canvas.draw()
    assert not text._preprocess_math(text.get_text())[1], "drawn as plain text, not maths"
    plots.plt.close(figure)


def test_a_figure_that_fails_to_draw_leaves_the_old_file_whole_and_no_partial_file(tmp_path):
    """Figures were drawn straight into their file: an interrupted or failing savefig left half a PNG."""
    import matplotlib.pyplot as plt

    from robgen.plots import save_figure

    path = tmp_path / "figure.png"
    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    save_figure(figure, path)
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG") and not plt.fignum_exists(figure.number)

    broken, axis = plt.subplots()
    axis.text(0.5, 0.5, r"$\undefinedcommand$")  # mathtext refuses it while the file is being written
    with pytest.raises(ValueError):
        save_figure(broken, path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    assert not plt.fignum_exists(broken.number)


def test_a_figure_is_written_in_the_format_its_suffix_names(tmp_path):
    import matplotlib.pyplot as plt

    from robgen.plots import save_figure

    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    assert save_figure(figure, tmp_path / "figure.pdf").read_bytes().startswith(b"%PDF")


def test_an_opaque_figure_is_written_as_rgb_with_matplotlibs_pixels_and_a_transparent_one_keeps_its_alpha(tmp_path):
    """matplotlib writes RGBA whatever the alpha: an opaque synthesis grid took a quarter more bytes than its pixels
    need (the Imagenette standard model's grid, 2.16 MB, over the 2 MB a committed file may take; 1.84 MB as RGB)."""
    import io

    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from robgen.plots import save_figure

    def drawn(transparent=False):
        figure, axis = plt.subplots(figsize=(2, 2), dpi=50)
        axis.imshow(np.random.default_rng(0).random((8, 8, 3)), interpolation="nearest")
        if transparent:
            figure.patch.set_alpha(0.0)
        return figure

    buffer = io.BytesIO()
    reference = drawn()
    reference.savefig(buffer, format="png", dpi=50)
    plt.close(reference)
    expected = np.asarray(Image.open(buffer))
    assert expected.shape[-1] == 4 and (expected[..., 3] == 255).all()
    with Image.open(save_figure(drawn(), tmp_path / "opaque.png")) as written:
        assert written.mode == "RGB" and np.array_equal(np.asarray(written), expected[..., :3])
        # matplotlib's resolution (LaTeX sizes a PNG by it) and text kept
        assert round(written.info["dpi"][0]) == 50 and "matplotlib" in written.text.get("Software", "")
    with Image.open(save_figure(drawn(transparent=True), tmp_path / "transparent.png")) as written:
        assert written.mode == "RGBA" and np.asarray(written)[..., 3].min() < 255


def test_an_unconditional_trace_draws_its_energy_alone_and_grids_take_any_sequence_of_labels(tmp_path):
    """trace_figure plotted p(original class | x) of a trace that has none (unconditional SGLD): matplotlib's "x and
    y must have same first dimension"; image_grid's labels as a numpy array: "truth value ... is ambiguous"; a figure
    into a missing folder named its temporary file in the error."""
    import numpy as np

    from robgen import plots
    from robgen.engine.trace import Trace
    from robgen.files import write_text_atomically

    unconditional = Trace(step=[0, 1, 2], energy_mean=[-3.0, -4.0, -5.0], energy_std=[0.1] * 3)
    figure = plots.trace_figure(unconditional, title="SGLD")
    assert len(figure.axes) == 1 and len(figure.axes[0].lines) == 1
    conditional = Trace(step=[0, 1], energy_mean=[-3.0, -4.0], energy_std=[0.1] * 2, true_prob=[0.9, 0.2])
    assert len(plots.trace_figure(conditional).axes) == 2
    grid = torch.rand(2, 3, 3, 8, 8)
    path = plots.image_grid(grid, tmp_path / "new" / "grid.png", row_labels=np.array(["cat", "dog"]))
    assert path.is_file()
    with pytest.raises(FileNotFoundError, match=r"cannot write .*missing/x.json: its folder .*missing does not exist$"):
        write_text_atomically(tmp_path / "missing" / "x.json", "{}")


def test_grid_cells_hold_each_pixel_rounded_to_its_8_bit_level_as_the_pngs_do(tmp_path):
    """matplotlib truncates a float image: every grid pixel came out floor(255 x), one level darker than
    images.tensor_to_pil's rounded PNG of the same image (0.999 drawn as 254)."""
    import numpy as np
    from PIL import Image

    from robgen import plots
    from robgen.images import tensor_to_pil

    image = torch.empty(3, 32, 32)
    image[0], image[1], image[2] = 0.999, 0.5, 0.3
    path = plots.image_grid(image[None, None], tmp_path / "grid.png", scale=1)
    drawn = np.asarray(Image.open(path).convert("RGB"))
    cell = drawn[drawn.shape[0] - 16, 16]  # inside the one cell, which sits at the figure's bottom left
    assert cell.tolist() == list(tensor_to_pil(image).getpixel((0, 0))) == [255, 128, 76]
