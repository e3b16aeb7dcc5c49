"""Hypersim semantic segmentation with NYU40 labels (SPEC §6.5).

Layout, as Hypersim's per-scene downloads unpack (folders only):

    <root>/hypersim/<scene>/images/scene_cam_XX_final_preview/frame.NNNN.tonemap.jpg   (or .color.jpg)
    <root>/hypersim/<scene>/images/scene_cam_XX_geometry_hdf5/frame.NNNN.semantic.hdf5
    <root>/hypersim/<scene>/images/scene_cam_XX_geometry_preview/frame.NNNN.semantic.png  (fallback GT)

GenPercept publishes no seg evaluation split. If `<root>/hypersim/split.txt` exists, its lines (first
column) are RGB paths relative to `<root>/hypersim`, in order; otherwise every frame that has GT is
evaluated, sorted by scene, camera and frame. The tone-mapped `tonemap.jpg` is preferred over
`color.jpg` (GenPercept trains on tone-mapped Hypersim RGB).

GT: `semantic.hdf5` ("dataset", int16 NYU40 ids, -1 = unlabeled), else the `semantic.png` colour map
decoded by exact NYU40 palette lookup. Ids -1, 0 (unlabeled) and anything outside 1..40 become 255;
`valid` is `gt != 255`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from genpercept_cli.errors import DataError
from genpercept_cli.palette import NYU40_PALETTE

from .base import EvalDataset, Sample, check_limit, decode_rgb, read_split

IGNORE = 255
HYPERSIM_SOURCE = "Hypersim at https://github.com/apple/ml-hypersim (per-scene download.py)"
_GT_NAME = {
    "hdf5": re.compile(r"frame\.(\d+)\.semantic\.hdf5$"),
    "preview": re.compile(r"frame\.(\d+)\.semantic\.png$"),
}
_RGB_NAME = re.compile(
    r"^(?P<scene>[^/]+)/images/scene_(?P<cam>cam_\w+?)_final_preview/frame\.(?P<frame>\d+)\.\w+\.\w+$"
)


def labels_from_ids(ids: np.ndarray) -> np.ndarray:
    """Hypersim int ids [H, W] -> uint8 NYU40 ids with 255 for unlabeled (-1, 0) and unknown ids."""
    ids = np.asarray(ids)
    return np.where((ids >= 1) & (ids <= 40), ids, IGNORE).astype(np.uint8)


def labels_from_colors(rgb: np.ndarray) -> np.ndarray:
    """NYU40 colour map uint8 [H, W, 3] -> ids by exact colour match; black and unknown colours -> 255."""
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette = NYU40_PALETTE.astype(np.int32)
    keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
    ids = np.where(keys[order][pos] == packed, order[pos], IGNORE)
    return labels_from_ids(ids)


class HypersimSeg(EvalDataset):
    name = "hypersim-seg"
    task = "seg"
    processing_res = 768  # GenPercept's default; Hypersim frames are 768x1024
    source = HYPERSIM_SOURCE

    def __init__(self, data_dir: str | Path, limit: int | None = None, split_file: str | Path | None = None):
        super().__init__(data_dir, check_limit(limit))
        self.root = self.data_dir / "hypersim"
        if not self.root.is_dir():
            raise DataError(
                f"The {self.name} data was not found: expected {self.root}; get it from {self.source}."
            )
        split = Path(split_file) if split_file is not None else self.root / "split.txt"
        if split_file is not None and not split.is_file():
            raise DataError(f"Split file {split} cannot be read.")
        self._keys = (
            [row[0] for row in read_split("hypersim/split.txt", split)]
            if split.is_file()
            else self._discover()
        )
        if not self._keys:
            raise DataError(
                f"No Hypersim frames with semantic GT found: expected {self.root}/<scene>/images/"
                f"scene_cam_XX_geometry_hdf5/frame.NNNN.semantic.hdf5; get it from {self.source}."
            )
        self._entries = list(self._keys)
        self._apply_limit()

    def _discover(self) -> list[str]:
        """RGB keys of every frame with GT (hdf5 or preview png), sorted by scene, camera, frame."""
        frames = set()
        for geometry in sorted(self.root.glob("*/images/scene_*_geometry_*")):
            cam, _, kind = geometry.name[len("scene_") :].rpartition("_geometry_")
            if kind not in _GT_NAME or not geometry.is_dir():
                continue
            for path in geometry.iterdir():
                match = _GT_NAME[kind].match(path.name)
                if match:
                    frames.add((geometry.parent.parent.name, cam, match.group(1)))
        return [self._rgb_key(scene, cam, frame) for scene, cam, frame in sorted(frames)]

    def _rgb_key(self, scene: str, cam: str, frame: str) -> str:
        folder = f"{scene}/images/scene_{cam}_final_preview"
        for kind in ("tonemap", "color"):
            key = f"{folder}/frame.{frame}.{kind}.jpg"
            if (self.root / key).is_file():
                return key
        return f"{folder}/frame.{frame}.tonemap.jpg"  # reported as missing when loaded

    def _read_gt(self, scene: str, cam: str, frame: str) -> np.ndarray:
        images = self.root / scene / "images"
        hdf5 = images / f"scene_{cam}_geometry_hdf5" / f"frame.{frame}.semantic.hdf5"
        png = images / f"scene_{cam}_geometry_preview" / f"frame.{frame}.semantic.png"
        if hdf5.is_file():
            import h5py

            try:
                with h5py.File(hdf5, "r") as handle:
                    ids = np.asarray(handle["dataset"])
            except (OSError, KeyError) as exc:
                raise DataError(f"{hdf5} is not a readable Hypersim semantic file ({exc}).") from None
            return labels_from_ids(ids)
        if png.is_file():
            return labels_from_colors(decode_rgb(png.read_bytes(), str(png)))
        raise DataError(f"{hdf5} is missing.")

    def _load(self, key: str) -> Sample:
        match = _RGB_NAME.match(key)
        if match is None:
            raise DataError(
                f"Hypersim split entry {key!r} is not of the form "
                "<scene>/images/scene_cam_XX_final_preview/frame.NNNN.<kind>.jpg."
            )
        gt = self._read_gt(match["scene"], match["cam"], match["frame"])
        path = self.root / key
        if not path.is_file():
            raise DataError(f"{path} is missing.")
        image = decode_rgb(path.read_bytes(), str(path), gt.shape)
        return Sample(key=key, image=image, gt=gt, valid=gt != IGNORE)
