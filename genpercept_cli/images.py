"""Reading user images into uint8 RGB, whatever PIL hands us (SPEC §8).

One reader for the whole tool: `predict` and `bench-speed` decode files through `read_rgb`; the
benchmark readers decode archive members through `open_image` + `to_rgb_array`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import GenPerceptError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# PIL's decompression-bomb guard errors at 2x this; we refuse at the same point with our own message.
MAX_PIXELS = 2 * 89_478_485


class ImageReadError(GenPerceptError):
    """An input file that cannot be turned into an RGB image (skipped, reported)."""


def _exif_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image after EXIF rotation, without decoding its pixels."""
    try:
        with Image.open(path) as img:
            w, h = _exif_size(img)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: {_describe(exc)}") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: the file is truncated or unreadable ({exc}).") from None
    if w == 0 or h == 0:
        raise ImageReadError(f"{path}: the image has zero pixels.")
    if w * h > MAX_PIXELS:
        raise ImageReadError(f"{path}: the image is too large ({w}x{h}, limit {MAX_PIXELS} pixels).")
    return h, w


def _describe(exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"the image is too large (limit {MAX_PIXELS} pixels)."
    return "not an image file PIL can read."


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [H, W, 3] RGB.

    16-bit and 32-bit grayscale are scaled to 8 bits (not clipped); alpha is dropped (RGB kept as
    stored, like the reference's `convert("RGB")`); palette, CMYK, LA, 1-bit go through PIL's
    conversions.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when palette transparency goes straight to RGB
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def open_image(source: str | Path | BinaryIO, name: str | Path | None = None) -> Image.Image:
    """Open and fully decode an image (a path or a binary file object), as stored: no EXIF rotation.

    Raises ImageReadError naming `name` (default: the path) for non-image, truncated or huge files.
    """
    name = name if name is not None else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(source)
            img.load()
            return img
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: {_describe(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: the file is truncated or corrupt ({exc}).") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] RGB with EXIF orientation applied.

    Raises ImageReadError (one sentence) for empty, truncated, zero-size, huge or non-image files.
    """
    read_size(path)  # header checks first: cheap, and refuses huge images before decoding them
    with open_image(path) as img:
        return to_rgb_array(ImageOps.exif_transpose(img) or img)
