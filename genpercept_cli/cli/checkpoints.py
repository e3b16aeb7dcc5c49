"""`genpercept checkpoints`: the registry, and what of it is cached here."""

from __future__ import annotations

from rich.console import Console


def checkpoints_command():
    """List the named checkpoints and whether their files are already cached here."""
    from rich.table import Table

    from ..checkpoints import cached_status, load_registry

    table = Table(title="GenPercept checkpoints")
    for col in ("name", "task", "hub location", "res", "cached"):
        table.add_column(col, overflow="fold")
    for name, spec in load_registry().items():
        where = f"{spec.repo}/{spec.subfolder}" + (f" + {spec.dpt_head}" if spec.dpt_head else "")
        table.add_row(name, spec.task, where, str(spec.processing_res), cached_status(spec))
    Console().print(table)
