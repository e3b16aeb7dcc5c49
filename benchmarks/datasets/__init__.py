"""Benchmark readers: one class per evaluation split, looked up by name.

    ds = get_dataset("nyu", "/data")        # or data_dir=None with GENPERCEPT_DATA set
    sample = ds[0]                          # Sample(key, image, gt, valid, extra), decoded lazily

Each module knows one dataset family's public layout: depth (Marigold archives), normal (DSINE),
dis (DIS5K), matting (P3M-10k, AIM-500), seg (Hypersim), semseg (ADE20K, Cityscapes).
"""

from __future__ import annotations

import os
from pathlib import Path

from genpercept_cli.errors import DataError

from .base import EvalDataset, Sample
from .depth import (
    DIODEDepth,
    DIODEIndoorDepth,
    DIODEOutdoorDepth,
    ETH3DDepth,
    KITTIDepth,
    NYUv2Depth,
    ScanNetDepth,
)
from .dis import DISTest1, DISTest2, DISTest3, DISTest4, DISTestAll, DISValidation
from .matting import AIM500, P3M500NP
from .normal import IBimsNormal, NYUv2Normal, ScanNetNormal, SintelNormal, VKITTINormal
from .seg import HypersimSeg
from .semseg import ADE20KVal, CityscapesVal

DATA_ENV = "GENPERCEPT_DATA"

_CLASSES: tuple[type[EvalDataset], ...] = (
    NYUv2Depth, KITTIDepth, ETH3DDepth, ScanNetDepth, DIODEDepth, DIODEIndoorDepth, DIODEOutdoorDepth,
    NYUv2Normal, ScanNetNormal, SintelNormal, IBimsNormal, VKITTINormal,
    DISValidation, DISTest1, DISTest2, DISTest3, DISTest4, DISTestAll,
    P3M500NP, AIM500,
    HypersimSeg, ADE20KVal, CityscapesVal,
)  # fmt: skip

DATASETS: dict[str, type[EvalDataset]] = {cls.name: cls for cls in _CLASSES}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data root: the argument, else $GENPERCEPT_DATA; DataError when neither is set."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV) or None
    if data_dir is None:
        raise DataError(f"No data directory given: pass one (--data-dir) or set {DATA_ENV}.")
    return Path(data_dir).expanduser()


def get_dataset(name: str, data_dir: str | Path | None = None, limit: int | None = None,
                protocol: str | None = None) -> EvalDataset:
    """The named benchmark split under `data_dir` (else $GENPERCEPT_DATA), first `limit` samples, scored
    with `protocol` (None: the dataset's default; depth: "marigold" or "metric", `datasets.depth`).

    Raises DataError for an unknown name (listing the valid ones) or missing data (naming the path).
    """
    cls = DATASETS.get(name)
    if cls is None:
        raise DataError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}.")
    extra = {} if protocol is None else {"protocol": protocol}
    return cls(resolve_data_dir(data_dir), limit=limit, **extra)


__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DataError",
    "EvalDataset",
    "Sample",
    "get_dataset",
    "resolve_data_dir",
]
