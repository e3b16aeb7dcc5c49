"""Semantic segmentation as a regressed NYU40 colour map: float32 [H, W, 3] in [0, 1] (SPEC §4).

Files: <stem>_pred.png (the colours snapped to the nearest palette entry), <stem>_label.png (uint8 class
ids, 0 = unlabeled), <stem>_pred.npy (the raw float32 colours).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import read_png
from ..palette import colors_to_labels, labels_to_colors
from .base import NPY, Format, Task


def _label(pred: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W] NYU40 class ids of the nearest palette colours, 0 = unlabeled."""
    return colors_to_labels(pred)


def _color(pred: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3]: the palette colours of `_label`."""
    return labels_to_colors(colors_to_labels(pred))


class SegTask(Task):
    def read_saved(self, stem: Path) -> np.ndarray:
        """<stem>_pred.npy as stored (colours), else <stem>_label.png as int64 class ids [H, W]."""
        label = Path(f"{stem}{self.formats['label'].suffix}")
        if Path(f"{stem}{NPY.suffix}").is_file() or not label.is_file():
            return super().read_saved(stem)
        return read_png(label).astype(np.int64)

    def _shape_problem(self, pred: np.ndarray, size: tuple[int, int]) -> str | None:
        h, w = size
        if pred.shape[:2] != (h, w) or pred.ndim not in (2, 3):
            return f"has shape {pred.shape}, expected ({h}, {w}, 3) colours or ({h}, {w}) ids"
        return None


SEG = SegTask(
    "seg", channels=3, output="NYU40 colour map", output_kind="seg_colors",
    formats={"color": Format("_pred.png", _color), "label": Format("_label.png", _label), "npy": NPY},
    default_formats=("color", "label", "npy"), benchmark="seg", aliases={"png": "color"},
)
