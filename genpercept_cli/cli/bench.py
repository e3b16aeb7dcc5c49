"""`genpercept bench-speed`: flags onto `benchmarks.speed.BenchConfig`, the report printed and saved."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape

from ..errors import GenPerceptError
from .console import COMPILE_NOTE, console
from .paths import given_path


def bench_speed(
    random_weights: bool = typer.Option(
        False, "--random-weights", help="SD2.1-size modules with random weights (no download)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c", help="Real weights: registry name, hub id or local folder."),
    protocol: list[str] = typer.Option(
        ["genpercept"], "--protocol",
        help="Repeatable: genpercept, reference, marigold (--steps/--ensemble), marigold:SxE or diffusers "
        "(diffusers' MarigoldDepthPipeline at one step, same modules); '@N' sets its repeats (e.g. "
        "marigold:10x10@1). The one-step run is always included.",
    ),
    steps: int = typer.Option(10, help="Marigold baseline: denoising steps."),
    ensemble: int = typer.Option(10, help="Marigold baseline: ensemble members."),
    resolution: int = typer.Option(512, help="Processing resolution (square inputs)."),
    input_size: int | None = typer.Option(None, help="Synthetic input JPEG side (default 1.5 × res)."),
    batch_size: int = typer.Option(1, help="Images per batch (Marigold: members per U-Net call); 0 = automatic (the measured per-image memory model)."),
    num_images: int | None = typer.Option(None, help="Images per timed repeat (default: the batch size)."),
    dtype: str = typer.Option("auto", help="auto (the family's reference precision: fp32 for Meta Prompts; otherwise fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the stages (static shapes)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="With --compile on CUDA: CUDA graphs."),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="NHWC weights (default: what measured fastest)."),
    winograd: bool | None = typer.Option(
        None, "--winograd/--no-winograd",
        help="Large fp32 CPU convolutions by Winograd, not bit-exact (default: off unless GENPERCEPT_WINOGRAD=on)."),
    fp32_kernels: bool | None = typer.Option(
        None, "--fp32-kernels/--no-fp32-kernels",
        help="bf16/fp16 CPU layers multiply in fp32 kernels (default: on where the CPU has no AMX for the dtype)."),
    overlap_io: bool = typer.Option(
        True, "--overlap-io/--no-overlap-io", help="Read and write images in threads beside compute."),
    tile_above: float = typer.Option(
        0.0, help="Decode in overlapping tiles above this many megapixels (as `predict --tile-above`); 0 = never."),
    attention: str = typer.Option("sdpa", help="sdpa (fused attention) or classic (explicit softmax)."),
    warmup: int = typer.Option(1, help="Untimed runs before the repeats."),
    repeats: int = typer.Option(3, help="Timed runs per protocol (median and spread are over these)."),
    json_path: Path | None = typer.Option(None, "--json", parser=given_path("--json"), help="Write the full report to this JSON file."),
    model_size: str = typer.Option("sd21", hidden=True, help="Random weights: sd21 or tiny (tests)."),
    head: str = typer.Option("vae", help="Random weights: vae (VAE-decoder models) or dpt (DPT head)."),
    seed: int = typer.Option(0, hidden=True),
):
    """Time the pipeline stage by stage against the reference loop and the Marigold protocol."""
    from benchmarks.speed import BenchConfig, parse_protocols, print_report, run_benchmark

    from ..outputs import atomic_write, check_writable
    from ..runtime.distributed import from_environment, rank_device

    dist = from_environment()  # under torchrun: every rank measures its own device at the same time
    if tile_above < 0:
        raise GenPerceptError("--tile-above must be 0 (never) or a number of megapixels.")
    if json_path is not None:
        check_writable(json_path, "--json")
    cfg = BenchConfig(
        random_weights=random_weights, checkpoint=checkpoint, model_size=model_size, head=head,
        protocols=parse_protocols(protocol, steps, ensemble), resolution=resolution, input_size=input_size,
        batch_size=batch_size, num_images=num_images, dtype=dtype, device=rank_device(device, dist), compile=compile,
        cuda_graphs=cuda_graphs, channels_last=channels_last, winograd=winograd, fp32_kernels=fp32_kernels,
        overlap_io=overlap_io,
        tiled_decode_above=int(tile_above * 1e6) if tile_above > 0 else None,
        attention=attention, warmup=warmup, repeats=repeats, seed=seed,
    ).validate()
    if dist.is_main:  # a first line before torch loads and the weights are read or built (seconds)
        console.print(f"bench-speed: {escape(cfg.checkpoint or 'random weights')} at {cfg.resolution}², "
                      f"{len(cfg.protocols)} protocol{'s' if len(cfg.protocols) > 1 else ''}, {cfg.repeats} timed "
                      "runs each", highlight=False)
        if cfg.compile:
            console.print(COMPILE_NOTE, highlight=False)
    dist.gather(None)  # ranks start together, so their measurements overlap in time
    report = run_benchmark(cfg)
    report["command"] = {k: v for k, v in asdict(cfg).items() if k != "protocols"} | {
        "protocols": [p.label + (f"@{p.repeats}" if p.repeats else "") for p in cfg.protocols]}
    if dist.active:
        per_rank = dist.gather({"rank": dist.rank, "device": report["device"], "device_name": report["device_name"],
                                "images_per_s": report["images_per_s"],
                                "latency_ms_per_image": report["latency_ms_per_image"]})
        report["ranks"] = per_rank
        report["aggregate_images_per_s"] = sum(r["images_per_s"] for r in per_rank)
        dist.close()
    if not dist.is_main:
        return
    print_report(report)
    if dist.active:
        rates = ", ".join(f"rank {r['rank']} ({r['device']}) {r['images_per_s']:.2f}" for r in report["ranks"])
        console.print(f"one-step images/s per rank: {rates}; aggregate {report['aggregate_images_per_s']:.2f} "
                      f"over {dist.world} ranks, measured at the same time", highlight=False)
    if json_path is not None:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
