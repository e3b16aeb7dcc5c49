"""Semantic-segmentation benchmarks of the Meta Prompts models: ADE20K val and Cityscapes val (SPEC §9).

Layouts, as the public downloads unpack, under the data root:

    ADEChallengeData2016/images/validation/ADE_val_XXXXXXXX.jpg       (2000 images; the folder or
    ADEChallengeData2016/annotations/validation/ADE_val_XXXXXXXX.png   ADEChallengeData2016.zip)

    cityscapes/leftImg8bit/val/<city>/<name>_leftImg8bit.png          (500 images, folders)
    cityscapes/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png       (else <name>_gtFine_labelIds.png,
                                                                        mapped to train ids here)

Sample keys are image paths relative to the split's image folder (`ADE_val_00000001.jpg`,
`frankfurt/frankfurt_000000_000294_leftImg8bit.png`), so `genpercept predict <image folder> -o DIR` writes
exactly the files `genpercept eval --predictions DIR` reads. GT: uint8 class ids, 255 = ignore.
ADE20K's annotations count classes from 1 with 0 = "other": mmseg's reduce_zero_label maps 0 -> 255 and
every other id i -> i - 1. Cityscapes' labelIds become the 19 train ids (the official table, the rest 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genpercept_cli.errors import DataError
from genpercept_cli.palette import IGNORE_ID, get_label_set

from .base import EvalDataset, Sample, check_limit, decode_gray, decode_rgb, open_archive

ADE20K_SOURCE = "the MIT Scene Parsing benchmark, http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
CITYSCAPES_SOURCE = ("https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, "
                     "gtFine_trainvaltest.zip)")

# Cityscapes labelId -> trainId for the 19 evaluated classes (cityscapesScripts' labels.py); others -> 255
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def reduce_zero_label(ids: np.ndarray) -> np.ndarray:
    """ADE20K annotation ids [H, W] (0 = other, 1..150 classes) -> uint8 0..149, 0 and 255 -> 255."""
    ids = np.asarray(ids).astype(np.int64)
    return np.where((ids >= 1) & (ids < IGNORE_ID), ids - 1, IGNORE_ID).astype(np.uint8)


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds [H, W] -> uint8 train ids 0..18, every other label 255."""
    table = np.full(256, IGNORE_ID, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table[np.asarray(label_ids).astype(np.uint8)]


class SemsegDataset(EvalDataset):
    """A split scored in a label set (`labels`, `palette.LABEL_SETS`) at the image's native size."""

    task = "semseg"
    processing_res = 0  # the Meta Prompts models resize themselves (keep-ratio to the dataset's scale)
    labels = ""
    default_checkpoint = ""  # the model `genpercept eval` runs when no --checkpoint is given

    @property
    def num_classes(self) -> int:
        return get_label_set(self.labels).num_classes


class ADE20KVal(SemsegDataset):
    name = "ade20k"
    labels = "ade20k"
    default_checkpoint = "metaprompts-ade20k"
    source = ADE20K_SOURCE
    images = "images/validation"
    annotations = "annotations/validation"

    def __init__(self, data_dir: str | Path, limit: int | None = None):
        super().__init__(data_dir, check_limit(limit))
        self._archive = open_archive(self.data_dir / "ADEChallengeData2016", "The ADE20K validation set",
                                     self.source)
        self._keys = [n for n in self._archive.list_dir(self.images) if n.lower().endswith(".jpg")]
        if not self._keys:
            raise DataError(f"No ADE20K validation images in {self._archive.path}/{self.images}; "
                            f"get them from {self.source}.")
        self._entries = list(self._keys)
        self._apply_limit()

    def _load(self, key: str) -> Sample:
        annotation = f"{self.annotations}/{Path(key).with_suffix('.png')}"
        gt = reduce_zero_label(decode_gray(self._archive.read(annotation), f"{annotation} in {self._archive.path}"))
        image = decode_rgb(self._archive.read(f"{self.images}/{key}"), f"{key} in {self._archive.path}", gt.shape)
        return Sample(key=key, image=image, gt=gt, valid=gt != IGNORE_ID)


class CityscapesVal(SemsegDataset):
    name = "cityscapes"
    labels = "cityscapes"
    default_checkpoint = "metaprompts-cityscapes"
    source = CITYSCAPES_SOURCE
    suffix = "_leftImg8bit.png"

    def __init__(self, data_dir: str | Path, limit: int | None = None):
        super().__init__(data_dir, check_limit(limit))
        self.root = self.data_dir / "cityscapes"
        self.images, self.gt_dir = self.root / "leftImg8bit" / "val", self.root / "gtFine" / "val"
        if not self.images.is_dir() or not self.gt_dir.is_dir():
            raise DataError(f"The Cityscapes validation set was not found: expected {self.images} and "
                            f"{self.gt_dir}; get it from {self.source}.")
        self._keys = sorted(p.relative_to(self.images).as_posix() for p in self.images.glob(f"*/*{self.suffix}"))
        if not self._keys:
            raise DataError(f"No Cityscapes images (<city>/*{self.suffix}) in {self.images}; "
                            f"get them from {self.source}.")
        self._entries = list(self._keys)
        self._apply_limit()

    def _read_gt(self, key: str) -> np.ndarray:
        stem = self.gt_dir / key[: -len(self.suffix)]
        train_ids, label_ids = Path(f"{stem}_gtFine_labelTrainIds.png"), Path(f"{stem}_gtFine_labelIds.png")
        if train_ids.is_file():
            return decode_gray(_read(train_ids), str(train_ids))
        if label_ids.is_file():
            return cityscapes_train_ids(decode_gray(_read(label_ids), str(label_ids)))
        raise DataError(f"{train_ids} (or {label_ids.name}) is missing.")

    def _load(self, key: str) -> Sample:
        gt = self._read_gt(key)
        path = self.images / key
        image = decode_rgb(_read(path), str(path), gt.shape)
        return Sample(key=key, image=image, gt=gt, valid=gt != IGNORE_ID)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror}).") from None
