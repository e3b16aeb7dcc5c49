"""Surface-normal benchmarks in DSINE's evaluation data (SPEC §6.2).

Layout: `<root>/dsine_eval/<dataset>/` (or `<root>/dsine_eval.zip`), as unpacked from DSINE's
`dsine_eval.zip`. A split line is the image path relative to the dataset folder, so the iBims line
`ibims/corridor_01_img.png` is the file `<root>/dsine_eval/ibims/ibims/corridor_01_img.png`. Per
sample `<stem>_img.<ext>` has beside it `<stem>_normal.png` or `<stem>_normal.exr` and
`<stem>_intrins.npy` (3x3, optional here; returned as extra["intrins"]).

Decoding, by the file found: 8-bit PNG n = v/255·2 − 1 and 16-bit PNG n = v/65535·2 − 1, valid where
the raw channels sum to > 0; EXR float as stored (channels R, G, B), valid where ‖n‖ > 0.5. EXR is
read with the `openexr` package; PNG with OpenCV, because PIL truncates 16-bit colour PNGs to 8 bits.
DSINE stores x left, y up, z toward the camera; samples are returned in our frame (x right) with
invalid pixels set to 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.metrics.normal import dsine_to_genpercept
from genpercept_cli.errors import DataError
from genpercept_cli.images import read_exr_channels

from .base import Archive, EvalDataset, Sample, check_limit, decode_npy, decode_rgb, open_archive, read_split

DSINE_SOURCE = (
    "DSINE's dsine_eval.zip, linked in the Evaluation section of https://github.com/baegwangbin/DSINE"
)


def decode_normal_map(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """DSINE normal-map bytes (PNG 8/16-bit or EXR) -> (normals float32 [H, W, 3] in DSINE's frame,
    valid bool [H, W]). Channels are returned in (x, y, z) = file (R, G, B) order."""
    if name.lower().endswith(".exr"):
        normals = _decode_exr_rgb(data, name)
        return normals, np.linalg.norm(normals, axis=-1) > 0.5
    import cv2  # PNG only: PIL reads 16-bit colour PNGs as 8-bit

    try:
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    except cv2.error:  # some inputs raise instead of returning None
        raw = None
    if raw is None:
        raise DataError(f"{name} is not a readable PNG normal map.")
    if raw.ndim != 3 or raw.shape[2] < 3 or raw.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{name} is not an 8- or 16-bit 3-channel normal map (shape {raw.shape}, {raw.dtype}).")
    raw = raw[..., 2::-1]  # OpenCV's BGR(A) -> RGB
    peak = np.float32(255.0 if raw.dtype == np.uint8 else 65535.0)
    normals = raw.astype(np.float32) / peak * np.float32(2.0) - np.float32(1.0)
    return normals, raw.astype(np.int64).sum(axis=-1) > 0


def _decode_exr_rgb(data: bytes, name: str) -> np.ndarray:
    """EXR bytes -> float32 [H, W, 3] from the first part's R, G, B channels (half or float)."""
    channels = read_exr_channels(data, name)
    missing = [c for c in "RGB" if c not in channels]
    if missing:
        raise DataError(f"{name} has no {', '.join(missing)} channel (it holds {', '.join(sorted(channels))}).")
    shapes = {channels[c].shape for c in "RGB"}
    if len(shapes) != 1 or len(shapes.pop()) != 2:
        raise DataError(f"{name} has R, G, B channels of different or non-2-D shapes.")
    return np.stack([channels[c] for c in "RGB"], axis=-1)


class DSINENormalDataset(EvalDataset):
    """One DSINE evaluation set; subclasses name the folder, split list and preferred GT format."""

    task = "normal"
    processing_res = 768  # GenPercept's default inference resolution; DSINE fixes none
    source = DSINE_SOURCE
    folder: str = ""  # under dsine_eval/
    split: str = ""  # under benchmarks/splits
    normal_suffixes: tuple[str, ...] = (".png", ".exr")  # tried in this order

    def __init__(self, data_dir: str | Path, limit: int | None = None, split_file: str | Path | None = None):
        super().__init__(data_dir, check_limit(limit))
        lines = [row[0] for row in read_split(self.split, split_file)]
        self._entries = [self._stem(line) for line in lines]
        self._keys = lines
        folder = self.data_dir / "dsine_eval" / self.folder
        what = f"The {self.name} data"
        self._archive: Archive = open_archive(
            self.data_dir / "dsine_eval", what, self.source, expected=folder
        )
        if lines and not self._archive.exists(f"{self.folder}/{lines[0]}"):
            raise DataError(f"{what} was not found: expected {folder / lines[0]}; get it from {self.source}.")
        self._apply_limit()

    @staticmethod
    def _stem(line: str) -> tuple[str, str]:
        """'test/000000_img.png' -> ('test/000000', 'test/000000_img.png')."""
        base, dot, ext = line.rpartition(".")
        if not dot or not base.endswith("_img"):
            raise DataError(f"Split line {line!r} does not name a DSINE '<stem>_img.<ext>' image.")
        return base[: -len("_img")], line

    def _rel(self, rel: str) -> str:
        return f"{self.folder}/{rel}"

    def _name(self, rel: str) -> str:
        return f"{self._archive.path}/{self._rel(rel)}"

    def _load(self, entry: tuple[str, str]) -> Sample:
        stem, image_rel = entry
        for suffix in self.normal_suffixes:
            normal_rel = f"{stem}_normal{suffix}"
            if self._archive.exists(self._rel(normal_rel)):
                break
        else:
            expected = " or ".join(f"{stem}_normal{s}" for s in self.normal_suffixes)
            raise DataError(f"{self._name(expected)} is missing.")
        normals, valid = decode_normal_map(self._archive.read(self._rel(normal_rel)), self._name(normal_rel))
        gt = dsine_to_genpercept(normals).astype(np.float32)
        gt[~valid] = 0.0
        image = decode_rgb(self._archive.read(self._rel(image_rel)), self._name(image_rel), valid.shape)
        extra = {}
        intrins_rel = f"{stem}_intrins.npy"
        if self._archive.exists(self._rel(intrins_rel)):
            data = self._archive.read(self._rel(intrins_rel))
            extra["intrins"] = decode_npy(data, self._name(intrins_rel)).astype(np.float32)
        return Sample(key=image_rel, image=image, gt=gt, valid=valid, extra=extra)


class NYUv2Normal(DSINENormalDataset):
    """NYUv2 test, 654 images, GeoNet GT as 8-bit PNG."""

    name = "nyu-normal"
    folder = "nyuv2"
    split = "normal/nyuv2.txt"


class ScanNetNormal(DSINENormalDataset):
    """ScanNet, 300 images (FrameNet GT and split) as 8-bit PNG."""

    name = "scannet-normal"
    folder = "scannet"
    split = "normal/scannet.txt"


class IBimsNormal(DSINENormalDataset):
    """iBims-1, 100 images, EXR GT (an 8/16-bit PNG twin is accepted)."""

    name = "ibims-normal"
    folder = "ibims"
    split = "normal/ibims.txt"
    normal_suffixes = (".exr", ".png")


class SintelNormal(DSINENormalDataset):
    """Sintel, 1064 frames, EXR GT (an 8/16-bit PNG twin is accepted)."""

    name = "sintel-normal"
    folder = "sintel"
    split = "normal/sintel.txt"
    normal_suffixes = (".exr", ".png")


class VKITTINormal(DSINENormalDataset):
    """Virtual KITTI, 1000 frames (200 from each of 5 scenes), 16-bit PNG GT."""

    name = "vkitti-normal"
    folder = "vkitti"
    split = "normal/vkitti.txt"
