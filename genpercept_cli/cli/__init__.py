"""The `genpercept` command line: the Typer app, its commands (one module each) and the boundary that
turns user errors into a message and an exit code. Heavy imports (torch, diffusers, benchmarks) happen
inside the commands so that `genpercept --help` answers at once."""

from __future__ import annotations

import functools

import typer
from rich.markup import escape
from typer.core import TyperGroup

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, GenPerceptError, Terminated
from .bench import bench_speed
from .checkpoints import checkpoints_command
from .console import console, make_progress, tolerate_narrow_encodings
from .convert import convert_command
from .demo import demo_command
from .eval import eval_command
from .export import export_command
from .predict import predict_command
from .train import train_command

__all__ = ["app", "console", "main", "make_progress", "user_errors"]


def _rank_prefix() -> str:
    """'rank N: ' in a data-parallel run (WORLD_SIZE > 1), else ''."""
    import os

    return f"rank {os.environ.get('RANK', '?')}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def user_errors(fn):
    """Turn the errors a user can cause into one red line and their exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GenPerceptError as exc:
            console.quiet = False  # under torchrun only rank 0 prints, but every rank reports its own error
            console.print(f"[bold red]error:[/] {_rank_prefix()}{escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            console.print(f"[yellow]{what}[/]; files already written are complete (predict resumes with --skip-existing).")
            raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from None

    return wrapper


class _Commands(TyperGroup):
    """The command group: a user error raised while a command's flags are parsed (e.g. an empty path,
    `paths.given_path`) is reported like one raised by the command itself."""

    invoke = user_errors(TyperGroup.invoke)


app = typer.Typer(
    name="genpercept",
    cls=_Commands,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help text is plain text: rich markup would read "hub id[/subfolder]" as a closing tag (typer >= 0.29).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"genpercept {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
):
    """Run, evaluate and benchmark GenPercept one-step dense-perception models."""


# In this order in `genpercept --help`.
app.command("predict")(predict_command)
app.command("checkpoints")(checkpoints_command)
app.command("bench-speed")(bench_speed)
app.command("eval")(eval_command)
app.command("convert")(convert_command)
app.command("export")(export_command)
app.command("train")(train_command)
app.command("demo")(demo_command)


def _raise_terminated(signum, frame):
    raise Terminated()


def main() -> None:
    """Console-script entry point; SIGTERM (a job scheduler stopping us) unwinds like Ctrl-C."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
    tolerate_narrow_encodings()
    from ..runtime.allocator import tune_heap

    tune_heap()  # before the first large tensor: keep activations in the heap (GENPERCEPT_MALLOC=system: off)
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    from ..runtime.distributed import exit_process

    exit_process(code)
