"""Dichotomous image segmentation (DIS5K) metrics: max/mean F, weighted F, MAE, S, mean E and HCE.

The numbers follow PySODMetrics (the evaluation behind the DIS paper and BiRefNet), written from the
description in ``shared/METRICS_NOTES.md`` §1 and SPEC.md §6.3; no reference code was copied. Every
metric is computed per image and averaged over images, except max/mean F, which take the max/mean of the
image-averaged 256-threshold curve.

Curve layout: index ``i`` of a 256-long curve is the threshold ``p8 >= 255 - i`` on the truncated uint8
prediction ``p8``, so the curve runs from ``>= 255`` down to ``>= 0``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from benchmarks.metrics.hce import PolyVariant, hce
from benchmarks.metrics.merge import check_new_index, check_settings, union_by_index

EPS = np.spacing(1)  # the epsilon of PySODMetrics (2.2e-16)
F_BETA2 = 0.3  # beta^2 of the (max/mean) F-measure
S_ALPHA = 0.5  # object/region balance of the S-measure


# --------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------


def to_uint8_prediction(pred: np.ndarray) -> np.ndarray:
    """A prediction as the 8-bit PNG the published numbers assume: uint8 [h, w].

    uint8 passes through; float (or bool) input is read as [0, 1], clipped and rounded to the nearest
    level (``np.round(p * 255)``), as writing an 8-bit PNG does. Other integer types are refused.
    """
    if pred.ndim != 2:
        raise ValueError(f"expected a single-channel prediction [H, W], got shape {pred.shape}")
    if pred.dtype == np.uint8:
        return pred
    if np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"expected a uint8 or [0, 1] float prediction, got dtype {pred.dtype}")
    return np.round(np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_to_gt(pred_u8: np.ndarray, gt_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 [h, w] prediction to the GT's [H, W] (cv2 INTER_LINEAR, as BiRefNet)."""
    if pred_u8.shape == tuple(gt_shape):
        return pred_u8
    height, width = gt_shape
    return cv2.resize(pred_u8, (width, height), interpolation=cv2.INTER_LINEAR)


def binarize_gt(gt: np.ndarray) -> np.ndarray:
    """GT mask bool [H, W]: bool input as is, anything else ``> 128`` (strict, as PySOD)."""
    if gt.ndim != 2:
        raise ValueError(f"expected a single-channel ground truth [H, W], got shape {gt.shape}")
    return gt if gt.dtype == bool else gt > 128


def prepare_dis(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PySOD's input preparation: (pred_norm float64 [H, W] in [0, 1], gt bool [H, W]).

    pred: uint8 [h, w] (float [0, 1] is first quantised by :func:`to_uint8_prediction`), resized
        bilinearly to the GT size when the shapes differ, divided by 255 and min-max normalised per image;
        a constant prediction is left at ``v / 255``.
    gt: uint8 [H, W] (binarised ``> 128``) or bool.
    """
    gt_bool = binarize_gt(gt)
    pred_u8 = resize_to_gt(to_uint8_prediction(pred), gt_bool.shape)
    pred_norm = pred_u8 / 255.0
    lo, hi = pred_norm.min(), pred_norm.max()
    if hi != lo:
        pred_norm = (pred_norm - lo) / (hi - lo)
    return pred_norm, gt_bool


def quantize_truncate(pred_norm: np.ndarray) -> np.ndarray:
    """uint8 levels of a [0, 1] prediction by truncation (``(p * 255).astype(uint8)``), as PySOD's curves."""
    return (pred_norm * 255).astype(np.uint8)


def _threshold_counts(pred_norm: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) int64 [256] of ``p8 >= 255 - i`` for i = 0..255 (cumulative histograms from the top)."""
    p8 = quantize_truncate(pred_norm)
    tp = np.cumsum(np.bincount(p8[gt], minlength=256)[::-1])
    fp = np.cumsum(np.bincount(p8[~gt], minlength=256)[::-1])
    return tp, fp


# --------------------------------------------------------------------------------------------------------
# Per-image metrics (pred_norm float64 [H, W] in [0, 1], gt bool [H, W])
# --------------------------------------------------------------------------------------------------------


def fmeasure_curve(pred_norm: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """F-measure (beta^2 = 0.3) at the 256 thresholds ``p8 >= 255..0``: float64 [256] in [0, 1].

    Precision is 0 where nothing is predicted, recall 0 for an empty GT, and F is 0 where P*R = 0.
    """
    tp, fp = _threshold_counts(pred_norm, gt)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(int(np.count_nonzero(gt)), 1)
    numerator = (1 + F_BETA2) * precision * recall
    denominator = np.where(numerator == 0, 1.0, F_BETA2 * precision + recall)
    return numerator / denominator


def mae(pred_norm: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between the normalised prediction and the binary GT, in [0, 1]."""
    return float(np.mean(np.abs(pred_norm - gt)))


def emeasure_curve(pred_norm: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Enhanced-alignment measure (Fan et al. IJCAI'18) at thresholds ``p8 >= 255..0``: float64 [256].

    Closed form of ``sum(((xi + 1) / 2)^2) / (N - 1 + eps)`` with ``xi = 2 a b / (a^2 + b^2 + eps)``, where
    a and b are the mean-removed binary prediction and GT: a pixel's value depends only on which of the
    four (pred, gt) cells it is in, so each cell's value is weighted by its pixel count. An empty GT
    scores the predicted-background count, a full GT the predicted-foreground count.
    """
    tp, fp = _threshold_counts(pred_norm, gt)
    n = gt.size
    n_gt = int(np.count_nonzero(gt))
    pred_fg = tp + fp
    if n_gt == 0:
        total = (n - pred_fg).astype(np.float64)
    elif n_gt == n:
        total = pred_fg.astype(np.float64)
    else:
        mu_p, mu_g = pred_fg / n, n_gt / n
        fn, tn = n_gt - tp, n - n_gt - fp
        cells = (
            (tp, 1 - mu_p, 1 - mu_g),
            (fp, 1 - mu_p, -mu_g),
            (fn, -mu_p, 1 - mu_g),
            (tn, -mu_p, -mu_g),
        )
        total = sum(count * _enhanced_alignment(a, b) for count, a, b in cells)
    return total / (n - 1 + EPS)


def _enhanced_alignment(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """((xi + 1) / 2)^2 for the alignment ``xi = 2ab / (a^2 + b^2 + eps)`` of bias-removed values a, b."""
    align = 2 * a * b / (a * a + b * b + EPS)
    return (align + 1) ** 2 / 4


def weighted_fmeasure(pred_norm: np.ndarray, gt: np.ndarray, beta: float = 1.0) -> float:
    """Weighted F-measure (Margolin et al. CVPR'14), in [0, 1]; 0 when the GT has no foreground.

    Background errors take the error of their nearest foreground pixel (Euclidean distance transform),
    are smoothed with MATLAB's ``fspecial('gaussian', 7, 5)`` (zero padding), and background pixels far
    from the object get a larger weight ``2 - exp(ln(0.5) / 5 * D)``.
    """
    if not gt.any():
        return 0.0
    dist, nearest = ndimage.distance_transform_edt(~gt, return_indices=True)
    err = np.abs(pred_norm - gt)
    err_t = err.copy()
    bg = ~gt
    err_t[bg] = err[nearest[0][bg], nearest[1][bg]]  # each background pixel: error of its nearest fg pixel
    err_a = ndimage.convolve(err_t, _matlab_gaussian(7, 5.0), mode="constant", cval=0.0)
    min_err = np.where(gt & (err_a < err), err_a, err)
    weight = np.where(gt, 1.0, 2.0 - np.exp(np.log(0.5) / 5 * dist))
    err_w = min_err * weight
    tp_w = np.count_nonzero(gt) - err_w[gt].sum()
    fp_w = err_w[bg].sum()
    recall = 1 - err_w[gt].mean()
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1 + beta) * recall * precision / (recall + beta * precision + EPS))


def _matlab_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: float64 [size, size], summing to 1."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def s_measure(pred_norm: np.ndarray, gt: np.ndarray, alpha: float = S_ALPHA) -> float:
    """Structure measure (Fan et al. ICCV'17) as PySODMetrics 1.6.2 computes it, in [0, 1].

    Empty GT: 1 - mean(pred); full GT: mean(pred); otherwise alpha * object + (1 - alpha) * region,
    floored at 0.
    """
    fg_ratio = np.mean(gt)
    if fg_ratio == 0:
        return float(1 - np.mean(pred_norm))
    if fg_ratio == 1:
        return float(np.mean(pred_norm))
    score = alpha * _s_object(pred_norm, gt) + (1 - alpha) * _s_region(pred_norm, gt)
    return float(max(0.0, score))


def _s_object(pred: np.ndarray, gt: np.ndarray) -> float:
    """Object-aware term: foreground and background similarity weighted by the GT's area ratio."""
    fg_ratio = np.mean(gt)
    return fg_ratio * _object_score(pred[gt]) + (1 - fg_ratio) * _object_score(1 - pred[~gt])


def _object_score(values: np.ndarray) -> float:
    """2 mean / (mean^2 + 1 + std + eps), std with ddof = 1 (taken as 0 for a single pixel, not NaN)."""
    mean = np.mean(values)
    std = np.std(values, ddof=1) if values.size > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + std + EPS)


def _s_region(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region-aware term: SSIM of the four quadrants around the GT centroid, weighted by their areas.

    The split is at ``round(centroid) + 1`` (np.round, half to even): rows ``[0, y)`` / ``[y, H)`` and
    columns ``[0, x)`` / ``[x, W)``, the 1-based MATLAB convention expressed as 0-based slices.
    """
    h, w = gt.shape
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    y, x = int(cy) + 1, int(cx) + 1
    area = h * w
    w_lt, w_rt, w_lb = x * y / area, (w - x) * y / area, x * (h - y) / area
    weights = (w_lt, w_rt, w_lb, 1 - w_lt - w_rt - w_lb)
    row_parts, col_parts = (slice(0, y), slice(y, h)), (slice(0, x), slice(x, w))
    quadrants = [(r, c) for r in row_parts for c in col_parts]  # LT, RT, LB, RB
    score = 0.0
    for weight, quadrant in zip(weights, quadrants, strict=True):
        if pred[quadrant].size:  # an empty quadrant has weight 0; its mean would be NaN
            score += weight * _ssim(pred[quadrant], gt[quadrant].astype(np.float64))
    return score


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Single-window SSIM of the S-measure, variances with N - 1 + eps (PySOD 1.6.2's guard)."""
    n = pred.size
    mx, my = pred.mean(), gt.mean()
    dx, dy = pred - mx, gt - my
    var_x = np.sum(dx * dx) / (n - 1 + EPS)
    var_y = np.sum(dy * dy) / (n - 1 + EPS)
    cov = np.sum(dx * dy) / (n - 1 + EPS)
    num = 4 * mx * my * cov
    den = (mx * mx + my * my) * (var_x + var_y)
    if num != 0:
        return float(num / (den + EPS))
    return 1.0 if den == 0 else 0.0


# --------------------------------------------------------------------------------------------------------
# Dataset accumulation
# --------------------------------------------------------------------------------------------------------


class DISAccumulator:
    """Collects per-image DIS metrics and averages them the way PySOD/BiRefNet report them.

    with_hce: compute HCE (the slowest metric: ~0.2 s for a 1024x1024 image on one CPU core, ~0.05 s of
        it without the skeleton when one is cached); when False the ``hce`` value of :meth:`compute` and
        of the rows is None.

    Each image is kept under its index (its position in the dataset) and :meth:`compute` averages in index
    order, so :meth:`merge` of the states of accumulators that saw disjoint images gives the same floats as
    one accumulator that saw them all.
    """

    def __init__(self, with_hce: bool = True) -> None:
        self.with_hce = with_hce
        # index -> (F curve float64 [256], E curve float64 [256], row)
        self._images: dict[int, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
        self._next_index = 0

    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        hce_variant: PolyVariant = "line",
        skeleton: np.ndarray | None = None,
        name: str | None = None,
        index: int | None = None,
    ) -> dict[str, Any]:
        """Add one image and return its row.

        pred: uint8 [h, w] (float [0, 1] is quantised to uint8 first); resized to the GT size if needed.
        gt: uint8 [H, W] with 0/255 (binarised ``> 128``).
        hce_variant: approxPolyDP distance for HCE (``"line"``: OpenCV <= 4.12, the published numbers).
        skeleton: optional cached GT skeleton, bool or uint8 [H, W]; computed when None.
        name: optional image identifier stored in the row.
        index: the image's position in the dataset (default: after the last one added).
        """
        index = self._next_index if index is None else int(index)
        check_new_index(index, self._images, "DIS accumulator")
        gt_bool = binarize_gt(gt)
        pred_u8 = resize_to_gt(to_uint8_prediction(pred), gt_bool.shape)  # HCE reads these raw levels
        pred_norm, _ = prepare_dis(pred_u8, gt_bool)  # already uint8 at GT size: no second pass
        f_curve = fmeasure_curve(pred_norm, gt_bool)
        e_curve = emeasure_curve(pred_norm, gt_bool)
        row: dict[str, Any] = {} if name is None else {"name": name}
        row.update(
            maxf=float(f_curve.max()),
            meanf=float(f_curve.mean()),
            wf=weighted_fmeasure(pred_norm, gt_bool),
            mae=mae(pred_norm, gt_bool),
            sm=s_measure(pred_norm, gt_bool),
            em=float(e_curve.mean()),
            hce=self._hce(pred_u8, gt_bool, skeleton, hce_variant),
        )
        self._images[index] = (f_curve, e_curve, row)  # only once every metric succeeded
        self._next_index = max(self._next_index, index + 1)
        return row

    def _hce(
        self, pred_u8: np.ndarray, gt: np.ndarray, skeleton: np.ndarray | None, variant: PolyVariant
    ) -> int | None:
        """HCE on the raw uint8 prediction (``> 128``, no min-max stretch), or None when disabled."""
        if not self.with_hce:
            return None
        return hce(pred_u8, gt.astype(np.uint8) * 255, skeleton, variant)

    def state(self) -> dict[str, Any]:
        """{"settings": {"with_hce"}, "images": {index: (F curve, E curve, row)}}: picklable, for merge."""
        images = {i: (f, e, dict(row)) for i, (f, e, row) in self._images.items()}
        return {"settings": {"with_hce": self.with_hce}, "images": images}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Replace what this accumulator holds by the union of ``states`` (from :meth:`state` of
        accumulators with the same ``with_hce`` that saw disjoint images); raises ValueError otherwise."""
        check_settings(states, {"with_hce": self.with_hce}, "DIS accumulator")
        self._images = union_by_index((s["images"] for s in states), "DIS accumulator")
        self._next_index = max(self._images, default=-1) + 1

    def _in_order(self) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        return [self._images[i] for i in sorted(self._images)]

    def compute(self) -> dict[str, float | None]:
        """Dataset scores: maxf, meanf (max/mean of the image-averaged F curve), wf, mae, sm, em, hce."""
        if not self._images:
            raise ValueError("no images were added to the DIS accumulator")
        f_curves, e_curves, rows = zip(*self._in_order(), strict=True)
        f_curve = np.mean(f_curves, axis=0)
        scores: dict[str, float | None] = {"maxf": float(f_curve.max()), "meanf": float(f_curve.mean())}
        for key in ("wf", "mae", "sm"):
            scores[key] = float(np.mean([row[key] for row in rows]))
        scores["em"] = float(np.mean(e_curves, axis=0).mean())
        scores["hce"] = float(np.mean([row["hce"] for row in rows])) if self.with_hce else None
        return scores

    def per_image_rows(self) -> list[dict[str, Any]]:
        """One dict per image (name if given, maxf, meanf, wf, mae, sm, em, hce), in index order."""
        return [dict(row) for _, _, row in self._in_order()]

    def __len__(self) -> int:
        return len(self._images)
