"""`genpercept train`: a TOML config (+ --set overrides) onto `train.engine`, with a progress bar.

Several processes: `accelerate launch -m genpercept_cli train ...` or `torchrun -m genpercept_cli train ...`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .console import console, make_progress
from .paths import given_path


def train_command(
    config: Path | None = typer.Option(None, "--config", parser=given_path("--config"), help="TOML file with [model], [[data.sources]], [optim], ... (examples/train/)."),
    overrides: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override one setting, e.g. --set optim.lr=1e-5 (repeatable)."),
    output: Path | None = typer.Option(None, "--output", "-o", parser=given_path("--output"), help="Run folder (checkpoints, loss.jsonl); resumes from its last checkpoint. Default: the config's output."),
):
    """Fine-tune a one-step GenPercept model (the paper's recipe) on your own data."""
    from ..train.config import load_config

    items = list(overrides or []) + ([f"output={_toml_string(str(output))}"] if output is not None else [])
    cfg = load_config(config, items)  # every bad value refused here, before torch is imported

    validator = eval_validator(cfg)
    from ..train.engine import Trainer

    console.print(f"train {cfg.model.task}: loading the model and checking the data", highlight=False)  # seconds
    with console.status("loading the model and checking the data"):
        trainer = Trainer(cfg, validator)
    console.quiet = not trainer.acc.is_main_process
    o = cfg.optim
    resumed = f", resuming {trainer.resumed_from.name}" if trainer.resumed_from else ""
    console.print(
        f"training {cfg.model.task} -> {escape(str(trainer.run))}  [dim]steps={cfg.steps} batch={o.effective_batch} "
        f"({trainer.acc.num_processes} processes x {trainer.micro_steps} x {o.batch_size}) "
        f"samples={sum(len(s) for s in trainer.sources)} device={trainer.acc.device}"
        f" precision={_precision(trainer.acc.mixed_precision)}{_variant(cfg)}{resumed}[/]", highlight=False,
    )
    if trainer.step >= cfg.steps:
        console.print(f"already at step {trainer.step} of {cfg.steps}; raise steps to train further.")
        return
    with make_progress() as progress:
        task = progress.add_task("train", total=(cfg.steps - trainer.step) * o.effective_batch)

        def on_step(record):
            progress.update(task, advance=o.effective_batch, description=f"step {record.step} loss {record.loss:.4f}")

        records = trainer.fit(on_step if trainer.acc.is_main_process else None)
    if records:
        console.print(f"done: step {trainer.step}, loss {records[-1].loss:.4f}; checkpoints in "
                      f"{escape(str(trainer.run))} (genpercept predict --checkpoint {escape(str(trainer.run))}/checkpoint-{trainer.step})",
                      highlight=False)


def eval_validator(cfg):
    """`genpercept eval --limit` of cfg.validation on a checkpoint folder -> its metrics; None when no dataset
    is configured. An unknown dataset is refused here, before training starts."""
    v = cfg.validation
    if not v.dataset:
        return None
    from benchmarks.datasets import DATASETS
    from benchmarks.evaluate import EvalOptions, evaluate

    from ..train.config import ConfigError

    if v.dataset not in DATASETS:
        raise ConfigError(f"validation.dataset must be one of {', '.join(DATASETS)}, not {v.dataset!r}.")

    def validate(checkpoint: Path) -> dict:
        options = EvalOptions(dataset=v.dataset, data_dir=v.data_dir or None, checkpoint=str(checkpoint), limit=v.limit)
        return evaluate(options).metrics

    return validate


def _precision(mixed_precision: str) -> str:
    """The precision the accelerator trains in (mixed_precision = "auto" resolved): fp16, bf16, or fp32 for "no"."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def _variant(cfg) -> str:
    """The model options in effect, for the start line ("" for the plain full fine-tune)."""
    m = cfg.model
    return (f" dpt_head(width {m.dpt_features})" if m.dpt_head else "") + (f" lora_rank={m.lora_rank}" if m.lora_rank else "")


def _toml_string(text: str) -> str:
    """A TOML basic string for `text` (what --set parses)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
