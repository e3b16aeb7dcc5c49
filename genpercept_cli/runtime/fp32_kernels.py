"""Half-precision models on CPUs without AMX: convolutions and linear layers multiply in fp32 kernels.

oneDNN, torch's CPU kernels, runs bf16 and fp16 matrix products fast on AMX tiles only; without them
(AVX-512 BF16/FP16 instructions alone) its half-precision convolutions measured 0.5x the speed of its fp32
ones on our CPU, which made a bf16 model slower than the fp32 one (benchmarks/results/README.md).

The products themselves are the same in fp32: the product of two bf16 values (8-bit significands) or two
fp16 values (11-bit) is exact in fp32's 24 bits, and oneDNN's half-precision kernels add in fp32 too. So
upcasting input, weight and bias, running the fp32 kernel and rounding the output once to the input's
dtype gives the half-precision layer's result up to the order of the fp32 sums; between layers the
activations stay in half precision (half the memory traffic of an fp32 model).

Like `runtime.winograd`, this is a way of running the same modules, not a change to them: `fp32_kernels()`
is a `TorchFunctionMode` active only around our pipeline's forward, so the diffusers peer in
`bench-speed` runs the very same half-precision modules with its native kernels. Weights are upcast on
each call (≈0.25 s for all of SD2.1's 949 M weights), so no fp32 copy of them stays in memory; layers
applied to few rows (`MIN_ROWS`), whose upcast would cost more than it saves, keep their native kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

HALF = (torch.bfloat16, torch.float16)
LAYERS = (F.conv2d, F.linear)  # everything with weights in our models (U-Net, VAE, DPT and Meta Prompts heads)
# Upcasting a weight costs about as much as a few dozen of its multiply-adds, so layers applied to fewer
# rows (pixels or tokens, batch included) than this keep the native kernel: SD2.1's U-Net at 32² and 64²
# latents (bf16, our CPU) ran fastest with 256 of 0, 64, 128, 256 and 1024 (benchmarks/results/README.md).
MIN_ROWS = 256


def native_half_kernels(dtype: torch.dtype) -> bool:
    """Whether this CPU has the matrix units for `dtype` (AMX tiles for bf16, AMX-FP16 for fp16), i.e.
    whether its native half-precision kernels beat fp32 ones; True for any other dtype."""
    probe = {torch.bfloat16: "_is_amx_tile_supported", torch.float16: "_is_amx_fp16_supported"}.get(dtype)
    if probe is None:
        return True
    check = getattr(torch.cpu, probe, None)
    return True if check is None else bool(check())  # a torch without the probe: leave the kernels alone


def _rows(func, x: torch.Tensor) -> int:
    """Pixels (conv2d, of the input) or tokens (linear) the layer is applied to, batch included."""
    return x.numel() // max(x.shape[1 if func is F.conv2d else -1], 1)


def _layer_args(input, weight, bias=None, *rest, **options):
    return input, weight, bias, rest, options


class fp32_kernels(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Inside the block, `F.conv2d` and `F.linear` on half-precision CPU tensors run in fp32 kernels and
    round their output back to the input's dtype; every other call runs as it would without the block."""

    def __init__(self, min_rows: int = MIN_ROWS):
        super().__init__()
        self.min_rows = min_rows
        self.calls = 0  # layers run in fp32 kernels inside the block

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LAYERS:
            x, weight, bias, rest, options = _layer_args(*args, **kwargs)
            if (x.device.type == "cpu" and x.dtype in HALF and weight.dtype == x.dtype
                    and _rows(func, x) >= self.min_rows):
                self.calls += 1
                bias = None if bias is None else bias.float()
                return func(x.float(), weight.float(), bias, *rest, **options).to(x.dtype)
        return func(*args, **kwargs)
