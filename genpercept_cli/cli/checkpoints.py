"""`genpercept checkpoints`: the registry, and what of it is cached here."""

from __future__ import annotations

from rich.console import Console


def checkpoints_command():
    """List the named checkpoints: where they come from, default resolution, licence, whether cached here; and the
    output formats each task accepts."""
    from ..checkpoints import cached_status, load_registry
    from ..releases import checkpoint_home
    from ..tasks import formats_summary

    registry = load_registry()
    width = max(len(name) for name in registry) + 2
    console = Console(highlight=False, soft_wrap=True)  # plain lines: readable at any terminal width
    console.print(f"[bold]{'name':<{width}}{'family':<13}{'task':<11}{'res':<8}cached[/]")
    for name, spec in registry.items():
        res = str(spec.processing_res) if spec.processing_res else "native"
        console.print(f"{name:<{width}}{spec.family:<13}{spec.task:<11}{res:<8}{cached_status(spec)}")
        console.print(f"[dim]{'':<{width}}{_location(spec)} · licence: {spec.license or 'see model card'}[/]")
    by_hand = [spec for spec in registry.values() if spec.is_release]
    if by_hand:
        console.print(f"Download these by hand into {checkpoint_home()} (or pass --checkpoint path/to/FILE):")
        for spec in by_hand:
            console.print(f"  {spec.file}  {spec.url}")
    console.print(f"Formats (predict --formats) per task: {formats_summary()}.")


def _location(spec) -> str:
    """Hub repo/folder, the whole repo for pipeline families, or the file of a by-hand release."""
    if spec.is_release:
        return f"{spec.file} (by hand, see below)"
    if spec.is_pipeline:
        return spec.repo
    return f"{spec.repo}/{spec.subfolder}" + (f" + {spec.dpt_head}" if spec.dpt_head else "")
