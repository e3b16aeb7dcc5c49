"""`genpercept bench-speed`: the real pipeline timed stage by stage, with its baselines side by side.

Protocols, run in one process on the same modules, dtype, inputs and outputs:

    genpercept    one step (SPEC §3) through `predict.run_predict`, the runner of `genpercept predict`:
                  size buckets batched, reading and writing overlapped with compute, fast-path switches
    reference     the reference's loop: batch 1, contiguous weights, read -> predict -> write in series,
                  `torch.cuda.empty_cache()` after every image on CUDA
    marigold:SxE  the multi-step stochastic protocol on a U-Net of the same size (8 input channels:
                  image latent + noisy latent). Per ensemble member: VAE encode, S DDIM v-prediction
                  steps, VAE decode; then the members are ensembled (`ensemble_median`)

Timing: `time.perf_counter` read only after `torch.cuda.synchronize()` (CPU work is synchronous), so
asynchronous GPU work is charged to the stage that queued it. Compute stages are timed by forward
hooks on the modules themselves (VAE encoder, U-Net, VAE decoder, DPT head); reading and writing in
the runner's threads. Warm-up runs are excluded; medians and spread are over the repeats.

Peak memory: CUDA `torch.cuda.max_memory_allocated` (tensors only). CPU: the process's peak resident
set (VmHWM: weights, activations, allocator caches, Python), reset before each protocol's repeats by
writing 5 to /proc/self/clear_refs; where that is refused, `ru_maxrss` (the process-lifetime peak).

`--random-weights` builds SD2.1-size modules from their configs on the meta device and fills them with
small uniform values (scaled by 1/sqrt(fan-in), norms at 1), so no download is needed and no value
overflows; speed does not depend on the weights' values.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from .errors import GenPerceptError

# SD2.1 U-Net (SPEC §2) and the SD VAE, as diffusers configs.
SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
)
# The same block layout with tiny widths, for fast tests (tests/tiny_models.py uses these).
TINY_UNET = {**SD21_UNET, "sample_size": 8, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1,
             "attention_head_dim": (2, 2, 4, 4), "norm_num_groups": 4}
TINY_VAE = {**SD_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4,
            "sample_size": 32}
PRESETS = {"sd21": (SD21_UNET, SD_VAE, 256), "tiny": (TINY_UNET, TINY_VAE, 8)}  # + DPT fusion width

_PROTOCOL = re.compile(
    r"^(?P<name>genpercept|reference|marigold)(?::(?P<s>\d+)x(?P<e>\d+))?(?:@(?P<r>\d+))?$"
)


# -- protocols ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """One measured protocol: `name`, Marigold's steps and ensemble size, repeats (None = --repeats)."""

    name: str
    steps: int = 1
    ensemble: int = 1
    repeats: int | None = None

    @property
    def label(self) -> str:
        return f"marigold_{self.steps}x{self.ensemble}" if self.name == "marigold" else self.name


def parse_protocols(specs: list[str], steps: int, ensemble: int) -> list[Protocol]:
    """'genpercept', 'reference', 'marigold' (uses steps/ensemble) or 'marigold:SxE', each with an
    optional '@N' repeat count. The one-step protocol is always measured, first unless listed."""
    protocols = []
    for spec in specs:
        match = _PROTOCOL.match(spec.strip().lower())
        if not match:
            raise GenPerceptError(
                f"unknown protocol {spec!r}; use genpercept, reference, marigold or marigold:SxE, "
                "optionally followed by @N repeats (e.g. marigold:10x10@1)."
            )
        name, s, e, r = match["name"], match["s"], match["e"], match["r"]
        if s and name != "marigold":
            raise GenPerceptError(f"{spec!r}: only the marigold protocol takes steps x ensemble.")
        repeats = int(r) if r else None
        if name == "marigold":
            p = Protocol(name, int(s or steps), int(e or ensemble), repeats)
        else:
            p = Protocol(name, repeats=repeats)
        if p.steps < 1 or p.ensemble < 1 or (p.repeats is not None and p.repeats < 1):
            raise GenPerceptError(f"{spec!r}: steps, ensemble size and repeats must be at least 1.")
        protocols.append(p)
    if not any(p.name == "genpercept" for p in protocols):
        protocols.insert(0, Protocol("genpercept"))
    return protocols


# -- random SD2.1-size modules --------------------------------------------------------------------
def _fill_random_(name: str, t) -> None:
    """Small values that keep activations O(1): U(+-1/sqrt(fan_in)) weights, unit norms, tiny biases."""
    if t.ndim >= 2:
        bound = t[0].numel() ** -0.5
        t.uniform_(-bound, bound)
    elif name.endswith("weight"):  # GroupNorm / LayerNorm scales
        t.fill_(1.0)
    else:
        t.uniform_(-0.01, 0.01)


def random_module(factory, device, dtype):
    """Build `factory()` on the meta device (no init), allocate it on `device` in `dtype`, fill it."""
    import torch

    with torch.device("meta"):
        module = factory()
    module = module.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            _fill_random_(name, p)
        if any(True for _ in module.buffers()):
            raise RuntimeError(f"{type(module).__name__} has buffers that random_module cannot fill.")
    return module.eval().requires_grad_(False)


def build_random_model(preset: str, head: str, device, dtype, seed: int = 0):
    """A one-step model with random weights: SD2.1-size ("sd21") or tiny ("tiny") U-Net + VAE (+ DPT
    head); a depth model, or a disparity model with the DPT head."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .loading import empty_text_embedding
    from .models import OneStepModel

    diffusers.logging.set_verbosity_error()
    unet_config, vae_config, dpt_width = PRESETS[preset]
    torch.manual_seed(seed)

    def make_unet():
        unet = UNet2DConditionModel(**unet_config)
        if head == "dpt":
            from .dpt import prepare_dpt_unet

            prepare_dpt_unet(unet)
        return unet

    dpt_head = None
    if head == "dpt":
        from .dpt import DPTHead

        dpt_head = random_module(lambda: DPTHead(unet_config["block_out_channels"], dpt_width), device, dtype)
    return OneStepModel(
        unet=random_module(make_unet, device, dtype),
        vae=random_module(lambda: AutoencoderKL(**vae_config), device, dtype),
        embedding=empty_text_embedding("v2").to(device, dtype),
        task="disparity" if head == "dpt" else "depth",
        dpt_head=dpt_head,
    )


@contextmanager
def marigold_unet(unet):
    """The same U-Net with an 8-channel `conv_in` (image latent + noisy latent) and, for a DPT feature
    U-Net, its output layers back: Marigold's network at the cost of one 3x3 conv's extra inputs.

    Swapped in place and restored on exit, so no second 3.5 GB U-Net is held in memory.
    """
    import torch
    from torch import nn

    base = getattr(unet, "_orig_mod", unet)  # under torch.compile
    names = ("conv_in", "conv_norm_out", "conv_act", "conv_out")
    saved = {name: getattr(base, name) for name in names}
    ref = base.conv_in.weight
    nhwc = ref.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    cfg = base.config

    def make(factory):
        return random_module(factory, ref.device, ref.dtype).to(memory_format=fmt)

    base.conv_in = make(lambda: nn.Conv2d(2 * cfg.in_channels, cfg.block_out_channels[0], 3, padding=1))
    if isinstance(base.conv_out, nn.Identity):
        width = cfg.block_out_channels[0]
        base.conv_norm_out = make(lambda: nn.GroupNorm(cfg.norm_num_groups, width, eps=cfg.norm_eps))
        base.conv_act = nn.SiLU()
        base.conv_out = make(lambda: nn.Conv2d(width, cfg.out_channels, 3, padding=1))
    try:
        yield unet
    finally:
        for name, module in saved.items():
            setattr(base, name, module)


# -- the Marigold baseline ------------------------------------------------------------------------
def ddim_schedule(steps: int, train_steps: int = 1000) -> list[tuple[int, float, float]]:
    """[(t, alpha_bar_t, alpha_bar_prev)] for S evenly spaced DDIM steps from t = 999 down, on SD's
    "scaled linear" betas (0.00085 -> 0.012); the last step lands on alpha_bar = 1 (the clean sample)."""
    import torch

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, train_steps, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, 0).tolist()
    ts = [round(train_steps - 1 - i * (train_steps - 1) / steps) for i in range(steps)]
    prev = [alpha_bar[t] for t in ts[1:]] + [1.0]
    return [(t, alpha_bar[t], p) for t, p in zip(ts, prev, strict=True)]


def ddim_step(x, v, alpha_bar: float, alpha_bar_prev: float):
    """One deterministic DDIM update for a v-prediction model: x_t -> x_prev."""
    x0 = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * v
    eps = (1 - alpha_bar) ** 0.5 * x + alpha_bar**0.5 * v
    return alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev) ** 0.5 * eps


def ensemble_median(members, iterations: int = 3):
    """Ensemble E predictions [E, C, h, w] in [0, 1] into one [C, h, w] in [0, 1].

    1-channel (affine-invariant) maps: each member is aligned to the per-pixel median with a
    least-squares scale and shift, `iterations` times, then the median of the aligned members is
    min-max normalised. Marigold fits the same per-member affine alignment with an iterative optimiser;
    either way it is O(E*h*w) per iteration, far below one U-Net call (`stages_ms["ensemble"]`).
    Other maps: the per-pixel median.
    """
    m = members.float()
    if m.shape[0] == 1:
        return m[0]
    if m.shape[1] != 1:
        return m.median(dim=0).values
    flat = m.flatten(1)  # [E,N]
    for _ in range(iterations):
        ref = flat.median(dim=0).values  # [N]
        centred = flat - flat.mean(dim=1, keepdim=True)
        variance = centred.pow(2).mean(1, keepdim=True).clamp_min(1e-12)
        scale = (centred * (ref - ref.mean())).mean(1, keepdim=True) / variance
        flat = scale * centred + ref.mean()
    out = flat.median(dim=0).values
    out = (out - out.min()) / (out.max() - out.min()).clamp_min(1e-12)
    return out.view(m.shape[1:])


class MarigoldBaseline:
    """Looks like a GenPerceptPipeline to the runners; `predict_batch` runs the multi-step protocol.

    Per image and ensemble member (members batched `member_batch` at a time): VAE encode of the image
    (per member, as the reference Marigold does), Gaussian noise, S DDIM steps of the 8-channel U-Net
    on [image latent, noisy latent] with the same empty-prompt embedding, VAE decode, task head;
    then `ensemble_median`.
    """

    def __init__(self, pipe, unet, steps: int, ensemble: int, member_batch: int, clock, seed: int = 0):
        self.pipe, self.unet, self.task = pipe, unet, pipe.task
        self.ensemble, self.member_batch, self.clock = ensemble, max(1, member_batch), clock
        self.schedule = ddim_schedule(steps)
        self.seed = seed

    def postprocess(self, pred, size):
        return self.pipe.postprocess(pred, size)

    def processed_size(self, height: int, width: int, processing_res: int):
        return self.pipe.processed_size(height, width, processing_res)

    def predict_batch(self, rgb):
        """uint8 [B, 3, h, w] -> float32 [B, C, h, w] in [0, 1]."""
        import torch

        with torch.inference_mode():
            return torch.cat([self._predict_one(rgb[i : i + 1], self.seed + i) for i in range(rgb.shape[0])])

    def _predict_one(self, rgb, seed: int):
        import torch

        pipe = self.pipe
        gen = torch.Generator().manual_seed(seed)
        members = []
        for start in range(0, self.ensemble, self.member_batch):
            n = min(self.member_batch, self.ensemble - start)
            cond = pipe.model.encode(pipe.normalise(rgb.expand(n, -1, -1, -1)))  # [n,4,h/8,w/8]
            x = torch.randn(cond.shape, generator=gen).to(cond.device, cond.dtype)
            embed = pipe.model.embedding.expand(n, -1, -1)
            for t, alpha_bar, alpha_bar_prev in self.schedule:
                sample = torch.cat([cond, x], dim=1)  # [n,8,h/8,w/8]
                v = self.unet(sample, t, encoder_hidden_states=embed, return_dict=False)[0]
                x = ddim_step(x, v, alpha_bar, alpha_bar_prev)
            members.append(pipe.model.head(pipe.model.decode(x)))  # [n,C,h,w] in [0,1]
        with self.clock.stage("ensemble"):
            return ensemble_median(torch.cat(members))[None]


# -- clocks and memory ----------------------------------------------------------------------------
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
    """Peak device memory of one measurement, in MiB (see the module docstring for the methods)."""

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


# -- runners --------------------------------------------------------------------------------------
def make_inputs(folder: Path, count: int, side: int, seed: int = 0) -> list:
    """`count` distinct smooth-ish RGB JPEGs of side x side pixels (what a camera would hand us)."""
    import numpy as np
    from PIL import Image

    from .predict import InputImage

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        coarse = coarse.resize((side, side), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (side, side, 3))
        path = folder / f"bench_{i:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
        items.append(InputImage(path, Path(path.stem)))
    return items


def run_images(target, images, output: Path, formats, res: int, batch_size: int, clock, overlap: bool,
               empty_cache: bool = False) -> None:
    """`genpercept predict`'s runner on `images`, its reading, post-processing and writing timed by
    `clock`; overlap=False runs read -> predict -> write in series (the reference's loop), and
    empty_cache empties the CUDA cache after every batch as the reference does."""
    from .predict import run_predict

    def after_batch():
        if empty_cache and clock.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    report = run_predict(target, images, output, formats, res, batch_size, workers=2, clock=clock,
                         overlap=overlap, after_batch=after_batch)
    if report.failed:
        raise GenPerceptError(f"the benchmark run failed: {report.failed[0][1]}")


@contextmanager
def instrumented(pipe, clock):
    """Stage hooks on the model's modules (post-processing, reading and writing are timed by the runner)."""
    m = pipe.model
    handles = clock.hook(m.vae.encoder, "vae_encode") + clock.hook(m.unet, "unet", count_samples=True)
    handles += clock.hook(m.vae.decoder, "vae_decode")  # the DPT-head one-step path never calls it
    if m.dpt_head is not None:
        handles += clock.hook(m.dpt_head, "dpt_head")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def measure(run_once, warm_up, n_images: int, warmup: int, repeats: int, clock, memory) -> dict:
    """Warm up, then time `repeats` runs of `run_once` over `n_images` images."""
    for _ in range(warmup):
        warm_up()
    memory.reset()
    runs, stage_runs, samples = [], [], []
    for _ in range(repeats):
        clock.reset()
        start = clock.now()
        run_once()
        elapsed = clock.now() - start
        runs.append(1000 * elapsed / n_images)
        stage_runs.append({k: 1000 * v / n_images for k, v in clock.seconds.items()})
        samples.append(clock.unet_samples / n_images)
    latency = statistics.median(runs)
    stages = {k: statistics.median(r.get(k, 0.0) for r in stage_runs) for k in stage_runs[0]}
    return {
        "latency_ms_per_image": latency,
        "latency_ms_per_image_runs": runs,
        "latency_ms_per_image_min": min(runs),
        "spread_pct": 100 * (max(runs) - min(runs)) / latency,
        "images_per_s": 1000 / latency,
        "peak_memory_mb": memory.read_mb(),
        "peak_memory_method": memory.method,
        "stages_ms": stages,
        "stages_ms_runs": stage_runs,
        "unet_samples_per_image": statistics.median(samples),
    }


# -- the benchmark --------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    random_weights: bool = False
    checkpoint: str | None = None
    model_size: str = "sd21"
    head: str = "vae"
    protocols: list[Protocol] = field(default_factory=lambda: [Protocol("genpercept")])
    resolution: int = 512
    input_size: int | None = None  # square inputs of this side; default 1.5 x resolution
    batch_size: int = 1
    num_images: int | None = None  # per repeat; default batch_size
    dtype: str = "auto"
    device: str = "auto"
    compile: bool = False
    cuda_graphs: bool = False
    channels_last: bool | None = None  # None: pipeline.measured_fast_path for the device and dtype
    overlap_io: bool = True
    tiled_decode_above: int | None = None
    attention: str = "sdpa"
    warmup: int = 1
    repeats: int = 3
    seed: int = 0

    def validate(self) -> BenchConfig:
        """Raise GenPerceptError naming the one option that is out of range (before any work)."""
        if self.random_weights == (self.checkpoint is not None):
            raise GenPerceptError("pass exactly one of --random-weights and --checkpoint NAME.")
        minimums = {"--resolution": (self.resolution, 8), "--input-size": (self.input_size, 8),
                    "--batch-size": (self.batch_size, 1), "--num-images": (self.num_images, 1),
                    "--repeats": (self.repeats, 1), "--warmup": (self.warmup, 0),
                    "--tile-above": (self.tiled_decode_above, 0)}
        for option, (value, lowest) in minimums.items():
            if value is not None and value < lowest:
                raise GenPerceptError(f"{option} must be at least {lowest}, not {value}.")
        choices = {"--model-size": (self.model_size, tuple(PRESETS)), "--head": (self.head, ("vae", "dpt")),
                   "--attention": (self.attention, ("sdpa", "classic"))}
        for option, (value, allowed) in choices.items():
            if value not in allowed:
                raise GenPerceptError(f"{option} must be one of {', '.join(allowed)}, not {value!r}.")
        if self.cuda_graphs and not self.compile:
            raise GenPerceptError("--cuda-graphs needs --compile.")
        return self


def load_pipeline(cfg: BenchConfig):
    from .checkpoints import CheckpointSpec
    from .pipeline import GenPerceptPipeline
    from .runtime.device import resolve_device, resolve_dtype

    if cfg.checkpoint is not None:
        # fast_path=False: the reference loop runs on the modules as loaded; the switches come later
        return GenPerceptPipeline.from_checkpoint(cfg.checkpoint, device=cfg.device, dtype=cfg.dtype, fast_path=False)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model = build_random_model(cfg.model_size, cfg.head, device, dtype, cfg.seed)
    spec = CheckpointSpec(name=f"random-{cfg.model_size}-{cfg.head}", task=model.task, output="random weights")
    return GenPerceptPipeline(model, spec, device, dtype)


def set_attention(pipe, attention: str) -> None:
    """'sdpa': torch's fused scaled_dot_product_attention (diffusers' default); 'classic': explicit
    softmax(QK^T)V."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0() if attention == "sdpa" else AttnProcessor()
    pipe.model.unet.set_attn_processor(processor)
    pipe.model.vae.set_attn_processor(processor)


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run every protocol of `cfg` and return the JSON-ready report (top level = the one-step run)."""
    import torch

    from .outputs import DEFAULT_FORMATS
    from .runtime.device import measured_fast_path

    pipe = load_pipeline(cfg.validate())
    set_attention(pipe, cfg.attention)
    device = pipe.device
    measured = measured_fast_path(device, pipe.dtype).get("channels_last", False)
    channels_last = measured if cfg.channels_last is None else cfg.channels_last
    n_images = cfg.num_images or cfg.batch_size
    side = cfg.input_size if cfg.input_size is not None else (cfg.resolution * 3) // 2
    clock, memory = StageClock(device), PeakMemory(device)
    formats = DEFAULT_FORMATS[pipe.task]
    common = {
        "device": str(device), "device_name": device_name(device),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "resolution": cfg.resolution, "input_size": side, "num_images": n_images, "warmup": cfg.warmup,
        "model": pipe.spec.name, "attention": cfg.attention,
    }
    # The reference runs first, on the modules as loaded; then the fast path is switched on.
    order = sorted(cfg.protocols, key=lambda p: p.name != "reference")
    runs: dict[Protocol, dict] = {}
    with tempfile.TemporaryDirectory(prefix="genpercept-bench-") as tmp:
        images = make_inputs(Path(tmp) / "in", n_images, side, cfg.seed)
        out = Path(tmp) / "out"
        optimized = False
        for p in order:
            if p.name != "reference" and not optimized:
                pipe.optimize(channels_last=channels_last, compile=cfg.compile,
                              tiled_decode_above=cfg.tiled_decode_above, cuda_graphs=cfg.cuda_graphs)
                optimized = True
            repeats = p.repeats or cfg.repeats
            with instrumented(pipe, clock):  # hooks on the modules as they are now (compiled or not)
                result = _run_protocol(p, pipe, cfg, images, out, formats, n_images, repeats, clock, memory)
            runs[p] = {"protocol": p.name, "label": p.label, **common, "repeats": repeats, **result,
                       "optimizations": _switches(p, cfg, channels_last)}
    ordered = [runs[p] for p in cfg.protocols]
    top = ordered[0]
    base = next(r for r in ordered if r["protocol"] == "genpercept")["latency_ms_per_image"]
    return {
        **top,
        "speedups": {r["label"]: r["latency_ms_per_image"] / base
                     for r in ordered if r["protocol"] != "genpercept"},
        "runs": ordered,
        "environment": environment(device),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_threads": torch.get_num_threads(),
    }


def _run_protocol(p: Protocol, pipe, cfg: BenchConfig, images, out, formats, n_images, repeats, clock,
                  memory) -> dict:
    res = cfg.resolution
    if p.name == "reference":
        def run(target=pipe):
            run_images(target, images, out, formats, res, 1, clock, overlap=False, empty_cache=True)

        return {"batch_size": 1, **measure(run, run, n_images, cfg.warmup, repeats, clock, memory)}

    def runner(target):
        return lambda: run_images(target, images, out, formats, res, cfg.batch_size, clock, cfg.overlap_io)

    if p.name == "genpercept":
        return {"batch_size": cfg.batch_size, **measure(runner(pipe), runner(pipe), n_images, cfg.warmup,
                                                        repeats, clock, memory)}
    with marigold_unet(pipe.model.unet) as unet:
        target = MarigoldBaseline(pipe, unet, p.steps, p.ensemble, cfg.batch_size, clock, cfg.seed)
        # Warm-up: one step, one member batch - every kernel and shape of the full protocol.
        members = min(p.ensemble, cfg.batch_size)
        warm = MarigoldBaseline(pipe, unet, 1, members, cfg.batch_size, clock, cfg.seed)
        result = measure(runner(target), runner(warm), n_images, cfg.warmup, repeats, clock, memory)
    return {"batch_size": cfg.batch_size, "steps": p.steps, "ensemble": p.ensemble,
            "warmup_protocol": f"marigold 1 step x {members} members", **result}


def _switches(p: Protocol, cfg: BenchConfig, channels_last: bool) -> dict:
    if p.name == "reference":
        return {"batch_size_1": True, "channels_last": False, "compile": False, "overlap_io": False,
                "empty_cache_per_image": True}
    return {"channels_last": channels_last, "compile": cfg.compile, "cuda_graphs": cfg.cuda_graphs,
            "overlap_io": cfg.overlap_io, "tiled_decode_above": cfg.tiled_decode_above}


# -- environment ----------------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """Library versions and the hardware facts that decide the numbers."""
    from importlib import metadata

    import diffusers
    import numpy
    import PIL
    import torch

    flags = cpu_flags()
    env = {
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "genpercept": _version(metadata),
        },
        "cpu": {
            "model": device_name(torch.device("cpu")), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "bf16_native": sorted(flags & {"amx_bf16", "avx512_bf16"}),
            "load_average_1min": os.getloadavg()[0],
        },
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["cuda"] = {"name": props.name, "memory_gib": props.total_memory / 2**30,
                       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "capability": f"{props.major}.{props.minor}"}
    return env


def _version(metadata) -> str:
    try:
        return metadata.version("genpercept")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- command line ---------------------------------------------------------------------------------
def print_report(report: dict) -> None:
    """Two tables on stdout: per-protocol latency, throughput and memory; then the stage medians."""
    from rich.console import Console
    from rich.table import Table

    runs = report["runs"]
    base = next(r for r in runs if r["protocol"] == "genpercept")["latency_ms_per_image"]
    title = (f"{report['device_name']} · {report['dtype']} · {report['resolution']}² · "
             f"batch {report['batch_size']} · torch {report['environment']['versions']['torch']}")
    summary = Table(title=title)
    for col in ("protocol", "ms/image", "spread", "images/s", "peak MiB", "× one-step"):
        summary.add_column(col, justify="left" if col == "protocol" else "right")
    for r in runs:
        summary.add_row(r["label"], f"{r['latency_ms_per_image']:.1f}", f"{r['spread_pct']:.1f}%",
                        f"{r['images_per_s']:.3f}", f"{r['peak_memory_mb']:.0f}",
                        f"{r['latency_ms_per_image'] / base:.2f}")
    stage_names = list(dict.fromkeys(k for r in runs for k in r["stages_ms"]))
    stages = Table(title="median ms per image and stage")
    for col in ("protocol", *stage_names):
        stages.add_column(col, justify="left" if col == "protocol" else "right")
    for r in runs:
        stages.add_row(r["label"], *(f"{r['stages_ms'].get(name, 0.0):.1f}" for name in stage_names))
    console = Console()
    console.print(summary)
    console.print(stages)


def bench_speed(
    random_weights: bool = typer.Option(
        False, "--random-weights", help="SD2.1-size modules with random weights (no download)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c", help="Real weights: registry name, hub id or local folder."),
    protocol: list[str] = typer.Option(
        ["genpercept"], "--protocol",
        help="Repeatable: genpercept, reference, marigold (--steps/--ensemble) or marigold:SxE; '@N' sets "
        "its repeats (e.g. marigold:10x10@1). The one-step run is always included.",
    ),
    steps: int = typer.Option(10, help="Marigold baseline: denoising steps."),
    ensemble: int = typer.Option(10, help="Marigold baseline: ensemble members."),
    resolution: int = typer.Option(512, help="Processing resolution (square inputs)."),
    input_size: int | None = typer.Option(None, help="Synthetic input JPEG side (default 1.5 × res)."),
    batch_size: int = typer.Option(1, help="Images per batch (Marigold: members per U-Net call)."),
    num_images: int | None = typer.Option(None, help="Images per timed repeat (default: the batch size)."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the stages (static shapes)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="With --compile on CUDA: CUDA graphs."),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="NHWC weights (default: what measured fastest)."),
    overlap_io: bool = typer.Option(
        True, "--overlap-io/--no-overlap-io", help="Read and write images in threads beside compute."),
    tile_above: float = typer.Option(
        0.0, help="Decode in overlapping tiles above this many megapixels (as `predict --tile-above`); 0 = never."),
    attention: str = typer.Option("sdpa", help="sdpa (fused attention) or classic (explicit softmax)."),
    warmup: int = typer.Option(1, help="Untimed runs before the repeats."),
    repeats: int = typer.Option(3, help="Timed runs per protocol (median and spread are over these)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the full report to this JSON file."),
    model_size: str = typer.Option("sd21", hidden=True, help="Random weights: sd21 or tiny (tests)."),
    head: str = typer.Option("vae", help="Random weights: vae (VAE-decoder models) or dpt (DPT head)."),
    seed: int = typer.Option(0, hidden=True),
):
    """Time the pipeline stage by stage against the reference loop and the Marigold protocol."""
    from .outputs import atomic_write, check_writable

    if tile_above < 0:
        raise GenPerceptError("--tile-above must be 0 (never) or a number of megapixels.")
    if json_path is not None:
        check_writable(json_path, "--json")
    cfg = BenchConfig(
        random_weights=random_weights, checkpoint=checkpoint, model_size=model_size, head=head,
        protocols=parse_protocols(protocol, steps, ensemble), resolution=resolution, input_size=input_size,
        batch_size=batch_size, num_images=num_images, dtype=dtype, device=device, compile=compile,
        cuda_graphs=cuda_graphs, channels_last=channels_last, overlap_io=overlap_io,
        tiled_decode_above=int(tile_above * 1e6) if tile_above > 0 else None,
        attention=attention, warmup=warmup, repeats=repeats, seed=seed,
    ).validate()
    report = run_benchmark(cfg)
    report["command"] = {k: v for k, v in asdict(cfg).items() if k != "protocols"} | {
        "protocols": [p.label + (f"@{p.repeats}" if p.repeats else "") for p in cfg.protocols]}
    print_report(report)
    if json_path is not None:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
