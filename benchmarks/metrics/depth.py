"""Affine alignment and error metrics for affine-invariant depth (SPEC §6.1, the Marigold protocol).

Per image: fit a scale and shift of the prediction to the ground truth on valid pixels (in depth or in
disparity space; not at all for metric depth), clip to the dataset's depth range, then compute the
metrics on the valid pixels.
All arithmetic is float64; depths are in metres.
"""

import numpy as np

DEPTH_METRIC_KEYS = (
    "absrel", "sqrel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "irmse", "silog",
)

SUBSAMPLE_MODES = ("reference", "uniform")
DEPTH_SPACES = ("depth", "disparity", "metric")

MIN_ALIGNED_DISPARITY = 1e-3  # keeps the inverted depth finite where the fit goes negative
MIN_ALIGNED_DEPTH = 1e-6  # keeps logs and reciprocals in the metrics finite


def _check_same_shape(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> None:
    if not (pred.shape == gt.shape == valid.shape):
        raise ValueError(
            f"pred, gt and valid must have the same shape, got {pred.shape}, {gt.shape} and {valid.shape}"
        )


def reference_subsample_columns(height: int, width: int, max_samples: int) -> np.ndarray:
    """Column indices the reference keeps when it fits on a subsample (ETH3D, max_samples = 1024).

    The reference treats the [H, W] image as a [1, H, W] tensor and applies a nearest-neighbour resize
    with scale_factor s = min(max_samples / H, max_samples / W). On a 3-D tensor that resize is 1-D: it
    acts on the last axis only, so every row is kept and only columns are dropped. When s < 1 the kept
    columns are j_k = min(floor(k / s), W - 1) for k = 0 .. floor(W * s) - 1, with 1 / s rounded to float32
    (torch's rule); for 4032 x 6048 that is 1024 columns 0, 5, 11, 17, ... 6042. When s >= 1 all columns
    are kept. torch's own interpolate computes the indices, so they match the reference bit for bit.

    Returns int64 [K] column indices, increasing.
    """
    import torch  # torch's nearest-index rule is the definition being reproduced

    scale = min(max_samples / height, max_samples / width)
    if scale >= 1:
        return np.arange(width, dtype=np.int64)
    columns = torch.arange(width, dtype=torch.float64).view(1, 1, width)  # [1, 1, W]
    picked = torch.nn.functional.interpolate(columns, scale_factor=scale, mode="nearest")  # [1, 1, K]
    return picked.view(-1).numpy().astype(np.int64)


def uniform_subsample_indices(count: int, max_samples: int) -> np.ndarray:
    """Evenly spaced positions k * count // max_samples (k < max_samples) into a vector of `count`.

    Returns int64 [min(count, max_samples)] increasing, distinct indices starting at 0.
    """
    if count <= max_samples:
        return np.arange(count, dtype=np.int64)
    return (np.arange(max_samples, dtype=np.int64) * count) // max_samples


def _fit_samples(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, max_samples: int | None, subsample: str
) -> tuple[np.ndarray, np.ndarray]:
    """The (prediction, target) pairs the least-squares fit uses, as float64 [N] vectors."""
    if subsample not in SUBSAMPLE_MODES:
        raise ValueError(f"subsample must be one of {SUBSAMPLE_MODES}, got {subsample!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples}")
    if max_samples is not None and subsample == "reference":
        if pred.ndim != 2:
            raise ValueError(f"reference subsampling needs [H, W] arrays, got shape {pred.shape}")
        columns = reference_subsample_columns(pred.shape[0], pred.shape[1], max_samples)
        pred, gt, valid = pred[:, columns], gt[:, columns], valid[:, columns]
    p = pred[valid].astype(np.float64)
    g = gt[valid].astype(np.float64)
    if max_samples is not None and subsample == "uniform":
        keep = uniform_subsample_indices(p.size, max_samples)
        p, g = p[keep], g[keep]
    return p, g


def align_least_squares(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    max_samples: int | None = None,
    subsample: str = "reference",
) -> tuple[np.ndarray, float, float]:
    """Per-image scale and shift minimising sum((s * pred + t - gt)^2) over valid pixels.

    pred, gt: float [H, W] (any shape for subsample="uniform"); valid: bool, same shape.
    max_samples: fit on a subsample when given (ETH3D uses 1024):
      - "reference": the reference's column-only subsample, see `reference_subsample_columns`;
        max_samples plays the role of the reference's maximum resolution, not a pixel count.
      - "uniform": at most max_samples valid pixels, evenly spaced over the valid pixels in raster order,
        see `uniform_subsample_indices`.
    Returns (s * pred + t over the whole array as float64, s, t). Solved in float64 with
    np.linalg.lstsq; a constant prediction gets the minimum-norm solution (aligned value = mean GT).
    """
    pred, gt, valid = np.asarray(pred), np.asarray(gt), np.asarray(valid, dtype=bool)
    _check_same_shape(pred, gt, valid)
    p, g = _fit_samples(pred, gt, valid, max_samples, subsample)
    if p.size == 0:
        raise ValueError("cannot align the prediction: the image has no valid ground-truth pixel")
    design = np.stack([p, np.ones_like(p)], axis=1)  # [N, 2]
    (scale, shift), *_ = np.linalg.lstsq(design, g, rcond=None)
    aligned = scale * pred.astype(np.float64) + shift
    return aligned, float(scale), float(shift)


def align_depth(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    space: str = "depth",
    min_depth: float | None = None,
    max_depth: float | None = None,
    max_samples: int | None = None,
    pred_clip: tuple[float, float] | None = None,
    subsample: str = "reference",
) -> np.ndarray:
    """Align an affine-invariant prediction to metric GT depth and clip it (SPEC §6.1).

    pred: float [H, W], the model's output (depth-like, disparity-like or metres per `space`).
    gt: float [H, W] metric depth in metres; valid: bool [H, W], GT > 0 wherever valid.
    space: "depth" fits pred to gt; "disparity" fits pred to 1 / gt on the valid pixels that also have
    gt > 0 and pred > 0 (the reference's mask: a saturated model writes exact zeros, which must not
    pull the fit), clips the aligned disparity at >= 1e-3 and inverts it to depth; "metric" takes pred as
    depth in metres and fits nothing.
    Then, in this order: clip to [min_depth, max_depth] (None = unbounded); clip to pred_clip = (lo, hi)
    when given (DIODE's [0.6, 350]); clip to >= 1e-6.
    Returns float64 [H, W] depth in metres.
    """
    if space not in DEPTH_SPACES:
        raise ValueError(f"space must be one of {DEPTH_SPACES}, got {space!r}")
    pred, gt, valid = np.asarray(pred), np.asarray(gt, dtype=np.float64), np.asarray(valid, dtype=bool)
    _check_same_shape(pred, gt, valid)
    if space == "metric":
        depth = pred.astype(np.float64)
    elif space == "depth":
        depth, _, _ = align_least_squares(pred, gt, valid, max_samples, subsample)
    else:
        fit_mask = valid & (gt > 0) & (pred > 0)
        if valid.any() and not fit_mask.any():
            raise ValueError(
                "cannot align in disparity space: no valid pixel has a positive prediction and ground truth"
            )
        gt_disparity = np.divide(1.0, gt, out=np.zeros_like(gt), where=fit_mask)
        disparity, _, _ = align_least_squares(pred, gt_disparity, fit_mask, max_samples, subsample)
        depth = 1.0 / np.maximum(disparity, MIN_ALIGNED_DISPARITY)
    lower = -np.inf if min_depth is None else min_depth
    upper = np.inf if max_depth is None else max_depth
    depth = np.clip(depth, lower, upper)
    if pred_clip is not None:
        depth = np.clip(depth, pred_clip[0], pred_clip[1])
    return np.maximum(depth, MIN_ALIGNED_DEPTH)


def fill_non_finite(pred: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Metric depth with NaN (no prediction) set to min_depth and +-inf to max_depth, as the GLPDepth /
    Meta Prompts evaluation does; float64 [H, W] metres."""
    depth = np.asarray(pred, dtype=np.float64)
    return np.where(np.isnan(depth), min_depth, np.where(np.isinf(depth), max_depth, depth))


def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """The ten depth metrics of SPEC §6.1 over valid pixels of one image.

    pred: aligned depth, float [H, W] in metres, > 0 on valid pixels; gt: float [H, W] in metres,
    > 0 on valid pixels; valid: bool [H, W]. Returns {key: float} for DEPTH_METRIC_KEYS, with the deltas
    and the other ratios as fractions (not percent) and silog scaled by 100.
    """
    pred, gt, valid = np.asarray(pred), np.asarray(gt), np.asarray(valid, dtype=bool)
    _check_same_shape(pred, gt, valid)
    p = pred[valid].astype(np.float64)
    g = gt[valid].astype(np.float64)
    if p.size == 0:
        raise ValueError("cannot compute depth metrics: the image has no valid ground-truth pixel")
    if np.any(p <= 0) or np.any(g <= 0):
        raise ValueError("depth metrics need positive predicted and ground-truth depth on valid pixels")
    diff = p - g
    log_diff = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    # clamped because rounding can make the variance of a constant log ratio slightly negative
    log_variance = max(np.mean(log_diff**2) - np.mean(log_diff) ** 2, 0.0)
    metrics = {
        "absrel": np.mean(np.abs(diff) / g),
        "sqrel": np.mean(diff**2 / g),
        "rmse": np.sqrt(np.mean(diff**2)),
        "rmse_log": np.sqrt(np.mean(log_diff**2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
        "irmse": np.sqrt(np.mean((1.0 / p - 1.0 / g) ** 2)),
        "silog": 100.0 * np.sqrt(log_variance),
    }
    return {key: float(metrics[key]) for key in DEPTH_METRIC_KEYS}
