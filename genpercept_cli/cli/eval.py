"""`genpercept eval`: benchmark options checked, `benchmarks.evaluate` run, the table and problems printed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import GenPerceptError
from .console import console, make_progress
from .paths import given_path


def eval_command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Benchmark: nyu, kitti, eth3d, scannet, diode[-indoor|-outdoor], nyu-normal, scannet-normal, sintel-normal, ibims-normal, vkitti-normal, dis-vd, dis-te1..4, dis-te, p3m-500-np, aim-500, hypersim-seg, ade20k, cityscapes."),
    data_dir: Path | None = typer.Option(None, envvar="GENPERCEPT_DATA", parser=given_path("--data-dir"), help="Root holding the public evaluation archives (or set GENPERCEPT_DATA)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c", help="Model to run (default: the benchmark task's v2 model, unless --predictions)."),
    predictions: Path | None = typer.Option(None, parser=given_path("--predictions"), help="Score predictions on disk instead: <DIR>/<sample path without suffix>_pred.npy, as `predict` writes."),
    save_predictions: Path | None = typer.Option(None, parser=given_path("--save-predictions"), help="Also write the model's predictions here (npy, the --predictions layout)."),
    output: Path | None = typer.Option(None, "--output", "-o", parser=given_path("--output"), help="results JSON; a per-image CSV is written beside it."),
    csv_path: Path | None = typer.Option(None, "--csv", parser=given_path("--csv"), help="Per-image CSV (default: beside --output)."),
    limit: int | None = typer.Option(None, help="Only the first N samples (a quick look; not comparable to the paper)."),
    processing_res: int | None = typer.Option(None, help="Override the protocol's processing resolution."),
    space: str = typer.Option("auto", help="Depth alignment space: auto (from the checkpoint), depth, disparity or metric (no alignment)."),
    eth3d_subsample: str = typer.Option("reference", help="ETH3D alignment fit: reference (the published columns-only subsample) or uniform."),
    normal_mode: str = typer.Option("pooled", help="Normals: pooled (DSINE, the paper) or per_image (Marigold)."),
    normal_flip: str = typer.Option("", help="Negate these axes of the predicted normals before scoring (e.g. x)."),
    seg_convention: str = typer.Option("mmseg", help="mIoU convention: mmseg or detectron2."),
    multi_scale_flip: bool = typer.Option(False, "--multi-scale-flip", help="ade20k/cityscapes: multi-scale (1-1.5x) + flip inference, as Meta Prompts' --aug-test (default: single-scale)."),
    hce: bool = typer.Option(True, "--hce/--no-hce", help="DIS: compute HCE (slowest metric)."),
    hce_variant: str = typer.Option("line", help="DIS HCE polygon fit: line (OpenCV <= 4.12, published) or segment (>= 4.13)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Score what is there even if some samples cannot be scored (a prediction missing or bad, ground truth without a valid pixel)."),
    batch_size: int = typer.Option(0, help="Samples per model batch, bucketed by size; 0 = automatic (1 on CPU, by free memory on CUDA). Scores equal batch 1's."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (the family's reference precision: fp32 for Meta Prompts; otherwise fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    backend: str | None = typer.Option(None, help="torch, onnxruntime, openvino or auto, as for predict (default: torch, or the exported folder's engine)."),
):
    """Score a checkpoint (or predictions on disk) on a zero-shot benchmark with the paper's protocol."""
    from benchmarks.datasets import DATASETS
    from benchmarks.evaluate import EvalOptions, evaluate, write_outputs

    from ..checkpoints import default_checkpoint, resolve_checkpoint
    from ..outputs import check_writable, parse_normal_flip
    from ..runtime.distributed import GlobalProgress, from_environment, rank_device

    dist = from_environment()  # under torchrun: this rank's share of the samples, rank 0 prints and writes
    console.quiet = not dist.is_main
    if dataset not in DATASETS:
        raise GenPerceptError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    _check_choice("--space", space, ("auto", "depth", "disparity", "metric"))
    _check_choice("--eth3d-subsample", eth3d_subsample, ("reference", "uniform"))
    _check_choice("--normal-mode", normal_mode, ("pooled", "per_image"))
    _check_choice("--seg-convention", seg_convention, ("mmseg", "detectron2"))
    _check_choice("--hce-variant", hce_variant, ("line", "segment"))
    if limit is not None and limit < 1:
        raise GenPerceptError("--limit must be a positive number of samples.")
    if batch_size < 0:
        raise GenPerceptError("--batch-size must be 0 (automatic) or positive.")
    normal_flip = parse_normal_flip(normal_flip)
    task = DATASETS[dataset].task
    if normal_flip and task != "normal":
        console.print(f"[yellow]warning:[/] --normal-flip is ignored: {escape(dataset)} is a {task} benchmark, "
                      "not a normal one.", highlight=False)
        normal_flip = ""
    if multi_scale_flip and (task != "semseg" or predictions is not None):
        raise GenPerceptError("--multi-scale-flip applies to a model run on ade20k or cityscapes, "
                              f"not to {'--predictions' if predictions is not None else dataset}.")
    if save_predictions is not None and predictions is not None:
        console.print("[yellow]warning:[/] --save-predictions is ignored with --predictions (no model runs).",
                      highlight=False)
        save_predictions = None
    # refuse unwritable targets before any data is read or a model runs
    if output is not None:
        check_writable(output, "--output")
    if csv_path is not None:
        check_writable(csv_path, "--csv")
    elif output is not None:
        csv_path = check_writable(output.with_name(output.stem + "_per_image.csv"), "the per-image CSV")
    if save_predictions is not None:
        check_writable(save_predictions, "--save-predictions", folder=True)
    if predictions is None:  # the model runs: a checkpoint that does not resolve is refused before the data is read
        if checkpoint is None:
            checkpoint = getattr(DATASETS[dataset], "default_checkpoint", "") or default_checkpoint(task)
        resolve_checkpoint(checkpoint)
    elif checkpoint is not None:  # names the model that made the files (its paper row): refused now if it is none
        resolve_checkpoint(checkpoint)
    # a first line before torch, the data and the model load (seconds)
    source = f"checkpoint {checkpoint}" if predictions is None else f"the predictions in {predictions}"
    console.print(f"eval {dataset}: {escape(source)}" + (f" (first {limit} samples)" if limit else ""), highlight=False)
    opts = EvalOptions(
        dataset=dataset, data_dir=data_dir, checkpoint=checkpoint if predictions is None else None,
        predictions=predictions, predicted_by=checkpoint if predictions is not None else None,
        save_predictions=save_predictions, limit=limit, processing_res=processing_res,
        space=space if predictions is None or checkpoint is None else _space_of(checkpoint, space, task),
        eth3d_subsample=eth3d_subsample, normal_mode=normal_mode, normal_flip=normal_flip,
        seg_convention=seg_convention, multi_scale_flip=multi_scale_flip, with_hce=hce, hce_variant=hce_variant, device=rank_device(device, dist),
        dtype=dtype, batch_size=batch_size, backend=backend,
    )
    with make_progress() as progress:
        tracker = GlobalProgress(progress if dist.is_main else None, dist)
        result = evaluate(opts, tracker, dist=dist)
    dist.close()
    if dist.is_main:
        print_eval_result(result)
        write_outputs(result, output, csv_path)
    for problem in result.problems[:20]:
        console.print(f"[yellow]problem[/] {escape(problem)}", highlight=False)
    if len(result.problems) > 20:
        console.print(f"... and {len(result.problems) - 20} more problems", highlight=False)
    if result.problems:
        console.print(f"[red]{len(result.problems)} samples could not be scored[/]; the metrics cover "
                      f"{result.n_images} samples" + ("" if allow_missing else " (pass --allow-missing to accept)."))
        if not allow_missing:
            raise typer.Exit(1)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise GenPerceptError(f"{option} must be one of {', '.join(choices)}, not {value!r}.")


def _space_of(checkpoint: str, space: str, task: str) -> str:
    """With --predictions, --checkpoint is not run: it names the model that made the files, so it picks the
    paper row and says what depth files mean (depth or disparity). Warns that it is not run."""
    if task != "depth" or space != "auto":
        reason = "the files are scored as they are" if task != "depth" else f"--space {space} says what the files hold"
        console.print(f"[yellow]warning:[/] --checkpoint {escape(checkpoint)} is not run with --predictions; it only "
                      f"picks the paper row ({reason}).", highlight=False)
        return space
    from benchmarks.evaluate import space_for

    from ..checkpoints import resolve_checkpoint

    space = space_for(resolve_checkpoint(checkpoint))
    held = "metric depth, so they are scored without alignment" if space == "metric" else (
        f"{space}, so they are aligned in {space} space")
    console.print(f"[yellow]warning:[/] --checkpoint {escape(checkpoint)} is not run with --predictions; it only says "
                  f"that the files hold {held}, and picks the paper row.", highlight=False)
    return space


def print_eval_result(result) -> None:
    from rich.table import Table

    title = f"{result.dataset}: {result.n_images} images" + (f", checkpoint {result.checkpoint}" if result.checkpoint else "")
    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("ours", justify="right")
    table.add_column(f"paper ({result.paper_label})" if result.paper_label else "paper", justify="right")
    paper = result.paper or {}
    for key, value in result.metrics.items():
        if isinstance(value, dict):
            continue  # per-class IoU lives in the JSON
        table.add_row(key, _fmt(value), _fmt(paper.get(key)))
    for name, metrics in result.subsets.items():
        table.add_row(f"[dim]{name}[/]", "", "")
        for key in ("maxf", "mae", "hce"):
            table.add_row(f"[dim]  {key}[/]", _fmt(metrics.get(key)), "")
    Console().print(table)
    protocol = ", ".join(f"{k}={v}" for k, v in result.protocol.items() if v is not None)
    console.print(f"[dim]protocol: {escape(protocol)}[/]", highlight=False)
    if result.paper_note:
        console.print(f"[dim]no paper row: {escape(result.paper_note)}[/]", highlight=False)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)

