"""Human Correction Efforts (HCE) of the DIS benchmark, with a version-independent approxPolyDP.

HCE (Qin et al., ECCV'22) counts how many polygon vertices and independent regions a person would have to
fix to turn a binary prediction into the ground truth. The reference evaluation relies on
``cv2.approxPolyDP``, whose distance measure changed in OpenCV 4.13 (distance to the infinite *line* before,
to the *segment* since), which moves published HCE values by about one point per image. The
Douglas-Peucker step is therefore ported here with both variants; ``"line"`` (OpenCV <= 4.12, the one the
published DIS/BiRefNet numbers were produced with) is the default. Contour tracing, erosion and dilation
still come from OpenCV: they did not change between versions.

Written from the description in ``shared/METRICS_NOTES.md`` §1.7 (no reference code was copied).
"""

from __future__ import annotations

from itertools import chain
from typing import Literal

import cv2
import numpy as np
from skimage.measure import label
from skimage.morphology import skeletonize

PolyVariant = Literal["line", "segment"]

# disk(1): the 3x3 cross used for every erosion and dilation of HCE.
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)


# --------------------------------------------------------------------------------------------------------
# Douglas-Peucker, following the control flow of OpenCV's approxPolyDP
# --------------------------------------------------------------------------------------------------------


def approx_poly_dp(
    curve: np.ndarray, epsilon: float, closed: bool, variant: PolyVariant = "line"
) -> np.ndarray:
    """Simplify a polyline exactly like ``cv2.approxPolyDP`` on integer points.

    curve: int [N, 2] or [N, 1, 2] (x, y) pixel coordinates, in order.
    epsilon: maximum distance in pixels between the curve and its approximation (>= 0).
    closed: whether the last point connects back to the first.
    variant: ``"line"`` measures the distance to the infinite line through the slice end points (OpenCV
        <= 4.12); ``"segment"`` to the segment itself, clamped at its end points (OpenCV >= 4.13).
    Returns int32 [M, 1, 2], the kept vertices in curve order (M = 0 for an empty curve).
    """
    if variant not in ("line", "segment"):
        raise ValueError(f"variant must be 'line' or 'segment', got {variant!r}")
    if not (0.0 <= epsilon < 1e30):
        raise ValueError(f"epsilon must be a finite non-negative number, got {epsilon}")
    points = np.asarray(curve)
    if points.size == 0:
        return np.empty((0, 1, 2), dtype=np.int32)
    if points.shape[-1] != 2 or points.ndim not in (2, 3) or (points.ndim == 3 and points.shape[1] != 1):
        raise ValueError(f"curve must have shape [N, 2] or [N, 1, 2], got {points.shape}")
    points = points.reshape(-1, 2).astype(np.int64)
    eps2 = float(epsilon) * float(epsilon)
    kept = _douglas_peucker_indices(points, eps2, closed, variant)
    vertices = [(int(points[i, 0]), int(points[i, 1])) for i in kept]
    vertices = _drop_nearly_collinear(vertices, eps2, closed)
    return np.array(vertices, dtype=np.int32).reshape(-1, 1, 2)


def _douglas_peucker_indices(
    points: np.ndarray, eps2: float, closed: bool, variant: PolyVariant
) -> list[int]:
    """Indices of the vertices kept by the recursive split (before the collinear clean-up).

    points: int64 [N, 2]. Every key is an exact integer, so the comparisons match OpenCV's doubles as long
    as the keys stay below 2**53 (coordinates up to ~10^4 px).
    """
    n = len(points)
    chord = _ChordSearch(points, eps2, variant)
    kept: list[int] = []
    stack: list[tuple[int, int]] = []
    # An open curve that ends where it starts is handled as closed, with a single farthest-point pass.
    as_closed = closed or bool(np.all(points[0] == points[-1]))
    if not as_closed:
        stack.append((0, n - 1))
    else:
        start, far, max_d2 = _farthest_point_pair(points, init_iters=3 if closed else 1)
        if max_d2 <= eps2:
            kept.append(start)
        else:
            stack.append((far, start))  # pushed first, so processed after the (start, far) half
            stack.append((start, far))
    while stack:
        s, e = stack.pop()
        if (s + 1) % n == e:
            kept.append(s)
            continue
        k, accepted = chord.farthest(s, e)
        if accepted:
            kept.append(s)
        else:
            stack.append((k, e))
            stack.append((s, k))
    if not as_closed:
        kept.append(n - 1)
    return kept


def _farthest_point_pair(points: np.ndarray, init_iters: int) -> tuple[int, int, int]:
    """Start point, its farthest point and their squared distance, after ``init_iters`` hops.

    Each pass starts at the previous pass's farthest point (the first pass at index 0) and scans the other
    points in curve order; an offset is only replaced by a strictly larger distance, and survives a pass
    where no point is farther than 0, as in OpenCV.
    """
    n = len(points)
    start, offset, max_d2 = 0, 0, 0
    for _ in range(init_iters):
        start = (start + offset) % n
        order = (start + np.arange(1, n)) % n  # offsets 1..n-1 from start
        d2 = np.sum((points[order] - points[start]) ** 2, axis=1)
        max_d2 = int(d2.max()) if n > 1 else 0
        if max_d2 > 0:
            offset = int(np.argmax(d2)) + 1
    return start, (start + offset) % n, max_d2


class _ChordSearch:
    """Finds the interior point of a slice farthest from its chord (``line`` or ``segment`` distance).

    Short slices are scanned in plain Python (numpy's per-call overhead dominates there), long ones with
    numpy; both compute the same exact integer keys and keep the first maximum.
    """

    NUMPY_MIN_POINTS = 128

    def __init__(self, points: np.ndarray, eps2: float, variant: PolyVariant) -> None:
        self.points = points
        self.xs = points[:, 0].tolist()
        self.ys = points[:, 1].tolist()
        self.eps2 = eps2
        self.segment = variant == "segment"

    def farthest(self, s: int, e: int) -> tuple[int, bool]:
        """(index of the farthest interior point of slice s..e (mod N), all interior points within eps)."""
        n = len(self.xs)
        sx, sy, ex, ey = self.xs[s], self.ys[s], self.xs[e], self.ys[e]
        dx, dy = ex - sx, ey - sy
        len2 = dx * dx + dy * dy
        if (e - s) % n - 1 >= self.NUMPY_MIN_POINTS:
            k, key = self._scan_numpy(s, e, sx, sy, ex, ey)
        else:
            k, key = self._scan_python(s, e, sx, sy, ex, ey)
        if self.segment:
            return k, key <= self.eps2 * len2
        return k, key * key <= self.eps2 * len2

    def _key(self, px: int, py: int, sx: int, sy: int, ex: int, ey: int) -> int:
        """Line: |cross|. Segment: squared distance to the segment times its squared length."""
        dx, dy = ex - sx, ey - sy
        rx, ry = px - sx, py - sy
        cross = abs(ry * dx - rx * dy)
        if not self.segment:
            return cross
        len2 = dx * dx + dy * dy
        proj = rx * dx + ry * dy
        if proj < 0:
            return (rx * rx + ry * ry) * len2
        if proj > len2:
            return ((px - ex) ** 2 + (py - ey) ** 2) * len2
        return cross * cross

    def _scan_python(self, s: int, e: int, sx: int, sy: int, ex: int, ey: int) -> tuple[int, int]:
        n, xs, ys = len(self.xs), self.xs, self.ys
        interior = range(s + 1, e) if e > s else chain(range(s + 1, n), range(e))
        best_k, best = s, -1
        if self.segment:
            for i in interior:
                key = self._key(xs[i], ys[i], sx, sy, ex, ey)
                if key > best:  # strict: ties keep the first maximum
                    best_k, best = i, key
            return best_k, best
        dx, dy = ex - sx, ey - sy
        for i in interior:  # the line key of _key, inlined: this loop dominates HCE's run time
            key = abs((ys[i] - sy) * dx - (xs[i] - sx) * dy)
            if key > best:
                best_k, best = i, key
        return best_k, best

    def _scan_numpy(self, s: int, e: int, sx: int, sy: int, ex: int, ey: int) -> tuple[int, int]:
        n = len(self.xs)
        interior = np.arange(s + 1, e) if e > s else np.r_[s + 1 : n, 0:e]
        px, py = self.points[interior, 0], self.points[interior, 1]
        dx, dy = ex - sx, ey - sy
        rx, ry = px - sx, py - sy
        key = np.abs(ry * dx - rx * dy)
        if self.segment:
            len2 = dx * dx + dy * dy
            proj = rx * dx + ry * dy
            to_start = (rx * rx + ry * ry) * len2
            to_end = ((px - ex) ** 2 + (py - ey) ** 2) * len2
            key = np.where(proj < 0, to_start, np.where(proj > len2, to_end, key * key))
        i_max = int(np.argmax(key))
        return int(interior[i_max]), int(key[i_max])


def _drop_nearly_collinear(
    vertices: list[tuple[int, int]], eps2: float, closed: bool
) -> list[tuple[int, int]]:
    """OpenCV's final pass: remove middle points lying (almost) on a diagonal line between their neighbours.

    The pass rewrites the vertex list in place with separate read and write cursors (both wrap around for a
    closed curve); the exact cursor arithmetic is kept because the written points feed later reads.
    """
    dst = list(vertices)
    count = new_count = len(dst)
    pos = count - 1 if closed else 0

    def read() -> tuple[int, int]:
        nonlocal pos
        point = dst[pos]
        pos = (pos + 1) % count
        return point

    start = read()
    wpos = pos
    pt = read()
    i = 0 if closed else 1
    while i < count - (0 if closed else 1) and new_count > 2:
        end = read()
        dx, dy = end[0] - start[0], end[1] - start[1]
        cross = abs((pt[0] - start[0]) * dy - (pt[1] - start[1]) * dx)
        inner = (pt[0] - start[0]) * (end[0] - pt[0]) + (pt[1] - start[1]) * (end[1] - pt[1])
        # Only diagonal chords qualify (dx, dy != 0): horizontal and vertical runs are left alone.
        if cross * cross <= 0.5 * eps2 * (dx * dx + dy * dy) and dx != 0 and dy != 0 and inner >= 0:
            new_count -= 1
            dst[wpos] = start = end
            wpos = (wpos + 1) % count
            pt = read()
            i += 2
            continue
        dst[wpos] = start = pt
        wpos = (wpos + 1) % count
        pt = end
        i += 1
    if not closed:
        dst[wpos] = pt
    return dst[:new_count]


# --------------------------------------------------------------------------------------------------------
# HCE
# --------------------------------------------------------------------------------------------------------


def gt_skeleton(gt: np.ndarray) -> np.ndarray:
    """Skeleton of the GT foreground: bool [H, W] from gt bool [H, W] (uint8 is binarised > 128)."""
    gt_bool = gt if gt.dtype == bool else gt > 128
    return skeletonize(gt_bool)


def hce(
    pred: np.ndarray, gt: np.ndarray, skeleton: np.ndarray | None = None, variant: PolyVariant = "line"
) -> int:
    """HCE of one image: polygon points plus independent regions to correct (relax = 5, epsilon = 2.0).

    pred, gt: uint8 [H, W], binarised with ``> 128`` on the raw values (no min-max normalisation, as DIS).
    skeleton: optional cached GT skeleton, bool [H, W] (uint8 is binarised ``> 128``); computed from the
        GT with ``skimage.morphology.skeletonize`` when missing.
    variant: approxPolyDP distance, ``"line"`` (OpenCV <= 4.12, default) or ``"segment"`` (>= 4.13).
    Returns the sum of the four terms of :func:`relax_hce` (a non-negative int).
    """
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be 2-D with equal shapes, got {pred.shape} and {gt.shape}")
    gt_bool, pred_bool = gt > 128, pred > 128
    if skeleton is None:
        ske = skeletonize(gt_bool)
    else:
        ske = skeleton if skeleton.dtype == bool else skeleton > 128
    return sum(relax_hce(gt_bool, pred_bool, ske, variant=variant))


def relax_hce(
    gt: np.ndarray,
    pred: np.ndarray,
    skeleton: np.ndarray,
    relax: int = 5,
    epsilon: float = 2.0,
    variant: PolyVariant = "line",
) -> tuple[int, int, int, int]:
    """The four HCE terms for binary masks: (fp_points, fp_indep, fn_points, fn_indep).

    gt, pred, skeleton: bool [H, W]. False positives and negatives thinner than ``relax`` pixels are
    forgiven; the rest are traced, split into boundary runs that touch the correct region, simplified with
    Douglas-Peucker (``epsilon``, open curves) and counted as vertices; regions with no such run count as
    one independent region each.
    """
    tp = gt & pred
    fp = pred & ~tp
    fn = gt & ~tp
    union_eroded = _erode(gt | pred, relax)
    fp_relaxed = fp & _grow_within(fp & union_eroded, ~(tp | fn), relax)
    fn_relaxed = fn & _grow_within(fn & union_eroded, ~(tp | fp), relax)
    # Skeleton pixels the prediction misses are always a false negative, however thin.
    fn_relaxed |= skeleton & ~tp

    fp_runs, fp_indep = _boundary_runs(fp_relaxed, tp | fn_relaxed)
    fn_runs, fn_indep = _boundary_runs(fn_relaxed, ~(tp | fp_relaxed | fn_relaxed))
    fp_points = sum(len(approx_poly_dp(run, epsilon, False, variant)) for run in fp_runs)
    fn_points = sum(len(approx_poly_dp(run, epsilon, False, variant)) for run in fn_runs)
    return fp_points, fp_indep, fn_points, fn_indep


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Erode a bool mask with the 3x3 cross; OpenCV's default border never erodes (scipy: border_value=1)."""
    return cv2.erode(mask.astype(np.uint8), _CROSS, iterations=iterations).astype(bool)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Dilate a bool mask once with the 3x3 cross; the default border never dilates."""
    return cv2.dilate(mask.astype(np.uint8), _CROSS).astype(bool)


def _grow_within(seed: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Dilate ``seed`` ``steps`` times, masking with ``allowed`` after every step. bool [H, W]."""
    grown = seed
    for _ in range(steps):
        grown = _dilate(grown) & allowed
    return grown


def _boundary_runs(mask: np.ndarray, cond: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Boundary runs of ``mask`` that touch ``cond``, and the number of regions with no such run.

    mask, cond: bool [H, W]. Contours (RETR_TREE, every pixel) are walked in order; a point is kept when
    the one-pixel dilation of ``cond`` covers it and no earlier point (of any contour) was at the same
    pixel. Consecutive kept points form a run; when a contour's first run starts 8-adjacent to where its
    last run ends, the first run is reversed and appended to the last (as DIS does).
    Returns (runs as int32 [N, 1, 2] (x, y) arrays, count of 8-connected regions of ``mask`` untouched).
    """
    near_cond = _dilate(cond)
    labels = label(mask, connectivity=2)
    n_regions = int(labels.max())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return [], n_regions
    xy = np.concatenate([c.reshape(-1, 2) for c in contours])  # [P, 2] (x, y)
    x, y = xy[:, 0], xy[:, 1]
    first_visit = np.zeros(len(xy), dtype=bool)
    first_visit[np.unique(y * mask.shape[1] + x, return_index=True)[1]] = True
    keep = near_cond[y, x] & first_visit
    touched = np.unique(labels[y[keep], x[keep]])
    untouched = n_regions - int(np.count_nonzero(touched))

    runs: list[np.ndarray] = []
    bounds = np.cumsum([0] + [len(c) for c in contours])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        runs.extend(_contour_runs(xy[lo:hi], keep[lo:hi]))
    return runs, untouched


def _contour_runs(xy: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    """Split one contour's points [N, 2] into maximal runs of kept points, joining a wrapped-around run."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    runs = [xy[a:b] for a, b in zip(edges[0::2], edges[1::2], strict=True)]
    if len(runs) > 1 and np.max(np.abs(runs[0][0] - runs[-1][-1])) == 1:
        runs[-1] = np.concatenate([runs[-1], runs[0][::-1]])
        runs.pop(0)
    return [run.astype(np.int32).reshape(-1, 1, 2) for run in runs]
