"""Depth and disparity: float32 [H, W] in [0, 1], affine-invariant (SPEC §4).

depth: 0 = near, 1 = far; disparity: 1 = near. Files: <stem>_pred.npy (float32), <stem>_pred.png
(16-bit, round(v * 65535)), <stem>_colored.png (Spectral colour map, near = red). Both are scored by the
depth benchmarks.
"""

from ..colormap import colorize_depth
from .base import NPY, Format, Task, to_uint16


def _formats(name: str) -> dict[str, Format]:
    def color(pred, image=None):  # uint8 [H, W, 3], near = red for both tasks
        return colorize_depth(pred, name)

    return {"npy": NPY, "png16": Format("_pred.png", to_uint16), "color": Format("_colored.png", color)}


DEPTH = Task(
    "depth", channels=1, output="affine-invariant depth in [0,1], 0 = near, 1 = far", output_kind="affine_depth",
    formats=_formats("depth"), default_formats=("npy", "png16", "color"), benchmark="depth",
    aliases={"png": "png16"},
)
DISPARITY = Task(
    "disparity", channels=1, output="affine-invariant disparity in [0,1], 1 = near", output_kind="affine_disparity",
    formats=_formats("disparity"), default_formats=("npy", "png16", "color"), benchmark="depth",
    aliases={"png": "png16"},
)
