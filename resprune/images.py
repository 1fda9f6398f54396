"""Turning whatever a user hands over (a path, a PIL image, an array) into a safe RGB PIL image, or a clear error.

Used by ``answer`` callers, the app and the CLI. Every conversion that changes the image is reported as a note
(grayscale, alpha, CMYK, 16-bit, tiny or EXIF-rotated images), so a UI can tell the user what the model saw.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)
MIN_SIDE = 8  # smaller images are upscaled (nearest) with a note


class ImageInputError(ValueError):
    """The image argument could not be used; the message says why."""


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image ready for a processor, and what was done to get it there."""

    image: Image.Image
    notes: tuple[str, ...]


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max() > 255) else max(float(arr.max()), 1.0)
        lo = 0.0 if mode != "F" else float(arr.min())
        arr = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        notes.append(f"{mode} image scaled to 8-bit grayscale, shown as RGB")
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append("transparent areas composited on white")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale image converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    return im.convert("RGB")


def load_image(source: object, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Open and validate an image.

    Args:
        source: a file path (``str``/``os.PathLike``), a ``PIL.Image.Image`` or an `(H, W)` / `(H, W, C)` uint8
            array.
        max_pixels: larger images are refused before decoding.

    Returns:
        ``LoadedImage`` with an RGB image and notes on the conversions made.

    Raises:
        ImageInputError: no image, not an image file, a corrupt or truncated file, too many pixels, or an empty
            image; the message names the problem.
    """
    notes: list[str] = []
    if source is None:
        raise ImageInputError("image: no image was given; upload an image or pick an example")
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.size == 0:
            raise ImageInputError(f"image: an array must be (H, W) or (H, W, C) and non-empty, got {source.shape}")
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        source = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.path.basename(path)
        if not os.path.isfile(path):
            raise ImageInputError(f"image: file {name!r} does not exist")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path)
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageInputError(
                        f"image: {name!r} is {w}x{h} = {w * h / 1e6:.0f} MP, more than the {max_pixels / 1e6:.0f} MP "
                        "allowed; resize it first"
                    )
                im.load()
        except ImageInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageInputError(f"image: {name!r} is too large to decode safely ({e})") from None
        except UnidentifiedImageError:
            raise ImageInputError(f"image: {name!r} is not an image file PIL can read") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageInputError(f"image: {name!r} is corrupt or truncated ({e})") from None
        source = im
    if not isinstance(source, Image.Image):
        raise ImageInputError(f"image must be a file path, a PIL image or a uint8 array, got {type(source).__name__}")
    im = source
    w, h = im.size
    if w == 0 or h == 0:
        raise ImageInputError(f"image: empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageInputError(f"image: {w}x{h} is more than the {max_pixels / 1e6:.0f} MP allowed; resize it first")
    try:
        rotated = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF must not stop the run
        rotated = im
    if rotated is not None and rotated.size != im.size:
        notes.append("rotated according to its EXIF orientation")
        im = rotated
    if getattr(im, "n_frames", 1) > 1:
        notes.append("animated image: the first frame is used")
        im.seek(0)
    im = _to_rgb(im, notes)
    if min(im.size) < MIN_SIDE:
        scale = int(np.ceil(MIN_SIDE / min(im.size)))
        notes.append(f"tiny image ({w}x{h}) upscaled x{scale}; the model sees little detail")
        im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
    return LoadedImage(im, tuple(notes))
