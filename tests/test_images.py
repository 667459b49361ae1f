import io

import numpy as np
import pytest
import torch
from PIL import Image

from robgen.images import ImageError, load_image, save_image


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_round_trip_png_is_lossless(tmp_path):
    x = torch.randint(0, 256, (3, 10, 14)).float() / 255
    assert torch.equal(load_image(save_image(x, tmp_path / "a.png")), x)


def test_resize_and_centre_crop_to_the_model_input(tmp_path):
    path = save(Image.new("RGB", (64, 32), (255, 0, 0)), tmp_path / "wide.jpg")
    x = load_image(path, size=(16, 16))
    assert x.shape == (3, 16, 16) and float(x[0].mean()) > 0.9


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (20, 20), (255, 0, 0, 0)),
        Image.new("L", (20, 20), 128),
        Image.new("CMYK", (20, 20), (0, 0, 0, 0)),
        Image.new("P", (20, 20), 3),
        Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)),
    ],
    ids=["rgba", "gray", "cmyk", "palette", "16bit"],
)
def test_common_modes_become_rgb(tmp_path, image):
    ext = "jpg" if image.mode == "CMYK" else "png"
    x = load_image(save(image, tmp_path / f"img.{ext}"))
    assert x.shape == (3, 20, 20) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_transparent_pixels_are_composited_on_white(tmp_path):
    x = load_image(save(Image.new("RGBA", (10, 10), (255, 0, 0, 0)), tmp_path / "t.png"))
    assert torch.allclose(x, torch.ones_like(x))


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 12), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    x = load_image(path)
    assert float(x[0].mean()) > 0.9 and float(x[2].mean()) < 0.1


def test_bad_files_are_explained(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.txt")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="too small"):
        load_image(save(Image.new("RGB", (1, 1)), tmp_path / "dot.png"))
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
