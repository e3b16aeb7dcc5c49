"""The `genpercept` command line. Heavy imports (torch, diffusers) happen inside commands so that
`genpercept --help` answers at once."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED, GenPerceptError, Terminated

app = typer.Typer(
    name="genpercept",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help text is plain text: rich markup would read "hub id[/subfolder]" as a closing tag (typer >= 0.29).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        print(f"genpercept {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
):
    """Run, evaluate and benchmark GenPercept one-step dense-perception models."""


def user_errors(fn):
    """Turn the errors a user can cause into one red line and their exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenPerceptError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            console.print(f"[yellow]{what}[/]; files already written are complete (predict resumes with --skip-existing).")
            raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from None

    return wrapper


def make_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class RateColumn(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return TextColumn(f"{speed:.2f} img/s" if speed else "– img/s").render(task)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        RateColumn(""), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


@app.command()
@user_errors
def predict(
    source: str = typer.Argument(..., help="An image file, a folder (searched recursively) or a quoted glob."),
    task: str | None = typer.Option(None, help="depth, disparity, normal, dis, matting or seg (default: from the checkpoint)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c", help="Registry name, hub id[/subfolder] or local folder (default: the task's v2 model)."),
    output: Path = typer.Option(Path("genpercept_output"), "--output", "-o", help="Output root; the input tree is mirrored below it."),
    processing_res: int | None = typer.Option(None, help="Long side the model sees, in pixels; 0 = native size (default: the checkpoint's, 768)."),
    formats: str | None = typer.Option(None, help="Comma-separated outputs, e.g. npy,png16,color; png = the task's main <stem>_pred.png (default: the task's)."),
    batch_size: int = typer.Option(0, help="Images per batch; 0 = automatic (1 on CPU, by free memory on CUDA)."),
    device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose outputs all exist (resume)."),
    normal_flip: str = typer.Option("", help="Normals only: axes to negate before writing, e.g. 'yz' for the OpenCV frame."),
    workers: int = typer.Option(4, help="Background threads decoding images."),
    tile_above: float = typer.Option(16.0, help="Decode processed images above this many megapixels in overlapping tiles (bounded memory, not bit-exact); 0 = never."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the modules (slow first batch per image size; pays off on long GPU runs)."),
):
    """Predict depth, disparity, normals, DIS, matting or segmentation for images."""
    from .checkpoints import default_checkpoint, resolve_checkpoint
    from .outputs import check_writable, parse_formats, parse_normal_flip
    from .pipeline import check_processing_res
    from .predict import auto_batch_size, discover_images, run_predict

    scan = discover_images(source)  # skips earlier outputs, so -o may be the source folder itself
    images = scan.images
    spec = resolve_checkpoint(checkpoint or default_checkpoint(task or "depth"), task)
    fmt = parse_formats(spec.task, formats)
    res = check_processing_res(spec.processing_res if processing_res is None else processing_res, "--processing-res")
    if batch_size < 0:
        raise GenPerceptError("--batch-size must be 0 (automatic) or positive.")
    if workers < 1:
        raise GenPerceptError("--workers must be at least 1.")
    if tile_above < 0:
        raise GenPerceptError("--tile-above must be 0 (never) or a number of megapixels.")
    if normal_flip and spec.task != "normal":
        raise GenPerceptError(f"--normal-flip applies to normal models; {spec.name!r} predicts {spec.task}.")
    normal_flip = parse_normal_flip(normal_flip)
    check_writable(output, "--output", folder=True)  # creates it: after every check that could refuse the run

    from .pipeline import GenPerceptPipeline

    with console.status(f"loading checkpoint {spec.name} ({spec.task})"):
        pipe = GenPerceptPipeline.from_checkpoint(spec, device=device, dtype=dtype, compile=compile)
    pipe.tiled_decode_above = int(tile_above * 1e6) if tile_above else None
    bs = batch_size or auto_batch_size(pipe.device, res)
    console.print(
        f"{len(images)} images -> {output}  [dim]task={spec.task} res={res or 'native'} batch={bs} "
        f"device={pipe.device} dtype={str(pipe.dtype).removeprefix('torch.')}[/]", highlight=False,
    )
    start = time.perf_counter()
    with make_progress() as progress:
        report = run_predict(pipe, images, output, fmt, res, bs, skip_existing, workers, normal_flip, progress)
    elapsed = time.perf_counter() - start
    failed = scan.unreadable + report.failed  # an unreadable file or folder counts as one failed input
    for _path, message in failed:
        console.print(f"[yellow]skipped[/] {escape(message)}", highlight=False)
    summary = f"wrote {report.written} of {len(images) + len(scan.unreadable)} images in {elapsed:.1f} s"
    if report.skipped_existing:
        summary += f", {report.skipped_existing} already done"
    if failed:
        summary += f", [red]{len(failed)} failed[/]"
    for note in scan.notes():
        summary += f", {note}"
    if report.stale_removed:
        summary += f", {report.stale_removed} temporary files of an interrupted run removed"
    if pipe.recoveries:
        summary += f", {pipe.recoveries} batches re-run in fp32 after a non-finite {pipe.dtype} result"
    console.print(summary, highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def checkpoints():
    """List the named checkpoints and whether their files are already cached here."""
    from rich.table import Table

    from .checkpoints import cached_status, load_registry

    table = Table(title="GenPercept checkpoints")
    for col in ("name", "task", "hub location", "res", "cached"):
        table.add_column(col, overflow="fold")
    for name, spec in load_registry().items():
        where = f"{spec.repo}/{spec.subfolder}" + (f" + {spec.dpt_head}" if spec.dpt_head else "")
        table.add_row(name, spec.task, where, str(spec.processing_res), cached_status(spec))
    Console().print(table)


from .bench import bench_speed  # noqa: E402  (imports no torch at module level)

app.command("bench-speed")(user_errors(bench_speed))

@app.command("eval")
@user_errors
def eval_command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Benchmark: nyu, kitti, eth3d, scannet, diode[-indoor|-outdoor], nyu-normal, scannet-normal, sintel-normal, ibims-normal, vkitti-normal, dis-vd, dis-te1..4, dis-te, p3m-500-np, aim-500, hypersim-seg."),
    data_dir: Path | None = typer.Option(None, envvar="GENPERCEPT_DATA", help="Root holding the public evaluation archives (or set GENPERCEPT_DATA)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c", help="Model to run (default: the benchmark task's v2 model, unless --predictions)."),
    predictions: Path | None = typer.Option(None, help="Score predictions on disk instead: <DIR>/<sample path without suffix>_pred.npy, as `predict` writes."),
    save_predictions: Path | None = typer.Option(None, help="Also write the model's predictions here (npy, the --predictions layout)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="results JSON; a per-image CSV is written beside it."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Per-image CSV (default: beside --output)."),
    limit: int | None = typer.Option(None, help="Only the first N samples (a quick look; not comparable to the paper)."),
    processing_res: int | None = typer.Option(None, help="Override the protocol's processing resolution."),
    space: str = typer.Option("auto", help="Depth alignment space: auto (from the checkpoint), depth or disparity."),
    eth3d_subsample: str = typer.Option("reference", help="ETH3D alignment fit: reference (the published columns-only subsample) or uniform."),
    normal_mode: str = typer.Option("pooled", help="Normals: pooled (DSINE, the paper) or per_image (Marigold)."),
    normal_flip: str = typer.Option("", help="Negate these axes of the predicted normals before scoring (e.g. x)."),
    seg_convention: str = typer.Option("mmseg", help="mIoU convention: mmseg or detectron2."),
    hce: bool = typer.Option(True, "--hce/--no-hce", help="DIS: compute HCE (slowest metric)."),
    hce_variant: str = typer.Option("line", help="DIS HCE polygon fit: line (OpenCV <= 4.12, published) or segment (>= 4.13)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Score what is there even if some samples cannot be scored (a prediction missing or bad, ground truth without a valid pixel)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
):
    """Score a checkpoint (or predictions on disk) on a zero-shot benchmark with the paper's protocol."""
    from benchmarks.datasets import DATASETS
    from benchmarks.evaluate import EvalOptions, evaluate, write_outputs

    from .checkpoints import default_checkpoint, resolve_checkpoint
    from .outputs import check_writable, parse_normal_flip

    if dataset not in DATASETS:
        raise GenPerceptError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    _check_choice("--space", space, ("auto", "depth", "disparity"))
    _check_choice("--eth3d-subsample", eth3d_subsample, ("reference", "uniform"))
    _check_choice("--normal-mode", normal_mode, ("pooled", "per_image"))
    _check_choice("--seg-convention", seg_convention, ("mmseg", "detectron2"))
    _check_choice("--hce-variant", hce_variant, ("line", "segment"))
    if processing_res is not None and processing_res < 0:
        raise GenPerceptError("--processing-res must be 0 (native) or a positive number of pixels.")
    if limit is not None and limit < 1:
        raise GenPerceptError("--limit must be a positive number of samples.")
    normal_flip = parse_normal_flip(normal_flip)
    task = DATASETS[dataset].task
    if normal_flip and task != "normal":
        console.print(f"[yellow]warning:[/] --normal-flip is ignored: {escape(dataset)} is a {task} benchmark, "
                      "not a normal one.", highlight=False)
        normal_flip = ""
    if save_predictions is not None and predictions is not None:
        console.print("[yellow]warning:[/] --save-predictions is ignored with --predictions (no model runs).",
                      highlight=False)
        save_predictions = None
    # refuse unwritable targets before any data is read or a model runs
    if output is not None:
        check_writable(output, "--output")
    if csv_path is not None:
        check_writable(csv_path, "--csv")
    elif output is not None:
        csv_path = check_writable(output.with_name(output.stem + "_per_image.csv"), "the per-image CSV")
    if save_predictions is not None:
        check_writable(save_predictions, "--save-predictions", folder=True)
    if predictions is None:  # the model runs: a checkpoint that does not resolve is refused before the data is read
        checkpoint = checkpoint or default_checkpoint(task)
        resolve_checkpoint(checkpoint)
    opts = EvalOptions(
        dataset=dataset, data_dir=data_dir, checkpoint=checkpoint if predictions is None else None,
        predictions=predictions, save_predictions=save_predictions, limit=limit, processing_res=processing_res,
        space=space if predictions is None or checkpoint is None else _space_of(checkpoint, space, task),
        eth3d_subsample=eth3d_subsample, normal_mode=normal_mode, normal_flip=normal_flip,
        seg_convention=seg_convention, with_hce=hce, hce_variant=hce_variant, device=device, dtype=dtype,
    )
    with make_progress() as progress:
        result = evaluate(opts, progress)
    print_eval_result(result)
    write_outputs(result, output, csv_path)
    for problem in result.problems[:20]:
        console.print(f"[yellow]problem[/] {escape(problem)}", highlight=False)
    if len(result.problems) > 20:
        console.print(f"... and {len(result.problems) - 20} more problems", highlight=False)
    if result.problems:
        console.print(f"[red]{len(result.problems)} samples could not be scored[/]; the metrics cover "
                      f"{result.n_images} samples" + ("" if allow_missing else " (pass --allow-missing to accept)."))
        if not allow_missing:
            raise typer.Exit(1)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GenPerceptError(f"{option} must be one of {', '.join(choices)}, not {value!r}.")


def _space_of(checkpoint: str, space: str, task: str) -> str:
    """With --predictions, --checkpoint is not run: it only says what depth files mean (depth or
    disparity). Warns that it is not run, or that it is ignored when it says nothing."""
    if task != "depth" or space != "auto":
        reason = "the files are scored as they are" if task != "depth" else f"--space {space} says what the files hold"
        console.print(f"[yellow]warning:[/] --checkpoint {escape(checkpoint)} is ignored with --predictions ({reason}).",
                      highlight=False)
        return space
    from .checkpoints import resolve_checkpoint

    space = "disparity" if resolve_checkpoint(checkpoint).task == "disparity" else "depth"
    console.print(f"[yellow]warning:[/] --checkpoint {escape(checkpoint)} is not run with --predictions; it only says "
                  f"that the files hold {space}, so they are aligned in {space} space.", highlight=False)
    return space


def print_eval_result(result) -> None:
    from rich.table import Table

    title = f"{result.dataset}: {result.n_images} images" + (f", checkpoint {result.checkpoint}" if result.checkpoint else "")
    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("ours", justify="right")
    table.add_column(f"paper ({result.paper_label})" if result.paper_label else "paper", justify="right")
    paper = result.paper or {}
    for key, value in result.metrics.items():
        if isinstance(value, dict):
            continue  # per-class IoU lives in the JSON
        table.add_row(key, _fmt(value), _fmt(paper.get(key)))
    for name, metrics in result.subsets.items():
        table.add_row(f"[dim]{name}[/]", "", "")
        for key in ("maxf", "mae", "hce"):
            table.add_row(f"[dim]  {key}[/]", _fmt(metrics.get(key)), "")
    Console().print(table)
    protocol = ", ".join(f"{k}={v}" for k, v in result.protocol.items() if v is not None)
    console.print(f"[dim]protocol: {escape(protocol)}[/]", highlight=False)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _raise_terminated(signum, frame):
    raise Terminated()


def main() -> None:
    """Console-script entry point; SIGTERM (a job scheduler stopping us) unwinds like Ctrl-C."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
    sys.exit(app())


if __name__ == "__main__":
    main()
