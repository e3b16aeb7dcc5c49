"""Reading user images into uint8 RGB, whatever PIL hands us (SPEC §8).

One reader for the whole tool: `predict` and `bench-speed` decode files through `read_rgb`; the
benchmark readers decode archive members through `open_image` + `to_rgb_array`.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, GenPerceptError

# what a folder is searched for; every one of them reads as a file given directly does (a GIF: its first frame)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")

# Our size rule, checked on the header before any decoding. PIL's decompression-bomb guard errors at the
# same point (2x its MAX_IMAGE_PIXELS) and warns from half of it; we silence the warning and word both.
MAX_PIXELS = 2 * 89_478_485
# Big images are converted to RGB a stripe at a time: peak = decoded image + result + one stripe.
STRIPE_PIXELS = 1 << 22

# EXIF orientation -> the transpose that shows the image upright (the EXIF spec's table, as Pillow's
# ImageOps.exif_transpose); 1 = upright.
_EXIF_TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# warnings.catch_warnings swaps process-wide state; header parses (cheap) take turns so reader threads
# cannot leave each other's filter in place. Decoding runs outside it, in parallel.
_HEADER_LOCK = threading.Lock()


class ImageReadError(GenPerceptError):
    """An input file that cannot be turned into an RGB image (skipped, reported)."""


@contextmanager
def _quiet_header():
    """Parse headers without PIL's warnings (bomb warning, odd EXIF tags): our own rules report."""
    with _HEADER_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} megapixels"


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image after EXIF rotation, without decoding its pixels."""
    return _read_header(path)[:2]


def _read_header(path: str | Path) -> tuple[int, int, int]:
    """(height, width, EXIF orientation) after EXIF rotation, with the size checks of read_size."""
    try:
        with _quiet_header(), Image.open(path) as img:
            w, h = img.size
            # The base method reads EXIF found before the pixel data; PNG's own decodes the whole image
            # to look for it after them, which made this "header" read a full decode.
            orientation = Image.Image.getexif(img).get(0x0112, 1)
            if orientation not in _EXIF_TRANSPOSE:
                orientation = 1
            if orientation in (5, 6, 7, 8):
                w, h = h, w
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: {_describe(exc)}") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: the file is truncated or unreadable ({exc}).") from None
    if w == 0 or h == 0:
        raise ImageReadError(f"{path}: the image has zero pixels.")
    if w * h > MAX_PIXELS:
        raise ImageReadError(
            f"{path}: the image is too large ({w}x{h} = {_megapixels(w * h)}; the limit is {_megapixels(MAX_PIXELS)})."
        )
    return h, w, orientation


def _describe(exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"the image is too large (over the limit of {_megapixels(MAX_PIXELS)})."
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
    # Stripe by stripe: every conversion here is per pixel, so stripes give the whole image's values,
    # without a second full-size copy in PIL and a third in the bytes numpy reads from.
    width, height = img.size
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, STRIPE_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        with _quiet_header():  # Pillow < 11 runs its bomb check, with a warning, on every crop
            stripe = img.crop((0, top, width, min(height, top + rows)))
        if stripe.mode == "P" and "transparency" in stripe.info:
            stripe = stripe.convert("RGBA")  # PIL warns when palette transparency goes straight to RGB
        if stripe.mode != "RGB":
            stripe = stripe.convert("RGB")
        out[top : top + rows] = np.asarray(stripe)
    return out


def open_image(source: str | Path | BinaryIO, name: str | Path | None = None) -> Image.Image:
    """Open and fully decode an image (a path or a binary file object), as stored: no EXIF rotation.

    Raises ImageReadError naming `name` (default: the path) for non-image, truncated or huge files.
    """
    name = name if name is not None else source
    try:
        with _quiet_header():
            img = Image.open(source)
        try:
            img.load()  # decoding runs outside the lock: reader threads decode in parallel
        except BaseException:
            img.close()
            raise
        return img
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: {_describe(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: the file is truncated or corrupt ({exc}).") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] RGB with EXIF orientation applied.

    Raises ImageReadError (one sentence) for empty, truncated, zero-size, huge or non-image files.
    """
    orientation = _read_header(path)[2]  # header checks first: cheap, and refuses huge images undecoded
    with open_image(path) as img:
        if orientation == 1:  # upright: no copy
            return to_rgb_array(img)
        with img.transpose(_EXIF_TRANSPOSE[orientation]) as upright:  # the orientation read_size saw
            return to_rgb_array(upright)


def read_focal_35mm(path: str | Path) -> float | None:
    """The photo's EXIF 35 mm-equivalent focal length in mm (tag FocalLengthIn35mmFilm), or None when it
    records none (or the file has no readable EXIF): a camera hint, never a reason to fail."""
    try:
        with _quiet_header(), Image.open(path) as img:  # the base method: EXIF before the pixels (see above)
            exif = Image.Image.getexif(img)
            if not exif and img.format == "PNG":  # a PNG may keep its eXIf chunk after the pixel data
                exif.load(_png_chunk_after_pixels(path, b"eXIf") or b"")
            value = exif.get_ifd(0x8769).get(0xA405)  # Exif IFD -> FocalLengthIn35mmFilm
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    try:
        focal = float(value)
    except (TypeError, ValueError):
        return None
    return focal if focal > 0 else None


def _png_chunk_after_pixels(path: str | Path, kind: bytes) -> bytes | None:
    """The data of the first `kind` chunk of a PNG file, found by reading the chunk headers and seeking past
    their data (Pillow reaches chunks after IDAT only by decoding the image); None when there is none."""
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while len(head := handle.read(8)) == 8 and head[4:] != b"IEND":
            length = int.from_bytes(head[:4], "big")
            if head[4:] == kind:
                data = handle.read(length)
                return data if len(data) == length else None
            handle.seek(length + 4, 1)  # the data and its CRC
    return None


def read_exr_channels(source: str | Path | bytes, name: str | Path | None = None) -> dict[str, np.ndarray]:
    """An OpenEXR file (a path, or its bytes) -> {channel name: float32 [H, W]} of its first part (half or
    float channels), read with the format's official bindings (`openexr`: OpenCV 5 wheels have no EXR).
    Raises DataError naming `name` (default: the path) when it is not a readable EXR file."""
    import io

    import OpenEXR

    name = name if name is not None else source
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with OpenEXR.File(handle, separate_channels=True) as exr:
            return {key: np.array(ch.pixels, dtype=np.float32) for key, ch in exr.channels().items()}
    except (RuntimeError, ValueError, OSError):
        raise DataError(f"{name} is not a readable OpenEXR file.") from None
