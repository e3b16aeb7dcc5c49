"""The one resize of the tool (SPEC §3 step 1), used by every model and runner.

    uint8 [H, W, 3] -> [1, 3, h, w]: long side to `processing_res` by the family's size rule, bilinear
    with antialias computed in float, then rounded to uint8 as torchvision v1 resizes uint8 tensors
    (GenPercept, E2E-FT, Lotus-D) or kept in float (Marigold, as diffusers resizes the float image).

The size rules (`processed_size`) live in `sizes`, without torch, and are re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .sizes import MIN_SIDE, SIZE_RULES, check_processing_res, processed_size  # noqa: F401  (re-exported)


def resize_float(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize with antialias of a float tensor [B, C, H, W] (the one resize of the tool);
    antialias=False where a family's reference resizes its prediction back without it (Marigold)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize [B, C, h, w] -> [B, C, *size] without antialias (align_corners=False): how reference
    code resizes feature maps, skips and the Meta Prompts windows; images go through `resize_float`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> uint8 [B, 3, h, w] as torchvision v1 does for tensors: float, resize, round.

    Torch's native uint8 antialias kernel differs by +-1 on ~20% of pixels, so it is not used.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return resize_float(x.float(), size).round_().clamp_(0, 255).to(torch.uint8)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, h', w'] with h', w' the next multiples of `multiple`, the last row and
    column repeated at the bottom and right (diffusers' Marigold pads so before encoding); crop with
    [..., :h, :w]."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> uint8 [1, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()


def model_input(image: np.ndarray, size: tuple[int, int], rounded: bool = True) -> torch.Tensor:
    """uint8 [H, W, 3] -> the model's [1, 3, h, w] in [0, 255]: uint8 by `resize_uint8` or, with
    rounded=False, float32 by `resize_float` (no rounding), one channel at a time.

    The resize works on each channel alone, so the result is the same as resizing all three at once,
    while the float32 working copy is one channel (H*W*4 bytes) instead of three.
    """
    def one(c: int) -> torch.Tensor:
        channel = image_to_tensor(image[..., c : c + 1])  # uint8 [1,1,H,W]
        return resize_uint8(channel, size) if rounded else resize_float(channel.float(), size)

    return torch.cat([one(c) for c in range(3)], dim=1)


def upload(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A tensor onto `device`. CPU -> CUDA goes through pinned memory without blocking the host, so the
    copy overlaps with work already queued on the GPU; anything else is a plain `.to(device)`."""
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)


def upload_resize(image: np.ndarray, size: tuple[int, int], device: torch.device | str) -> torch.Tensor:
    """uint8 [H, W, 3] -> the model's uint8 [1, 3, h, w] on `device`, resized there.

    Uploaded as uint8 (a quarter of float32's bytes), then `resize_uint8` on the device. On the CPU the
    result equals `model_input`; on CUDA the float interpolation rounds differently at .5, so pixels may
    differ by one level (tests/test_cuda.py: at most 1, on under 1% of pixels).
    """
    return resize_uint8(upload(image_to_tensor(image), device), size)
