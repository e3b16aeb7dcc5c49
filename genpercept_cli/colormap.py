"""The "Spectral" colour map, rebuilt from its defining data so matplotlib is not needed.

matplotlib's "Spectral" is the 11-class ColorBrewer Spectral scheme (red → yellow → blue) placed at
evenly spaced positions 0, 0.1, ..., 1 and linearly interpolated into a lookup table of N = 256 entries,
entry i sampled at x = i / 255. A value v in [0, 1] picks entry min(int(v · 256), 255) (values outside
[0, 1] are clipped first), and the byte colour is floor(entry · 255), as matplotlib's ``cmap(v, bytes=True)``
computes it. This reproduces ``matplotlib.colormaps["Spectral"](v, bytes=True)[..., :3]`` exactly.
"""

import numpy as np

# ColorBrewer Spectral-11, from the red end (position 0) to the blue end (position 1).
SPECTRAL_CONTROL_POINTS = (
    "#9e0142", "#d53e4f", "#f46d43", "#fdae61", "#fee08b", "#ffffbf",
    "#e6f598", "#abdda4", "#66c2a5", "#3288bd", "#5e4fa2",
)
LUT_SIZE = 256


def _build_spectral_lut(size: int = LUT_SIZE) -> np.ndarray:
    """float64 [size, 3] in [0, 1]: the control points interpolated at x = i / (size - 1)."""
    colors = np.array(
        [[int(c[k:k + 2], 16) / 255.0 for k in (1, 3, 5)] for c in SPECTRAL_CONTROL_POINTS]
    )  # [11, 3]
    positions = np.linspace(0.0, 1.0, len(colors))
    samples = np.linspace(0.0, 1.0, size)
    lut = np.stack([np.interp(samples, positions, colors[:, ch]) for ch in range(3)], axis=-1)
    return np.clip(lut, 0.0, 1.0)


# uint8 [256, 3]; truncation (not rounding) matches matplotlib's bytes=True output.
SPECTRAL_LUT = (_build_spectral_lut() * 255.0).astype(np.uint8)


def spectral(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to Spectral colours: 0 → red (158, 1, 66), 1 → blue (94, 79, 162).

    values: float array of any shape [...]; values outside [0, 1] are clipped, NaN is not allowed.
    Returns uint8 [..., 3].
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("spectral() needs finite values")
    index = np.clip((np.clip(values, 0.0, 1.0) * LUT_SIZE).astype(np.int64), 0, LUT_SIZE - 1)
    return SPECTRAL_LUT[index]


def colorize_depth(pred: np.ndarray, task: str) -> np.ndarray:
    """Colour a depth or disparity map with near = red.

    pred: float [H, W] in [0, 1]; for task "depth" 0 = near, for "disparity" 1 = near.
    Returns uint8 [H, W, 3].
    """
    if task == "depth":
        return spectral(pred)
    if task == "disparity":
        return spectral(1.0 - np.asarray(pred, dtype=np.float64))
    raise ValueError(f"colorize_depth needs task 'depth' or 'disparity', got {task!r}")


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite entries of `values`; (0.0, 0.0) when there is none."""
    finite = np.asarray(values)[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def colorize_metric_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Colour metric depth with near = red over the range [near, far] (metres; per image: `finite_range`).

    depth: float [H, W] metres, NaN/inf = no prediction (drawn black). A flat range (far == near) is
    all red. Returns uint8 [H, W, 3].
    """
    depth = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(depth)
    scaled = (np.where(finite, depth, near) - near) / (far - near) if far > near else np.zeros_like(depth)
    rgb = spectral(scaled)
    rgb[~finite] = 0
    return rgb
