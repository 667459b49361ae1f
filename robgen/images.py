"""Image files in and out: decode any common format to [0, 1] pixels, write PNGs.

`load_image` accepts what people actually upload (RGBA, grayscale, palette,
16-bit, CMYK, animated GIF: first frame) and refuses what is not an image,
is truncated or is too small to classify, with a message that says what is
wrong. `load_model_input` applies a model's eval transform, timm's pixel for
pixel (resize the short side to size / crop_pct and centre-crop size, or with
timm's crop_mode "squash" resize each side; a grayscale model gets the luma of
the picture); `save_model_input` writes
a model input as a file that transform reads back exactly. Nothing here changes
PIL's global settings (`ImageFile.LOAD_TRUNCATED_IMAGES` included), so
concurrent requests cannot race on them.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .checks import check_pixels
from .files import write_atomically

MIN_SIDE = 8
MAX_PIXELS = 40_000_000  # 40 megapixels
MAX_ASPECT = 20  # long side / short side: a strip beyond it is no photo, and scaling it to cover a model's input
                 # would make an image of gigapixels (20000 x 8 to cover 146 x 146: 365000 x 146) before the crop
RESAMPLE = {
    "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
    "box": Image.BOX, "hamming": Image.HAMMING,
}


class ImageError(ValueError):
    """An input that is not a usable image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image, upright (a camera's EXIF orientation applied), alpha composited on white,
    16-bit scaled down (I;16 and 16-bit PGM/PPM: 65535 is white, as PIL rescales their maxval to it; other 32-bit
    "I": 65535 where a value exceeds 255, else 255)."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    sixteen_bit = image.mode in ("I;16", "I;16B", "I;16L") or (image.mode == "I" and image.format == "PPM")
    image = ImageOps.exif_transpose(image)  # a phone photo stored sideways, as its viewer shows it
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if sixteen_bit or array.max() > 255 else 255.0
        transparent = image.info.get("transparency")  # a 16-bit grey PNG's tRNS: the grey level that is see-through
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if isinstance(transparent, (int, np.integer)) and not isinstance(transparent, bool):
            image.putalpha(Image.fromarray(np.where(array == transparent, 0, 255).astype(np.uint8)))  # L -> LA
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)  # rounded to the nearest 8-bit level, as 16-bit images are
        image = Image.fromarray(np.clip(array * (255.0 if array.max() <= 1 else 1.0) + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # also RGB, L and P with a tRNS colour
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


CHANNEL_MODES = {1: "L", 3: "RGB"}  # the models robgen reads images for: grayscale and colour


def check_channels(channels: int) -> int:
    """`channels`, a number of input channels robgen can read image files for (1: grayscale, 3: RGB)."""
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or int(channels) not in CHANNEL_MODES:
        raise ValueError(f"robgen reads images for models of 1 (grayscale) or 3 (RGB) input channels, not {channels!r}")
    return int(channels)


def to_channels(image: Image.Image, channels: int = 3) -> Image.Image:
    """An RGB image (`to_rgb`) as a model of `channels` channels sees it: itself, or for a grayscale model its
    luma (PIL's ITU-R 601-2: L = 0.299 R + 0.587 G + 0.114 B, exact on a gray image's equal channels)."""
    return image.convert(CHANNEL_MODES[check_channels(channels)])


def upright_size(image: Image.Image) -> Tuple[int, int]:
    """(width, height) of an opened image as `to_rgb` turns it upright, from its header: a camera's EXIF
    orientation 5-8 swaps them, except where PIL's reader has already swapped them itself (TIFF, in Pillow 12)."""
    width, height = image.size
    if image.getexif().get(0x0112) in (5, 6, 7, 8):
        stored = (image.tag_v2.get(256), image.tag_v2.get(257)) if image.format == "TIFF" else (width, height)
        if (width, height) == stored:
            width, height = height, width
    return width, height


def check_image_size(image: Image.Image, what: str = "the image", min_side: int = MIN_SIDE,
                     max_pixels: Optional[int] = MAX_PIXELS) -> None:
    width, height = image.size
    if min(width, height) < min_side:
        raise ImageError(f"{what} is {width}x{height} pixels: too small to classify (need at least {min_side}x{min_side})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} pixels, over the {max_pixels // 1_000_000} megapixel limit: resize it first"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"{what} is {width}x{height} pixels, a strip more than {MAX_ASPECT} times longer than it is "
                         "wide: crop it to the object first")


def open_image(file, what: str, min_side: int = MIN_SIDE, max_pixels: Optional[int] = MAX_PIXELS) -> Image.Image:
    """`Image.open(file)`, its size checked (`check_image_size`) from the header, before anything is decoded; an
    image too large for PIL to open at all (a "decompression bomb", over 179 megapixels) refused in the same words."""
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as error:
        limit = f"over the {max_pixels // 1_000_000} megapixel limit" if max_pixels else "too large to open"
        raise ImageError(f"{what} is {limit} ({error}): resize it first") from None
    check_image_size(image, what, min_side, max_pixels)
    return image


def pil_to_tensor(
    image: Image.Image,
    size: Optional[Union[int, Tuple[int, int]]] = None,
    what: str = "the image",
    *,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
    frame: Optional[Tuple[int, int]] = None,
    channels: int = 3,
    crop_mode: str = "center",
) -> torch.Tensor:
    """A (channels, H, W) float tensor in [0, 1]; with `size`, as the model sees it (see `resize_and_crop`); one
    channel: the luma of the RGB picture, taken after the resize (`to_channels`, as `data.pixel_transform` does)."""
    check_channels(channels)
    check_image_size(image, what)
    image = to_rgb(image)
    if size is not None:
        image = resize_and_crop(image, size, crop_pct=crop_pct, interpolation=interpolation, frame=frame,
                                crop_mode=crop_mode)
    array = np.asarray(to_channels(image, channels), dtype=np.float32) / 255.0
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1).contiguous()


def cover_size(size: Union[int, Tuple[int, int]], crop_pct: float = 1.0) -> Tuple[int, int]:
    """(height, width) that timm's eval transform scales an image to cover before its centre crop: size / crop_pct."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not crop_pct > 0:
        raise ValueError(f"crop_pct must be positive (1.0: no margin, 0.875: ImageNet's 256 -> 224), got {crop_pct}")
    return math.floor(height / crop_pct), math.floor(width / crop_pct)


def crop_offset(outer: int, inner: int) -> int:
    """Where a centre crop of `inner` pixels starts in `outer` ones: torchvision's CenterCrop, round((outer - inner)
    / 2) with Python's rounding (half to even: 1 for a margin of 3, 2 for 5); a crop larger than the image (crop_pct
    above 1) pads it with (inner - outer) // 2 black pixels before it, a negative offset."""
    if outer < inner:
        return -((inner - outer) // 2)
    return int(round((outer - inner) / 2.0))


def resize_and_crop(
    image: Image.Image, size: Union[int, Tuple[int, int]], *, crop_pct: float = 1.0, interpolation: str = "bicubic",
    frame: Optional[Tuple[int, int]] = None, crop_mode: str = "center",
) -> Image.Image:
    """timm's eval transform, pixel for pixel: scale (keeping the aspect ratio) to cover size / crop_pct, then
    centre-crop `size`; crop_mode "squash" (timm's, for some models) scales each side to size / crop_pct, the
    aspect ratio not kept.

    `size` is an int (square) or (height, width). crop_pct=1 fits the short side to the crop;
    0.875 is the ImageNet convention (short side 256, crop 224). The sizes are torchvision's and timm's: a square
    cover is torchvision's Resize(side) (the long side truncated), another timm's ResizeKeepRatio (both sides
    rounded); the crop sits at `crop_offset`. `frame` (height, width), at least `size`: crop that much instead,
    around the same centre crop, which then sits at `crop_offset(frame, size)` inside it.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    scaled_height, scaled_width = cover_size(size, crop_pct)
    if interpolation not in RESAMPLE:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {', '.join(RESAMPLE)}")
    if crop_mode not in ("center", "squash"):
        raise ValueError(f"unknown crop_mode {crop_mode!r}; use center or squash")
    if crop_mode == "squash":
        new_size = (scaled_width, scaled_height)
    elif scaled_height == scaled_width:  # the short side to the cover's, the long side int(side * long / short)
        short, long = sorted((image.width, image.height))
        stretched = int(scaled_height * long / short)
        new_size = (scaled_width, stretched) if image.width <= image.height else (stretched, scaled_height)
    else:
        ratio = min(image.height / scaled_height, image.width / scaled_width)
        new_size = (round(image.width / ratio), round(image.height / ratio))
    image = image.resize(new_size, RESAMPLE[interpolation])
    left, top = crop_offset(image.width, width), crop_offset(image.height, height)
    if frame is not None:
        left, top = left - crop_offset(int(frame[1]), width), top - crop_offset(int(frame[0]), height)
        height, width = int(frame[0]), int(frame[1])
    return image.crop((left, top, left + width, top + height))


# formats whose PIL reader reads on to the end of the file (JPEG 2000's box reader): an empty read there is no sign
# of a file cut short (their decoders fail on a cut codestream themselves)
READ_TO_THE_END = ("JPEG2000",)


class _WatchedBytes(io.BytesIO):
    """A file's bytes that note a read finding nothing left while `watching`.

    That empty read is how PIL itself spots a truncated file; PIL raises on it
    only while its global `ImageFile.LOAD_TRUNCATED_IMAGES` is False, so
    watching for it refuses truncated files whatever that global says.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.watching = False
        self.ran_out = False

    def read(self, size: Optional[int] = -1) -> bytes:
        chunk = super().read(size)
        if self.watching and not chunk and size is not None and size > 0:
            self.ran_out = True
        return chunk


def load_image(
    path: Union[str, Path],
    size: Optional[Union[int, Tuple[int, int]]] = None,
    *,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
    frame: Optional[Tuple[int, int]] = None,
    channels: int = 3,
    crop_mode: str = "center",
) -> torch.Tensor:
    """Read an image file as a (channels, H, W) tensor in [0, 1] (see `pil_to_tensor` and `resize_and_crop`)."""
    check_channels(channels)
    path = Path(path).expanduser()  # "~/photo.png" as a shell reads it, as load_dataset reads "~/photos"
    if not path.is_file():
        raise ImageError(f"{path} does not exist or is not a file")
    data = _WatchedBytes(path.read_bytes())
    try:
        image = open_image(data, str(path))  # its size from the header, before decoding a file too large to use
        data.watching = True
        image.load()
        data.watching = False
        if data.ran_out and image.format not in READ_TO_THE_END:
            raise OSError("image file is truncated")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file PIL can read (PNG, JPEG, GIF, WebP, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError, IndexError, TypeError,
            struct.error) as error:  # PIL's decoders fail on corrupt files in all these ways (PPM, SGI, QOI, ...)
        raise ImageError(f"{path} could not be decoded: {error} (truncated or corrupt file?)") from None
    try:  # decoded: what fails now is the arguments' (an unknown interpolation), said as it is, or a later frame's
        with image:
            return pil_to_tensor(image, size, what=str(path), crop_pct=crop_pct, interpolation=interpolation,
                                 frame=frame, channels=channels, crop_mode=crop_mode)
    except (OSError, SyntaxError) as error:
        raise ImageError(f"{path} could not be decoded: {error} (truncated or corrupt file?)") from None


def load_model_input(path: Union[str, Path], spec) -> torch.Tensor:
    """An image file as a (C, H, W) tensor exactly as the model of `spec` sees it (its eval transform; C, H, W its
    input size: a grayscale model's one channel is the picture's luma)."""
    return load_image(path, size=tuple(spec.input_size[1:]), crop_pct=getattr(spec, "crop_pct", 1.0),
                      interpolation=getattr(spec, "interpolation", "bicubic"), channels=spec.input_size[0],
                      crop_mode=getattr(spec, "crop_mode", "center"))


def load_resized(path: Union[str, Path], spec) -> torch.Tensor:
    """An image file as the model of `spec`'s eval transform resizes it, before its centre crop: a (C, H', W')
    tensor of the cover size (input size / crop_pct; the input size itself at crop_pct 1) around the model's
    crop, which sits at `crop_offset(cover, input size)` inside it, as `framed_model_input` puts it."""
    size = tuple(spec.input_size[1:])
    return load_image(path, size=size, crop_pct=spec.crop_pct, interpolation=getattr(spec, "interpolation", "bicubic"),
                      frame=cover_size(size, spec.crop_pct), channels=spec.input_size[0],
                      crop_mode=getattr(spec, "crop_mode", "center"))


def framed_model_input(x: torch.Tensor, spec, surround: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (C, H', W') picture that the eval transform of `spec` reads back as the model input `x`, (C, H, W).

    A model input is the centre crop of an image resized to cover input size / crop_pct. Written as it is,
    a crop_pct < 1 model (Imagenette's 0.875) would resize it again and see another picture; framed at the
    cover size, the eval transform resizes nothing and crops exactly `x`. The frame is `surround` (the
    photo as `load_resized` reads it, so the file looks like the photo) or, without one, `x`'s own edge
    pixels repeated. At crop_pct 1 the cover size is the input size: `x` itself.
    """
    height, width = (int(side) for side in spec.input_size[1:])
    if x.ndim != 3 or tuple(x.shape[1:]) != (height, width):
        raise ValueError(f"expected one model input of shape (C, {height}, {width}), got {tuple(x.shape)}")
    cover_height, cover_width = cover_size((height, width), spec.crop_pct)
    if not reads_back_from_a_file(spec):
        raise ValueError(f"crop_pct {spec.crop_pct} > 1: the eval transform pads the picture with black to the input "
                         f"size, so a changed border cannot be written as a file that reads back as the input; "
                         "keep the input as a tensor (or save_image it as it is)")
    top, left = crop_offset(cover_height, height), crop_offset(cover_width, width)  # where `resize_and_crop` crops
    if surround is None:
        surround = torch.nn.functional.pad(x[None], (left, cover_width - width - left, top, cover_height - height - top),
                                           mode="replicate")[0]
    elif tuple(surround.shape[1:]) != (cover_height, cover_width):
        raise ValueError(f"the surround must be the photo resized to the cover size {(cover_height, cover_width)} "
                         f"(`load_resized`), got {tuple(surround.shape)}")
    framed = surround.detach().to(device=x.device, dtype=x.dtype).clone()
    framed[:, top:top + height, left:left + width] = x
    return framed


def reads_back_from_a_file(spec) -> bool:
    """Whether a model input of `spec` can be written as a file that its eval transform reads back as that input
    (`save_model_input`): not at crop_pct > 1, where the transform pads the picture with black to the input size
    (a changed border cannot be written so); then the input itself is saved, as it is (`save_image`)."""
    rows, columns = (int(side) for side in spec.input_size[1:])
    cover_rows, cover_columns = cover_size((rows, columns), spec.crop_pct)
    return cover_rows >= rows and cover_columns >= columns


def save_model_input(x: torch.Tensor, path: Union[str, Path], spec, surround: Optional[torch.Tensor] = None) -> Path:
    """Write the model input `x` (C, H, W) as a PNG that `load_model_input(path, spec)` reads back as `x` on 8-bit
    levels (`framed_model_input`: at crop_pct < 1 the file is larger than `x`, its centre crop is `x`)."""
    path = save_image(framed_model_input(x, spec, surround), path)
    expected = (x.detach().float().cpu().clamp(0, 1) * 255).round() / 255
    if not torch.allclose(load_model_input(path, spec), expected, rtol=0, atol=1e-5):
        raise RuntimeError(f"{path} does not read back as the pixels it was written from: the eval transform of "
                           f"{tuple(spec.input_size)} with crop_pct {spec.crop_pct} changed them")
    return path


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """A (3, H, W) or (1, H, W) tensor in [0, 1] as an 8-bit RGB or grayscale PIL image (rounded, not truncated)."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected one image of shape (3, H, W) or (1, H, W), got {tuple(x.shape)}")
    check_pixels(x[None], name="x")  # 0-255, normalised or NaN pixels were clamped into a white, grey or black file
    array = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def save_image(x: torch.Tensor, path: Union[str, Path]) -> Path:
    """Write a (3, H, W) or (1, H, W) tensor in [0, 1] as a lossless PNG, all or nothing
    (`robgen.files.write_atomically`); `~` is the home folder, as `load_image` reads it."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    image = tensor_to_pil(x)
    return write_atomically(path, lambda temporary: image.save(temporary, format="PNG"))
