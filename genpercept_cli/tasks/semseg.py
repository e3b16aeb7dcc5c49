"""Semantic segmentation into a checkpoint's label set (Meta Prompts: ADE20K, Cityscapes; SPEC §9).

The model outputs class probabilities [K, H, W] (output kind "class_scores", K = the label set's size);
post-processing takes the argmax, so a prediction is float32 [H, W] class ids 0..K-1 (exact in float32).
Files: <stem>_pred.npy (uint8 class ids: the file `genpercept eval --predictions` reads), <stem>_pred.png
(the same uint8 ids; 255 is reserved for "no class"), <stem>_colored.png (the label set's palette colours,
`palette.LABEL_SETS`, chosen by the checkpoint spec's `labels`; ADE20K's when none is given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import read_png
from ..palette import IGNORE_ID, get_label_set
from .base import Encoder, Format, Task

DEFAULT_LABELS = "ade20k"  # the palette of colour files written without a label set


def to_ids(pred: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """float32 class ids [H, W] (in 0..254 by `value_problem`) -> uint8 ids, rounded to the nearest."""
    return np.rint(pred).astype(np.uint8)


class SemsegTask(Task):
    def postprocess(self, p, kind: str | None = None):
        """p: class probabilities [K, H, W] -> float32 [1, H, W] ids of the most probable class (first on ties)."""
        return p.argmax(dim=0, keepdim=True).float()

    def encoder(self, name: str, pred: np.ndarray, kind: str | None = None,
                labels: str | None = None, scene=None) -> Encoder | None:
        """The colours are those of the label set `labels`; without one, ADE20K's 150 serve as a generic palette."""
        if name != "color":
            return super().encoder(name, pred, kind, labels)
        label_set = get_label_set(labels or DEFAULT_LABELS)
        return lambda rows, image=None: label_set.colors(to_ids(rows))

    def value_problem(self, pred: np.ndarray, kind: str | None = None) -> str | None:
        """Class ids must be finite and in 0..254 (255 is "no class")."""
        if not np.isfinite(pred).all():
            return "contains NaN or inf"
        ok = pred.min() > -0.5 and pred.max() < IGNORE_ID - 0.5  # 0..254 once rounded
        return None if ok else "holds ids outside 0..254"

    def read_saved(self, stem: Path) -> np.ndarray:
        """<stem>_pred.npy as stored (class ids), else <stem>_pred.png; 255 marks pixels without a class."""
        png = Path(f"{stem}{self.formats['png'].suffix}")
        if Path(f"{stem}{self.formats['npy'].suffix}").is_file() or not png.is_file():
            return super().read_saved(stem)
        return read_png(png)

    def check_saved(self, pred: np.ndarray, size: tuple[int, int], kind: str | None = None) -> str | None:
        """Ids [H, W] (any integer or float dtype) of the ground truth's size, each in 0..254."""
        return self._shape_problem(pred, size) or (self.value_problem(pred, kind) if pred.size else None)


SEMSEG = SemsegTask(
    "semseg", channels=1, output="semantic class ids of the checkpoint's label set", output_kind="class_scores",
    formats={"npy": Format("_pred.npy", to_ids), "png": Format("_pred.png", to_ids),
             "color": Format("_colored.png")},
    default_formats=("npy", "png", "color"), benchmark="semseg",
)
