"""Checkpoints in the released layout, plus what resuming needs:

    RUN/checkpoint-N/unet_<task>/{config.json, diffusion_pytorch_model.safetensors, genpercept.json}
    RUN/checkpoint-N/vae/{config.json, diffusion_pytorch_model.safetensors}      (the frozen VAE, copied)
    RUN/checkpoint-N/training_state.pt                                           (optimiser, lr, data plan)

`genpercept predict --checkpoint RUN/checkpoint-N` loads it with no --task: genpercept.json states the
task, the prompt embedding and the inference timestep.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import safetensors.torch  # noqa: F401  (diffusers 0.27's save_pretrained uses it without importing it)
import torch

from ..checkpoints import MODEL_FILES, SPEC_FILE
from .config import TrainConfig

STATE_FILE = "training_state.pt"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def inference_timestep(cfg: TrainConfig) -> int:
    """The timestep the exported model runs at: the fixed training t, or 1 (the released models) after random t."""
    return 1 if cfg.model.timestep == "random" else int(cfg.model.timestep)


def checkpoint_spec(cfg: TrainConfig) -> dict:
    """genpercept.json: what the checkpoint is (checkpoints._read_spec_file reads it back)."""
    return {"task": cfg.model.task, "family": "genpercept", "embedding": cfg.model.embedding,
            "family_params": {"timestep": inference_timestep(cfg)}}


def save_checkpoint(run: Path, step: int, unet, cfg: TrainConfig, vae_dir: Path, state: dict) -> Path:
    """Write RUN/checkpoint-`step` (module docstring) through a temporary folder, so a crash mid-save never
    leaves a checkpoint that resuming would pick up; returns its path."""
    final = run / f"checkpoint-{step}"
    tmp = run / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unet_dir = tmp / f"unet_{cfg.model.task}"
    unet.save_pretrained(unet_dir, safe_serialization=True)
    (unet_dir / SPEC_FILE).write_text(json.dumps(checkpoint_spec(cfg), indent=2) + "\n")
    (tmp / "vae").mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(vae_dir / name, tmp / "vae" / name)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def prune_states(run: Path, keep: int) -> None:
    """Delete training_state.pt (the optimiser state: twice the U-Net's size) from all but the `keep` newest
    checkpoints; their weights stay, for predict and eval."""
    found = sorted((int(m.group(1)), p) for p in run.glob("checkpoint-*")
                   if (m := _CHECKPOINT.fullmatch(p.name)) and (p / STATE_FILE).is_file())
    for _, path in found[: max(len(found) - keep, 0)]:
        (path / STATE_FILE).unlink()


def latest_checkpoint(run: Path) -> Path | None:
    """The complete checkpoint-N with the largest N in `run` (one with its training state), or None."""
    found = [(int(m.group(1)), p) for p in run.glob("checkpoint-*")
             if (m := _CHECKPOINT.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def load_state(checkpoint: Path) -> dict:
    """The training state saved beside the weights (tensors and plain types only: weights_only)."""
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
