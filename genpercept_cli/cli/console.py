"""The terminal the commands write to: messages on stderr, and the progress bar."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


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
