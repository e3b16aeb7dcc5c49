"""Builders for miniature benchmark archives in the public layouts (used by test_datasets.py)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """uint8 [H, W] / [H, W, 3] or uint16 [H, W] (saved as a 16-bit PNG) -> PNG bytes."""
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpg_bytes(array: np.ndarray, quality: int = 95, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def exr_bytes(rgb: np.ndarray) -> bytes:
    """float32 / float16 [H, W, 3] -> a scanline OpenEXR file with channels R, G, B (ZIP compressed)."""
    import OpenEXR

    channels = {name: np.ascontiguousarray(rgb[..., i]) for i, name in enumerate("RGB")}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    buffer = io.BytesIO()
    OpenEXR.File(header, channels).write(buffer)
    return buffer.getvalue()


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "./") -> Path:
    """A plain tar whose member names are `prefix + name` (Marigold's archives use "./")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(prefix + name, data)
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def ade20k_files(rng: np.random.Generator, count: int = 2, size: tuple[int, int] = (24, 32)):
    """`count` ADE20K validation samples in the ADEChallengeData2016 layout (relative to that folder).

    Returns (files, annotations): annotation ids 0..150 (0 = "other") as stored, uint8 [H, W] each."""
    files, annotations = {}, []
    for i in range(1, count + 1):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        ann = rng.integers(0, 151, size).astype(np.uint8)
        ann[0, :3] = [0, 1, 150]  # "other", the first and the last class
        files[f"images/validation/ADE_val_{i:08d}.jpg"] = jpg_bytes(rgb)
        files[f"annotations/validation/ADE_val_{i:08d}.png"] = png_bytes(ann)
        annotations.append(ann)
    return files, annotations


def cityscapes_files(rng: np.random.Generator, cities: tuple[str, ...] = ("frankfurt", "lindau"),
                     size: tuple[int, int] = (24, 48), train_ids: bool = True):
    """One Cityscapes val frame per city, relative to `cityscapes/`: leftImg8bit + gtFine labelTrainIds
    (or labelIds when `train_ids` is False). Returns (files, {key: stored GT ids uint8 [H, W]})."""
    files, gts = {}, {}
    for city in cities:
        name = f"{city}_000000_000019"
        ids = rng.integers(0, 19, size) if train_ids else rng.integers(0, 34, size)
        ids = ids.astype(np.uint8)
        files[f"leftImg8bit/val/{city}/{name}_leftImg8bit.png"] = png_bytes(
            rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        suffix = "labelTrainIds" if train_ids else "labelIds"
        files[f"gtFine/val/{city}/{name}_gtFine_{suffix}.png"] = png_bytes(ids)
        gts[f"{city}/{name}_leftImg8bit.png"] = ids
    return files, gts
