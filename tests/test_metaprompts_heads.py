"""Meta Prompts heads: release key layout (full size, meta device) and forward passes against independent
step-by-step computations on tiny random weights (SPEC §9; ../shared/reference/metaprompts/NOTES.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genpercept_cli.models.metaprompts.heads import (
    DepthDecoder,
    DepthFusion,
    DepthOutput,
    FCNHead,
    SegNeck,
    UPerHead,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

REPO = Path(__file__).resolve().parents[1]
KEYS_FILE = Path(__file__).parent / "data" / "metaprompts_heads_keys.tsv"
SHARED = REPO.parent / "shared" / "reference" / "metaprompts"
HEAD_PREFIXES = ("encoder.layer", "encoder.out_layer", "decoder.", "last_layer_depth.", "upconv", "decode_head.",
                 "auxiliary_head.")

# (release, module factory, key prefix it is saved under, the release keys it owns start with)
CASES = [
    ("nyu", DepthFusion, "encoder.", ("encoder.layer", "encoder.out_layer")),
    ("nyu", DepthDecoder, "decoder.", ("decoder.",)),
    ("nyu", DepthOutput, "last_layer_depth.", ("last_layer_depth.",)),
    ("ade20k", SegNeck, "", ("upconv",)),
    ("ade20k", lambda: UPerHead(num_classes=150), "decode_head.", ("decode_head.",)),
    ("ade20k", lambda: FCNHead(num_classes=150), "auxiliary_head.", ("auxiliary_head.",)),
    ("cityscapes", SegNeck, "", ("upconv",)),
    ("cityscapes", lambda: UPerHead(num_classes=19), "decode_head.", ("decode_head.",)),
    ("cityscapes", lambda: FCNHead(num_classes=19), "auxiliary_head.", ("auxiliary_head.",)),
]
CASE_IDS = [f"{release}-{owned[0].rstrip('.')}" for release, _, _, owned in CASES]


def _shape(text: str) -> tuple[int, ...]:
    return () if text == "scalar" else tuple(int(n) for n in text.split("x"))


def _read_rows(path: Path, release: str | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) from a committed (release-tagged) or shared reference TSV."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    rows = {}
    for row in csv.DictReader(lines, delimiter="\t"):
        if release is None or row["release"] == release:
            rows[row["key"]] = (_shape(row["shape"]), row["dtype"])
    return rows


def _layout(module: torch.nn.Module, prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    return {prefix + k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("release", "factory", "prefix", "owned"), CASES, ids=CASE_IDS)
def test_full_size_keys_match_the_release(release, factory, prefix, owned):
    with torch.device("meta"):
        module = factory()
    assert all(p.is_meta for p in module.parameters())  # nothing allocated
    expected = {k: v for k, v in _read_rows(KEYS_FILE, release).items() if k.startswith(owned)}
    assert expected  # the committed copy has rows for this module
    assert _layout(module, prefix) == expected


@pytest.mark.parametrize("release", ["nyu", "ade20k", "cityscapes"])
def test_heads_claim_every_committed_row(release):
    claimed = set()
    for case_release, factory, prefix, _ in CASES:
        if case_release == release:
            with torch.device("meta"):
                claimed |= set(_layout(factory(), prefix))
    assert claimed == set(_read_rows(KEYS_FILE, release))


@pytest.mark.parametrize(("release", "shared_file"), [
    ("nyu", "metaprompts_depth_nyu_keys.tsv"),
    ("nyu", "metaprompts_depth_kitti_keys.tsv"),
    ("ade20k", "metaprompts_seg_ade20k_keys.tsv"),
    ("cityscapes", "metaprompts_seg_cityscapes_keys.tsv"),
    ("cityscapes", "metaprompts_seg_cityscapes_extra_keys.tsv"),
])
def test_committed_rows_equal_the_shared_reference(release, shared_file):
    if not (SHARED / shared_file).exists():
        pytest.skip(f"{SHARED} is not on this machine (the committed copy is what the other tests check)")
    shared = {k: v for k, v in _read_rows(SHARED / shared_file).items() if k.startswith(HEAD_PREFIXES)}
    assert shared == _read_rows(KEYS_FILE, release)




# -- forward passes on tiny weights, against torch.nn.functional step by step -------------------------------

def _randomise(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights and BN running statistics; eval mode. Returns the state dict the reference reads."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * (0.3 if t.ndim > 1 else 0.2))
    module.eval()
    return module.state_dict()


def _bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def _conv_bn_relu(x, sd, name, padding):  # mmcv ConvModule: bias-free conv, BN, ReLU
    return F.relu(_bn(F.conv2d(x, sd[f"{name}.conv.weight"], padding=padding), sd, f"{name}.bn"))


def _conv_gn_relu(x, sd, name, groups):
    x = F.conv2d(x, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"], padding=1)
    return F.relu(F.group_norm(x, groups, sd[f"{name}.1.weight"], sd[f"{name}.1.bias"]))


def _deconvs_then_conv(x, sd, name, num_deconv, padding):
    for i in range(num_deconv):
        x = F.conv_transpose2d(x, sd[f"{name}.deconv_layers.{3 * i}.weight"], stride=2, padding=padding)
        x = F.relu(_bn(x, sd, f"{name}.deconv_layers.{3 * i + 1}"))
    x = F.conv2d(x, sd[f"{name}.conv_layers.0.weight"], sd[f"{name}.conv_layers.0.bias"], padding=1)
    return F.relu(_bn(x, sd, f"{name}.conv_layers.1"))


def _levels(gen, channels, sizes, batch=2):
    return [torch.randn((batch, c, h, w), generator=gen) for c, (h, w) in zip(channels, sizes, strict=True)]


def test_depth_fusion_matches_step_by_step():
    channels = (8, 12, 16, 16)
    fusion = DepthFusion(channels, hidden=4, out_channels=16, groups=4)
    sd = _randomise(fusion, 0)
    feats = _levels(torch.Generator().manual_seed(1), channels, [(8, 16), (4, 8), (2, 4), (1, 2)])
    expected = torch.cat([
        _conv_gn_relu(feats[0], sd, "layer1", 4),
        _deconvs_then_conv(feats[1], sd, "layer2", 1, padding=1),
        _deconvs_then_conv(feats[2], sd, "layer3", 2, padding=1),
        _deconvs_then_conv(feats[3], sd, "layer4", 3, padding=1),
    ], dim=1)
    expected = _conv_gn_relu(expected, sd, "out_layer", 4)
    with torch.no_grad():
        out = fusion(feats)
    assert out.shape == (2, 16, 8, 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_depth_fusion_refuses_levels_that_do_not_halve():
    channels = (4, 4, 4, 4)
    fusion = DepthFusion(channels, hidden=4, out_channels=4, groups=2).eval()
    feats = _levels(torch.Generator().manual_seed(0), channels, [(6, 6), (3, 3), (2, 2), (1, 1)], batch=1)
    with pytest.raises(ValueError, match="halve"):
        fusion(feats)


def test_depth_decoder_and_output_match_step_by_step():
    decoder, head = DepthDecoder(in_channels=6, hidden=4, out_channels=5), DepthOutput(channels=5)
    sd_dec, sd_head = _randomise(decoder, 2), _randomise(head, 3)
    x = torch.randn((2, 6, 3, 5), generator=torch.Generator().manual_seed(4))
    y = x
    for i in range(3):  # 2x2 kernels, stride 2, no padding: each doubles the size
        y = F.conv_transpose2d(y, sd_dec[f"deconv_layers.{3 * i}.weight"], stride=2)
        y = F.relu(_bn(y, sd_dec, f"deconv_layers.{3 * i + 1}"))
    y = F.relu(_bn(F.conv2d(y, sd_dec["conv_layers.0.weight"], sd_dec["conv_layers.0.bias"], padding=1),
                   sd_dec, "conv_layers.1"))
    expected = F.relu(F.conv2d(y, sd_head["0.weight"], sd_head["0.bias"], padding=1))
    expected = F.conv2d(expected, sd_head["2.weight"], sd_head["2.bias"], padding=1)
    with torch.no_grad():
        features = decoder(x)
        out = head(features)
    assert features.shape == (2, 5, 24, 40) and out.shape == (2, 1, 24, 40)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_seg_neck_levels_match_step_by_step():
    channels = (8, 12, 16, 16)
    neck = SegNeck(channels, out_channels=8, groups=4)
    sd = _randomise(neck, 5)
    feats = _levels(torch.Generator().manual_seed(6), channels, [(6, 8), (3, 4), (2, 2), (1, 1)])
    with torch.no_grad():
        outs = neck(feats)
    for i, (f, out) in enumerate(zip(feats, outs, strict=True)):
        up = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)  # the reference's nn.Upsample
        torch.testing.assert_close(out, _conv_gn_relu(up, sd, f"upconv{i + 1}", 4), rtol=1e-5, atol=1e-5)
        assert out.shape[-2:] == (2 * f.shape[-2], 2 * f.shape[-1])


def _uper_reference(levels, sd, pool_scales):
    """UPerNet written out: PPM on the top level, top-down FPN, fuse at the finest level, classify."""
    top = levels[3]
    size = top.shape[-2:]
    pooled = [F.interpolate(_conv_bn_relu(F.adaptive_avg_pool2d(top, s), sd, f"psp_modules.{i}.1", 0), size=size,
                            mode="bilinear", align_corners=False) for i, s in enumerate(pool_scales)]
    psp = _conv_bn_relu(torch.cat([top, *pooled], dim=1), sd, "bottleneck", 1)
    lat = [_conv_bn_relu(levels[i], sd, f"lateral_convs.{i}", 0) for i in range(3)]

    def up(t, ref):
        return F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    lat2 = lat[2] + up(psp, lat[2])
    lat1 = lat[1] + up(lat2, lat[1])
    lat0 = lat[0] + up(lat1, lat[0])
    fpn = [_conv_bn_relu(t, sd, f"fpn_convs.{i}", 1) for i, t in enumerate((lat0, lat1, lat2))]
    fused = torch.cat([fpn[0], up(fpn[1], fpn[0]), up(fpn[2], fpn[0]), up(psp, fpn[0])], dim=1)
    fused = _conv_bn_relu(fused, sd, "fpn_bottleneck", 1)
    return F.conv2d(fused, sd["conv_seg.weight"], sd["conv_seg.bias"])


def test_uper_head_matches_step_by_step():
    head = UPerHead(in_channels=6, channels=8, num_classes=5)
    sd = _randomise(head, 7)
    # The sizes of a 96x128 crop (strides 4..32); odd level sizes exercise the resizes and pooling bins.
    levels = _levels(torch.Generator().manual_seed(8), (6,) * 4, [(24, 32), (12, 16), (6, 8), (3, 4)])
    with torch.no_grad():
        out = head(levels)
    assert out.shape == (2, 5, 24, 32)
    torch.testing.assert_close(out, _uper_reference(levels, sd, (1, 2, 3, 6)), rtol=1e-4, atol=1e-5)


def test_fcn_head_matches_step_by_step_on_level_two():
    head = FCNHead(in_channels=6, channels=8, num_classes=5)
    sd = _randomise(head, 9)
    levels = _levels(torch.Generator().manual_seed(10), (6,) * 4, [(24, 32), (12, 16), (6, 8), (3, 4)])
    expected = F.conv2d(_conv_bn_relu(levels[2], sd, "convs.0", 1), sd["conv_seg.weight"], sd["conv_seg.bias"])
    with torch.no_grad():
        out = head(levels)
    assert out.shape == (2, 5, 6, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
