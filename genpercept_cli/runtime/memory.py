"""How many images fit in a batch: a per-image memory model measured on the device, not a constant.

Peak memory of a batch is close to linear in its size: `fixed + n * per_image` above what was held
before (weights, caches). Two probe batches (1 and 2 images, zeros, at the processed size) measure both
terms on CUDA; the batch size is what fits in `headroom` of the memory the process can still use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BATCH_CAP = 32  # past ~16 images a batch no GPU we measured got faster; memory for the writers stays
HEADROOM = 0.8  # of the usable memory: allocator fragmentation and cuDNN workspaces vary per shape


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of a batch of n images above the memory held before it: fixed + n * per_image."""

    fixed_bytes: float
    per_image_bytes: float

    def peak(self, n: int) -> float:
        return self.fixed_bytes + n * self.per_image_bytes

    def batch_size(self, usable_bytes: float, headroom: float = HEADROOM, cap: int = BATCH_CAP) -> int:
        """The largest n with peak(n) <= headroom * usable_bytes, between 1 and `cap`."""
        n = (headroom * usable_bytes - self.fixed_bytes) // self.per_image_bytes
        return int(max(1, min(cap, n)))


def fit_memory_model(peak_bytes: Callable[[int], float]) -> MemoryModel:
    """The model from the measured peaks of batches of 1 and 2 images (`peak_bytes(n)`, bytes)."""
    one, two = peak_bytes(1), peak_bytes(2)
    per_image = max(two - one, 1.0)
    return MemoryModel(fixed_bytes=max(one - per_image, 0.0), per_image_bytes=per_image)


def cuda_peak_bytes(pipe, size: tuple[int, int]) -> Callable[[int], float]:
    """peak_bytes(n) for `pipe` on its CUDA device: a batch of n zero images at `size` (h, w)."""
    device = pipe.device

    def peak(n: int) -> float:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        pipe.predict_batch(torch.zeros(n, 3, *size, dtype=torch.uint8))
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    return peak


def usable_cuda_bytes(device) -> float:
    """Free device memory plus what torch's caching allocator holds but does not use."""
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


_MODELS: dict[tuple, MemoryModel] = {}


def auto_batch_size(pipe, size: tuple[int, int], cap: int = BATCH_CAP) -> int:
    """1 on the CPU (batching gains nothing there); on CUDA the measured model's fit (probed once per
    model, dtype and size)."""
    if pipe.device.type != "cuda":
        return 1
    key = (id(pipe.model), pipe.dtype, tuple(size))
    if key not in _MODELS:
        _MODELS[key] = fit_memory_model(cuda_peak_bytes(pipe, size))
    return _MODELS[key].batch_size(usable_cuda_bytes(pipe.device), cap=cap)
