"""`genpercept checkpoints`: the registry, and what of it is cached here."""

from __future__ import annotations

from rich.console import Console


def checkpoints_command():
    """List the named checkpoints: where they come from, default resolution, licence, whether cached here."""
    from rich.table import Table

    from ..checkpoints import cached_status, load_registry

    table = Table(title="GenPercept checkpoints")
    for col in ("name", "family", "task", "location", "res", "licence", "cached"):
        table.add_column(col, overflow="fold")
    for name, spec in load_registry().items():
        table.add_row(name, spec.family, spec.task, _location(spec), str(spec.processing_res),
                      spec.license or "see model card", cached_status(spec))
    Console().print(table)


def _location(spec) -> str:
    """Hub repo/folder, the whole repo for pipeline families, or the page of a by-hand release."""
    if spec.is_release:
        return f"download by hand: {spec.file} from {spec.url}"
    if spec.is_pipeline:
        return spec.repo
    return f"{spec.repo}/{spec.subfolder}" + (f" + {spec.dpt_head}" if spec.dpt_head else "")
