"""The recipe's losses, each returning one value per sample ([B] float32), so that a batch split across
micro-batches or processes averages to what one large batch gives.

Conventions: prediction and target in the normalised label space ([-1, 1]), `mask` bool marks valid pixels;
a sample without valid pixels contributes 0. Weights and which terms apply per task: `task_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of `values` [B, ...] over `mask` (same shape, bool) -> [B]; 0 where nothing is valid."""
    m = mask.to(values.dtype)
    dims = tuple(range(1, values.ndim))
    return (values * m).sum(dims) / m.sum(dims).clamp_min(1.0)


def latent_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over valid latent cells of (pred − target)²; pred, target [B, 4, h, w]; mask [B, 1, 8h, 8w].

    A latent cell is valid when all 8x8 pixels under it are (the reference's max-pool of the invalid mask).
    """
    invalid = F.max_pool2d((~mask).float(), 8, 8) > 0  # [B,1,h,w]
    return _masked_mean((pred - target) ** 2, (~invalid).expand_as(pred))


def pixel_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over valid pixels and channels of (pred − target)²; pred, target [B, C, H, W]; mask [B, 1, H, W]."""
    return _masked_mean((pred - target) ** 2, mask.expand_as(pred))


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


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant loss: mean over valid pixels of |s·p + t − g| with (s, t) the per-sample
    least-squares alignment (`align_scale_shift`); [B, 1, H, W] maps -> [B]. Gradients flow through s, t."""
    scale, shift = align_scale_shift(pred, target, mask)
    aligned = pred * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)
    return _masked_mean((aligned - target).abs(), mask)


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = 1) -> torch.Tensor:
    """Multi-scale gradient matching: with r = p − g on valid pixels (0 elsewhere), at scale k (every 2^k-th
    pixel) Σ |r(x+1) − r(x)|·m·m' + Σ |r(y+1) − r(y)|·m·m' over neighbour pairs, divided by the valid pixels
    at that scale; summed over k < `scales`. [B, 1, H, W] maps -> [B]."""
    total = pred.new_zeros(pred.shape[0])
    for k in range(scales):
        step = 2**k
        p, g, m = pred[..., ::step, ::step], target[..., ::step, ::step], mask[..., ::step, ::step].to(pred.dtype)
        r = (p - g) * m
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs() * m[..., :, 1:] * m[..., :, :-1]
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs() * m[..., 1:, :] * m[..., :-1, :]
        total = total + (gx.sum((1, 2, 3)) + gy.sum((1, 2, 3))) / m.sum((1, 2, 3)).clamp_min(1.0)
    return total


def angular_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """mean over valid pixels of the angle (radians) between normals: acos(clamp(cos(p, g), −1 + eps, 1 − eps));
    pred, target [B, 3, H, W] (any length), mask [B, 1, H, W] -> [B]. The clamp keeps acos' gradient finite."""
    cos = F.cosine_similarity(pred, target, dim=1, eps=1e-8)[:, None]  # [B,1,H,W]
    return _masked_mean(cos.clamp(-1 + eps, 1 - eps).acos(), mask)


def task_loss(task: str, decoded: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights) -> dict:
    """The image-level terms of `task` on the decoded prediction, each [B], weighted; keys name the terms.

    decoded [B, 3, H, W] (VAE decoder output); target [B, 3, H, W] in [-1, 1]; mask [B, 1, H, W].
    depth/disparity, dis, matting: the channel mean (the inference head) against target channel 0.
    """
    if task == "normal":
        return {"angular": weights.angular * angular_loss(decoded, target, mask)}
    if task == "seg":
        return {"pixel_mse": weights.pixel_mse * pixel_mse(decoded, target, mask)}
    pred, goal = decoded.mean(dim=1, keepdim=True), target[:, :1]
    terms = {"pixel_mse": weights.pixel_mse * pixel_mse(pred, goal, mask)}
    if task in ("depth", "disparity"):
        terms["ssi"] = weights.ssi * ssi_loss(pred, goal, mask)
        terms["gradient"] = weights.gradient * gradient_loss(pred, goal, mask, weights.gradient_scales)
    return terms
