"""Labels into the space the VAE encodes and the losses compare: float32 [3, H, W] in [-1, 1] + a valid mask.

    depth               2% and 98% quantiles of the valid values -> -1 and 1, clipped; replicated to 3 channels
    disparity           1/depth min-maxed over the valid values to [-1, 1] (near is 1); invalid -1
    normal              unit vectors (x right, y up, z toward the camera), valid where any component ≠ 0 as
                        stored, 0 where the depth beside them is invalid (the release's); or |n| > 0.5
    dis / matting       alpha or mask, min-maxed over the image to [-1, 1], replicated to 3 channels
    seg                 NYU40 colours (from class ids, or a colour map as stored), min-maxed to [-1, 1]

As the reference's datasets (GenPercept's base dataset and depth normalisers) compute them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..palette import NYU40_PALETTE


def normalize_depth(depth: np.ndarray, valid: np.ndarray, quantile: float = 0.02,
                    disparity: bool = False) -> np.ndarray:
    """depth float [H, W] (any unit, > 0 where valid) -> float32 [H, W] in [-1, 1], as the reference's
    dataset normalisers compute it.

    Depth: the values at the `quantile` and 1 − `quantile` quantiles of the valid pixels map to −1 and 1,
    linearly, then clip, on every pixel: an invalid one nearer than the near quantile (0, a hole) is −1, one
    beyond the far quantile (sky past the valid range) is 1; a non-finite one is −1. Disparity: 1/depth
    min-maxed over the valid pixels to [−1, 1] (the reference's quantile step cancels in its second
    min-max), invalid pixels −1. A map without valid pixels, or flat, is −1 where invalid and 0 elsewhere.
    """
    values = np.asarray(depth, np.float64)
    out = np.zeros(values.shape, np.float32)
    if not valid.any():
        out[:] = -1.0
        return out
    if disparity:
        inv = 1.0 / values[valid]
        lo, hi = inv.min(), inv.max()
        if hi > lo:
            out[valid] = (inv - lo) / (hi - lo) * 2.0 - 1.0
        out[~valid] = -1.0
        return out
    lo, hi = np.quantile(values[valid], [quantile, 1.0 - quantile])
    finite = np.isfinite(values)
    if hi > lo:
        out[finite] = np.clip((values[finite] - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
    out[~valid & (~finite | (hi <= lo))] = -1.0
    return out


def depth_valid(depth: np.ndarray, depth_range: tuple[float, float] = (0.0, np.inf)) -> np.ndarray:
    """bool [H, W]: finite depth strictly inside `depth_range` (the reference's min_depth < d < max_depth)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > depth_range[0]) & (depth < depth_range[1])


def nonzero_normals(stored: np.ndarray) -> np.ndarray:
    """bool [H, W]: the release's training mask of normals as stored [H, W, 3] (before any PNG mapping): any
    component ≠ 0 (a hole is stored as 0, 0, 0); non-finite vectors are holes too."""
    stored = np.asarray(stored)
    return np.any(stored != 0, axis=-1) & np.all(np.isfinite(stored), axis=-1)


def unit_normals(normals: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """normals float [H, W, 3] in [-1, 1] -> (unit vectors float32 [H, W, 3], valid bool [H, W]).

    `valid`: the pixels to keep (training: `nonzero_normals` of the stored label, the release's mask);
    None: where the stored length exceeds 0.5 (SPEC §6.2's rule: shorter vectors are holes). Kept vectors
    are divided by max(|n|, 1e-8) (the release's clamp); the others, and non-finite ones, are 0 and invalid.
    """
    n = np.asarray(normals, np.float64)
    length = np.linalg.norm(n, axis=-1)
    valid = np.isfinite(length) & (length > 0.5 if valid is None else valid)
    out = np.where(valid[..., None], n / np.where(valid, np.maximum(length, 1e-8), 1.0)[..., None], 0.0)
    return out.astype(np.float32), valid


def blank_normals(normals: np.ndarray, depth_ok: np.ndarray) -> np.ndarray:
    """The release's normal target where the depth beside it is invalid: 0 (the mask keeps those pixels, so
    the angular loss counts a constant π/2 there, without gradient). normals [H, W, 3], depth_ok bool [H, W]."""
    return np.where(depth_ok[..., None], normals, 0.0).astype(np.float32)


def min_max_target(label: np.ndarray) -> np.ndarray:
    """A label as stored (any range) -> float32 in [-1, 1]: (x − min)/max(max − min, 1e-8) · 2 − 1 over the
    whole array, the reference's normalisation of DIS masks, mattes and segmentation colour maps (a
    constant array is −1)."""
    x = np.asarray(label, np.float64)
    lo, hi = x.min(), x.max()
    return ((x - lo) / max(hi - lo, 1e-8) * 2.0 - 1.0).astype(np.float32)


def alpha_to_target(alpha: np.ndarray) -> np.ndarray:
    """alpha or mask float [H, W] (any range, e.g. [0, 1] or [0, 255]) -> float32 [H, W, 3] in [-1, 1]:
    `min_max_target`, replicated (a matte holding 0 and 1 gives 2a − 1)."""
    return np.repeat(min_max_target(alpha)[..., None], 3, axis=-1)


def seg_to_target(labels_or_colors: np.ndarray) -> np.ndarray:
    """NYU40 class ids int [H, W] (0 or −1 = unlabeled, black) or a colour map uint8 [H, W, 3] ->
    float32 [H, W, 3] in [-1, 1]: the colour map's `min_max_target` (c / 255 · 2 − 1 when it holds 0 and
    255, as most do)."""
    arr = np.asarray(labels_or_colors)
    if arr.ndim == 2:
        ids = np.where((arr < 0) | (arr >= len(NYU40_PALETTE)), 0, arr).astype(np.int64)
        arr = NYU40_PALETTE[ids]
    return min_max_target(arr)


def to_tensor(target: np.ndarray) -> torch.Tensor:
    """float [H, W] or [H, W, 3] -> float32 [3, H, W] (a single channel replicated)."""
    t = torch.from_numpy(np.ascontiguousarray(target, np.float32))
    return t[None].expand(3, -1, -1).clone() if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
