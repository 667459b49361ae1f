import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from robgen.images import ImageError, crop_offset, load_image, load_model_input, save_image
from robgen.models import ModelSpec


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


def palette_image():
    """A palette image of index 3, whose colour is (10, 200, 30)."""
    image = Image.new("P", (20, 20), 3)
    image.putpalette([0, 0, 0, 255, 255, 255, 1, 2, 3, 10, 200, 30])
    return image


@pytest.mark.parametrize(
    "image, rgb, tolerance",
    [
        # (200, 40, 0) at alpha 64 over white: c * 64/255 + 255 * (1 - 64/255), rounded
        (Image.new("RGBA", (20, 20), (200, 40, 0, 64)), (241, 201, 191), 0),
        (Image.new("L", (20, 20), 128), (128, 128, 128), 0),
        # with K = 0, PIL's CMYK -> RGB is (255 - C, 255 - M, 255 - Y); JPEG may move a level
        (Image.new("CMYK", (20, 20), (0, 100, 200, 0)), (255, 155, 55), 1),
        (palette_image(), (10, 200, 30), 0),
        # 16-bit 40000 scaled to 8 bits: 40000 / 65535 * 255 = 155.64 -> 156
        (Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)), (156, 156, 156), 0),
        # a dark 16-bit image is 16-bit too: 200 / 65535 * 255 = 0.78 -> 1, not 200 (read as if 8-bit)
        (Image.fromarray(np.full((20, 20), 200, dtype=np.uint16)), (1, 1, 1), 0),
        # 32-bit float pixels rounded to the nearest level, as 16-bit ones: 0.999 * 255 = 254.7 -> 255 (was 254)
        (Image.fromarray(np.full((20, 20), 0.999, dtype=np.float32)), (255, 255, 255), 0),
        (Image.fromarray(np.full((20, 20), 200.9, dtype=np.float32)), (201, 201, 201), 0),
    ],
    ids=["rgba", "gray", "cmyk", "palette", "16bit", "dark-16bit", "float", "float-0-255"],
)
def test_common_modes_become_rgb(tmp_path, image, rgb, tolerance):
    ext = {"CMYK": "jpg", "F": "tiff"}.get(image.mode, "png")
    x = load_image(save(image, tmp_path / f"img.{ext}"))
    expected = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 20, 20) / 255
    assert x.shape == (3, 20, 20)
    assert float((x - expected).abs().max()) <= (tolerance + 0.01) / 255, (x[:, 0, 0] * 255).tolist()


def test_transparent_pixels_are_composited_on_white(tmp_path):
    x = load_image(save(Image.new("RGBA", (10, 10), (255, 0, 0, 0)), tmp_path / "t.png"))
    assert torch.allclose(x, torch.ones_like(x))
    opaque = {"RGB": (200, 30, 30), "L": 120, "I;16": 30000}
    for mode, transparent in (("RGB", (0, 0, 0)), ("L", 0), ("I;16", 0)):  # a tRNS colour, not an alpha channel
        picture = Image.new(mode, (10, 10), transparent)  # 16-bit grey's was read black (a review, 2026-12-07)
        picture.paste(Image.new(mode, (10, 5), opaque[mode]), (0, 5))
        x = load_image(save(picture, tmp_path / f"trns-{mode}.png", transparency=transparent))
        assert torch.equal(x[:, :5], torch.ones_like(x[:, :5])), mode  # transparent: white, as RGBA reads it
        assert float(x[:, 5:].max()) < 0.9, mode  # the opaque half as it is


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
    with pytest.raises(ImageError, match="20000x8 pixels, a strip more than 20 times longer.*crop it"):
        load_image(save(Image.new("RGB", (20000, 8)), tmp_path / "strip.png"), size=(128, 128))


def test_a_photo_stored_sideways_is_read_upright_as_its_exif_orientation_says(tmp_path):
    """A phone's JPEG: pixels stored 40 wide x 20 high, red left and blue right, with EXIF orientation 6 (shown
    turned 90 degrees clockwise): upright it is 20 wide x 40 high, red on top."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    x = load_image(save(stored, tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95))
    assert x.shape == (3, 40, 20)
    assert float(x[0, :15].mean()) > 0.9 and float(x[2, 25:].mean()) > 0.9  # red above, blue below


def noise_png(path, height, width, seed=0):
    """A random RGB PNG (lossless, so its pixels are known exactly) and its (3, H, W) tensor."""
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path, torch.from_numpy(array).permute(2, 0, 1).float() / 255


def test_crop_pct_resizes_the_short_side_to_size_over_crop_pct_then_crops_the_centre(tmp_path):
    # short side 64 = 32 / 0.5: no resize, so the result is exactly the central 32x32 pixels
    path, full = noise_png(tmp_path / "square.png", 64, 64)
    assert torch.equal(load_image(path, size=32, crop_pct=0.5), full[:, 16:48, 16:48])
    path, full = noise_png(tmp_path / "wide.png", 64, 96)
    assert torch.equal(load_image(path, size=(32, 32), crop_pct=0.5), full[:, 16:48, 32:64])
    spec = ModelSpec(architecture="x", num_classes=1, class_labels=["a"], input_size=(3, 32, 32), crop_pct=0.5)
    assert torch.equal(load_model_input(path, spec), full[:, 16:48, 32:64]), "the model's eval transform"


def test_interpolation_picks_the_resize_filter(tmp_path):
    path, _ = noise_png(tmp_path / "big.png", 128, 128)
    with Image.open(path) as image:
        expected = image.convert("RGB").resize((64, 64), Image.NEAREST).crop((16, 16, 48, 48))
    expected = torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1).float() / 255
    nearest = load_image(path, size=32, crop_pct=0.5, interpolation="nearest")
    assert torch.equal(nearest, expected)
    assert not torch.equal(load_image(path, size=32, crop_pct=0.5, interpolation="bilinear"), nearest)
    spec = ModelSpec(architecture="x", num_classes=1, class_labels=["a"], input_size=(3, 32, 32), crop_pct=0.5,
                     interpolation="nearest")
    assert torch.equal(load_model_input(path, spec), expected)
    with pytest.raises(ValueError, match="interpolation"):
        load_image(path, size=32, interpolation="cubic-ish")


def test_crop_pct_one_keeps_the_plain_resize(tmp_path):
    path, _ = noise_png(tmp_path / "wide.png", 40, 60)
    with Image.open(path) as image:  # what load_image(path, size=...) has always done: cover, then crop
        expected = image.convert("RGB").resize((48, 32), Image.BICUBIC, reducing_gap=3.0).crop((8, 0, 40, 32))
    expected = torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(load_image(path, size=32), expected)
    spec = ModelSpec(architecture="x", num_classes=1, class_labels=["a"], input_size=(3, 32, 32))
    assert torch.equal(load_model_input(path, spec), expected), "old specs: crop_pct 1, bicubic"


def test_loading_leaves_pils_global_truncation_flag_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as an app that opted in would
    seen, errors = [], []
    original_load = ImageFile.ImageFile.load

    def observing_load(self):
        seen.append(ImageFile.LOAD_TRUNCATED_IMAGES)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", observing_load)
    path, full = noise_png(tmp_path / "good.png", 24, 24)

    def worker():
        try:
            for _ in range(20):
                assert torch.equal(load_image(path), full)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(seen) >= 160 and all(seen), "load_image changed the global while decoding"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True

    # truncated files are still refused, whatever the global says
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("input_size, crop_pct, cover", [((3, 32, 32), 1.0, (32, 32)), ((3, 160, 160), 0.875, (182, 182)),
                                                         ((3, 15, 21), 0.6, (25, 35)), ((3, 32, 32), 0.9, (35, 35))])
def test_a_saved_model_input_reads_back_through_the_eval_transform_as_the_same_pixels(tmp_path, input_size, crop_pct,
                                                                                      cover):
    """Written as it is, a model input of a crop_pct < 1 model is resized again when read (another picture: the
    bug of the app's and the CLI's attack files); framed at the cover size, it reads back exactly, with the photo's
    margin around it or, without a photo, its own edge pixels repeated. Odd margins (35 - 32) included; the photo's
    margin lines up with the model's crop (no one-pixel seam where two centre crops would round apart)."""
    from robgen.images import framed_model_input, load_resized, save_model_input

    spec = ModelSpec(architecture="x", num_classes=1, class_labels=["a"], input_size=input_size, crop_pct=crop_pct,
                     interpolation="bilinear")
    photo = save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 72, 3), dtype=np.uint8)),
                 tmp_path / "photo.png")
    x = load_model_input(photo, spec)
    attacked = ((x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 0.02).clamp(0, 1) * 255
                ).round() / 255
    surround = load_resized(photo, spec)
    assert tuple(surround.shape[1:]) == cover
    for name, frame in (("framed.png", surround), ("padded.png", None)):
        path = save_model_input(attacked, tmp_path / name, spec, surround=frame)
        with Image.open(path) as written:
            assert written.size == (cover[1], cover[0])
        assert torch.allclose(load_model_input(path, spec), attacked, rtol=0, atol=1e-6)
    if crop_pct < 1:
        plain = save_image(attacked, tmp_path / "plain.png")
        assert not torch.allclose(load_model_input(plain, spec), attacked, rtol=0, atol=1 / 255), "the bug it fixes"
        framed = framed_model_input(attacked, spec, surround)
        top, left = crop_offset(cover[0], input_size[1]), crop_offset(cover[1], input_size[2])
        outside = torch.ones(cover, dtype=torch.bool)
        outside[top:top + input_size[1], left:left + input_size[2]] = False
        assert torch.equal(framed[:, outside], surround[:, outside]), "the photo's margin, as the model would crop it"
        inner = surround[:, top:top + input_size[1], left:left + input_size[2]]
        assert torch.equal(inner, x), "the surround's centre is the model's own crop of the photo"
    with pytest.raises(ValueError, match=r"expected one model input of shape \(C, "):
        framed_model_input(attacked[:, 1:], spec)
    with pytest.raises(ValueError, match="the surround must be the photo resized to the cover size"):
        framed_model_input(attacked, spec, surround[:, 1:])


def test_a_corrupt_file_of_any_format_is_an_image_error_naming_it(tmp_path):
    """PIL's PPM reader fails on a corrupt header with a bare ValueError (SGI, IM and DDS likewise, QOI with an
    IndexError): it escaped ImageError, so `attack` stopped at the first bad file without naming it."""
    bad = tmp_path / "bad.ppm"
    bad.write_bytes(b"P6\n\xd54 4\n255\n" + bytes(48))
    with pytest.raises(ImageError, match="bad.ppm could not be decoded"):
        load_image(bad)
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    with pytest.raises(ValueError, match="unknown interpolation 'bicubc'") as caught:  # the argument's fault
        load_image(good, size=8, interpolation="bicubc")
    assert not isinstance(caught.value, ImageError), "not blamed on the file"


def test_jpeg_2000_files_load_and_cut_ones_are_refused(tmp_path):
    """PIL's JPEG 2000 reader reads on to the end of the file: that empty read was taken for a truncated file, so
    every .jp2 was refused."""
    from PIL import features

    if not features.check("jpg_2000"):
        pytest.skip("this Pillow has no JPEG 2000 codec")
    pixels = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(tmp_path / "photo.jp2")
    assert load_image(tmp_path / "photo.jp2").shape == (3, 24, 24)
    data = (tmp_path / "photo.jp2").read_bytes()
    (tmp_path / "cut.jp2").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError, match="cut.jp2"):
        load_image(tmp_path / "cut.jp2")


def test_a_grayscale_model_reads_one_channel_the_luma_of_the_picture(tmp_path):
    """Every reader gave three channels, so a one-channel model (timm's in_chans=1, an MNIST-like checkpoint) got
    a shape error from any file. Now it reads the luma after the resize: a gray picture its own values exactly,
    a colour one PIL's ITU-R 601-2 luma; a file written from a one-channel input reads back as it."""
    from robgen.images import save_model_input

    Image.new("L", (30, 20), 77).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png", size=16, channels=1)
    assert gray.shape == (1, 16, 16) and torch.all(gray == 77 / 255)
    pixels = (np.random.default_rng(1).random((20, 30, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(tmp_path / "colour.png")
    rgb = load_image(tmp_path / "colour.png", size=16)
    luma = load_image(tmp_path / "colour.png", size=16, channels=1)
    expected = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    assert luma.shape == (1, 16, 16) and (luma - expected).abs().max() <= 1 / 255 + 1e-6
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=2, class_labels=["a", "b"], input_size=(1, 16, 16),
                     mean=(0.5,), std=(0.25,), crop_pct=0.875, interpolation="bicubic")
    x = load_model_input(tmp_path / "colour.png", spec)
    assert x.shape == (1, 16, 16)
    written = save_model_input(x.flip(-1), tmp_path / "out.png", spec)
    assert Image.open(written).mode == "L" and torch.equal(load_model_input(written, spec), x.flip(-1))
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\) input channels, not 4"):
        load_image(tmp_path / "gray.png", channels=4)


@pytest.mark.parametrize("maxval, value, level", [(65535, 200, 1), (65535, 40000, 156), (1000, 200, 51), (255, 200, 200)])
def test_a_16_bit_pgm_is_scaled_by_its_maxval(tmp_path, maxval, value, level):
    """PIL opens a 16-bit PGM as 32-bit "I", rescaled to 0-65535; a dark one (every value at most 255) was read
    as if 8-bit: 200 of 65535 became level 200, not 1."""
    body = np.full(100, value, ">u2" if maxval > 255 else "u1").tobytes()
    (tmp_path / "scan.pgm").write_bytes(b"P5\n10 10\n%d\n" % maxval + body)
    x = load_image(tmp_path / "scan.pgm")
    assert torch.all(x == level / 255), (x[0, 0, 0] * 255).item()


def test_the_eval_transform_is_timms_pixel_for_pixel():
    """robgen rounded the resized long side (torchvision truncates it) and cropped at (outer - inner) // 2
    (torchvision rounds half to even), and resized with a reducing gap: a 3:2 photo came out one pixel off timm's,
    up to 62 levels in a pixel, for 81 of 128 photo sizes a review tried. Now the same pixels for every size."""
    import timm

    from robgen.images import pil_to_tensor

    rng = np.random.default_rng(0)
    assert (crop_offset(35, 32), crop_offset(37, 32), crop_offset(33, 32)) == (2, 2, 0)
    for size, crop_pct, interpolation in [(128, 0.875, "bilinear"), (224, 1.0, "bicubic"), ((24, 36), 0.9, "bilinear")]:
        shape = (size, size) if isinstance(size, int) else size
        timm_transform = timm.data.create_transform(input_size=(3, *shape), crop_pct=crop_pct, crop_mode="center",
                                                    interpolation=interpolation, mean=(0, 0, 0), std=(1, 1, 1))
        for _ in range(12):
            width, height = (int(side) for side in rng.integers(40, 500, size=2))
            photo = Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))
            ours = pil_to_tensor(photo, shape, crop_pct=crop_pct, interpolation=interpolation)
            assert torch.equal(ours, timm_transform(photo)), (size, width, height)


def test_a_crop_larger_than_the_cover_pads_as_timm_pads_and_is_not_written_back():
    """crop_pct above 1 (timm's volo_d5_512: 1.15) pads the picture with (input - cover) // 2 black pixels before
    it; robgen put one pixel more there whenever the margin was 3 mod 4. Such an input cannot be written as a file
    that reads back as it: refused with the reason (a broadcasting error before)."""
    import timm

    from robgen.images import pil_to_tensor, save_model_input

    photo = Image.fromarray((np.random.default_rng(2).random((40, 50, 3)) * 255).astype("uint8"))
    for side in (64, 72):  # margins 9, 15, 10 and 17 (15 is 3 mod 4, where the offset was a pixel off)
        for crop_pct in (1.15, 1.3):
            timm_transform = timm.data.create_transform(input_size=(3, side, side), crop_pct=crop_pct,
                                                        crop_mode="center", interpolation="bicubic",
                                                        mean=(0, 0, 0), std=(1, 1, 1))
            assert torch.equal(pil_to_tensor(photo, side, crop_pct=crop_pct), timm_transform(photo)), (side, crop_pct)
    spec = ModelSpec(architecture="x", num_classes=1, class_labels=["a"], input_size=(3, 64, 64), crop_pct=1.15)
    with pytest.raises(ValueError, match="crop_pct 1.15 > 1: the eval transform pads"):
        save_model_input(torch.rand(3, 64, 64), "unused.png", spec)


@pytest.mark.parametrize("pixels, says", [(torch.full((3, 4, 4), 200.0), "divide by 255"),
                                          (torch.full((3, 4, 4), -0.4), "normalised"),
                                          (torch.full((3, 4, 4), float("nan")), "NaN")])
def test_save_image_refuses_what_is_no_image_in_0_1(tmp_path, pixels, says):
    """0-255 pixels were clamped into an all-white file, normalised ones into grey, NaN into black, silently."""
    with pytest.raises(ValueError, match=says):
        save_image(pixels, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_an_image_too_large_for_pil_to_open_gets_the_size_limits_words(tmp_path):
    """Over 179 megapixels PIL refuses to open a file at all ("could be decompression bomb DOS attack"), which was
    reported as a corrupt file ("truncated or corrupt file?") instead of the 40 megapixel limit."""
    from PIL import Image

    from robgen.images import ImageError, load_image

    Image.new("1", (15000, 12000)).save(tmp_path / "huge.png")  # 180 megapixels, a small file of one bit each
    with pytest.raises(ImageError, match="huge.png is over the 40 megapixel limit .*: resize it first"):
        load_image(tmp_path / "huge.png")


def test_a_data_sets_image_is_held_to_an_uploads_limits_on_size(tmp_path):
    """A 2x3000 strip in a class folder was read (scaling it to cover the model's input makes an image of
    gigapixels for longer ones), where the same file uploaded is refused; small images stay the user's choice."""
    from PIL import Image

    from robgen import data
    from tests.conftest import make_toy_image_folder

    root = make_toy_image_folder(tmp_path / "photos", classes=2, per_class=2)
    Image.new("RGB", (4, 4)).save(root / "class0" / "icon.png")
    Image.new("1", (8000, 6000)).save(root / "class0" / "phone.png")  # 48 megapixels: a photo, over an upload's 40
    images = data.load_dataset(root, "train")
    assert sorted(tuple(images[i][0].shape[1:]) for i in range(len(images)))[0] == (4, 4)  # the icon is read
    assert (6000, 8000) in [tuple(images[i][0].shape[1:]) for i in range(len(images))]  # and the large photo
    Image.new("RGB", (3000, 2)).save(root / "class1" / "strip.png")
    images = data.load_dataset(root, "train")
    with pytest.raises(ValueError, match="strip.png is 3000x2 pixels, a strip .*remove or replace it"):
        [images[i] for i in range(len(images))]


def test_a_path_from_the_home_folder_is_read_as_a_shell_reads_it(tmp_path, monkeypatch):
    """robgen.load_image("~/photo.png") said the file does not exist, where load_dataset("~/photos") found it."""
    from PIL import Image

    from robgen.images import load_image

    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (16, 16), "red").save(tmp_path / "photo.png")
    assert load_image("~/photo.png").shape == (3, 16, 16)
