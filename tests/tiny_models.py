"""Tiny random GenPercept checkpoints in exactly the released folder layout (SPEC §2).

    root/unet_<task>_v2/{config.json, diffusion_pytorch_model.safetensors}   # fp32, like the release
    root/vae/{config.json, diffusion_pytorch_model.safetensors}              # fp16, like the release

Same block types as SD2.1 (4 down/up blocks, cross-attention 1024, linear projection, 8x VAE), tiny
widths, so the real loading and pipeline code runs on them in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch  # noqa: F401  (diffusers 0.27's save_pretrained uses it without importing it)
import torch

from benchmarks.speed.presets import TINY_UNET as UNET_CONFIG  # one definition of "tiny"
from benchmarks.speed.presets import TINY_VAE as VAE_CONFIG

TASK_FOLDERS = {
    "depth": "unet_depth_v2",
    "disparity": "unet_disparity_v2",
    "normal": "unet_normal_v2",
    "dis": "unet_dis_v2",
    "matting": "unet_matting_v2",
    "seg": "unet_seg_v2",
}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights: diffusers zero-inits some output convs, which would hide bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.05))


def make_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{**UNET_CONFIG, **overrides})
    _randomise(unet, seed)
    return unet.eval()


def make_vae(seed: int = 100):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE_CONFIG)
    _randomise(vae, seed)
    return vae.eval()


def write_checkpoint_root(root: Path, tasks=tuple(TASK_FOLDERS), seed: int = 0) -> Path:
    """Write a genpercept-models-like root with one U-Net per task and the shared fp16 VAE."""
    root.mkdir(parents=True, exist_ok=True)
    make_vae(seed + 100).half().save_pretrained(root / "vae", safe_serialization=True)
    for i, task in enumerate(tasks):
        make_unet(seed + i).save_pretrained(root / TASK_FOLDERS[task], safe_serialization=True)
    return root


def write_task_repo(root: Path, task: str = "depth", seed: int = 0) -> Path:
    """A per-task repo like guangkaixu/genpercept-depth: one unet_* folder beside vae/."""
    return write_checkpoint_root(root, tasks=(task,), seed=seed)


def write_dpt_checkpoint(root: Path, seed: int = 7) -> Path:
    """`unet_disparity_dpt_head_v2/` + `dpt_head_identity/model.safetensors` + `vae/` (released layout).

    The tiny head carries a config.json with its widths (the release has none: SD2.1 widths).
    """
    import json

    from safetensors.torch import save_file

    from genpercept_cli.dpt import DPTHead

    root.mkdir(parents=True, exist_ok=True)
    make_vae(seed + 100).half().save_pretrained(root / "vae", safe_serialization=True)
    make_unet(seed).save_pretrained(root / "unet_disparity_dpt_head_v2", safe_serialization=True)
    widths = list(UNET_CONFIG["block_out_channels"])  # up-block outputs, finest first
    head = DPTHead(widths, features=8)
    _randomise(head, seed + 1)
    (root / "dpt_head_identity").mkdir()
    save_file(head.state_dict(), str(root / "dpt_head_identity" / "model.safetensors"))
    (root / "dpt_head_identity" / "config.json").write_text(
        json.dumps({"neck_hidden_sizes": widths, "fusion_hidden_size": 8})
    )
    return root
