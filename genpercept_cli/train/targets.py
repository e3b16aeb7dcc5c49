"""Labels into the space the VAE encodes and the losses compare: float32 [3, H, W] in [-1, 1] + a valid mask.

    depth / disparity   2% and 98% quantiles of the valid values -> -1 and 1, clipped (disparity = 1/depth
                        first, so near is 1); replicated to 3 channels
    normal              unit vectors (x right, y up, z toward the camera), valid where |n| > 0.5 as stored
    dis / matting       alpha or mask in [0, 1] -> 2a - 1, replicated to 3 channels
    seg                 NYU40 colours (from class ids, or a colour map as stored) -> c / 255 * 2 - 1
"""

from __future__ import annotations

import numpy as np
import torch

from ..palette import NYU40_PALETTE


def normalize_depth(depth: np.ndarray, valid: np.ndarray, quantile: float = 0.02,
                    disparity: bool = False) -> np.ndarray:
    """depth float [H, W] (any unit, > 0 where valid) -> float32 [H, W] in [-1, 1].

    The values at the `quantile` and 1 − `quantile` quantiles of the valid pixels map to −1 and 1, linearly,
    then clip; with `disparity`, 1/depth is normalised instead. Invalid pixels are 0. A map whose quantiles
    coincide (flat) is 0 everywhere.
    """
    values = np.asarray(depth, np.float64)
    if disparity:
        values = np.where(valid, 1.0 / np.where(valid, values, 1.0), 0.0)
    out = np.zeros(values.shape, np.float32)
    if not valid.any():
        return out
    lo, hi = np.quantile(values[valid], [quantile, 1.0 - quantile])
    if hi - lo <= 0:
        return out
    out[valid] = np.clip((values[valid] - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
    return out


def depth_valid(depth: np.ndarray) -> np.ndarray:
    """bool [H, W]: finite and positive depth."""
    return np.isfinite(depth) & (depth > 0)


def unit_normals(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """normals float [H, W, 3] in [-1, 1] -> (unit vectors float32 [H, W, 3], valid bool [H, W]).

    Valid where the stored length exceeds 0.5 (SPEC §6.2: shorter vectors are holes); invalid pixels are 0.
    """
    n = np.asarray(normals, np.float64)
    length = np.linalg.norm(n, axis=-1)
    valid = np.isfinite(length) & (length > 0.5)
    out = np.where(valid[..., None], n / np.where(valid, length, 1.0)[..., None], 0.0)
    return out.astype(np.float32), valid


def alpha_to_target(alpha: np.ndarray) -> np.ndarray:
    """alpha or mask float [H, W] in [0, 1] -> float32 [H, W, 3] in [-1, 1] (2a − 1, replicated)."""
    a = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0) * 2.0 - 1.0
    return np.repeat(a[..., None], 3, axis=-1)


def seg_to_target(labels_or_colors: np.ndarray) -> np.ndarray:
    """NYU40 class ids int [H, W] (0 or −1 = unlabeled, black) or a colour map uint8 [H, W, 3] ->
    float32 [H, W, 3] in [-1, 1] (colour / 255 · 2 − 1)."""
    arr = np.asarray(labels_or_colors)
    if arr.ndim == 2:
        ids = np.where((arr < 0) | (arr >= len(NYU40_PALETTE)), 0, arr).astype(np.int64)
        arr = NYU40_PALETTE[ids]
    return arr.astype(np.float32) / 255.0 * 2.0 - 1.0


def to_tensor(target: np.ndarray) -> torch.Tensor:
    """float [H, W] or [H, W, 3] -> float32 [3, H, W] (a single channel replicated)."""
    t = torch.from_numpy(np.ascontiguousarray(target, np.float32))
    return t[None].expand(3, -1, -1).clone() if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
