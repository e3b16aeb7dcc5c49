"""The terminal the commands write to: messages on stderr, and the progress bar."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def tolerate_narrow_encodings() -> None:
    """Under an ASCII locale (LC_ALL=C with PYTHONUTF8=0) stdout cannot encode "²", "ᾱ" or "→" and Python
    raises on the first one; there each such character is written as "?" instead (stdout and stderr)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "²ᾱ→–·".encode(stream.encoding or "ascii")
        except (LookupError, UnicodeEncodeError):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="replace")


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
