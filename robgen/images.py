"""Image files in and out: decode any common format to [0, 1] pixels, write PNGs.

`load_image` accepts what people actually upload (RGBA, grayscale, palette,
16-bit, CMYK, animated GIF: first frame) and refuses what is not an image or
is too small to classify, with a message that says what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

MIN_SIDE = 8
MAX_PIXELS = 40_000_000  # 40 megapixels


class ImageError(ValueError):
    """An input that is not a usable image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image (alpha composited on white, 16-bit scaled down)."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * (255.0 if array.max() <= 1 else 1.0), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def check_image_size(image: Image.Image, what: str = "the image") -> None:
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{what} is {width}x{height} pixels: too small to classify (need at least {MIN_SIDE}x{MIN_SIDE})")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{what} is {width}x{height} pixels, over the {MAX_PIXELS // 1_000_000} megapixel limit: resize it first"
        )


def pil_to_tensor(image: Image.Image, size: Optional[Union[int, Tuple[int, int]]] = None, what: str = "the image") -> torch.Tensor:
    """A (3, H, W) float tensor in [0, 1]; with `size`, resized (short side) and centre-cropped as the model sees it."""
    check_image_size(image, what)
    image = to_rgb(image)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        scale = max(height / image.height, width / image.width)
        new_size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(new_size, Image.BICUBIC, reducing_gap=3.0)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_image(path: Union[str, Path], size: Optional[Union[int, Tuple[int, int]]] = None) -> torch.Tensor:
    """Read an image file as a (3, H, W) tensor in [0, 1] (see `pil_to_tensor`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path} does not exist or is not a file")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_tensor(image, size, what=str(path))
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file PIL can read (PNG, JPEG, GIF, WebP, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path} could not be decoded: {error} (truncated or corrupt file?)") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_model_input(path: Union[str, Path], spec) -> torch.Tensor:
    """An image file as a (3, H, W) tensor exactly as the model of `spec` sees it (its eval transform)."""
    return load_image(path, size=tuple(spec.input_size[1:]))


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image (rounded, not truncated)."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected one image of shape (3, H, W), got {tuple(x.shape)}")
    array = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def save_image(x: torch.Tensor, path: Union[str, Path]) -> Path:
    """Write a (3, H, W) tensor in [0, 1] as a lossless PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(x).save(path, format="PNG")
    return path
