"""Checkpoints in the released layout, plus what resuming needs:

    RUN/checkpoint-N/unet_<task>/{config.json, diffusion_pytorch_model.safetensors, genpercept.json}
    RUN/checkpoint-N/vae/{config.json, diffusion_pytorch_model.safetensors}      (the frozen VAE, copied)
    RUN/checkpoint-N/training_state.pt                                           (optimiser, lr, data plan)

With model.dpt_head the U-Net folder is `unet_<task>_dpt_head/` (no conv_norm_out / conv_out weights, as
the release's `unet_disparity_dpt_head_v2/`) and the head sits beside it in `dpt_head_identity/`
(model.safetensors + config.json with its widths). LoRA adapters are merged into the U-Net's weights
(W + scale · B A), so the layout is the same with or without them; the adapters themselves go into
training_state.pt for resuming.

`genpercept predict --checkpoint RUN/checkpoint-N` loads it with no --task: genpercept.json states the
task, the prompt embedding, the inference timestep and whether a DPT head belongs to it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import safetensors.torch
import torch

from ..checkpoints import MODEL_FILES, SPEC_FILE
from ..dpt import WEIGHTS_FILE as DPT_WEIGHTS_FILE
from ..errors import CheckpointError
from ..files import atomic_write, disk_full_error, is_disk_full
from .config import TrainConfig
from .lora import merged_state_dict

STATE_FILE = "training_state.pt"
DPT_FOLDER = "dpt_head_identity"  # the release's name (checkpoints._find_dpt_dir looks for dpt_head*)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def inference_timestep(cfg: TrainConfig) -> int:
    """The timestep the exported model runs at: the fixed training t, or 1 (the released models) after random t."""
    return 1 if cfg.model.timestep == "random" else int(cfg.model.timestep)


def unet_folder(cfg: TrainConfig) -> str:
    """The U-Net folder's name in a checkpoint: unet_<task>, or unet_<task>_dpt_head."""
    return f"unet_{cfg.model.task}" + ("_dpt_head" if cfg.model.dpt_head else "")


def checkpoint_spec(cfg: TrainConfig) -> dict:
    """genpercept.json: what the checkpoint is (checkpoints._read_spec_file reads it back)."""
    spec = {"task": cfg.model.task, "family": "genpercept", "embedding": cfg.model.embedding,
            "family_params": {"timestep": inference_timestep(cfg)}}
    return {**spec, "dpt_head": True} if cfg.model.dpt_head else spec


def save_checkpoint(run: Path, step: int, model, cfg: TrainConfig, vae_dir: Path, state: dict) -> Path:
    """Write RUN/checkpoint-`step` (module docstring) of `model` (a OneStepModel: its unet, and its
    dpt_head when there is one) through a temporary folder renamed when complete, so a crash mid-save
    never leaves a checkpoint that resuming would pick up; returns its path. On any error the temporary
    folder is removed (a full disk raises DiskFullError naming the checkpoint)."""
    final = run / f"checkpoint-{step}"
    tmp = run / f".checkpoint-{step}.tmp"
    for stale in run.glob(".checkpoint-*.tmp"):  # this save's, or a killed run's
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _write_checkpoint(tmp, model, cfg, vae_dir, state)
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_disk_full(exc, tmp)  # before the removal frees the space
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise disk_full_error(final) from None
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _write_checkpoint(folder: Path, model, cfg: TrainConfig, vae_dir: Path, state: dict) -> None:
    unet_dir = folder / unet_folder(cfg)
    save_weights(model.unet, unet_dir, "diffusion_pytorch_model.safetensors")
    model.unet.save_config(unet_dir)
    (unet_dir / SPEC_FILE).write_text(json.dumps(checkpoint_spec(cfg), indent=2) + "\n", encoding="utf-8")
    if model.dpt_head is not None:
        head = model.dpt_head
        save_weights(head, folder / DPT_FOLDER, DPT_WEIGHTS_FILE)
        widths = {"neck_hidden_sizes": list(head.in_channels), "fusion_hidden_size": head.features}
        (folder / DPT_FOLDER / "config.json").write_text(json.dumps(widths) + "\n", encoding="utf-8")
    (folder / "vae").mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(vae_dir / name, folder / "vae" / name)
    torch.save(state, folder / STATE_FILE)


def save_weights(module: torch.nn.Module, folder: Path, name: str) -> None:
    """`module`'s weights, LoRA adapters merged (train.lora), as folder/`name` (safetensors, one file)."""
    state = {k: v.contiguous() for k, v in merged_state_dict(module).items()}
    # atomic_write: safetensors creates its file 0600; the weights get the umask's mode, as predict's outputs
    atomic_write(folder / name, lambda tmp: safetensors.torch.save_file(state, str(tmp), metadata={"format": "pt"}))


def prune_states(run: Path, keep: int) -> None:
    """Delete training_state.pt (the optimiser state: twice the U-Net's size) from all but the `keep` newest
    checkpoints; their weights stay, for predict and eval."""
    found = sorted((int(m.group(1)), p) for p in run.glob("checkpoint-*")
                   if (m := _CHECKPOINT.fullmatch(p.name)) and (p / STATE_FILE).is_file())
    for _, path in found[: max(len(found) - keep, 0)]:
        (path / STATE_FILE).unlink()


def _checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(N, RUN/checkpoint-N) for every checkpoint folder in `run`, by N."""
    return sorted((int(m.group(1)), p) for p in run.glob("checkpoint-*") if (m := _CHECKPOINT.fullmatch(p.name)))


def latest_checkpoint(run: Path) -> Path | None:
    """The complete checkpoint-N with the largest N in `run` (one with its training state), or None."""
    found = [p for _, p in _checkpoints(run) if (p / STATE_FILE).is_file()]
    return found[-1] if found else None


def resume_point(run: Path) -> tuple[Path | None, dict | None]:
    """(the checkpoint training resumes from, its training state): the newest checkpoint-N in `run`, or
    (None, None) when `run` holds none.

    The newest checkpoint without its training state (deleted, pruned by hand) or with an unreadable one
    is refused with a sentence naming the newest complete one to go back to: starting over, or from an
    older checkpoint, would overwrite the later ones.
    """
    found = _checkpoints(run) if run.is_dir() else []
    if not found:
        return None, None
    newest = found[-1][1]
    older = next((p for _, p in reversed(found[:-1]) if (p / STATE_FILE).is_file()), None)
    if older is None:
        fix = "train into a new output folder to start over"
    else:
        fix = f"move {newest.name} out of {run} to resume from {older.name}, or train into a new output folder"
    if not (newest / STATE_FILE).is_file():
        raise CheckpointError(f"{newest} has no {STATE_FILE} (the optimiser state resuming needs); {fix}.")
    try:
        return newest, load_state(newest)
    except Exception as exc:  # a truncated zip, a pickle weights_only refuses, a disk error
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{newest / STATE_FILE} is corrupt ({reason}); {fix}.") from None


def load_state(checkpoint: Path) -> dict:
    """The training state saved beside the weights (tensors and plain types only: weights_only)."""
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
