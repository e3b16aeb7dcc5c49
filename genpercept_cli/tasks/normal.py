"""Surface normals: float32 [H, W, 3] unit vectors (SPEC §4).

Frame: x right, y up, z toward the camera (the GenPercept figures, Marigold/diffusers). `flip` negates
axes, e.g. "yz" gives the OpenCV frame (x right, y down, z forward, i.e. away from the camera) and "x"
DSINE's stored frame (x left). Files: <stem>_pred.npy (float32), <stem>_pred.png (8-bit RGB,
round((n + 1) / 2 * 255)), <stem>_pred.exr (float32 channels R, G, B = x, y, z, as in the .npy).
"""

from __future__ import annotations

import numpy as np

from ..errors import GenPerceptError
from .base import EXR, NPY, Format, Task, to_uint8


def parse_normal_flip(flip: str) -> str:
    """Validate an axis-flip string: any of "x", "y", "z" at most once each (e.g. "yz"); "" = none.

    Returns the axes in x, y, z order. Raises GenPerceptError otherwise.
    """
    axes = (flip or "").strip().lower()
    if any(axis not in "xyz" for axis in axes) or len(set(axes)) != len(axes):
        raise GenPerceptError(
            f"Invalid normal flip {flip!r}; use a combination of the axes x, y and z such as 'yz'."
        )
    return "".join(axis for axis in "xyz" if axis in axes)


def _rgb(pred: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """[-1, 1] -> round((n + 1) / 2 * 255) as uint8 [H, W, 3]."""
    return to_uint8((pred.astype(np.float64) + 1.0) / 2.0)


class NormalTask(Task):
    def postprocess(self, p, kind: str | None = None):
        """p [3, H, W] in [0, 1] -> unit vectors n = 2p - 1, renormalised after the resize."""
        n = p.clamp(0.0, 1.0) * 2.0 - 1.0
        return n / n.norm(dim=0, keepdim=True).clamp_min(1e-6)

    def flip(self, pred: np.ndarray, axes: str) -> np.ndarray:
        """pred [H, W, 3] with the axes in `axes` (x, y, z order, as parse_normal_flip returns) negated."""
        signs = np.array([-1.0 if axis in axes else 1.0 for axis in "xyz"], dtype=np.float32)
        return pred * signs


NORMAL = NormalTask(
    "normal", channels=3, output="unit surface normals, x right, y up, z toward the camera", output_kind="normal",
    formats={"npy": NPY, "rgb": Format("_pred.png", _rgb), "exr": EXR}, default_formats=("npy", "rgb"),
    benchmark="normal", aliases={"png": "rgb"},
)
