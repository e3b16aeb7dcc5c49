"""`bench-speed`'s measurement: configuration, synthetic inputs, the timed runs of each protocol, the
JSON-ready report and its tables."""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from genpercept_cli.errors import GenPerceptError

from .clock import PeakMemory, StageClock, instrumented
from .environment import device_name, environment
from .peer import DiffusersMarigoldPeer
from .presets import PRESETS, build_random_model
from .protocols import MarigoldBaseline, Protocol, marigold_unet


# -- runners --------------------------------------------------------------------------------------
def make_inputs(folder: Path, count: int, side: int, seed: int = 0) -> list:
    """`count` distinct smooth-ish RGB JPEGs of side x side pixels (what a camera would hand us)."""
    import numpy as np
    from PIL import Image

    from genpercept_cli.predict import InputImage

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
    from genpercept_cli.predict import PredictOptions, run_predict

    def after_batch():
        if empty_cache and clock.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # tile_above=None: tiling stays as `pipe.optimize` set it (--tile-above). Readers: 2 on the CPU (the
    # cores compute), up to 8 beside a GPU, where decoding 1152² JPEGs at 30+ images/s needs several.
    workers = 2 if clock.device.type == "cpu" else min(8, os.cpu_count() or 2)
    options = PredictOptions(processing_res=res, formats=formats, batch_size=batch_size, workers=workers,
                             tile_above=None)
    report = run_predict(target, images, output, options, clock=clock, overlap=overlap, after_batch=after_batch)
    if report.failed:
        raise GenPerceptError(f"the benchmark run failed: {report.failed[0][1]}")


def measure(run_once, warm_up, n_images: int, warmup: int, repeats: int, clock, memory) -> dict:
    """Warm up, then time `repeats` runs of `run_once` over `n_images` images."""
    for _ in range(warmup):
        warm_up()
    memory.reset()
    runs, stage_runs, samples, cpu_runs = [], [], [], []
    for _ in range(repeats):
        clock.reset()
        start, usage = clock.now(), resource.getrusage(resource.RUSAGE_SELF)
        run_once()
        elapsed = clock.now() - start
        cpu_runs.append(_cpu_per_image(usage, resource.getrusage(resource.RUSAGE_SELF), n_images))
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
        # the process's CPU time and page faults: less sensitive than wall time to other jobs on the cores
        "cpu": {k: statistics.median(r[k] for r in cpu_runs) for k in cpu_runs[0]},
    }


def _cpu_per_image(before, after, n_images: int) -> dict:
    """User and system CPU ms and minor page faults per image between two `getrusage` readings."""
    return {"user_ms_per_image": 1000 * (after.ru_utime - before.ru_utime) / n_images,
            "system_ms_per_image": 1000 * (after.ru_stime - before.ru_stime) / n_images,
            "minor_faults_per_image": (after.ru_minflt - before.ru_minflt) / n_images}


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
    winograd: bool | None = None  # None: as measured (runtime.device.MEASURED_FAST_PATH)
    fp32_kernels: bool | None = None  # None: as measured (runtime.device.FP32_KERNELS_FAST_PATH)
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
                    "--batch-size": (self.batch_size, 0), "--num-images": (self.num_images, 1),
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
    from genpercept_cli.checkpoints import CheckpointSpec
    from genpercept_cli.pipeline import GenPerceptPipeline
    from genpercept_cli.runtime.device import resolve_device, resolve_dtype

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
    softmax(QK^T)V. Set on every diffusers attention layer of the model, whatever module holds it (Meta
    Prompts' VAE encoder is a plain module without `set_attn_processor`)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    processor = AttnProcessor2_0() if attention == "sdpa" else AttnProcessor()
    for module in pipe.model.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)


def check_protocols(cfg: BenchConfig) -> None:
    """Refuse, before any model is built, a Marigold protocol on a checkpoint whose family lacks the SD
    one-step modules it runs (`models.Family.sd_one_step`)."""
    baselines = [p.label for p in cfg.protocols if p.name in ("marigold", "diffusers")]
    engines = [p.name for p in cfg.protocols if p.name in ("onnxruntime", "openvino")]
    if engines:
        from genpercept_cli.backends.export import exporter_versions

        for engine in engines:  # a missing extra is one sentence before any model is built
            exporter_versions("onnx" if engine == "onnxruntime" else "openvino")
        if cfg.dtype not in ("auto", "fp32", "float32") or cfg.device not in ("auto", "cpu") or cfg.compile:
            raise GenPerceptError(f"the {', '.join(engines)} protocol runs fp32 engines on the CPU; use --device "
                                  "cpu --dtype fp32 without --compile.")
    if cfg.checkpoint is None or not baselines:
        return
    from genpercept_cli.checkpoints import resolve_checkpoint
    from genpercept_cli.models import family_of

    spec = resolve_checkpoint(cfg.checkpoint)
    if not family_of(spec).sd_one_step:
        raise GenPerceptError(
            f"{', '.join(baselines)} cannot run on {spec.name}: that protocol needs SD's one-step U-Net and VAE "
            f"decoder, which the {spec.family} family does not have; measure it with genpercept and reference.")


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run every protocol of `cfg` and return the JSON-ready report (top level = the one-step run)."""
    import torch

    from genpercept_cli.outputs import DEFAULT_FORMATS
    from genpercept_cli.runtime.device import measured_fast_path

    cfg.validate()
    check_protocols(cfg)
    if any(p.name == "diffusers" for p in cfg.protocols):
        from .peer import marigold_pipeline_class

        marigold_pipeline_class()  # a missing peer is reported before any model is built
    pipe = load_pipeline(cfg)
    set_attention(pipe, cfg.attention)
    device = pipe.device
    auto_batch = cfg.batch_size == 0
    if auto_batch:  # the measured per-image memory model (runtime.memory) at this size
        from genpercept_cli.runtime.memory import auto_batch_size

        cfg = replace(cfg, batch_size=auto_batch_size(pipe, (cfg.resolution, cfg.resolution)))
    measured = measured_fast_path(device, pipe.dtype)
    channels_last = measured.get("channels_last", False) if cfg.channels_last is None else cfg.channels_last
    winograd = measured.get("winograd", False) if cfg.winograd is None else cfg.winograd
    fp32_kernels = measured.get("fp32_kernels", False) if cfg.fp32_kernels is None else cfg.fp32_kernels
    n_images = cfg.num_images or cfg.batch_size
    side = cfg.input_size if cfg.input_size is not None else (cfg.resolution * 3) // 2
    clock, memory = StageClock(device), PeakMemory(device)
    formats = DEFAULT_FORMATS[pipe.task]
    common = {
        "device": str(device), "device_name": device_name(device),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "resolution": cfg.resolution, "input_size": side, "num_images": n_images, "warmup": cfg.warmup,
        "model": pipe.spec.name, "attention": cfg.attention, "batch_size_auto": auto_batch,
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
                pipe.optimize(channels_last=channels_last, compile=cfg.compile, winograd=winograd,
                              fp32_kernels=fp32_kernels,
                              tiled_decode_above=cfg.tiled_decode_above, cuda_graphs=cfg.cuda_graphs)
                optimized = True
            repeats = p.repeats or cfg.repeats
            with instrumented(pipe, clock):  # hooks on the modules as they are now (compiled or not)
                result = _run_protocol(p, pipe, cfg, images, out, formats, n_images, repeats, clock, memory)
            runs[p] = {"protocol": p.name, "label": p.label, **common, "repeats": repeats, **result,
                       "optimizations": _switches(p, pipe, cfg, channels_last)}
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
    if p.name in ("onnxruntime", "openvino"):
        return _run_engine(p, pipe, cfg, images, out, formats, n_images, repeats, clock, memory, runner)
    if p.name == "diffusers":
        with marigold_unet(pipe.model.unet) as unet:
            peer = DiffusersMarigoldPeer(pipe, unet, cfg.seed)
            result = measure(runner(peer), runner(peer), n_images, cfg.warmup, repeats, clock, memory)
        return {"batch_size": cfg.batch_size, "steps": 1, "ensemble": 1,
                "peer": f"diffusers {peer.version} MarigoldDepthPipeline", **result}
    with marigold_unet(pipe.model.unet) as unet:
        target = MarigoldBaseline(pipe, unet, p.steps, p.ensemble, cfg.batch_size, clock, cfg.seed)
        # Warm-up: one step, one member batch - every kernel and shape of the full protocol.
        members = min(p.ensemble, cfg.batch_size)
        warm = MarigoldBaseline(pipe, unet, 1, members, cfg.batch_size, clock, cfg.seed)
        result = measure(runner(target), runner(warm), n_images, cfg.warmup, repeats, clock, memory)
    return {"batch_size": cfg.batch_size, "steps": p.steps, "ensemble": p.ensemble,
            "warmup_protocol": f"marigold 1 step x {members} members", **result}


def _run_engine(p: Protocol, pipe, cfg: BenchConfig, images, out, formats, n_images, repeats, clock, memory,
                runner) -> dict:
    """The pipe's model exported as one graph (timed), run by ONNX Runtime or OpenVINO through the same
    runner; the first call is timed on its own (the engine plans for each new shape), then `measure`."""
    from genpercept_cli.backends.export import export_model
    from genpercept_cli.checkpoints import resolve_checkpoint
    from genpercept_cli.models.exported import load_exported
    from genpercept_cli.pipeline import GenPerceptPipeline

    fmt = "onnx" if p.name == "onnxruntime" else "openvino"
    with tempfile.TemporaryDirectory(prefix=f"genpercept-bench-{fmt}-") as tmp:
        began = time.perf_counter()
        manifest = export_model(pipe.model, pipe.spec, fmt, Path(tmp) / fmt)
        export_s = time.perf_counter() - began
        rss_before = _rss_mb()
        began = time.perf_counter()
        spec = resolve_checkpoint(str(Path(tmp) / fmt))
        engine = GenPerceptPipeline(load_exported(spec.unet_dir, spec, p.name), pipe.spec, pipe.device, pipe.dtype)
        load_s = time.perf_counter() - began
        disk_mb = sum(f.stat().st_size for f in (Path(tmp) / fmt).iterdir()) / 2**20
        memory.reset()
        began = time.perf_counter()
        runner(engine)()
        first_call_s = time.perf_counter() - began
        result = measure(runner(engine), runner(engine), n_images, max(cfg.warmup - 1, 0), repeats, clock, memory)
        max_diff = _max_difference(pipe, engine, cfg.resolution, cfg.seed)
    return {"batch_size": cfg.batch_size, "engine": p.name, "export_s": export_s, "engine_load_s": load_s,
            "first_call_s": first_call_s, "exported_mb": disk_mb, "rss_before_engine_mb": rss_before,
            "check_max_abs_diff": manifest["family_params"]["check_max_abs_diff"],
            "max_abs_diff_at_resolution": max_diff, **result}


def _max_difference(pipe, engine, resolution: int, seed: int) -> float:
    """max |Δ| between the engine's and the torch model's [0, 1] output on one random input at resolution²."""
    import torch

    x = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.inference_mode():
        return float((engine.model(x) - pipe.model(x).float()).abs().max())


def _rss_mb() -> float:
    """The process's resident memory now, in MiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _switches(p: Protocol, pipe, cfg: BenchConfig, channels_last: bool) -> dict:
    """The switches a protocol ran with. Winograd and fp32 kernels are how our pipeline runs the modules
    (modes around its forward), so the diffusers peer, which calls the modules itself, runs without them."""
    if p.name == "reference":
        return {"batch_size_1": True, "channels_last": False, "compile": False, "overlap_io": False,
                "empty_cache_per_image": True, "winograd": False, "fp32_kernels": False}
    ours = p.name != "diffusers"
    return {"channels_last": channels_last, "compile": cfg.compile, "cuda_graphs": cfg.cuda_graphs,
            "overlap_io": cfg.overlap_io, "tiled_decode_above": cfg.tiled_decode_above,
            "winograd": pipe.winograd and ours, "fp32_kernels": pipe.fp32_kernels and ours}


# -- the report -----------------------------------------------------------------------------------
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
