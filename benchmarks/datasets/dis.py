"""DIS5K dichotomous image segmentation (SPEC §6.3).

Layout: `<root>/DIS5K/<subset>/{im/*.jpg, gt/*.png}` with subsets DIS-VD and DIS-TE1..DIS-TE4, as in
the public `DIS5K.zip`; that zip itself (`<root>/DIS5K.zip`, members under `DIS5K/`) is also read in
place. There is no split list: a subset is every image in `im/`, sorted by file stem, each paired with
the GT of the same stem in `gt/`. `dis-te` chains TE1..TE4 in that order; every sample carries
extra["subset"]. The sample key is `<subset>/im/<file>`.
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

DIS_SOURCE = "DIS5K.zip at https://github.com/xuebinqin/DIS"


class DIS5KDataset(EvalDataset):
    task = "dis"
    processing_res = 768  # the paper's default DIS resolution (it also reports 1024)
    source = DIS_SOURCE
    subsets: tuple[str, ...] = ()

    def __init__(self, data_dir: str | Path, limit: int | None = None):
        super().__init__(data_dir, check_limit(limit))
        root = self.data_dir / "DIS5K"
        what = f"The {self.name} data"
        self._archive: Archive = open_archive(root, what, self.source, expected=root / self.subsets[0] / "im")
        for subset in self.subsets:
            images = [n for n in self._archive.list_dir(f"{subset}/im") if n.lower().endswith(IMAGE_SUFFIXES)]
            if not images:
                expected = root / subset / "im"
                raise DataError(
                    f"{what} was not found: expected images in {expected}; get it from {self.source}."
                )
            for file in sorted(images, key=lambda n: (n.rsplit(".", 1)[0], n)):
                self._entries.append((subset, file))
                self._keys.append(f"{subset}/im/{file}")
        self._apply_limit()

    def _load(self, entry: tuple[str, str]) -> Sample:
        subset, file = entry
        gt_rel = f"{subset}/gt/{file.rsplit('.', 1)[0]}.png"
        gt = decode_gray(self._archive.read(gt_rel), f"{self._archive.path}/{gt_rel}")
        if gt.dtype != np.uint8:
            raise DataError(f"{self._archive.path}/{gt_rel} is not an 8-bit mask.")
        image_rel = f"{subset}/im/{file}"
        image = decode_rgb(self._archive.read(image_rel), f"{self._archive.path}/{image_rel}", gt.shape)
        valid = np.ones(gt.shape, dtype=bool)
        return Sample(key=image_rel, image=image, gt=gt, valid=valid, extra={"subset": subset})


class DISValidation(DIS5KDataset):
    name = "dis-vd"
    subsets = ("DIS-VD",)


class DISTest1(DIS5KDataset):
    name = "dis-te1"
    subsets = ("DIS-TE1",)


class DISTest2(DIS5KDataset):
    name = "dis-te2"
    subsets = ("DIS-TE2",)


class DISTest3(DIS5KDataset):
    name = "dis-te3"
    subsets = ("DIS-TE3",)


class DISTest4(DIS5KDataset):
    name = "dis-te4"
    subsets = ("DIS-TE4",)


class DISTestAll(DIS5KDataset):
    """DIS-TE1..4 together: the paper's 'overall DIS-TE'."""

    name = "dis-te"
    subsets = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
