"""Tiny random Meta Prompts releases in exactly the released containers and key names (SPEC §9).

    write_tiny_release(tmp_path / "metaprompts_nyu.pth", kind="nyu")   # depth: {'model': state}
    write_tiny_release(tmp_path / "x.pth", kind="ade20k")              # seg: mmcv {'meta', 'state_dict', 'optimizer'}

Same structure as the releases (the registry entry's refinement steps, prompts per step, class count,
test protocol; every key of reference/metaprompts/*_keys.tsv, aliases and unused keys included), narrow
widths, so the real converter, model and pipeline run on them on the CPU in well under a second per image.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import torch

KINDS = ("nyu", "kitti", "ade20k", "cityscapes", "cityscapes-mapillary")
# Widths of the tiny models (the releases: U-Net 320-1280, VAE 128-512, prompts 768, heads 32/192/512).
# Depth: the fusion's deconvolution width is the reference's hard-coded 32; the decoder's (--num_filters)
# is a parameter there, so it is narrowed apart from it.
TINY_WIDTHS = dict(unet_channels=(32, 32, 64, 64), vae_channels=(32, 32, 32, 32), prompt_dim=32)
TINY_HEADS = {"depth": dict(num_prompts=6, fusion_hidden=32, decoder_hidden=8, decoder_channels=16),
              "seg": dict(num_prompts=10, seg_channels=16)}
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights")


def tiny_config(kind: str = "nyu"):
    """The registry entry `metaprompts-<kind>`'s config with tiny widths."""
    from genpercept_cli.checkpoints import load_registry
    from genpercept_cli.models.metaprompts import config_from_spec

    config = config_from_spec(load_registry()[f"metaprompts-{kind}"])
    return replace(config, **TINY_WIDTHS, **TINY_HEADS[config.task])


def _random(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Weights that keep activations O(1): fan-in scaled matrices, norms near 1, positive variances."""
    if name.endswith("num_batches_tracked"):
        return torch.tensor(7, dtype=torch.int64)
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=gen)
    if "meta_prompts" in name or re.fullmatch(r"(encoder\.)?t\d", name):  # learned prompts and t_i
        return torch.randn(shape, generator=gen)
    if len(shape) >= 2:
        return torch.randn(shape, generator=gen) / math.prod(shape[1:]) ** 0.5
    if name.endswith("weight") and len(shape) == 1:  # GroupNorm / BatchNorm / LayerNorm scales
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    return 0.1 * torch.randn(shape, generator=gen)  # biases, running means


def tiny_release_state(kind: str = "nyu", seed: int = 0, **widths) -> dict[str, torch.Tensor]:
    """The state dict a tiny release holds, with release key names (aliases and unused keys included);
    `widths` override tiny_config's (e.g. decoder_hidden=4)."""
    from genpercept_cli.models.metaprompts.convert import alias_names, release_layout

    config = replace(tiny_config(kind), **widths)
    gen = torch.Generator().manual_seed(seed)
    state = {name: _random(name, shape, gen) for name, (_, shape, _) in release_layout(config).items()}
    for alias, original in alias_names(config).items():
        state[alias] = state[original].clone()  # mmcv's weights_to_cpu stores separate copies
    enc = "encoder." if config.task == "depth" else ""
    state[f"{enc}encoder_vq.post_quant_conv.weight"] = torch.randn(4, 4, 1, 1, generator=gen)
    state[f"{enc}encoder_vq.post_quant_conv.bias"] = torch.randn(4, generator=gen)
    if config.task == "seg":  # the segmentation model keeps SD's (unused) time MLP and schedule buffers
        c0 = config.unet_channels[0]
        unet = "unet.unet.diffusion_model.time_embed"
        state |= {f"{unet}.0.weight": torch.randn(4 * c0, c0, generator=gen), f"{unet}.0.bias": torch.zeros(4 * c0),
                  f"{unet}.2.weight": torch.randn(4 * c0, 4 * c0, generator=gen), f"{unet}.2.bias": torch.zeros(4 * c0)}
        state |= {f"sd_model.{name}": torch.rand(1000, generator=gen) for name in SCHEDULE_BUFFERS}
    return state


def write_tiny_release(path, kind: str = "nyu", seed: int = 0) -> Path:
    """Save a tiny release of `kind` (nyu, kitti, ade20k, cityscapes, cityscapes-mapillary) at `path`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_release_state(kind, seed)
    if tiny_config(kind).task == "depth":
        container = {"model": state}
    else:
        meta = {"mmseg_version": "0.30.0", "config": "# tiny test release", "iter": 80000, "epoch": 1,
                "CLASSES": [f"class{i}" for i in range(4)], "PALETTE": [[0, 0, 0]] * 4}
        container = {"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}
    torch.save(container, path)
    return path


def write_tiny_converted(folder, kind: str = "nyu", seed: int = 0, **overrides) -> Path:
    """A converted folder (model.safetensors + genpercept.json) of the tiny release of `kind`, for
    `--checkpoint FOLDER`; `overrides` change the test protocol (e.g. img_scale=(96, 64), crop=64,
    stride=32 so a segmentation test does not run at the released 512-2048 px scales)."""
    from genpercept_cli.models.metaprompts.convert import convert_release, write_converted

    config = replace(tiny_config(kind), **overrides)
    converted = convert_release(tiny_release_state(kind, seed), config, f"tiny {kind} release")
    return write_converted(converted.state, Path(folder), converted.config)
