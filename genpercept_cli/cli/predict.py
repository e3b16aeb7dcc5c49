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
    task: str | None = typer.Option(None, help="depth, disparity, normal, dis, matting or seg (default: from the checkpoint); several, comma-separated (depth,normal), run several models in one pass."),
    checkpoint: list[str] | None = typer.Option(None, "--checkpoint", "-c", help="Registry name, hub id[/subfolder] or local folder (default: the task's v2 model); repeat it (-c depth -c normal) to run several models in one pass, files named <stem>_<model>_*."),
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

    from ..outputs import check_writable
    from ..predict import PredictOptions, auto_batch_size, count_inputs, discover_images, model_labels, run_predict
    from ..runtime.distributed import GlobalProgress, from_environment, rank_device

    dist = from_environment()  # under torchrun: this rank's share, its own device, rank 0 prints
    console.quiet = not dist.is_main
    scan = discover_images(source)  # skips earlier outputs, so -o may be the source folder itself
    images = scan.images
    specs = _checkpoints(checkpoint or [], task)
    model_labels(specs)  # two models whose files would collide are refused here
    options_given = PredictOptions(  # checked without torch, so a bad option is refused at once, alone
        processing_res=processing_res, formats=formats, batch_size=batch_size, workers=workers,
        tile_above=tile_above, normal_flip=normal_flip, skip_existing=skip_existing,
        frame_stride=frame_stride, max_frames=max_frames, start=start, end=end, temporal=temporal,
        fov=fov, depth_range=depth_range, points_stride=points_stride, mesh_res=mesh_res,
    )
    options = options_given.validate_each(specs)
    # the header before torch and the model load, which take seconds
    models = "  ".join(f"task={spec.task} res={one.processing_res or 'native'} checkpoint={escape(spec.name)}"
                       for spec, one in zip(specs, options, strict=True))
    console.print(f"{count_inputs(scan.inputs - scan.clips, scan.clips)} -> {escape(str(output))}  [dim]{models}[/]",
                  highlight=False)
    check_writable(output, "--output", folder=True)  # creates it: after every check that could refuse the run
    if compile:
        console.print(COMPILE_NOTE, highlight=False)

    loading = time.perf_counter()
    from ..pipeline import GenPerceptPipeline

    pipes = []  # every model stays loaded for the whole run
    for spec in specs:
        with console.status(f"loading checkpoint {escape(spec.name)} ({spec.task})"):
            pipes.append(GenPerceptPipeline.from_checkpoint(spec, device=rank_device(device, dist), dtype=dtype,
                                                            compile=compile, backend=backend, log=_note))
    batch = options[0].batch_size or min(auto_batch_size(p, o.processing_res) for p, o in zip(pipes, options))
    pipe = pipes[0]
    dtypes = ",".join(dict.fromkeys(str(p.dtype).removeprefix("torch.") for p in pipes))
    backends = ",".join(dict.fromkeys(p.model.backend for p in pipes if hasattr(p.model, "backend")))
    console.print(
        f"[dim]{'model' if len(pipes) == 1 else f'{len(pipes)} models'} loaded in {time.perf_counter() - loading:.1f} "
        f"s: batch={batch} device={pipe.device} dtype={dtypes}" + (f" ranks={dist.world}" if dist.active else "")
        + (f" backend={backends}" if backends else "") + "[/]",
        highlight=False,
    )
    began = time.perf_counter()
    with make_progress() as progress:
        tracker = GlobalProgress(progress if dist.is_main else None, dist)
        report = run_predict(pipes if len(pipes) > 1 else pipe, images, output,
                             replace(options_given, batch_size=batch), tracker, dist=dist)
    dist.close()
    elapsed = time.perf_counter() - began
    failed = scan.unreadable + report.failed  # an unreadable file or folder counts as one failed input
    for _path, message in failed:
        console.print(f"[yellow]skipped[/] {escape(message)}", highlight=False)
    console.print(_summary(scan, report, failed, pipe, elapsed), highlight=False)
    if failed:
        raise typer.Exit(1)


def _checkpoints(checkpoints: list[str], task: str | None) -> list:
    """The specs of the models to run: each -c (its task checked against --task: one task for all, or one per
    checkpoint), else each --task's default checkpoint (default: depth). Raises GenPerceptError."""
    from ..checkpoints import default_checkpoint, resolve_checkpoint
    from ..errors import GenPerceptError

    tasks = [part.strip() for part in (task or "").split(",") if part.strip()]
    if not checkpoints:
        checkpoints = [default_checkpoint(name) for name in tasks or ["depth"]]
    elif len(tasks) > 1 and len(tasks) != len(checkpoints):
        raise GenPerceptError(f"--task lists {len(tasks)} tasks for {len(checkpoints)} checkpoints; give one task for "
                              "all of them or one per checkpoint, in the same order.")
    if len(set(checkpoints)) < len(checkpoints):
        twice = next(c for i, c in enumerate(checkpoints) if c in checkpoints[:i])
        raise GenPerceptError(f"Checkpoint {twice!r} is given twice; give each model once.")
    per_model = tasks if len(tasks) > 1 else [tasks[0] if tasks else None] * len(checkpoints)
    return [resolve_checkpoint(ref, name) for ref, name in zip(checkpoints, per_model, strict=True)]


def _note(message: str) -> None:
    console.print(f"[dim]{escape(message)}[/]", highlight=False)


def _summary(scan, report, failed: list, pipe, elapsed: float) -> str:
    """The closing line: what was written, skipped, failed, passed over and recovered."""
    from ..predict import count_inputs

    written = (report.written - report.clips_written, report.clips_written)
    summary = (f"wrote {count_inputs(scan.inputs - scan.clips, scan.clips, written, report.frames_written)} "
               f"in {elapsed:.1f} s")
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
