"""Alpha-like tasks: float32 [H, W] in [0, 1] (SPEC §4).

dis: foreground probability (dichotomous image segmentation); matting: alpha matte. Files:
<stem>_pred.png (8-bit "png" or 16-bit "png16"), <stem>_rgba.png (the input image cut out by the alpha),
<stem>_pred.npy (float32; on by default because `genpercept eval --predictions` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import read_png
from .base import NPY, Format, Task, to_uint8, to_uint16


def _rgba_cutout(alpha: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """uint8 [H, W, 4]: the input RGB with round(alpha * 255) as the A channel."""
    return np.concatenate([image, to_uint8(alpha)[..., None]], axis=-1)


ALPHA_FORMATS = {
    "png": Format("_pred.png", to_uint8),
    "png16": Format("_pred.png", to_uint16),
    "rgba": Format("_rgba.png", _rgba_cutout, needs_image=True),
    "npy": NPY,
}


@dataclass(frozen=True)
class AlphaTask(Task):
    """keeps_png_levels: an 8-bit PNG read back stays uint8 (the DIS protocol scores its levels as they are).
    any_size: a saved [h, w] prediction of any size can be scored (the DIS protocol resizes it to the GT)."""

    keeps_png_levels: bool = False
    any_size: bool = False

    def read_saved(self, stem: Path) -> np.ndarray:
        """<stem>_pred.npy as stored, else <stem>_pred.png: uint8 levels (keeps_png_levels) or float64 in [0, 1]."""
        png = Path(f"{stem}{self.formats['png'].suffix}")
        if Path(f"{stem}{NPY.suffix}").is_file() or not png.is_file():
            return super().read_saved(stem)
        arr = read_png(png)
        if self.keeps_png_levels and arr.dtype == np.uint8:
            return arr
        return arr.astype(np.float64) / np.iinfo(arr.dtype).max

    def _shape_problem(self, pred: np.ndarray, size: tuple[int, int]) -> str | None:
        if self.any_size and pred.ndim == 2:
            return None
        return super()._shape_problem(pred, size)


DIS = AlphaTask(
    "dis", channels=1, output="foreground probability in [0,1]", output_kind="probability", formats=ALPHA_FORMATS,
    default_formats=("png", "npy"), benchmark="dis", keeps_png_levels=True, any_size=True,
)
MATTING = AlphaTask(
    "matting", channels=1, output="alpha matte in [0,1]", output_kind="alpha", formats=ALPHA_FORMATS,
    default_formats=("png", "npy"), benchmark="matting",
)
