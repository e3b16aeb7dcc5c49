"""The recipe's losses, as GenPercept's released training step computes them; each returns one value per
sample ([B] float32) whose mean over the batch is the loss, so the engine's sums split over micro-batches
and processes like the reference's accumulation.

Reduction (`reduction`): "batch" (the release) averages over the valid pixels of the whole micro-batch
pooled together: sample b's value is S_b · B / Σ N, with S_b its sum over valid pixels and Σ N the
valid pixels of the batch, so the mean over samples is Σ S / Σ N. "sample" averages each sample over its
own valid pixels, then over samples; the two agree when every sample has as many valid pixels.
Conventions: prediction and target in the normalised label space ([-1, 1]), `mask` bool marks valid pixels;
nothing valid in the batch (or, per sample, in the sample) contributes 0. Weights and which terms apply per
task: `task_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSI_SHIFT = 2.0  # the reference moves [-1, 1] to [1, 3] before its median fallback (medians of positive values)


def _reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """`values` [B, ...] averaged over `mask` (same shape, bool), pooled over the batch or per sample
    (module docstring) -> [B]."""
    m = mask.to(values.dtype)
    dims = tuple(range(1, values.ndim))
    return _divide((values * m).sum(dims), m.sum(dims), reduction)


def _divide(sums: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample sums [B] over counts [B] valid pixels -> [B] whose mean is the `reduction`'s loss."""
    if reduction == "sample":
        return sums / counts.clamp_min(1.0)
    return sums * (sums.shape[0] / counts.sum().clamp_min(1.0))


def latent_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """mean over valid latent cells and channels of (pred − target)²; pred, target [B, 4, h, w]; mask
    [B, 1, 8h, 8w]. A latent cell is valid when all 8x8 pixels under it are (the reference's max-pool of the
    invalid mask)."""
    invalid = F.max_pool2d((~mask).float(), 8, 8) > 0  # [B,1,h,w]
    return _reduce((pred - target) ** 2, (~invalid).expand_as(pred), reduction)


def pixel_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """mean over valid pixels and channels of (pred − target)²; pred, target [B, C, H, W]; mask [B, 1, H, W]."""
    return _reduce((pred - target) ** 2, mask.expand_as(pred), reduction)


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample least squares (s, t) = argmin Σ_valid (s·p + t − g)² for [B, 1, H, W] maps -> ([B], [B]).

    Normal equations: [[Σp², Σp], [Σp, n]] [s, t]ᵀ = [Σpg, Σg]ᵀ; a singular system (constant prediction,
    fewer than 2 valid pixels) gives s = 0, t = mean of g (or 0).
    """
    m = mask.to(pred.dtype)
    dims = (1, 2, 3)
    a00, a01, a11 = (m * pred * pred).sum(dims), (m * pred).sum(dims), m.sum(dims)
    b0, b1 = (m * pred * target).sum(dims), (m * target).sum(dims)
    det = a00 * a11 - a01 * a01
    ok = det > 1e-12 * a11.clamp_min(1.0) ** 2
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe, b1 / a11.clamp_min(1.0))
    return scale, shift


def _masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample median of `values` [B, 1, H, W] over `mask` -> [B]: the lower of the two middle values for
    an even count (torch's rule, the reference's); 1 where nothing is valid."""
    flat = torch.where(mask, values, torch.full_like(values, float("nan"))).flatten(1)
    median = flat.nanmedian(dim=1).values
    return torch.where(torch.isnan(median), torch.ones_like(median), median)


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """Scale-and-shift-invariant loss: mean over valid pixels of |s·p + t − g| with (s, t) the per-sample
    least-squares alignment (`align_scale_shift`); [B, 1, H, W] maps -> [B]. Gradients flow through s, t.

    Where s <= 0 (a prediction anti-correlated with the target, common early in training, or a singular
    system) the reference scales by medians instead: with p' = p + 2, g' = g + 2 (both positive),
    |p'·med(g')/(med(p') + 1e-8) − g'|.
    """
    scale, shift = align_scale_shift(pred, target, mask)
    p, g = pred + SSI_SHIFT, target + SSI_SHIFT
    median_scale = _masked_median(g, mask & (g > 0)) / (_masked_median(p, mask & (g > 0)) + 1e-8)
    least_squares = pred * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1) - target
    by_median = p * median_scale.view(-1, 1, 1, 1) - g
    residual = torch.where((scale > 0).view(-1, 1, 1, 1), least_squares, by_median)
    return _reduce(residual.abs(), mask, reduction)


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = 1,
                  directions: str = "vertical", reduction: str = "batch") -> torch.Tensor:
    """Gradient matching: with r = p − g on valid pixels (0 elsewhere), Σ |r(y+1) − r(y)|·m·m' over
    vertical neighbour pairs (and with `directions` "both" also Σ |r(x+1) − r(x)|·m·m' over horizontal ones),
    divided by the valid pixels; [B, 1, H, W] maps -> [B]. Summed over scales k < `scales`: every 2^k-th row
    ("vertical") or row and column ("both").

    "vertical" is what the reference computes on its [B, 1, H, W] maps (its loss is written for [B, H, W]:
    its x-term runs along the height, its y-term along the size-1 channel axis), and what trained the
    released weights; "both" is the loss as the formula reads (MiDaS).
    """
    total = pred.new_zeros(pred.shape[0])
    for k in range(scales):
        step = 2**k
        cols = step if directions == "both" else 1
        p, g, m = (x[..., ::step, ::cols] for x in (pred, target, mask.to(pred.dtype)))
        r = (p - g) * m
        pairs = (r[..., 1:, :] - r[..., :-1, :]).abs() * m[..., 1:, :] * m[..., :-1, :]
        sums = pairs.sum((1, 2, 3))
        if directions == "both":
            sums = sums + ((r[..., :, 1:] - r[..., :, :-1]).abs() * m[..., :, 1:] * m[..., :, :-1]).sum((1, 2, 3))
        total = total + _divide(sums, m.sum((1, 2, 3)), reduction)
    return total


def angular_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4,
                 reduction: str = "batch") -> torch.Tensor:
    """mean over valid pixels of the angle (radians) between normals: acos(clamp(cos(p, g), −1 + eps, 1 − eps));
    pred, target [B, 3, H, W] (any length), mask [B, 1, H, W] -> [B]. The clamp keeps acos' gradient finite."""
    cos = F.cosine_similarity(pred, target, dim=1, eps=1e-8)[:, None]  # [B,1,H,W]
    return _reduce(cos.clamp(-1 + eps, 1 - eps).acos(), mask, reduction)


def task_loss(task: str, decoded: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights) -> dict:
    """The image-level terms of `task` on the decoded prediction, each [B], weighted; keys name the terms.

    decoded [B, 3, H, W] (VAE decoder output); target [B, 3, H, W] in [-1, 1]; mask [B, 1, H, W].
    depth/disparity, dis, matting: the channel mean (the inference head) against target channel 0 (the
    reference repeats the mean to 3 channels against its 3 equal target channels: the same mean).
    """
    red = weights.reduction
    if task == "normal":
        return {"angular": weights.angular * angular_loss(decoded, target, mask, reduction=red)}
    if task == "seg":
        return {"pixel_mse": weights.pixel_mse * pixel_mse(decoded, target, mask, red)}
    pred, goal = decoded.mean(dim=1, keepdim=True), target[:, :1]
    terms = {"pixel_mse": weights.pixel_mse * pixel_mse(pred, goal, mask, red)}
    if task in ("depth", "disparity"):
        terms["ssi"] = weights.ssi * ssi_loss(pred, goal, mask, red)
        terms["gradient"] = weights.gradient * gradient_loss(pred, goal, mask, weights.gradient_scales,
                                                             weights.gradient_directions, red)
    return terms
