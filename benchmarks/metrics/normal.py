"""Angular-error metrics and frame conversions for surface normals (SPEC §6.2).

Frame used throughout this project (GenPercept / Marigold figures): camera-facing normals with x right,
y up, z toward the camera. DSINE's evaluation data stores x left, y up, z toward the camera.
"""

import numpy as np

from benchmarks.metrics.merge import check_new_index, check_settings, union_by_index

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

    Each image is kept under its index (its position in the dataset) and `compute` reduces in index
    order, so `merge` of the states of accumulators that saw disjoint images gives the same floats as
    one accumulator that saw them all.
    """

    def __init__(self, mode: str = "pooled"):
        if mode not in NORMAL_MODES:
            raise ValueError(f"mode must be one of {NORMAL_MODES}, got {mode!r}")
        self.mode = mode
        # index -> pooled: (float64 [7] sums, see _error_sums; float32 [N] errors), per_image: metrics
        self._images: dict[int, tuple[np.ndarray, np.ndarray] | dict[str, float]] = {}
        self._next_index = 0

    @property
    def num_images(self) -> int:
        """Images with at least one valid pixel seen so far."""
        return len(self._images)

    def update(self, errors_deg: np.ndarray, index: int | None = None) -> None:
        """Add one image's angular errors, float [N] degrees (from `angular_error_deg`).

        index: the image's position in the dataset (default: after the last one added).
        """
        index = self._next_index if index is None else int(index)
        check_new_index(index, self._images, "normal accumulator")
        self._next_index = max(self._next_index, index + 1)
        errors = np.asarray(errors_deg, dtype=np.float64).ravel()
        if errors.size == 0:
            return
        if self.mode == "per_image":
            self._images[index] = normal_metrics(errors)
        else:
            self._images[index] = (_error_sums(errors), errors.astype(np.float32))

    def state(self) -> dict:
        """{"settings": {"mode"}, "images": {index: entry}}: plain values, picklable, for `merge`."""
        return {"settings": {"mode": self.mode}, "images": dict(self._images)}

    def merge(self, states: list[dict]) -> None:
        """Replace what this accumulator holds by the union of `states` (from `state()` of accumulators
        in the same mode that saw disjoint images); raises ValueError otherwise."""
        check_settings(states, {"mode": self.mode}, "normal accumulator")
        self._images = union_by_index((s["images"] for s in states), "normal accumulator")
        self._next_index = max(self._images, default=-1) + 1

    def compute(self) -> dict[str, float]:
        """{key: float} for NORMAL_METRIC_KEYS over everything added so far."""
        if not self._images:
            raise ValueError("cannot compute normal metrics: no image with a valid ground-truth pixel")
        images = [self._images[i] for i in sorted(self._images)]
        if self.mode == "per_image":
            return {key: float(np.mean([m[key] for m in images])) for key in NORMAL_METRIC_KEYS}
        sums = np.zeros(3 + len(NORMAL_THRESHOLDS_DEG), dtype=np.float64)
        for image_sums, _ in images:  # one by one in index order: the floats of a single pass
            sums += image_sums
        median = float(np.median(np.concatenate([errors for _, errors in images])))
        return _metrics_from_sums(sums, median)
