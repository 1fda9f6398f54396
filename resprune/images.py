"""Turning whatever a user hands over (a path, bytes, a ``data:`` URL, a PIL image, an array) into a safe RGB PIL
image, or a clear error.

One rule for every entry (library, app upload, API): at most ``MAX_PIXELS`` pixels, a long side at most
``MAX_ASPECT`` times the short side, files at most ``MAX_FILE_BYTES``; files are checked from their header before
anything is decoded. Every conversion that changes the image is reported as a note (grayscale, alpha, CMYK,
16-bit, float arrays, tiny or EXIF-rotated images), so a UI can tell the user what the model saw.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)
MAX_ASPECT = 20  # refuse images whose long side exceeds 20x the short side (a 1 x 100000 strip is not an image)
MAX_FILE_BYTES = 32 * 2**20  # refuse larger files (and data: URLs) before opening them
MIN_SIDE = 8  # smaller images are upscaled (nearest) with a note; with MAX_ASPECT this stays small

_ARRAY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


class ImageInputError(ValueError):
    """The image argument could not be used; the message says why."""


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image ready for a processor, and what was done to get it there."""

    image: Image.Image
    notes: tuple[str, ...]


def check_size(width: int, height: int, *, what: str = "image", max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an empty image, more than ``max_pixels`` pixels or an aspect ratio above ``MAX_ASPECT``.

    >>> check_size(640, 480)
    >>> check_size(1, 1000)
    Traceback (most recent call last):
    ...
    resprune.images.ImageInputError: image: 1x1000 has an aspect ratio of 1000:1; at most 20:1 is allowed, crop it first
    """
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{what}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageInputError(
            f"{what}: {width}x{height} = {width * height / 1e6:.0f} MP, more than the {max_pixels / 1e6:.0f} MP "
            "allowed; resize it first"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise ImageInputError(
            f"{what}: {width}x{height} has an aspect ratio of {ratio:.0f}:1; at most {MAX_ASPECT}:1 is allowed, "
            "crop it first"
        )


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max() > 255) else max(float(arr.max()), 1.0)
        lo = 0.0 if mode != "F" else float(arr.min())
        arr = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        notes.append(f"{mode} image scaled to 8-bit grayscale, shown as RGB")
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
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


def _from_array(arr: np.ndarray, notes: list[str], max_pixels: int) -> Image.Image:
    """`(H, W)` or `(H, W, C)` with C in {1, 3, 4}: uint8 as is; bool, 16-bit and float arrays scaled with a note."""
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageInputError(f"image: an array must be (H, W) or (H, W, C) and non-empty, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] not in _ARRAY_CHANNELS:
        raise ImageInputError(
            f"image: an (H, W, C) array needs C in (1, 3, 4) channels (gray, RGB, RGBA), got shape {arr.shape}"
        )
    check_size(arr.shape[1], arr.shape[0], max_pixels=max_pixels)
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.uint8) * 255
        notes.append("boolean array shown as black and white")
    elif kind in "iu" and arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageInputError(
                f"image: integer array values must lie in [0, 255] (or [0, 65535] for 16-bit), got [{lo}, {hi}]"
            )
        if hi > 255:
            arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
            notes.append(f"{arr.dtype} array in [0, 65535] scaled to 8 bits")
        else:
            arr = arr.astype(np.uint8)
    elif kind == "f":
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ImageInputError(f"image: the float array contains NaN or inf ({bad} of {arr.size} values)")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise ImageInputError(f"image: float array values must lie in [0, 1] or [0, 255], got [{lo:.4g}, {hi:.4g}]")
        if hi <= 1.0:
            arr = np.round(arr * 255.0).astype(np.uint8)
            notes.append("float array in [0, 1] scaled to 8 bits")
        else:
            arr = np.round(arr).astype(np.uint8)
            notes.append("float array in [0, 255] rounded to 8 bits")
    elif arr.dtype != np.uint8:
        raise ImageInputError(f"image: array dtype {arr.dtype} is not an image type (use uint8, 16-bit or float)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr), mode=_ARRAY_CHANNELS[arr.shape[-1]] if arr.ndim == 3 else "L")


def _data_url_bytes(url: str) -> bytes:
    head, sep, body = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ImageInputError("image: a data: URL must be of the form 'data:image/...;base64,<data>'")
    if len(body) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise ImageInputError(
            f"image: the data: URL holds more than {MAX_FILE_BYTES / 2**20:.0f} MiB; send a smaller file"
        )
    try:
        return base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise ImageInputError("image: the data: URL is not valid base64") from None


def _open_checked(fp: object, name: str, max_pixels: int, notes: list[str]) -> Image.Image:
    """Open ``fp`` (path or file object), check its size from the header, decode, and return an RGB copy.

    The file is closed on every path (success or refusal)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                check_size(*im.size, what=f"image {name!r}", max_pixels=max_pixels)
                im.load()
                return _finish(im, notes)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        px = re.search(r"\((\d+) pixels\)", str(e))  # PIL refuses in open() above 2 x its own limit
        size = f"{int(px.group(1)) / 1e6:.0f} MP, " if px else ""
        raise ImageInputError(
            f"image: {name!r} is too large to decode safely ({size}more than the {max_pixels / 1e6:.0f} MP allowed)"
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"image: {name!r} is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(f"image: {name!r} is corrupt or truncated ({e})") from None


def _open_path(path: str, max_pixels: int, notes: list[str]) -> Image.Image:
    name = os.path.basename(path.rstrip("/\\")) or path
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise ImageInputError(f"image: file {name!r} does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageInputError(f"image: {name!r} is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageInputError(f"image: {name!r} is not a regular file (a device, pipe or socket)")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageInputError(
            f"image: {name!r} is {st.st_size / 2**20:.1f} MiB, more than the {MAX_FILE_BYTES / 2**20:.0f} MiB allowed"
        )
    return _open_checked(path, name, max_pixels, notes)


def _finish(im: Image.Image, notes: list[str]) -> Image.Image:
    """EXIF rotation, first frame, RGB, tiny-image upscale; always returns a new image (``im`` may be closed)."""
    w, h = im.size
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
    out = _to_rgb(im, notes)
    if out is im:
        out = im.copy()
    if min(out.size) < MIN_SIDE:
        scale = math.ceil(MIN_SIDE / min(out.size))
        notes.append(f"tiny image ({w}x{h}) upscaled x{scale}; the model sees little detail")
        out = out.resize((out.size[0] * scale, out.size[1] * scale), Image.NEAREST)
    return out


def load_image(source: object, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Open and validate an image.

    Args:
        source: a file path (``str``/``os.PathLike``), a ``data:image/...;base64,`` URL, ``bytes`` or a binary
            file object, a ``PIL.Image.Image``, or an `(H, W)` / `(H, W, C)` array (C in 1, 3, 4; uint8, bool,
            16-bit integers or floats in [0, 1] / [0, 255]).
        max_pixels: larger images are refused before decoding.

    Returns:
        ``LoadedImage`` with an RGB image and notes on the conversions made.

    Raises:
        ImageInputError: no image, not an image file, a corrupt or truncated file, too many pixels, an aspect
            ratio above ``MAX_ASPECT``, a file above ``MAX_FILE_BYTES``, or an empty image; the message names the
            problem (and the file's base name, never its folder).
    """
    notes: list[str] = []
    if source is None:
        raise ImageInputError("image: no image was given; upload an image or pick an example")
    if isinstance(source, str) and source.startswith("data:"):
        source = _data_url_bytes(source)
    if isinstance(source, str) and source.split(":", 1)[0].lower() in ("http", "https", "ftp", "file"):
        raise ImageInputError("image: URLs are not fetched; download the file and pass its path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > MAX_FILE_BYTES:
            raise ImageInputError(
                f"image: {len(source) / 2**20:.1f} MiB of data, more than the {MAX_FILE_BYTES / 2**20:.0f} MiB allowed"
            )
        return LoadedImage(_open_checked(io.BytesIO(bytes(source)), "the image data", max_pixels, notes), tuple(notes))
    if isinstance(source, (str, os.PathLike)):
        return LoadedImage(_open_path(os.fspath(source), max_pixels, notes), tuple(notes))
    if hasattr(source, "read") and not isinstance(source, Image.Image):
        return LoadedImage(_open_checked(source, "the image file", max_pixels, notes), tuple(notes))
    if isinstance(source, np.ndarray):
        source = _from_array(source, notes, max_pixels)
    if not isinstance(source, Image.Image):
        raise ImageInputError(
            f"image must be a file path, a PIL image, bytes or an image array, got {type(source).__name__}"
        )
    check_size(*source.size, max_pixels=max_pixels)
    return LoadedImage(_finish(source, notes), tuple(notes))
