"""The SD1.5 parts of Meta Prompts on diffusers building blocks: the U-Net as a multi-scale feature
extractor driven by a learned timestep embedding, the VAE encoder, and the CompVis <-> diffusers key names.

The released checkpoints use CompVis names (`input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`);
our modules are diffusers' `UNet2DConditionModel` and `AutoencoderKL` encoder. The name tables are built
from our own modules (diffusers name -> CompVis name), so one rule set serves loading and the layout test.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ...resize import resize_bilinear

SD15_UNET_CHANNELS = (320, 640, 1280, 1280)
SD15_VAE_CHANNELS = (128, 256, 512, 512)
SD15_CONTEXT_DIM = 768
SD15_HEADS = 8  # CompVis num_heads (diffusers' legacy "attention_head_dim" = 8)
# CompVis output_blocks whose outputs are the features (meta_prompts/models.py register_hier_output);
# output block k is diffusers up_blocks[k // 3], layer k % 3.
FEATURE_OUTPUT_BLOCKS = (1, 4, 7, 11)


def unet_config(channels=SD15_UNET_CHANNELS, context_dim: int = SD15_CONTEXT_DIM, norm_groups: int = 32) -> dict:
    """`UNet2DConditionModel` arguments of SD1.5 (or the same structure with other widths, for tests):
    4 levels, cross-attention in the first three down and last three up blocks, 2 layers per down block."""
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=tuple(channels), cross_attention_dim=context_dim, attention_head_dim=SD15_HEADS,
        norm_num_groups=norm_groups, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    )


def vae_config(channels=SD15_VAE_CHANNELS, norm_groups: int = 32) -> dict:
    """`AutoencoderKL` arguments of SD1.5's VAE (or narrower, same structure)."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=norm_groups,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(channels), sample_size=512,
    )


def build_unet(channels=SD15_UNET_CHANNELS, context_dim: int = SD15_CONTEXT_DIM) -> nn.Module:
    """The SD1.5 U-Net without its time MLP (Meta Prompts feeds a learned [B, 1280] embedding instead).
    Built on the current default device (use `with torch.device("meta")` to allocate nothing)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**unet_config(channels, context_dim))
    del unet.time_embedding  # replaced by the learned t_i; no release holds a trained one
    return unet


class VAEEncoder(nn.Module):
    """SD's VAE encoder + quant_conv: x [B, 3, H, W] in [-1, 1] -> posterior mean [B, 4, H/8, W/8],
    unscaled (Meta Prompts does not apply the 0.18215 factor)."""

    def __init__(self, channels=SD15_VAE_CHANNELS):
        super().__init__()
        from diffusers import AutoencoderKL

        with torch.device("meta"):  # the decoder is built only to be dropped: allocate nothing
            vae = AutoencoderKL(**vae_config(channels))
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv
        if torch.get_default_device().type != "meta":
            self.to_empty(device=torch.get_default_device())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, _logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean


def unet_features(unet: nn.Module, latent: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> list:
    """The U-Net walk of Meta Prompts: features [c0@L, c1@L/2, c2@L/4, c3@L/8] of latent [B, 4, L, L].

    emb [B, 1280]: the learned timestep embedding, given to every ResNet in place of the time MLP;
    context [B, N, 768]: the meta prompts for cross-attention. Features are the outputs of CompVis
    output_blocks 1, 4, 7 and 11 (before `out`), finest first. A skip whose size differs from the
    upsampled path (inputs not a multiple of 64) is resized bilinearly to it, as the reference does.
    """
    h = unet.conv_in(latent)
    skips = [h]
    for block in unet.down_blocks:
        for i, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            if getattr(block, "attentions", None) is not None:
                h = block.attentions[i](h, encoder_hidden_states=context, return_dict=False)[0]
            skips.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h)
            skips.append(h)
    mid = unet.mid_block
    h = mid.resnets[0](h, emb)
    h = mid.attentions[0](h, encoder_hidden_states=context, return_dict=False)[0]
    h = mid.resnets[1](h, emb)
    features = []
    for b, block in enumerate(unet.up_blocks):
        for i, resnet in enumerate(block.resnets):
            skip = skips.pop()
            if skip.shape[-2:] != h.shape[-2:]:
                skip = resize_bilinear(skip, h.shape[-2:])
            h = resnet(torch.cat([h, skip], dim=1), emb)
            if getattr(block, "attentions", None) is not None:
                h = block.attentions[i](h, encoder_hidden_states=context, return_dict=False)[0]
            if 3 * b + i in FEATURE_OUTPUT_BLOCKS:
                features.append(h)
        if block.upsamplers is not None:
            h = block.upsamplers[0](h)
    return features[::-1]


def unet_out(unet: nn.Module, feature: torch.Tensor) -> torch.Tensor:
    """SD's output head (GroupNorm -> SiLU -> conv 320->4) on the finest feature: the refinement feedback,
    [B, 320, L, L] -> latent [B, 4, L, L]."""
    return unet.conv_out(F.silu(unet.conv_norm_out(feature)))


# --- key names ---------------------------------------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(table: dict, rest: str) -> str:
    """Replace the leading module name of `rest` ("norm1.weight") by its entry in `table`."""
    for ours, theirs in table.items():
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    return rest


def unet_key_to_compvis(key: str) -> str:
    """diffusers U-Net key -> CompVis `diffusion_model` key (SD1.x layout: 3 input/output blocks per level)."""
    if m := re.fullmatch(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"input_blocks.{1 + 3 * b + j}.0.{_rename(_RESNET, rest)}"
        return f"input_blocks.{1 + 3 * b + j}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{3 + 3 * int(m[1])}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_rename(_RESNET, m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"output_blocks.{3 * b + j}.0.{_rename(_RESNET, rest)}"
        return f"output_blocks.{3 * b + j}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])  # the upsampler follows the attention, if the block has one
        return f"output_blocks.{3 * b + 2}.{1 if b == 0 else 2}.conv.{m[2]}"
    fixed = {"conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for ours, theirs in fixed.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise ValueError(f"no CompVis name for U-Net key {key!r}")


def vae_key_to_compvis(key: str) -> str:
    """diffusers VAE key (`encoder.*`, `quant_conv.*`) -> CompVis `first_stage_model` key."""
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.resnets\.(\d)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(_VAE_RESNET, m[3])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"encoder\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"encoder.mid.block_{int(m[1]) + 1}.{_rename(_VAE_RESNET, m[2])}"
    if m := re.fullmatch(r"encoder\.mid_block\.attentions\.0\.(.+)", key):
        return f"encoder.mid.attn_1.{_rename(_VAE_ATTN, m[1])}"
    fixed = {"encoder.conv_norm_out.": "encoder.norm_out.", "encoder.conv_in.": "encoder.conv_in.",
             "encoder.conv_out.": "encoder.conv_out.", "quant_conv.": "quant_conv."}
    for ours, theirs in fixed.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise ValueError(f"no CompVis name for VAE key {key!r}")


def is_vae_attention_projection(compvis_key: str) -> bool:
    """CompVis VAE mid-attention q/k/v/proj_out weights: 1x1 convs [C, C, 1, 1], diffusers Linear [C, C]."""
    return re.fullmatch(r"encoder\.mid\.attn_1\.(q|k|v|proj_out)\.weight", compvis_key) is not None
