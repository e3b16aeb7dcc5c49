"""Meta Prompts' task heads on the SD1.5 U-Net's multi-scale features (SPEC §9), plain PyTorch.

Feature levels come from the U-Net finest first, L = latent side = input side / 8:
[320 @ L, 640 @ L/2, 1280 @ L/4, 1280 @ L/8].

Depth (release keys `encoder.layer*`, `encoder.out_layer.*`, `decoder.*`, `last_layer_depth.*`):

    DepthFusion     every level back to L (3x3 conv + GN, or 1-3 stride-2 deconvolutions), concatenated
                    (3520 ch), 3x3 conv + GN + ReLU -> 768 @ L; the model then re-weights by the prompts
    DepthDecoder    3 x [2x2 stride-2 deconv, BN, ReLU] then 3x3 conv + BN + ReLU: [B, 50, h, w] -> 192 @ 8x
    DepthOutput     3x3 conv, ReLU, 3x3 conv -> 1 channel (raw; the model applies sigmoid x max depth)

Segmentation (release keys `upconv{1..4}.*`, `decode_head.*`, `auxiliary_head.*`):

    SegNeck         per level: bilinear x2, 3x3 conv -> 768, GN, ReLU (strides 4, 8, 16, 32 of the input)
    UPerHead        pyramid pooling on the coarsest level, top-down FPN, fuse at stride 4 -> class logits
    FCNHead         the auxiliary head (level 2, one 3x3 ConvModule); saved in releases, unused at test

Attribute names reproduce the release keys after their prefix, so a converter only maps prefixes.
BatchNorm layers stand in for the training-time SyncBN: in eval mode both use the running statistics.
Dropout before the classifiers is the identity at test time and is left out. Every resize is bilinear
with `align_corners=False`, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...resize import resize_bilinear

SD15_LEVEL_CHANNELS = (320, 640, 1280, 1280)
PROMPT_DIM = 768  # width of SD1.5's cross-attention context, hence of the meta prompts


def conv_gn_relu(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """3x3 conv (with bias) -> GroupNorm -> ReLU; children 0, 1, 2 as the release keys `.0.*`, `.1.*`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(),
    )


class ConvModule(nn.Module):
    """mmcv's ConvModule with BN as the heads use it: conv (no bias, 'same' padding) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class DeconvUpsampler(nn.Module):
    """`num_deconv` x [ConvTranspose2d (stride 2, no bias), BN, ReLU], then 3x3 conv, BN, ReLU.

    [B, in, h, w] -> [B, out, 2^num_deconv h, 2^num_deconv w]. Kernel 4 (padding 1) or 2 (padding 0)
    both double the size exactly. Children `deconv_layers.{3i, 3i+1}` and `conv_layers.{0, 1}` as saved.
    """

    def __init__(self, in_channels: int, out_channels: int, num_deconv: int, hidden: int, kernel: int):
        super().__init__()
        if kernel not in (2, 4):
            raise ValueError(f"deconvolution kernel must be 2 or 4 to double the size exactly; got {kernel}")
        layers: list[nn.Module] = []
        for i in range(num_deconv):
            layers += [
                nn.ConvTranspose2d(in_channels if i == 0 else hidden, hidden, kernel, stride=2,
                                   padding=(kernel - 2) // 2, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
            ]
        self.deconv_layers = nn.Sequential(*layers)
        self.conv_layers = nn.Sequential(
            nn.Conv2d(hidden, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(self.deconv_layers(x))


class DepthFusion(nn.Module):
    """Fuse the four U-Net levels at the finest one (the depth encoder's `layer1-4` + `out_layer`).

    forward([f0 C0 @ L, f1 C1 @ L/2, f2 C2 @ L/4, f3 C3 @ L/8]) -> [B, out_channels, L, L']:
    f0 through 3x3 conv + GN + ReLU, f1/f2/f3 through 1/2/3 stride-2 4x4 deconvolutions to `hidden`
    channels and a 3x3 conv back to C_i; concatenated (sum C_i channels) -> 3x3 conv + GN + ReLU.
    """

    def __init__(self, in_channels: Sequence[int] = SD15_LEVEL_CHANNELS, hidden: int = 32,
                 out_channels: int = PROMPT_DIM, groups: int = 16):
        super().__init__()
        c0, c1, c2, c3 = in_channels
        self.layer1 = conv_gn_relu(c0, c0, groups)
        self.layer2 = DeconvUpsampler(c1, c1, 1, hidden, kernel=4)
        self.layer3 = DeconvUpsampler(c2, c2, 2, hidden, kernel=4)
        self.layer4 = DeconvUpsampler(c3, c3, 3, hidden, kernel=4)
        self.out_layer = conv_gn_relu(sum(in_channels), out_channels, groups)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f0, f1, f2, f3 = feats
        levels = [self.layer1(f0), self.layer2(f1), self.layer3(f2), self.layer4(f3)]
        if any(level.shape[-2:] != f0.shape[-2:] for level in levels):
            raise ValueError(
                "feature levels must halve exactly from the finest one (latent sides divisible by 8); got "
                f"{[tuple(f.shape[-2:]) for f in feats]}"
            )
        return self.out_layer(torch.cat(levels, dim=1))


class DepthDecoder(DeconvUpsampler):
    """The depth decoder: [B, in, h, w] -> [B, out, 8h, 8w] (3 stride-2 2x2 deconvs, then 3x3 conv)."""

    def __init__(self, in_channels: int = 50, hidden: int = 32, out_channels: int = 192):
        super().__init__(in_channels, out_channels, num_deconv=3, hidden=hidden, kernel=2)


class DepthOutput(nn.Sequential):
    """`last_layer_depth`: 3x3 conv, ReLU, 3x3 conv to one channel. [B, C, H, W] -> raw [B, 1, H, W]."""

    def __init__(self, channels: int = 192):
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )


class SegNeck(nn.Module):
    """Lift each U-Net level to `out_channels` at twice its size (`upconv1..4`).

    forward_level(i, f): f [B, C_i, h, w] -> ReLU(GN(conv3x3(bilinear x2 (f)))) [B, out_channels, 2h, 2w];
    i is the 0-based level (finest first). With latent L = input/8 the four levels land at strides
    4, 8, 16, 32 of the input.
    """

    def __init__(self, in_channels: Sequence[int] = SD15_LEVEL_CHANNELS, out_channels: int = PROMPT_DIM,
                 groups: int = 16):
        super().__init__()
        for i, c in enumerate(in_channels):
            setattr(self, f"upconv{i + 1}", conv_gn_relu(c, out_channels, groups))
        self.levels = len(in_channels)  # forward's level count

    def forward_level(self, i: int, f: torch.Tensor) -> torch.Tensor:
        upconv = getattr(self, f"upconv{i + 1}")
        return upconv(resize_bilinear(f, (2 * f.shape[-2], 2 * f.shape[-1])))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """All levels, finest first: [out_channels @ 2 h_i x 2 w_i for each level]."""
        if len(feats) != self.levels:
            raise ValueError(f"expected {self.levels} feature levels; got {len(feats)}")
        return [self.forward_level(i, f) for i, f in enumerate(feats)]


class PyramidPooling(nn.ModuleList):
    """PSPNet's pooling branches: for each scale s, adaptive average pool to s x s, 1x1 ConvModule,
    bilinear back to the input's size. Children `{i}.1.conv/bn` as in the release."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize_bilinear(branch(x), x.shape[-2:]) for branch in self]


class UPerHead(nn.Module):
    """UPerNet decode head (`decode_head.*`) over the four prompt-weighted levels.

    forward(levels): four [B, in_channels, h_i, w_i], finest (stride 4) first -> logits
    [B, num_classes, h_0, w_0]. Steps: the coarsest level through pyramid pooling, concatenated
    [level, pooled s=1, 2, 3, 6] -> 3x3 `bottleneck`; 1x1 `lateral_convs` on levels 0-2; top-down, each
    lateral += the coarser one resized to it; 3x3 `fpn_convs` on laterals 0-2; all four resized to level
    0 and concatenated finest first -> 3x3 `fpn_bottleneck` -> 1x1 `conv_seg`.
    """

    def __init__(self, in_channels: int = 150, channels: int = 512, num_classes: int = 150,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), levels: int = 4):
        super().__init__()
        self.psp_modules = PyramidPooling(pool_scales, in_channels, channels)
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(in_channels, channels, 1) for _ in range(levels - 1))
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in range(levels - 1))
        self.fpn_bottleneck = ConvModule(levels * channels, channels, 3)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        top = levels[-1]
        pooled = self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1))
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, levels[:-1], strict=True)] + [pooled]
        for i in range(len(laterals) - 1, 0, -1):  # coarse to fine
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_bilinear(o, size) for o in outs], dim=1))
        return self.conv_seg(fused)


class FCNHead(nn.Module):
    """The auxiliary FCN head (`auxiliary_head.*`): one 3x3 ConvModule on level `in_index`, 1x1 classifier.

    forward(levels) -> logits [B, num_classes, h, w] at the size of `levels[in_index]` (stride 16 for
    level 2). Trained as deep supervision; the reference's test-time forward does not use it.
    """

    def __init__(self, in_channels: int = 150, channels: int = 512, num_classes: int = 150, in_index: int = 2):
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.convs(levels[self.in_index]))
