"""`genpercept bench-speed`: the real pipeline timed stage by stage, with its baselines side by side.

Protocols, run in one process on the same modules, dtype, inputs and outputs:

    genpercept    one step (SPEC §3) through `predict.run_predict`, the runner of `genpercept predict`:
                  size buckets batched, reading and writing overlapped with compute, fast-path switches
    reference     the reference's loop: batch 1, contiguous weights, read -> predict -> write in series,
                  `torch.cuda.empty_cache()` after every image on CUDA
    marigold:SxE  the multi-step stochastic protocol on a U-Net of the same size (8 input channels:
                  image latent + noisy latent). Per ensemble member: VAE encode, S DDIM v-prediction
                  steps, VAE decode; then the members are ensembled (`ensemble_median`)
    diffusers     the peer a user would pick: diffusers' `MarigoldDepthPipeline` at one step, ensemble 1,
                  on the same modules (8-channel `conv_in`), inputs and writers (`peer.py`)

Timing: `time.perf_counter` read only after `torch.cuda.synchronize()` (CPU work is synchronous), so
asynchronous GPU work is charged to the stage that queued it. Compute stages are timed by forward
hooks on the modules themselves (VAE encoder, U-Net, VAE decoder, DPT head); reading and writing in
the runner's threads. Warm-up runs are excluded; medians and spread are over the repeats.

CPU time: the process's user and system seconds and minor page faults per image (`getrusage`), which
other jobs on the cores disturb far less than wall time.

Peak memory: CUDA `torch.cuda.max_memory_allocated` (tensors only). CPU: the process's peak resident
set (VmHWM: weights, activations, allocator caches, Python), reset before each protocol's repeats by
writing 5 to /proc/self/clear_refs; where that is refused, `ru_maxrss` (the process-lifetime peak).

`--random-weights` builds SD2.1-size modules from their configs on the meta device and fills them with
small uniform values (scaled by 1/sqrt(fan-in), norms at 1), so no download is needed and no value
overflows; speed does not depend on the weights' values.
"""

from .clock import PeakMemory, StageClock, instrumented
from .environment import environment
from .presets import PRESETS, SD21_UNET, SD_VAE, TINY_UNET, TINY_VAE, build_random_model, random_module
from .protocols import (
    MarigoldBaseline,
    Protocol,
    ddim_schedule,
    ddim_step,
    ensemble_median,
    marigold_unet,
    parse_protocols,
)
from .run import BenchConfig, measure, print_report, run_benchmark

__all__ = [
    "BenchConfig", "MarigoldBaseline", "PRESETS", "PeakMemory", "Protocol", "SD21_UNET", "SD_VAE", "StageClock",
    "TINY_UNET", "TINY_VAE", "build_random_model", "ddim_schedule", "ddim_step", "ensemble_median", "environment",
    "instrumented", "marigold_unet", "measure", "parse_protocols", "print_report", "random_module",
    "run_benchmark",
]
