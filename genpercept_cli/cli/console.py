"""The terminal the commands write to: messages on stderr, and the progress bar."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
# printed before a --compile run: torch.compile works silently on the first batch of each size (419 s was seen
# on a CPU for two tiny images)
COMPILE_NOTE = ("[yellow]--compile:[/] torch.compile compiles on the first batch of each image size; that may take "
                "minutes (on a CPU, many) with nothing else on screen.")


def tolerate_narrow_encodings() -> None:
    """Under an ASCII locale (LC_ALL=C with PYTHONUTF8=0) stdout cannot encode "²", "ᾱ" or "→" and Python
    raises on the first one; there each such character is written as "?" instead (stdout and stderr)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "²ᾱ→–·".encode(stream.encoding or "ascii")
        except (LookupError, UnicodeEncodeError):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="replace")


# below this many columns the bar, the rate and the elapsed time are left out
NARROW = 60


def make_progress():
    """The progress bar of every command: description, bar, count, percentage, rate, elapsed and remaining
    time. The numbers are never cut (rich cut the count to "5…" at 40 columns): a narrow terminal shortens
    the description (with "…"), and below NARROW columns the bar, the rate and the elapsed time are left out."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class DescriptionColumn(TextColumn):
        def render(self, task):  # one line, cut with "…" where the column is narrower than the text
            text = Text.from_markup(f"[bold]{task.description}", overflow="ellipsis", end="")
            text.no_wrap = True
            return text

    class RateColumn(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return TextColumn(f"{speed:.2f} img/s" if speed else "– img/s").render(task)

    def numbers(column_class, *args):
        return column_class(*args, table_column=Column(no_wrap=True))  # no_wrap: never shrunk by the table

    count = [numbers(MofNCompleteColumn), numbers(TaskProgressColumn)]
    if console.width >= NARROW:
        columns = [DescriptionColumn("", table_column=Column()), BarColumn(), *count, numbers(RateColumn, ""),
                   numbers(TimeElapsedColumn), numbers(TimeRemainingColumn)]
    else:  # the description is the only column the table may shorten
        columns = [DescriptionColumn("", table_column=Column()), *count, numbers(TimeRemainingColumn)]
    return Progress(*columns, console=console, transient=False)
