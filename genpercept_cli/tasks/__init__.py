"""The tasks: per task, what a prediction means, its post-processing, its output files, how a saved one is
read back and checked, and which benchmarks score it (`base.Task`).

A new task is one module here defining its `Task`, plus its entry in `TASKS` below (or a
`register_task` call). Everything else (formats, defaults, channels, output kinds, reading for
`genpercept eval`) is read from the registry.
"""

from ..errors import GenPerceptError
from .alpha import DIS, MATTING
from .base import EXR, NPY, Format, Task
from .depth import DEPTH, DISPARITY
from .normal import NORMAL
from .seg import SEG
from .semseg import SEMSEG

__all__ = ["EXR", "NPY", "TASKS", "Format", "Task", "formats_summary", "get_task", "output_suffixes",
           "register_task"]

# The registry, in documentation order.
TASKS: dict[str, Task] = {task.name: task for task in (DEPTH, DISPARITY, NORMAL, DIS, MATTING, SEG, SEMSEG)}


def register_task(task: Task) -> Task:
    """Make `task` known by name; a later registration of the same name replaces it."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task `name`; raises GenPerceptError naming the valid tasks otherwise."""
    task = TASKS.get(name)
    if task is None:
        raise GenPerceptError(f"Unknown task {name!r}; valid tasks are: {', '.join(TASKS)}.")
    return task


def output_suffixes() -> tuple[str, ...]:
    """Every file-name suffix a task writes ("_pred.npy", "_colored.png", ...), sorted."""
    return tuple(sorted({fmt.suffix for task in TASKS.values() for fmt in task.formats.values()}))


def formats_summary() -> str:
    """Which `--formats` each task accepts, tasks with the same formats together: "depth, disparity: npy png16
    ...; normal: npy rgb exr; ..." (registry order)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, task in TASKS.items():
        groups.setdefault(tuple(task.formats), []).append(name)
    return "; ".join(f"{', '.join(names)}: {' '.join(formats)}" for formats, names in groups.items())
