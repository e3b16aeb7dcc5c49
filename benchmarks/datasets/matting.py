"""Image-matting benchmarks: P3M-500-NP and AIM-500 (SPEC §6.4, METRICS_NOTES §2.3).

Layouts, as the public archives unpack (each may also stay zipped as `<root>/P3M-10k.zip`,
`<root>/AIM-500.zip`; one extra wrapping folder such as `AIM-500/AIM-500/` is tolerated):

    <root>/P3M-10k/validation/P3M-500-NP/{original_image/*.jpg, mask/*.png, trimap/*.png}
    <root>/AIM-500/{original/*.jpg, mask/*.png, trimap/*.png}        (usr/ is not needed)

No split list: every image in the image folder, sorted by stem; `mask` (the GT alpha) and `trimap`
share the image's stem. Alpha = 8-bit value / 255 as float32 (16-bit masks / 65535); a 3-channel
trimap gives its first channel. The sample key is `<image folder>/<file>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genpercept_cli.errors import DataError

from .base import (
    IMAGE_SUFFIXES,
    Archive,
    EvalDataset,
    Sample,
    check_limit,
    decode_gray,
    decode_rgb,
    open_archive,
)


class MattingDataset(EvalDataset):
    task = "matting"
    processing_res = 768  # GenPercept's default inference resolution
    archive: str = ""  # folder (or .zip twin) under the data root
    subdir: str = ""  # folder of the split inside the archive ("" = its root)
    image_folder: str = ""

    def __init__(self, data_dir: str | Path, limit: int | None = None):
        super().__init__(data_dir, check_limit(limit))
        folder = self._rel(self.image_folder)
        expected = self.data_dir / self.archive / folder
        what = f"The {self.name} data"
        self._archive: Archive = open_archive(
            self.data_dir / self.archive, what, self.source, expected=expected
        )
        images = [n for n in self._archive.list_dir(folder) if n.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise DataError(
                f"{what} was not found: expected images in {expected}; get it from {self.source}."
            )
        self._entries = sorted(images, key=lambda n: (n.rsplit(".", 1)[0], n))
        self._keys = [f"{self.image_folder}/{n}" for n in self._entries]
        self._apply_limit()

    def _rel(self, rel: str) -> str:
        return f"{self.subdir}/{rel}" if self.subdir else rel

    def _read_gray(self, rel: str) -> np.ndarray:
        return decode_gray(self._archive.read(self._rel(rel)), f"{self._archive.path}/{self._rel(rel)}")

    def _load(self, file: str) -> Sample:
        stem = file.rsplit(".", 1)[0]
        mask = self._read_gray(f"mask/{stem}.png")
        # float64, like P3M's test.py (alpha 153/255 vs Conn's 0.6 threshold differs in float32)
        alpha = mask.astype(np.float64) / (65535.0 if mask.dtype == np.uint16 else 255.0)
        trimap = self._read_gray(f"trimap/{stem}.png").astype(np.uint8)
        if trimap.shape != alpha.shape:
            raise DataError(f"The {stem} trimap is {trimap.shape}, its alpha {alpha.shape}.")
        image_rel = self._rel(f"{self.image_folder}/{file}")
        image = decode_rgb(self._archive.read(image_rel), f"{self._archive.path}/{image_rel}", alpha.shape)
        valid = np.ones(alpha.shape, dtype=bool)
        return Sample(
            key=f"{self.image_folder}/{file}", image=image, gt=alpha, valid=valid, extra={"trimap": trimap}
        )


class P3M500NP(MattingDataset):
    """P3M-500-NP: 500 portraits without privacy blurring, from P3M-10k's validation set."""

    name = "p3m-500-np"
    archive = "P3M-10k"
    subdir = "validation/P3M-500-NP"
    image_folder = "original_image"
    source = "P3M-10k at https://github.com/JizhiziLi/P3M"


class AIM500(MattingDataset):
    """AIM-500: 500 natural images of mixed types (salient opaque, salient transparent, non-salient)."""

    name = "aim-500"
    archive = "AIM-500"
    image_folder = "original"
    source = "AIM-500 at https://github.com/JizhiziLi/AIM"
