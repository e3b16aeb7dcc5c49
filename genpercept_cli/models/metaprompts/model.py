"""Meta Prompts (SPEC §9): SD1.5 with learnable meta prompts instead of text, learned per-step timestep
embeddings, recurrent refinement of the U-Net features, and dense heads on its multi-scale features.

    x in [-1, 1] -> (depth: resize to multiples of 64) -> VAE mean (unscaled) -> latent
    for step i = 1..R:  latent = SD out(features) if i > 1;  features = U-Net(latent, emb = t_i, context_i)
    depth: fuse features -> 768 ch -> einsum with the context -> 50 ch -> decoder -> sigmoid x max_depth
    seg:   per level: up x2, conv -> 768, GN, ReLU -> einsum with the prompts -> 150 ch -> UPerHead -> logits

Both models run the paper's test-time protocol inside `forward` (shift windows + flip for depth, keep-ratio
resize + sliding windows (+ multi-scale and flip) for segmentation), so the pipeline feeds native sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch
from torch import nn

from ...errors import CheckpointError
from ...resize import resize_bilinear
from ..base import DenseModel
from .heads import DepthDecoder, DepthFusion, DepthOutput, FCNHead, SegNeck, UPerHead
from .tta import DepthTTA, SegTTA, depth_flip_shift_windows, fill_uncovered_columns, seg_multi_scale_flip
from .unet import (
    SD15_CONTEXT_DIM,
    SD15_UNET_CHANNELS,
    SD15_VAE_CHANNELS,
    VAEEncoder,
    build_unet,
    unet_features,
    unet_out,
)

TASKS = ("depth", "seg")


@dataclass(frozen=True)
class MetaPromptsConfig:
    """What one release is: its task head, refinement, prompts, test-time protocol and (for tests) widths.

    Depth: max_depth in metres, input resized to ((h // 64 + resize_scale) * 64, ...), shift windows of
    the image height `shift_size` per image. Segmentation: `img_scale` (long, short) keep-ratio resize,
    sliding `crop` windows at `stride`, `num_classes` logits of the label set `labels`.
    """

    task: str = "depth"
    refine_step: int = 3
    num_prompts: int = 50
    prompt_dim: int = SD15_CONTEXT_DIM
    unet_channels: tuple[int, ...] = SD15_UNET_CHANNELS
    vae_channels: tuple[int, ...] = SD15_VAE_CHANNELS
    max_depth: float = 10.0
    resize_scale: int = 1
    shift_size: int = 2
    fusion_hidden: int = 32  # deconvolution filters of the fusion's layer2-4 (fixed at 32 in the reference)
    decoder_hidden: int = 32  # deconvolution filters of the decoder (the reference's --num_filters)
    decoder_channels: int = 192
    num_classes: int = 150
    labels: str | None = None
    crop: int = 512
    stride: int = 341
    img_scale: tuple[int, int] = (2048, 512)
    seg_channels: int = 512  # UPerHead / FCN width
    head_groups: int = 16

    def __post_init__(self):
        for name in ("unet_channels", "vae_channels", "img_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.task not in TASKS:
            raise CheckpointError(f"Meta Prompts task must be one of {', '.join(TASKS)}, not {self.task!r}.")
        if self.refine_step < 1:
            raise CheckpointError(f"refine_step must be at least 1, not {self.refine_step}.")

    @classmethod
    def from_params(cls, params: dict) -> MetaPromptsConfig:
        """From a spec's `family_params` / `genpercept.json` (unknown keys refused)."""
        params = dict(params)
        if "depth_hidden" in params:  # folders converted before the two widths were separate: both
            hidden = params.pop("depth_hidden")
            params = {"fusion_hidden": hidden, "decoder_hidden": hidden} | params
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise CheckpointError(
                f"unknown Meta Prompts parameters: {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**params)

    def to_params(self) -> dict:
        """JSON-ready dict (tuples as lists), the inverse of `from_params`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def time_dim(self) -> int:
        return 4 * self.unet_channels[0]  # SD's time-embedding width: 1280 = 4 x 320


class PromptAdapter(nn.Module):
    """Linear -> GELU -> Linear on the meta prompts [N, D] (no residual, as released)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.fc(prompts)


class _MetaPromptsBase(DenseModel):
    """VAE encoder + U-Net + learned timestep embeddings and the recurrent refinement."""

    def __init__(self, config: MetaPromptsConfig):
        super().__init__()
        self.config = config
        self.vae = VAEEncoder(config.vae_channels)
        self.unet = build_unet(config.unet_channels, config.prompt_dim)
        self.timesteps = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, config.time_dim)) for _ in range(config.refine_step)])

    def processed_size(self, height: int, width: int, processing_res: int) -> tuple[int, int]:
        """The native size: the model resizes internally, as the paper's test protocol does."""
        return height, width

    def context(self, step: int, batch: int) -> torch.Tensor:
        """The cross-attention context of refinement step `step` (0-based), [batch, N, D]."""
        raise NotImplementedError

    def refine(self, latent: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """latent [B, 4, L, L'] -> (the last step's features [c0@L, c1@L/2, c2@L/4, c3@L/8], its context).

        Step i > 1 starts from SD's output head applied to the previous step's finest feature.
        """
        batch = latent.shape[0]
        features: list[torch.Tensor] = []
        context = None
        for step in range(self.config.refine_step):
            context = self.context(step, batch)  # [B,N,D]
            if step > 0:
                latent = unet_out(self.unet, features[0])  # [B,4,L,L']
            emb = self.timesteps[step].expand(batch, -1)  # [B,1280]: in place of the time MLP
            features = unet_features(self.unet, latent, emb, context)
        return features, context


def _prompt_maps(features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Re-weight [B, D, h, w] features by the prompts [B, N, D] -> [B, N, h, w]."""
    return torch.einsum("bchw,bnc->bnhw", features, context)


class MetaPromptsDepth(_MetaPromptsBase):
    """Metric depth. forward(x): x [B, 3, H, W] in [-1, 1] -> metres [B, 1, H, W] in (0, max_depth),
    flip-averaged over shift windows as wide as the image is high (`tta`)."""

    task = "depth"
    output_kind = "metric_depth"
    channels = 1

    def __init__(self, config: MetaPromptsConfig):
        super().__init__(config)
        c = config
        self.meta_prompts = nn.ParameterList(
            [nn.Parameter(torch.zeros(c.num_prompts, c.prompt_dim)) for _ in range(c.refine_step)])
        self.adapters = nn.ModuleList([PromptAdapter(c.prompt_dim) for _ in range(c.refine_step)])
        self.fusion = DepthFusion(c.unet_channels, c.fusion_hidden, c.prompt_dim, c.head_groups)
        self.decoder = DepthDecoder(c.num_prompts, c.decoder_hidden, c.decoder_channels)
        self.head = DepthOutput(c.decoder_channels)
        self.tta = DepthTTA(flip=True, shift_size=c.shift_size)

    def context(self, step: int, batch: int) -> torch.Tensor:
        return self.adapters[step](self.meta_prompts[step]).expand(batch, -1, -1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """One window batch: x [N, 3, h, w] in [-1, 1] -> metres [N, 1, h, w]."""
        h, w = x.shape[-2:]
        grow = self.config.resize_scale
        x = resize_bilinear(x, ((h // 64 + grow) * 64, (w // 64 + grow) * 64))  # the U-Net wants multiples of 64
        features, context = self.refine(self.vae(x))
        maps = _prompt_maps(self.fusion(features), context)  # [N,50,L,L']
        maps = resize_bilinear(maps, (h // 8, w // 8))
        raw = self.head(self.decoder(maps))  # [N,1,8(h//8),8(w//8)]
        return torch.sigmoid(resize_bilinear(raw, (h, w))) * self.config.max_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = depth_flip_shift_windows(self.predict, x, None, self.tta.shift_size, self.tta.flip)
        # Columns no window covers (KITTI: the last 9 of 1216) are NaN in the reference, which the pipeline
        # would take for an overflow; they lie outside the evaluation crop, so take the nearest covered column.
        return fill_uncovered_columns(depth)


class MetaPromptsSeg(_MetaPromptsBase):
    """Semantic segmentation. forward(x): x [B, 3, H, W] in [-1, 1] -> class probabilities [B, K, H, W]
    (softmax of the logits at the input size, averaged over the test-time augmentations)."""

    task = "semseg"
    output_kind = "class_scores"

    def __init__(self, config: MetaPromptsConfig):
        super().__init__(config)
        c = config
        self.channels = c.num_classes
        self.meta_prompts = nn.Parameter(torch.zeros(c.num_prompts, c.prompt_dim))
        self.neck = SegNeck(c.unet_channels, c.prompt_dim, c.head_groups)
        self.decode_head = UPerHead(c.num_prompts, c.seg_channels, c.num_classes)
        self.auxiliary_head = FCNHead(c.num_prompts, c.seg_channels, c.num_classes)  # training only
        self.tta = SegTTA(scales=(1.0,), flip=False)

    def context(self, step: int, batch: int) -> torch.Tensor:
        return self.meta_prompts.expand(batch, -1, -1)  # one shared prompt set, no adapter

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """One crop batch: x [N, 3, h, w] in [-1, 1] -> logits [N, K, h, w]."""
        features, context = self.refine(self.vae(x))
        levels = [_prompt_maps(self.neck.forward_level(i, f), context) for i, f in enumerate(features)]
        return resize_bilinear(self.decode_head(levels), x.shape[-2:])  # from stride 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        return seg_multi_scale_flip(self.predict, x, c.img_scale, c.crop, c.stride, c.num_classes,
                                        self.tta.scales, self.tta.flip)


def build_model_from_config(config: MetaPromptsConfig) -> _MetaPromptsBase:
    """The model for `config`, with uninitialised weights on the current default device."""
    return (MetaPromptsDepth if config.task == "depth" else MetaPromptsSeg)(config)


__all__ = ["MetaPromptsConfig", "MetaPromptsDepth", "MetaPromptsSeg", "PromptAdapter", "build_model_from_config"]
