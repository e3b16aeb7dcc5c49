"""`genpercept export`: a checkpoint's whole model as one ONNX graph or OpenVINO IR, checked against PyTorch."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from .console import console
from .paths import given_path


def export_command(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="Registry name, hub id[/subfolder] or local folder."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx (ONNX Runtime, or OpenVINO reading ONNX) or openvino (OpenVINO IR)."),
    output: Path = typer.Option(..., "--output", "-o", parser=given_path("--output"), help="New folder to write the model and genpercept.json into (run it with predict -c FOLDER)."),
    task: str | None = typer.Option(None, help="The task, where the checkpoint's folder does not say."),
):
    """Export a model (encoder, U-Net, decoder or head) as one graph with dynamic batch, height and width."""
    from ..backends.export import FORMATS, MODEL_FILES, check_source, exporter_versions
    from ..checkpoints import resolve_checkpoint
    from ..files import check_writable
    from ..models.exported import BackendError

    if format not in FORMATS:
        raise BackendError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    spec = resolve_checkpoint(checkpoint, task)
    check_source(spec)
    exporter_versions(format)  # a missing extra is one sentence before anything loads
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BackendError(f"{output} already exists and is not an empty folder; choose another --output or delete it.")
    check_writable(output, "--output", folder=True)
    console.print(f"export {escape(spec.name)} ({spec.task}) -> {escape(str(output))} as {format}", highlight=False)

    from ..backends.export import export_checkpoint
    from ..checkpoints import fetch_checkpoint

    began = time.perf_counter()
    with console.status("exporting") as status:
        manifest = export_checkpoint(fetch_checkpoint(spec), format, output, lambda message: status.update(escape(message)))
    diff = manifest["family_params"]["check_max_abs_diff"]
    console.print(f"wrote {escape(str(output / MODEL_FILES[format]))} in {time.perf_counter() - began:.1f} s "
                  f"(max |Δ| to PyTorch {diff:.1g}); use it with --checkpoint {escape(str(output))}", highlight=False)
