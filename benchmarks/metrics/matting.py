"""Image matting metrics as P3M/AIM evaluate them (P3M-500-NP, AIM-500): SAD, MSE, MAD, Grad, Conn.

Written from ``shared/METRICS_NOTES.md`` §2.1 and SPEC.md §6.4 (no reference code was copied). Headline
numbers are whole-image; with a trimap the transition-region and known-region variants are added.

Precision: every input is computed in float64. A uint8 input is divided by 255 in float64, like P3M's
``test.py`` (``np.array(Image.open(p)) / 255.``). This matters for Conn: an alpha of 153/255 is *below*
the threshold ``np.arange(0, 1.1, 0.1)[6] == 0.6000000000000001`` in float64 but not in float32 (P3M-Net's
folder ``eval.py`` reads with ``cv2.imread(...).astype(np.float32) / 255``); a float32 array passed here
keeps its float32 rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import label

from benchmarks.metrics.merge import check_new_index, check_settings, union_by_index

GRAD_SIGMA = 1.4
CONN_STEP = 0.1
CONN_THETA = 0.15  # Conn ignores a deviation from the connectivity level smaller than this

TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG = 0, 128, 255


def as_alpha(x: np.ndarray) -> np.ndarray:
    """An alpha matte as float64 [H, W]: uint8 is divided by 255 (in float64), floats are cast unchanged."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a single-channel matte [H, W], got shape {x.shape}")
    if x.dtype == np.uint8:
        return x / 255.0
    return x.astype(np.float64)


def as_trimap(trimap: np.ndarray) -> np.ndarray:
    """A trimap as uint8-valued [H, W] with {0, 128, 255}; a 3-channel trimap uses its first channel."""
    trimap = np.asarray(trimap)
    return trimap[..., 0] if trimap.ndim == 3 else trimap


def sad(pred: np.ndarray, alpha: np.ndarray) -> float:
    """Sum of absolute differences / 1000 over the whole image."""
    return float(np.abs(pred - alpha).sum() / 1000)


def mse(pred: np.ndarray, alpha: np.ndarray) -> float:
    """Mean squared error over the whole image (sum / (H * W))."""
    return float(np.square(pred - alpha).sum() / pred.size)


def mad(pred: np.ndarray, alpha: np.ndarray) -> float:
    """Mean absolute difference over the whole image (sum / (H * W))."""
    return float(np.abs(pred - alpha).sum() / pred.size)


def gradient_error(pred: np.ndarray, alpha: np.ndarray, sigma: float = GRAD_SIGMA) -> float:
    """Sum of (|grad pred| - |grad alpha|)^2 / 10 over the whole image (P3M scale, not DIM's /1000).

    Derivatives are ``scipy.ndimage.gaussian_filter(x, sigma=1.4, order=(1, 0))`` and ``order=(0, 1)``:
    scipy's sampled Gaussian-derivative kernel with its defaults (mode="reflect", truncate=4.0), float64
    output. This is not MATLAB's L2-normalised ``gaussgradient``, so values differ from DIM-style Grad.
    """
    return float(np.square(_gradient_magnitude(pred, sigma) - _gradient_magnitude(alpha, sigma)).sum() / 10)


def _gradient_magnitude(x: np.ndarray, sigma: float) -> np.ndarray:
    """|(d/dy, d/dx) of x smoothed with a Gaussian of std sigma|: float64 [H, W]."""
    dy = ndimage.gaussian_filter(x, sigma=sigma, order=(1, 0))
    dx = ndimage.gaussian_filter(x, sigma=sigma, order=(0, 1))
    return np.sqrt(dy * dy + dx * dx)


def connectivity_error(
    pred: np.ndarray, alpha: np.ndarray, step: float = CONN_STEP, skip_empty_levels: bool = True
) -> float:
    """Connectivity error (Rhemann et al. 2009, DIM algorithm) over the whole image, / 1000.

    For each threshold t_i of ``np.arange(0, 1.1, step)`` (i >= 1), the largest 4-connected component of
    ``pred >= t_i & alpha >= t_i`` is found; pixels outside it that have no level yet get level t_{i-1}.
    Unassigned pixels end at 1. With d = x - level, phi = 1 - d * (d >= 0.15), and the error is
    ``sum |phi_pred - phi_alpha| / 1000``.

    skip_empty_levels: when the intersection at a threshold is empty, P3M/AIM skip the threshold
        (``continue``) and leave the unassigned pixels for later (default, matches their numbers); False
        assigns t_{i-1} to them like the MATLAB code and mmeval.
    """
    thresholds = np.arange(0, 1 + step, step)
    level = np.full(pred.shape, -1.0)
    for i in range(1, len(thresholds)):
        both = (pred >= thresholds[i]) & (alpha >= thresholds[i])
        labels = label(both, connectivity=1)
        if labels.max() == 0:
            if skip_empty_levels:
                continue
            largest = np.zeros(pred.shape, dtype=bool)
        else:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0  # background is never the component
            largest = labels == np.argmax(sizes)  # first of equal sizes, like argmax over regionprops
        level[(level == -1) & ~largest] = thresholds[i - 1]
    level[level == -1] = 1.0
    return float(np.abs(_connectivity_phi(pred, level) - _connectivity_phi(alpha, level)).sum() / 1000)


def _connectivity_phi(x: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Degree of connectivity 1 - d * (d >= 0.15), d = x - level: float64 [H, W]."""
    d = x - level
    return 1 - d * (d >= CONN_THETA)


def trimap_errors(pred: np.ndarray, alpha: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """Transition-region errors (P3M's ``calculate_sad_mse_mad``) and known-region SADs.

    sad_trimap, mse_trimap, mad_trimap: the prediction is forced to 1 where trimap == 255 and 0 where
        trimap == 0, then the whole-image sums are taken (SAD / 1000; MSE and MAD divided by the number of
        unknown pixels (trimap == 128), or by H*W - #255 - #0 when there are none; 0 if that is also 0 and
        the sum is 0, NaN if only the divisor is 0).
    sad_fg, sad_bg: SAD of the raw prediction over trimap == 255 and trimap == 0, / 1000.
    """
    trimap = as_trimap(trimap)
    if trimap.shape != pred.shape:
        raise ValueError(f"trimap shape {trimap.shape} does not match the prediction's {pred.shape}")
    fg, bg = trimap == TRIMAP_FG, trimap == TRIMAP_BG
    forced = pred.copy()
    forced[fg], forced[bg] = 1.0, 0.0
    n_unknown = int(np.count_nonzero(trimap == TRIMAP_UNKNOWN))
    if n_unknown == 0:
        n_unknown = trimap.size - int(fg.sum()) - int(bg.sum())
    abs_err = np.abs(forced - alpha)
    raw_err = np.abs(pred - alpha)
    return {
        "sad_trimap": float(abs_err.sum() / 1000),
        "mse_trimap": _safe_ratio(float(np.square(forced - alpha).sum()), n_unknown),
        "mad_trimap": _safe_ratio(float(abs_err.sum()), n_unknown),
        "sad_fg": float(raw_err[fg].sum() / 1000),
        "sad_bg": float(raw_err[bg].sum() / 1000),
    }


def _safe_ratio(total: float, count: int) -> float:
    """total / count, with 0/0 = 0 (nothing to get wrong) and x/0 = NaN."""
    if count == 0:
        return 0.0 if total == 0 else float("nan")
    return total / count


def matting_metrics(
    pred: np.ndarray,
    alpha: np.ndarray,
    trimap: np.ndarray | None = None,
    conn_skip_empty_levels: bool = True,
) -> dict[str, float]:
    """All matting metrics of one image.

    pred, alpha: [H, W] in [0, 1] (float, cast to float64) or uint8 (divided by 255 in float64).
    trimap: optional uint8 [H, W] (or [H, W, 3]) with {0, 128, 255}.
    conn_skip_empty_levels: see :func:`connectivity_error` (True = P3M/AIM behaviour).
    Returns sad, mse, mad, grad, conn, plus with a trimap sad_trimap, mse_trimap, mad_trimap, sad_fg,
    sad_bg.
    """
    pred, alpha = as_alpha(pred), as_alpha(alpha)
    if pred.shape != alpha.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match the alpha's {alpha.shape}")
    scores = {
        "sad": sad(pred, alpha),
        "mse": mse(pred, alpha),
        "mad": mad(pred, alpha),
        "grad": gradient_error(pred, alpha),
        "conn": connectivity_error(pred, alpha, skip_empty_levels=conn_skip_empty_levels),
    }
    if trimap is not None:
        scores.update(trimap_errors(pred, alpha, trimap))
    return scores


class MattingAccumulator:
    """Collects per-image matting metrics; :meth:`compute` averages each key over the images.

    conn_skip_empty_levels: the P3M Conn quirk (see :func:`connectivity_error`), on by default.

    Each row is kept under its image's index (its position in the dataset) and :meth:`compute` averages
    in index order, so :meth:`merge` of the states of accumulators that saw disjoint images gives the same
    floats as one accumulator that saw them all.
    """

    def __init__(self, conn_skip_empty_levels: bool = True) -> None:
        self.conn_skip_empty_levels = conn_skip_empty_levels
        self._rows: dict[int, dict[str, Any]] = {}  # index -> row
        self._next_index = 0

    def update(
        self,
        pred: np.ndarray,
        alpha: np.ndarray,
        trimap: np.ndarray | None = None,
        name: str | None = None,
        index: int | None = None,
    ) -> dict[str, Any]:
        """Add one image (arguments as :func:`matting_metrics`) and return its row.

        index: the image's position in the dataset (default: after the last one added).
        """
        index = self._next_index if index is None else int(index)
        check_new_index(index, self._rows, "matting accumulator")
        row: dict[str, Any] = {} if name is None else {"name": name}
        row.update(matting_metrics(pred, alpha, trimap, self.conn_skip_empty_levels))
        self._rows[index] = row
        self._next_index = max(self._next_index, index + 1)
        return row

    def state(self) -> dict[str, Any]:
        """{"settings": {"conn_skip_empty_levels"}, "images": {index: row}}: picklable, for :meth:`merge`."""
        rows = {i: dict(row) for i, row in self._rows.items()}
        return {"settings": {"conn_skip_empty_levels": self.conn_skip_empty_levels}, "images": rows}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Replace what this accumulator holds by the union of ``states`` (from :meth:`state` of
        accumulators with the same settings that saw disjoint images); raises ValueError otherwise."""
        check_settings(states, {"conn_skip_empty_levels": self.conn_skip_empty_levels}, "matting accumulator")
        self._rows = union_by_index((s["images"] for s in states), "matting accumulator")
        self._next_index = max(self._rows, default=-1) + 1

    def compute(self) -> dict[str, float]:
        """Mean over images of every metric; trimap keys only when every image had a trimap."""
        if not self._rows:
            raise ValueError("no images were added to the matting accumulator")
        rows = [self._rows[i] for i in sorted(self._rows)]
        keys = [k for k in rows[0] if k != "name" and all(k in row for row in rows)]
        return {k: float(np.mean([row[k] for row in rows])) for k in keys}

    def per_image_rows(self) -> list[dict[str, Any]]:
        """One dict per image (name if given and every metric), in index order."""
        return [dict(self._rows[i]) for i in sorted(self._rows)]

    def __len__(self) -> int:
        return len(self._rows)
