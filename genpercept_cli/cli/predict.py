"""`genpercept predict`: flags onto `PredictOptions`, then the run and its summary."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from .console import COMPILE_NOTE, console, make_progress
from .paths import given_path

# `tasks.formats_summary()`, written out so --help imports no task (numpy); tests/test_formats.py keeps them equal.
FORMATS_HELP = (
    "depth, disparity: npy png16 color exr ply glb camera; normal: npy rgb exr; dis, matting: png png16 rgba npy; "
    "seg: color label npy; semseg: npy png color"
)


def predict_command(
    source: str = typer.Argument(..., help="An image or video file, a folder (searched recursively) or a quoted glob."),
    task: str | None = typer.Option(None, help="depth, disparity, normal, dis, matting or seg (default: from the checkpoint)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c", help="Registry name, hub id[/subfolder] or local folder (default: the task's v2 model)."),
    output: Path = typer.Option(Path("genpercept_output"), "--output", "-o", parser=given_path("--output"), help="Output root; the input tree is mirrored below it."),
    processing_res: int | None = typer.Option(None, help="Long side the model sees, in pixels; 0 = native size (default: the checkpoint's, 768)."),
    formats: str | None = typer.Option(None, help=f"Comma-separated outputs, e.g. npy,png16,color; png = the task's main <stem>_pred.png (default: the task's). Per task: {FORMATS_HELP}."),
    batch_size: int = typer.Option(0, help="Images per batch; 0 = automatic (1 on CPU, by free memory on CUDA)."),
    device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (the family's reference precision: fp32 for Meta Prompts; otherwise fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose outputs all exist (resume)."),
    normal_flip: str = typer.Option("", help="Normals only: axes to negate before writing, e.g. 'yz' for the OpenCV frame."),
    workers: int = typer.Option(4, help="Background threads decoding images."),
    tile_above: float = typer.Option(16.0, help="Decode processed images above this many megapixels in overlapping tiles (bounded memory, not bit-exact); 0 = never."),
    frame_stride: int = typer.Option(1, help="Videos: predict every N-th frame."),
    max_frames: int = typer.Option(0, help="Videos: predict at most N frames per clip; 0 = all."),
    start: float = typer.Option(0.0, help="Videos: first second to predict."),
    end: float | None = typer.Option(None, help="Videos: second to stop before (default: the end)."),
    temporal: str = typer.Option("align", help="Videos: align affine depth/disparity over time (align) or not (none)."),
    backend: str | None = typer.Option(None, help="torch, onnxruntime, openvino or auto (CPU: the engine measured fastest, fp32); engines run an exported folder, or export the checkpoint once into the cache (default: torch, or the exported folder's engine)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the modules (slow first batch per image size; pays off on long GPU runs)."),
    fov: float | None = typer.Option(None, help="ply/glb: horizontal field of view in degrees (default: from the photo's EXIF 35 mm focal length, else 55)."),
    depth_range: str | None = typer.Option(None, help="ply/glb of affine-invariant depth or disparity: NEAR,FAR distances its [0, 1] maps onto (default 1,10; the result is up to scale and shift)."),
    points_stride: int = typer.Option(1, help="ply: one point every N pixels in x and y."),
    mesh_res: int = typer.Option(1024, help="glb: at most this many vertices on the image's long side."),
):
    """Predict depth, disparity, normals, DIS, matting or segmentation for images."""
    from dataclasses import replace

    from ..checkpoints import default_checkpoint, resolve_checkpoint
    from ..outputs import check_writable
    from ..predict import PredictOptions, auto_batch_size, discover_images, run_predict
    from ..runtime.distributed import GlobalProgress, from_environment, rank_device

    dist = from_environment()  # under torchrun: this rank's share, its own device, rank 0 prints
    console.quiet = not dist.is_main
    scan = discover_images(source)  # skips earlier outputs, so -o may be the source folder itself
    images = scan.images
    spec = resolve_checkpoint(default_checkpoint(task or "depth") if checkpoint is None else checkpoint, task)
    options = PredictOptions(  # checked without torch, so a bad option is refused at once, alone
        processing_res=processing_res, formats=formats, batch_size=batch_size, workers=workers,
        tile_above=tile_above, normal_flip=normal_flip, skip_existing=skip_existing,
        frame_stride=frame_stride, max_frames=max_frames, start=start, end=end, temporal=temporal,
        fov=fov, depth_range=depth_range, points_stride=points_stride, mesh_res=mesh_res,
    ).validate(spec)
    # the header before torch and the model load, which take seconds
    console.print(f"{scan.inputs} images -> {escape(str(output))}  [dim]task={spec.task} "
                  f"res={options.processing_res or 'native'} checkpoint={escape(spec.name)}[/]", highlight=False)
    check_writable(output, "--output", folder=True)  # creates it: after every check that could refuse the run
    if compile:
        console.print(COMPILE_NOTE, highlight=False)

    loading = time.perf_counter()
    from ..pipeline import GenPerceptPipeline

    with console.status(f"loading checkpoint {escape(spec.name)} ({spec.task})"):
        pipe = GenPerceptPipeline.from_checkpoint(spec, device=rank_device(device, dist), dtype=dtype, compile=compile,
                                                  backend=backend, log=_note)
    options = replace(options, batch_size=options.batch_size or auto_batch_size(pipe, options.processing_res))
    console.print(
        f"[dim]model loaded in {time.perf_counter() - loading:.1f} s: batch={options.batch_size} device={pipe.device} "
        f"dtype={str(pipe.dtype).removeprefix('torch.')}" + (f" ranks={dist.world}" if dist.active else "")
        + (f" backend={pipe.model.backend}" if hasattr(pipe.model, "backend") else "") + "[/]",
        highlight=False,
    )
    began = time.perf_counter()
    with make_progress() as progress:
        tracker = GlobalProgress(progress if dist.is_main else None, dist)
        report = run_predict(pipe, images, output, options, tracker, dist=dist)
    dist.close()
    elapsed = time.perf_counter() - began
    failed = scan.unreadable + report.failed  # an unreadable file or folder counts as one failed input
    for _path, message in failed:
        console.print(f"[yellow]skipped[/] {escape(message)}", highlight=False)
    console.print(_summary(scan, report, failed, pipe, elapsed), highlight=False)
    if failed:
        raise typer.Exit(1)


def _note(message: str) -> None:
    console.print(f"[dim]{escape(message)}[/]", highlight=False)


def _summary(scan, report, failed: list, pipe, elapsed: float) -> str:
    """The closing line: what was written, skipped, failed, passed over and recovered."""
    summary = f"wrote {report.written} of {scan.inputs} images in {elapsed:.1f} s"
    if report.skipped_existing:
        summary += f", {report.skipped_existing} already done"
    if failed:
        summary += f", [red]{len(failed)} failed[/]"
    for note in scan.notes():
        summary += f", {note}"
    if report.stale_removed:
        summary += f", {report.stale_removed} temporary files of an interrupted run removed"
    if report.recoveries:
        summary += f", {report.recoveries} batches re-run in fp32 after a non-finite {pipe.dtype} result"
    return summary
