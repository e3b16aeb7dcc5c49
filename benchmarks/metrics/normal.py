"""Angular-error metrics and frame conversions for surface normals (SPEC §6.2).

Frame used throughout this project (GenPercept / Marigold figures): camera-facing normals with x right,
y up, z toward the camera. DSINE's evaluation data stores x left, y up, z toward the camera.
"""

import numpy as np

NORMAL_METRIC_KEYS = ("mean", "median", "rmse", "a5", "a7_5", "a11_25", "a22_5", "a30")
NORMAL_THRESHOLDS_DEG = (5.0, 7.5, 11.25, 22.5, 30.0)
NORMAL_MODES = ("pooled", "per_image")

_AXES = "xyz"
_MIN_NORM = 1e-12  # below this a vector is treated as zero: it stays zero and scores 90 degrees


def apply_axis_flips(normals: np.ndarray, flips: str) -> np.ndarray:
    """Negate the named axes of normal vectors (eval's --normal-flip).

    normals: float [..., 3] in (x, y, z) order; flips: any of "x", "y", "z" once each, e.g. "xy";
    "" returns a copy unchanged. Returns a new array of the same shape and dtype.
    """
    if any(axis not in _AXES for axis in flips) or len(set(flips)) != len(flips):
        raise ValueError(f"axis flips must name each of x, y, z at most once, got {flips!r}")
    normals = np.asarray(normals)
    if normals.shape[-1:] != (3,):
        raise ValueError(f"normals must have 3 channels in the last axis, got shape {normals.shape}")
    signs = np.array([-1 if axis in flips else 1 for axis in _AXES], dtype=normals.dtype)
    return normals * signs


def dsine_to_genpercept(normals: np.ndarray) -> np.ndarray:
    """DSINE's stored frame (x left, y up, z toward camera) -> ours (x right, y up, z toward camera).

    normals: float [..., 3]. The conversion negates x; it is its own inverse.
    """
    return apply_axis_flips(normals, "x")


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float64 [N, 3] rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, _MIN_NORM)


def angular_error_deg(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel angle between predicted and GT normals, in degrees, over valid pixels.

    pred, gt: float [H, W, 3] in the same frame (any length, normalised here); valid: bool [H, W].
    Returns float64 [N] in [0, 180], N = valid.sum(), raster order. A zero vector scores 90 degrees.
    """
    pred, gt, valid = np.asarray(pred), np.asarray(gt), np.asarray(valid, dtype=bool)
    if pred.shape != gt.shape or pred.shape[:-1] != valid.shape or pred.shape[-1:] != (3,):
        raise ValueError(
            f"expected pred and gt [H, W, 3] and valid [H, W], got {pred.shape}, {gt.shape}, {valid.shape}"
        )
    p = _unit(pred[valid].astype(np.float64))  # [N, 3]
    g = _unit(gt[valid].astype(np.float64))
    cosine = np.clip(np.sum(p * g, axis=-1), -1.0, 1.0)  # rounding can push |cos| just past 1
    return np.degrees(np.arccos(cosine))


def _error_sums(errors_deg: np.ndarray) -> np.ndarray:
    """float64 [7] sufficient statistics: count, sum, sum of squares, counts below each threshold."""
    below = [np.count_nonzero(errors_deg < t) for t in NORMAL_THRESHOLDS_DEG]
    sums = [errors_deg.size, errors_deg.sum(), np.square(errors_deg).sum(), *below]
    return np.array(sums, dtype=np.float64)


def _metrics_from_sums(sums: np.ndarray, median: float) -> dict[str, float]:
    count, total, total_sq, *below = sums
    values = [total / count, median, np.sqrt(total_sq / count), *(100.0 * b / count for b in below)]
    return {key: float(v) for key, v in zip(NORMAL_METRIC_KEYS, values, strict=True)}


def normal_metrics(errors_deg: np.ndarray) -> dict[str, float]:
    """mean, median and RMSE of angular errors (degrees) and % of errors strictly below 5 ... 30 degrees.

    errors_deg: float [N] angles in degrees, N > 0. Returns {key: float} for NORMAL_METRIC_KEYS;
    the a* keys are percentages in [0, 100].
    """
    errors = np.asarray(errors_deg, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("cannot compute normal metrics: there is no valid ground-truth pixel")
    return _metrics_from_sums(_error_sums(errors), float(np.median(errors)))


class NormalAccumulator:
    """Dataset-level normal metrics from per-image angular errors.

    mode="pooled" (DSINE, the paper table's default): all valid pixels of the dataset form one set and
    the metrics are computed once. Sums are kept in float64; errors are stored as float32 only for the
    median (4 bytes a pixel).
    mode="per_image" (Marigold): metrics per image, then the mean of each metric over images.
    Images without a valid pixel contribute nothing in either mode.
    """

    def __init__(self, mode: str = "pooled"):
        if mode not in NORMAL_MODES:
            raise ValueError(f"mode must be one of {NORMAL_MODES}, got {mode!r}")
        self.mode = mode
        self._sums = np.zeros(3 + len(NORMAL_THRESHOLDS_DEG), dtype=np.float64)  # see _error_sums
        self._errors: list[np.ndarray] = []
        self._per_image: list[dict[str, float]] = []

    @property
    def num_images(self) -> int:
        """Images with at least one valid pixel seen so far."""
        return len(self._errors) if self.mode == "pooled" else len(self._per_image)

    def update(self, errors_deg: np.ndarray) -> None:
        """Add one image's angular errors, float [N] degrees (from `angular_error_deg`)."""
        errors = np.asarray(errors_deg, dtype=np.float64).ravel()
        if errors.size == 0:
            return
        if self.mode == "per_image":
            self._per_image.append(normal_metrics(errors))
            return
        self._sums += _error_sums(errors)
        self._errors.append(errors.astype(np.float32))

    def compute(self) -> dict[str, float]:
        """{key: float} for NORMAL_METRIC_KEYS over everything added so far."""
        if self.num_images == 0:
            raise ValueError("cannot compute normal metrics: no image with a valid ground-truth pixel")
        if self.mode == "per_image":
            return {key: float(np.mean([m[key] for m in self._per_image])) for key in NORMAL_METRIC_KEYS}
        median = float(np.median(np.concatenate(self._errors)))
        return _metrics_from_sums(self._sums, median)
