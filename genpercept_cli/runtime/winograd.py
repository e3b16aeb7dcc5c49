"""Winograd convolutions for the large fp32 3x3 convolutions on the CPU (NNPACK, bundled with torch).

A 3x3 convolution by Winograd's minimal filtering multiplies far fewer times per output pixel than the
direct method oneDNN runs; on large feature maps (the VAE's 64² and above) it measured 1.15-1.8x
faster per convolution on our CPU, on small ones (the U-Net's latents at 32² and below) slower, so only
convolutions on maps of at least `MIN_PIXELS` take it. Its transforms round differently: outputs move
by ~2e-5 of their scale per convolution (tests/test_winograd.py measures the end-to-end change).

It is a way of running the same modules, not a change to them: `winograd_convolutions()` is a
`TorchFunctionMode` active only around our pipeline's forward, so the diffusers peer in `bench-speed`
runs the very same modules with plain convolutions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_PIXELS = 64 * 64  # feature-map pixels from which Winograd won (benchmarks/results/README.md)


@functools.cache
def winograd_available() -> bool:
    """Whether torch was built with NNPACK and it initialises on this CPU (the call initialises it)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None  # e.g. padding="same": left to the direct path


def eligible(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
             min_pixels: int = MIN_PIXELS) -> bool:
    """Whether conv2d(x, weight, ...) runs by Winograd: fp32 on the CPU, a 4-D batch, a 3x3 kernel with
    stride 1, dilation 1, one group, symmetric padding, and a feature map of at least `min_pixels`."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 4 and weight.dim() == 4 and tuple(weight.shape[-2:]) == (3, 3) and groups == 1
            and _pair(stride) == (1, 1) and _pair(dilation) == (1, 1) and _pair(padding) is not None
            and x.shape[-2] * x.shape[-1] >= min_pixels and not x.requires_grad)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding) -> torch.Tensor:
    """F.conv2d with stride 1 by Winograd (NNPACK): NCHW fp32 in and out."""
    ph, pw = _pair(padding)
    return torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [pw, pw, ph, ph], [1, 1])


class winograd_convolutions(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Inside the block, eligible `F.conv2d` calls (see `eligible`) run by Winograd; every other call, and
    everything when NNPACK is missing, runs as it would without the block."""

    def __init__(self, min_pixels: int = MIN_PIXELS):
        super().__init__()
        self.min_pixels = min_pixels
        self.calls = 0  # convolutions run by Winograd inside the block

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and winograd_available():
            x, weight, bias, stride, padding, dilation, groups = _conv_args(*args, **kwargs)
            if eligible(x, weight, stride, padding, dilation, groups, self.min_pixels):
                self.calls += 1
                return conv2d(x, weight, bias, padding)
        return func(*args, **kwargs)


def _conv_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups
