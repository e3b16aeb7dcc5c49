"""DPT neck + head on SD2.1 U-Net up-block features: the GenPercept "disparity with DPT head" model.

Data flow (SPEC §3, DPT-head variant), widths for SD2.1 and an image of size H x W:

    U-Net up blocks, finest first   [320 @ H/8, 640 @ H/8, 1280 @ H/16, 1280 @ H/32]
    feature_upsample_0              320 @ H/8 -> nearest x2 -> 3x3 conv -> 320 @ H/4
    neck.convs[i]                   3x3 conv (no bias) to 256 channels each
    neck.fusion_stage.layers[0..3]  coarsest first: add the (resized) skip through a residual unit,
                                    refine with a second residual unit, bilinear x2, 1x1 projection
    head                            3x3 conv + ReLU, 256 -> 128 (3x3), bilinear x2, 128 -> 32 (3x3),
                                    ReLU, 32 -> 1 (1x1), identity activation -> [B, 1, H, W]

Parameter names reproduce the keys of the released `dpt_head_identity/model.safetensors` exactly
(36 tensors, 18,474,753 float32 values = 73.9 MB), so it loads with a strict key check. Residual units
have no biases; the head has its extra 3x3 projection (the release config: `add_projection = true`,
`use_bias_in_fusion_residual = false`). Fusion upsampling uses bilinear with `align_corners=True`;
only the skip resize (needed when sizes are not multiples of 64) uses `align_corners=False`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .loading import load_strict, read_config, read_weights
from .resize import resize_bilinear, resize_float

WEIGHTS_FILE = "model.safetensors"
SD21_UP_BLOCK_CHANNELS = (320, 640, 1280, 1280)
UNET_HEAD_KEYS = ("conv_out", "conv_norm_out")


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + conv(relu(conv(relu(x)))), 3x3 convs without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.convolution1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.convolution2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convolution1(F.relu(x))
        h = self.convolution2(F.relu(h))
        return x + h


class FusionBlock(nn.Module):
    """Merge a coarser fused map with one skip feature, then upsample x2 and mix with a 1x1 conv.

    The coarsest block has no skip input, hence no `residual_layer1` (as in the release).
    """

    def __init__(self, channels: int, with_skip: bool):
        super().__init__()
        if with_skip:
            self.residual_layer1 = ResidualConvUnit(channels)
        self.residual_layer2 = ResidualConvUnit(channels)
        self.projection = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:  # only for sizes that are not multiples of 64
                skip = resize_bilinear(skip, x.shape[-2:])
            x = x + self.residual_layer1(skip)
        x = self.residual_layer2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.projection(x)


class FusionStage(nn.Module):
    def __init__(self, channels: int, levels: int):
        super().__init__()
        self.layers = nn.ModuleList(FusionBlock(channels, with_skip=i > 0) for i in range(levels))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features finest first -> the finest fused map (twice the finest input's size)."""
        coarse_to_fine = list(features)[::-1]
        x = self.layers[0](coarse_to_fine[0])
        for layer, skip in zip(self.layers[1:], coarse_to_fine[1:], strict=True):
            x = layer(x, skip)
        return x


class Neck(nn.Module):
    """Project every level to `features` channels (3x3, no bias), then fuse coarse to fine."""

    def __init__(self, in_channels: Sequence[int], features: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in in_channels)
        self.fusion_stage = FusionStage(features, len(in_channels))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fusion_stage([conv(f) for conv, f in zip(self.convs, features, strict=True)])


class NearestUpsampleConv(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv (lifts the 320-ch map to 1/4 size)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class OutputHead(nn.Module):
    """256 -> 1 channel at twice the input size; identity output activation (unbounded values)."""

    def __init__(self, features: int):
        super().__init__()
        self.projection = nn.Conv2d(features, features, 3, padding=1)
        # Indices 0, 2, 4 carry the weights: the release names them head.head.{0,2,4}.
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.projection(x)))


class DPTHead(nn.Module):
    """DPT neck + head of GenPercept's disparity model; weights from `dpt_head_identity/`.

    `forward(features)` takes the four U-Net up-block outputs finest first (as returned by
    `unet_up_block_features`) and returns a raw, unnormalised map [B, 1, h, w].
    """

    def __init__(self, in_channels: Sequence[int] = SD21_UP_BLOCK_CHANNELS, features: int = 256):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"DPTHead needs 4 feature levels, got in_channels={tuple(in_channels)}.")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.features = int(features)
        self.feature_upsample_0 = NearestUpsampleConv(self.in_channels[0])
        self.neck = Neck(self.in_channels, self.features)
        self.head = OutputHead(self.features)

    def forward(
        self, features: Sequence[torch.Tensor], image_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """features: [B, C_i, h_i, w_i] finest first -> [B, 1, h, w], identity activation.

        The native output size is 32x the coarsest feature's size: the image size when it is a
        multiple of 64, larger otherwise (the U-Net rounds odd sizes up). `image_size=None` returns
        the native map, which is what the reference normalises and then resizes straight to the
        input size; pass `image_size` to get a bilinear (antialiased) resize to that size instead.
        """
        self._check(features)
        levels = [self.feature_upsample_0(features[0]), *features[1:]]  # [B,C0,2h0,2w0], ...
        out = self.head(self.neck(levels))  # [B,1,32*h3,32*w3]
        if image_size is not None:
            out = resize_float(out, tuple(image_size))
        return out

    def _check(self, features: Sequence[torch.Tensor]) -> None:
        channels = tuple(f.shape[1] for f in features)
        if channels != self.in_channels:
            raise ValueError(
                f"DPTHead expects 4 features with channels {self.in_channels} (finest first), got {channels}."
            )

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> DPTHead:
        """Load `<folder>/model.safetensors` with a strict key and shape check.

        The release ships no config.json; if one is present its `neck_hidden_sizes` and
        `fusion_hidden_size` (transformers' DPT names) override the SD2.1 defaults.
        Raises CheckpointError naming the first missing / unexpected / mis-shaped keys.
        """
        folder = Path(folder)
        config = read_config(folder) if (folder / "config.json").is_file() else {}
        try:
            in_channels = tuple(config.get("neck_hidden_sizes", SD21_UP_BLOCK_CHANNELS))
            features = int(config.get("fusion_hidden_size", 256))
            with torch.device("meta"):  # weights are assigned from the file, no random init
                head = cls(in_channels, features)
        except (TypeError, ValueError) as exc:
            where = folder / "config.json"
            raise CheckpointError(f"{where} is not a valid DPT head config ({exc}).") from None
        load_strict(head, read_weights(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE, dtype)
        return head.eval().requires_grad_(False)


def prepare_dpt_unet(unet: nn.Module) -> nn.Module:
    """Turn a diffusers UNet2DConditionModel into a feature extractor for the DPT head, in place.

    Replaces `conv_norm_out`, `conv_act` and `conv_out` by `nn.Identity`, so that
    - its state dict has no `conv_out.*` / `conv_norm_out.*` keys: load the released
      `unet_disparity_dpt_head_v2` weights through `strip_unet_head_keys` with strict=True;
    - a plain forward computes nothing after the up blocks and returns the last up block's output
      ([B, 320, h, w] for SD2.1) as `.sample`.
    Call it before loading weights (works on a meta-device module too). Returns `unet`.
    """
    unet.conv_norm_out = nn.Identity()
    unet.conv_act = nn.Identity()
    unet.conv_out = nn.Identity()
    return unet


def strip_unet_head_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the U-Net's output-layer keys (any key containing "conv_out" or "conv_norm_out")."""
    return {k: v for k, v in state_dict.items() if not any(name in k for name in UNET_HEAD_KEYS)}


def unet_up_block_features(
    unet: nn.Module,
    latent: torch.Tensor,
    timestep: torch.Tensor | int,
    encoder_hidden_states: torch.Tensor,
) -> list[torch.Tensor]:
    """Outputs of the U-Net's up blocks, finest first: [B,320,h,w], [B,640,h,w], [B,1280,h/2,w/2],
    [B,1280,h/4,w/4] for SD2.1 and a latent [B,4,h,w] whose sides are multiples of 8.

    For other sizes diffusers upsamples to the skip sizes (ceil halving on the way down), e.g. a
    10x14 latent gives 10x14, 10x14, 5x7, 3x4. Captured with forward hooks on `unet.up_blocks`, so it
    follows whatever the installed diffusers does; after `prepare_dpt_unet` the forward stops there.
    `unet` must be the plain module (a DDP wrapper has no `up_blocks`): training wraps U-Net + head in one
    module that calls this from its forward (train.engine.DPTNet), so DDP still syncs the gradients.
    """
    blocks = list(unet.up_blocks)
    captured: list[torch.Tensor | None] = [None] * len(blocks)

    def keeper(index: int):
        def hook(module, args, output):
            captured[index] = output

        return hook

    handles = [block.register_forward_hook(keeper(i)) for i, block in enumerate(blocks)]
    try:
        unet(latent, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)
    finally:
        for handle in handles:
            handle.remove()
    if not all(isinstance(f, torch.Tensor) for f in captured):
        raise RuntimeError("a U-Net up block did not return a single tensor; unsupported diffusers version.")
    return captured[::-1]


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> same shape and dtype, each image scaled to [0, 1] by its own min and max.

    A constant image (max == min) maps to all zeros instead of NaN. The reference normalises the
    batch as a whole, but it runs one image per batch, so this is the same for its outputs.
    """
    flat = x.float().flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return scaled.view_as(x).to(x.dtype)
