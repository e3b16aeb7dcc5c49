"""Stage clocks (wall time per stage, U-Net samples) and peak memory for `bench-speed`."""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path


class StageClock:
    """Wall time per stage and U-Net samples, summed over one repeat; thread-safe.

    Compute stages synchronise the device before each reading; I/O stages (run in worker threads) do
    not, so they never wait on the GPU.
    """

    def __init__(self, device):
        self.device = device
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.unet_samples = 0

    def now(self, sync: bool = True) -> float:
        if sync and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] += seconds

    @contextmanager
    def stage(self, name: str, sync: bool = True):
        start = self.now(sync)
        try:
            yield
        finally:
            self.add(name, self.now(sync) - start)

    def timed(self, name: str, fn, sync: bool = True):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.stage(name, sync):
                return fn(*args, **kwargs)

        return wrapper

    def hook(self, module, name: str, count_samples: bool = False) -> list:
        """Time every forward of `module` as stage `name`; returns the hook handles."""
        starts = []

        def before(mod, args, kwargs):
            if count_samples:
                sample = args[0] if args else kwargs["sample"]
                with self.lock:
                    self.unet_samples += sample.shape[0]
            starts.append(self.now())

        def after(mod, args, kwargs, output):
            self.add(name, self.now() - starts.pop())

        return [module.register_forward_pre_hook(before, with_kwargs=True),
                module.register_forward_hook(after, with_kwargs=True)]


class PeakMemory:
    """Peak device memory of one measurement, in MiB (methods: see the `benchmarks.speed` docstring)."""

    def __init__(self, device):
        self.device = device
        self.method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM"

    def reset(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (peak RSS, reset per protocol via /proc/self/clear_refs)"
        except OSError:
            self.method = "ru_maxrss (process-lifetime peak RSS)"

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.method.startswith("VmHWM"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def instrumented(pipe, clock):
    """Stage hooks on the model's modules (post-processing, reading and writing are timed by the runner).

    SD one-step models: VAE encoder, U-Net, VAE decoder and DPT head, whichever the model has. Meta
    Prompts walks its U-Net block by block (never calling it as a module), so its recurrent refinement
    (`refine`: R U-Net passes) is timed as the "unet" stage instead; its heads are the remainder.
    """
    m = pipe.model
    handles = clock.hook(m.vae.encoder, "vae_encode")
    refine = getattr(m, "refine", None)
    if refine is None:
        handles += clock.hook(m.unet, "unet", count_samples=True)
    else:
        m.refine = _timed_refine(clock, refine, m.config.refine_step)  # an instance attribute, removed below
    for name in ("decoder", "dpt_head"):  # the DPT-head one-step path never calls the VAE decoder
        module = getattr(m.vae, name, None) if name == "decoder" else getattr(m, name, None)
        if module is not None:
            handles += clock.hook(module, "vae_decode" if name == "decoder" else name)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if refine is not None:
            del m.refine


def _timed_refine(clock, refine, passes: int):
    """`refine(latent)` timed as stage "unet", counting `passes` U-Net samples per latent."""
    @functools.wraps(refine)
    def timed(latent, *args, **kwargs):
        with clock.lock:
            clock.unet_samples += passes * latent.shape[0]
        with clock.stage("unet"):
            return refine(latent, *args, **kwargs)

    return timed
