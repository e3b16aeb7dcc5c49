"""`genpercept convert`: a released single-file checkpoint (Meta Prompts `.pth`) -> a converted folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .console import console
from .paths import given_path


def convert_command(
    file: Path = typer.Argument(..., parser=given_path("FILE"), help="The released .pth file (read safely: tensors only, nothing executed)."),
    release: str = typer.Option(..., "--release", "-r", help="Which release the file is, e.g. metaprompts-nyu (see `genpercept checkpoints`)."),
    output: Path | None = typer.Option(None, "--output", "-o", parser=given_path("--output"), help="Folder to write model.safetensors + genpercept.json into (default: the release's folder in the checkpoint home, used by --checkpoint NAME)."),
):
    """Convert a released Meta Prompts .pth into a folder that loads fast and safely (--checkpoint FOLDER)."""
    from ..checkpoints import load_registry
    from ..errors import CheckpointError
    from ..files import check_writable
    from ..releases import converted_folder

    spec = load_registry().get(release)
    if spec is None or spec.family != "metaprompts":
        names = ", ".join(name for name, s in load_registry().items() if s.family == "metaprompts")
        raise CheckpointError(f"no release {release!r} to convert; choose one of {names}.")
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist or is not a file.")
    target = check_writable(output or converted_folder(spec), "--output", folder=True)

    from ..models.metaprompts import config_from_spec
    from ..models.metaprompts.convert import load_release_file, write_converted

    console.print(f"convert {escape(str(file))} as {release} -> {escape(str(target))}", highlight=False)  # before torch
    with console.status(f"reading {escape(file.name)} as {release}"):
        converted = load_release_file(file, config_from_spec(spec))
    with console.status(f"writing {target}"):
        write_converted(converted.state, target, converted.config, release=release)
    for note in converted.notes:
        console.print(f"[dim]{escape(note)}[/]", highlight=False)
    use = release if output is None else str(target)
    console.print(f"wrote {escape(str(target))} ({len(converted.state)} tensors); use it with --checkpoint {escape(use)}",
                  highlight=False)
