"""Where and in which precision models run: device and dtype choice, and the fast-path switches that
`genpercept bench-speed` measured to win."""

from __future__ import annotations

import os

import torch

from ..errors import GenPerceptError
from .fp32_kernels import native_half_kernels


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda if available, else cpu; refuses a cuda request without a GPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenPerceptError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise GenPerceptError(f"device {device} is not supported; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenPerceptError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu.")
    return device


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device,
                  auto: torch.dtype | None = None) -> torch.dtype:
    """'auto'/None -> `auto` where given (a family's reference precision, `models.Family.dtype`), else
    fp16 on CUDA and fp32 elsewhere; names fp32/fp16/bf16 accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if auto is not None:
            return auto
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise GenPerceptError(f"unknown dtype {dtype!r}; choose auto, fp32, fp16 or bf16.")
    return _DTYPES[dtype]


# `optimize()` switches that measured faster (benchmarks/results, `genpercept bench-speed`); pairs not
# measured get none. fp32 on CPU: channels-last was within noise (0.97x at 256², 0.98x at 512²).
MEASURED_FAST_PATH: dict[tuple[str, torch.dtype], dict] = {
    ("cpu", torch.bfloat16): {"channels_last": True},  # 1.43x at 256² and 512²: no NCHW<->blocked reorders
}
# On CPUs without the matrix units for the dtype (runtime.fp32_kernels.native_half_kernels False) these
# replace the entries above: half-precision layers multiply in fp32 kernels. 256², same run, vs the same
# modules in diffusers' pipeline: bf16 1.60-1.67x (channels-last off, the faster of the two; 1.37x at
# 512²), fp16 1.58x.
FP32_KERNELS_FAST_PATH: dict[tuple[str, torch.dtype], dict] = {
    ("cpu", torch.bfloat16): {"fp32_kernels": True},
    ("cpu", torch.float16): {"fp32_kernels": True},
}
# Measured faster but not exact (the default fp32 path is SPEC §3 to 1e-6), so switched on only by
# GENPERCEPT_WINOGRAD=on: the large fp32 3x3 convolutions by Winograd (runtime.winograd).
OPT_IN_FAST_PATH: dict[tuple[str, torch.dtype], dict] = {
    ("cpu", torch.float32): {"winograd": True},
}


def measured_fast_path(device: torch.device | str, dtype: torch.dtype) -> dict:
    """Keyword arguments for `GenPerceptPipeline.optimize` that won on this kind of device and dtype;
    with GENPERCEPT_WINOGRAD=on also the opt-in ones (`OPT_IN_FAST_PATH`)."""
    key = (torch.device(device).type, dtype)
    table = MEASURED_FAST_PATH
    if key in FP32_KERNELS_FAST_PATH and not native_half_kernels(dtype):
        table = FP32_KERNELS_FAST_PATH
    options = dict(table.get(key, {}))
    if os.environ.get("GENPERCEPT_WINOGRAD", "").lower() in ("on", "1", "yes", "true"):
        options.update(OPT_IN_FAST_PATH.get(key, {}))
    return options
