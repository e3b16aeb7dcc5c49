"""The `genpercept` command line. Heavy imports (torch, diffusers) happen inside commands so that
`genpercept --help` answers at once."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import GenPerceptError

app = typer.Typer(
    name="genpercept",
    help="Run, evaluate and benchmark GenPercept one-step dense-perception models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)
EXIT_USER_ERROR = 2


def user_errors(fn):
    """Turn the errors a user can cause into one red line and exit code 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenPerceptError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]; finished outputs are kept: rerun with --skip-existing.")
            raise typer.Exit(130) from None

    return wrapper


def make_progress():
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

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
    task: Optional[str] = typer.Option(None, help="depth, disparity, normal, dis, matting or seg (default: from the checkpoint)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Registry name, hub id[/subfolder] or local folder (default: the task's v2 model)."),
    output: Path = typer.Option(Path("genpercept_output"), "--output", "-o", help="Output root; the input tree is mirrored below it."),
    processing_res: Optional[int] = typer.Option(None, help="Long side the model sees, in pixels; 0 = native size (default: the checkpoint's, 768)."),
    formats: Optional[str] = typer.Option(None, help="Comma-separated outputs, e.g. npy,png16,color (default: the task's)."),
    batch_size: int = typer.Option(0, help="Images per batch; 0 = automatic (1 on CPU, by free memory on CUDA)."),
    device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip images whose outputs all exist (resume)."),
    normal_flip: str = typer.Option("", help="Normals only: axes to negate before writing, e.g. 'yz' for the OpenCV frame."),
    workers: int = typer.Option(4, help="Background threads decoding images."),
):
    """Predict depth, disparity, normals, DIS, matting or segmentation for images."""
    from .checkpoints import default_checkpoint, resolve_checkpoint
    from .outputs import parse_formats
    from .predict import auto_batch_size, discover_images, run_predict

    images, ignored = discover_images(source)
    spec = resolve_checkpoint(checkpoint or default_checkpoint(task or "depth"), task)
    fmt = parse_formats(spec.task, formats)
    if processing_res is not None and processing_res < 0:
        raise GenPerceptError("--processing-res must be 0 (native) or a positive number of pixels.")
    if batch_size < 0:
        raise GenPerceptError("--batch-size must be 0 (automatic) or positive.")
    res = spec.processing_res if processing_res is None else processing_res

    from .pipeline import GenPerceptPipeline

    with console.status(f"loading checkpoint {spec.name} ({spec.task})"):
        pipe = GenPerceptPipeline.from_checkpoint(spec, device=device, dtype=dtype)
    bs = batch_size or auto_batch_size(pipe.device, res)
    console.print(
        f"{len(images)} images -> {output}  [dim]task={spec.task} res={res or 'native'} batch={bs} "
        f"device={pipe.device} dtype={str(pipe.dtype).removeprefix('torch.')}[/]", highlight=False,
    )
    start = time.perf_counter()
    with make_progress() as progress:
        report = run_predict(pipe, images, output, fmt, res, bs, skip_existing, workers, normal_flip, progress)
    elapsed = time.perf_counter() - start
    for _path, message in report.failed:
        console.print(f"[yellow]skipped[/] {message}", highlight=False)
    summary = f"wrote {report.written} of {len(images)} images in {elapsed:.1f} s"
    if report.skipped_existing:
        summary += f", {report.skipped_existing} already done"
    if report.failed:
        summary += f", [red]{len(report.failed)} failed[/]"
    if ignored:
        summary += f", {ignored} non-image files ignored"
    if pipe.recoveries:
        summary += f", {pipe.recoveries} batches re-run in fp32 after a non-finite {pipe.dtype} result"
    console.print(summary, highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def checkpoints():
    """List the named checkpoints and whether their files are already cached here."""
    from rich.table import Table

    from .checkpoints import cached_status, load_registry

    table = Table(title="GenPercept checkpoints")
    for col in ("name", "task", "hub location", "res", "cached"):
        table.add_column(col)
    for name, spec in load_registry().items():
        where = f"{spec.repo}/{spec.subfolder}" + (f" + {spec.dpt_head}" if spec.dpt_head else "")
        table.add_row(name, spec.task, where, str(spec.processing_res), cached_status(spec))
    Console().print(table)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
