"""DPT-head variant: U-Net feature taps, the DPT neck/head, strict loading, normalisation (SPEC §3)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from benchmarks.speed.presets import TINY_UNET as BENCH_TINY_UNET
from genpercept_cli.dpt import (
    DPTHead,
    minmax_per_image,
    prepare_dpt_unet,
    strip_unet_head_keys,
    unet_up_block_features,
)
from genpercept_cli.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

# SD2.1 block types, tiny widths; widths differ per level so a swapped feature cannot go unnoticed.
TINY_UNET = {**BENCH_TINY_UNET, "block_out_channels": (8, 16, 32, 32), "layers_per_block": 2,
             "cross_attention_dim": 16}
TINY_CHANNELS = (8, 16, 32, 32)  # up-block outputs, finest first
TINY_FEATURES = 8

# Keys and shapes of guangkaixu/genpercept-models dpt_head_identity/model.safetensors (also in
# guangkaixu/genpercept-disparity-dpt-head). Derived from aim-uofa/GenPercept genpercept/models/dpt_head.py
# (DPTNeckHeadForUnetAfterUpsampleIdentity, reassemble stage removed) with the config
# hf_configs/dpt-sd2.1-unet-after-upsample-general/config.json (neck_hidden_sizes [320, 640, 1280, 1280],
# fusion_hidden_size 256, add_projection true, use_bias_in_fusion_residual false, no batch norm);
# the reference loads the file with safetensors' strict load_model. 18,474,753 fp32 values = 73.9 MB,
# the size the hub lists for the file.
RELEASE_KEYS = {
    "feature_upsample_0.conv.weight": (320, 320, 3, 3),
    "feature_upsample_0.conv.bias": (320,),
    "neck.convs.0.weight": (256, 320, 3, 3),
    "neck.convs.1.weight": (256, 640, 3, 3),
    "neck.convs.2.weight": (256, 1280, 3, 3),
    "neck.convs.3.weight": (256, 1280, 3, 3),
    "neck.fusion_stage.layers.0.projection.weight": (256, 256, 1, 1),
    "neck.fusion_stage.layers.0.projection.bias": (256,),
    "neck.fusion_stage.layers.0.residual_layer2.convolution1.weight": (256, 256, 3, 3),
    "neck.fusion_stage.layers.0.residual_layer2.convolution2.weight": (256, 256, 3, 3),
    **{
        f"neck.fusion_stage.layers.{i}.{name}": shape
        for i in (1, 2, 3)
        for name, shape in (
            ("projection.weight", (256, 256, 1, 1)),
            ("projection.bias", (256,)),
            ("residual_layer1.convolution1.weight", (256, 256, 3, 3)),
            ("residual_layer1.convolution2.weight", (256, 256, 3, 3)),
            ("residual_layer2.convolution1.weight", (256, 256, 3, 3)),
            ("residual_layer2.convolution2.weight", (256, 256, 3, 3)),
        )
    },
    "head.projection.weight": (256, 256, 3, 3),
    "head.projection.bias": (256,),
    "head.head.0.weight": (128, 256, 3, 3),
    "head.head.0.bias": (128,),
    "head.head.2.weight": (32, 128, 3, 3),
    "head.head.2.bias": (32,),
    "head.head.4.weight": (1, 32, 1, 1),
    "head.head.4.bias": (1,),
}


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.05))
    return module.eval()




@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return _randomise(UNet2DConditionModel(**TINY_UNET), 0)


def tiny_head(seed: int = 1) -> DPTHead:
    return _randomise(DPTHead(TINY_CHANNELS, features=TINY_FEATURES), seed)


def inputs(batch: int, h: int, w: int, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, 4, h, w, generator=gen)
    embed = torch.randn(batch, 2, 16, generator=gen)
    return latent, embed


def manual_up_block_features(unet, latent, timestep, embed):
    """The U-Net forward written out step by step, keeping every up block's output."""
    t = torch.full((latent.shape[0],), timestep, dtype=torch.long)
    emb = unet.time_embedding(unet.time_proj(t).to(latent.dtype))
    h = unet.conv_in(latent)
    skips = [h]
    for block in unet.down_blocks:
        kwargs = {"encoder_hidden_states": embed} if getattr(block, "has_cross_attention", False) else {}
        h, res = block(hidden_states=h, temb=emb, **kwargs)
        skips.extend(res)
    h = unet.mid_block(h, emb, encoder_hidden_states=embed)
    odd = any(s % 2**unet.num_upsamplers for s in latent.shape[-2:])
    outputs = []
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        res, skips = tuple(skips[-n:]), skips[:-n]
        size = skips[-1].shape[2:] if odd and i < len(unet.up_blocks) - 1 else None
        kwargs = {"encoder_hidden_states": embed} if getattr(block, "has_cross_attention", False) else {}
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size, **kwargs)
        outputs.append(h)
    return outputs[::-1]


def reference_head(sd: dict[str, torch.Tensor], feats) -> torch.Tensor:
    """SPEC's DPT description as plain functional ops on the state dict."""

    def conv(x, name, padding=1):
        return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), padding=padding)

    def unit(x, name):
        y = conv(F.relu(x), f"{name}.convolution1")
        return x + conv(F.relu(y), f"{name}.convolution2")

    up = conv(F.interpolate(feats[0], scale_factor=2, mode="nearest"), "feature_upsample_0.conv")
    levels = [conv(x, f"neck.convs.{i}") for i, x in enumerate([up, *feats[1:]])]
    x = None
    for j, level in enumerate(reversed(levels)):
        name = f"neck.fusion_stage.layers.{j}"
        if x is None:
            x = level
        else:
            skip = F.interpolate(level, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + unit(skip, f"{name}.residual_layer1")
        x = unit(x, f"{name}.residual_layer2")
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = conv(x, f"{name}.projection", padding=0)
    x = F.relu(conv(x, "head.projection"))
    x = conv(x, "head.head.0")
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    x = F.relu(conv(x, "head.head.2"))
    return conv(x, "head.head.4", padding=0)


def save_head(head: DPTHead, folder, config: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / "model.safetensors"))
    if config:
        cfg = {"neck_hidden_sizes": list(head.in_channels), "fusion_hidden_size": head.features}
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# -- U-Net features ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "latent_hw, expected",
    [
        ((8, 16), [(8, 8, 16), (16, 8, 16), (32, 4, 8), (32, 2, 4)]),  # image 64x128: strides 8, 8, 16, 32
        ((10, 14), [(8, 10, 14), (16, 10, 14), (32, 5, 7), (32, 3, 4)]),  # ceil halving, upsample to skips
    ],
)
def test_up_block_features_shapes_latent(unet, latent_hw, expected):
    latent, embed = inputs(2, *latent_hw)
    with torch.no_grad():
        feats = unet_up_block_features(unet, latent, 1, embed)
    assert [tuple(f.shape) for f in feats] == [(2, *e) for e in expected]


def test_up_block_features_equal_manual_walk_latent_10x14(unet):
    latent, embed = inputs(2, 10, 14)
    with torch.no_grad():
        hooked = unet_up_block_features(unet, latent, 1, embed)
        manual = manual_up_block_features(unet, latent, 1, embed)
    for a, b in zip(hooked, manual, strict=True):
        assert torch.equal(a, b)


def test_up_block_features_leave_no_hooks_even_on_error(unet):
    latent, embed = inputs(1, 8, 8)
    unet_up_block_features(unet, latent, 1, embed)
    with pytest.raises(RuntimeError):
        unet_up_block_features(unet, latent, 1, torch.zeros(1, 2, 7))  # wrong embedding width
    assert all(len(block._forward_hooks) == 0 for block in unet.up_blocks)


def test_prepare_dpt_unet_drops_head_keys_and_returns_last_up_block(unet):
    from diffusers import UNet2DConditionModel

    full = unet.state_dict()
    assert any("conv_out" in k for k in full) and any("conv_norm_out" in k for k in full)
    with torch.device("meta"):
        stripped = prepare_dpt_unet(UNet2DConditionModel(**TINY_UNET))
    assert set(stripped.state_dict()) == set(strip_unet_head_keys(full))
    stripped.load_state_dict(strip_unet_head_keys(full), strict=True, assign=True)
    latent, embed = inputs(1, 10, 14)
    with torch.no_grad():
        sample = stripped(latent, 1, encoder_hidden_states=embed).sample
        feats = unet_up_block_features(stripped, latent, 1, embed)
        reference = unet_up_block_features(unet, latent, 1, embed)
    assert torch.equal(sample, feats[0])
    for a, b in zip(feats, reference, strict=True):
        assert torch.equal(a, b)


def test_strip_unet_head_keys():
    t = torch.zeros(1)
    state = {
        "conv_in.weight": t,
        "conv_norm_out.weight": t,
        "conv_norm_out.bias": t,
        "conv_out.weight": t,
        "conv_out.bias": t,
        "up_blocks.3.resnets.2.conv2.weight": t,
    }
    assert list(strip_unet_head_keys(state)) == ["conv_in.weight", "up_blocks.3.resnets.2.conv2.weight"]


# -- DPT head ---------------------------------------------------------------------------------


def test_head_output_size_latent_10x14_native_and_resized(unet):
    latent, embed = inputs(2, 10, 14)
    head = tiny_head()
    with torch.no_grad():
        feats = unet_up_block_features(unet, latent, 1, embed)
        native = head(feats)
        resized = head(feats, (80, 112))
    assert native.shape == (2, 1, 96, 128)  # 32 x the coarsest feature (3x4), not the 80x112 image
    assert resized.shape == (2, 1, 80, 112)
    expected = F.interpolate(native, size=(80, 112), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(resized, expected, rtol=0, atol=0)


def test_head_output_is_image_size_for_multiple_of_64_image(unet):
    latent, embed = inputs(1, 8, 16)  # image 64x128
    with torch.no_grad():
        out = tiny_head()(unet_up_block_features(unet, latent, 1, embed), (64, 128))
        native = tiny_head()(unet_up_block_features(unet, latent, 1, embed))
    assert out.shape == native.shape == (1, 1, 64, 128)
    assert torch.equal(out, native)


@pytest.mark.parametrize("latent_hw", [(8, 16), (10, 14)])
def test_head_matches_functional_description_latent(unet, latent_hw):
    latent, embed = inputs(2, *latent_hw)
    head = tiny_head()
    with torch.no_grad():
        feats = unet_up_block_features(unet, latent, 1, embed)
        got = head(feats)
        want = reference_head(head.state_dict(), feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.min() < 0  # identity activation: negative values pass through


def test_head_rejects_wrong_features():
    head = tiny_head()
    feats = [torch.zeros(1, c, 4, 4) for c in TINY_CHANNELS]
    with pytest.raises(ValueError, match="finest first"):
        head(feats[::-1])
    with pytest.raises(ValueError, match="channels"):
        head(feats[:3])


def test_release_key_layout_exact():
    with torch.device("meta"):
        head = DPTHead()
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert got == RELEASE_KEYS
    assert sum(v.numel() for v in head.state_dict().values()) == 18_474_753  # x4 bytes = 73.9 MB


def test_from_pretrained_release_layout_without_config(tmp_path):
    # A file with exactly the release's names and shapes loads with the SD2.1 defaults (no config.json).
    save_file({k: torch.zeros(s) for k, s in RELEASE_KEYS.items()}, str(tmp_path / "model.safetensors"))
    head = DPTHead.from_pretrained(tmp_path, dtype=torch.float16)
    assert head.in_channels == (320, 640, 1280, 1280) and head.features == 256
    assert all(p.dtype == torch.float16 and p.device.type == "cpu" for p in head.parameters())
    assert not head.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_pretrained_round_trip_dtype(tmp_path, unet, dtype):
    head = tiny_head(seed=5)
    loaded = DPTHead.from_pretrained(save_head(head, tmp_path / "dpt_head_identity"), dtype=dtype)
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.to(dtype))
    if dtype == torch.float32:
        latent, embed = inputs(1, 10, 14)
        with torch.no_grad():
            feats = unet_up_block_features(unet, latent, 1, embed)
            assert torch.equal(loaded(feats), head(feats))


def test_from_pretrained_missing_key_raises(tmp_path):
    folder = save_head(tiny_head(), tmp_path)
    state = {k: v for k, v in tiny_head().state_dict().items() if k != "head.projection.weight"}
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing.*head\.projection\.weight"):
        DPTHead.from_pretrained(folder)


def test_from_pretrained_unexpected_key_raises(tmp_path):
    folder = save_head(tiny_head(), tmp_path)
    state = dict(tiny_head().state_dict())
    state["neck.fusion_stage.layers.0.residual_layer1.convolution1.weight"] = torch.zeros(8, 8, 3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected.*layers\.0\.residual_layer1"):
        DPTHead.from_pretrained(folder)


def test_from_pretrained_wrong_shape_raises(tmp_path):
    folder = save_head(tiny_head(), tmp_path)
    state = dict(tiny_head().state_dict())
    state["neck.convs.2.weight"] = torch.zeros(8, 31, 3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape.*neck\.convs\.2\.weight"):
        DPTHead.from_pretrained(folder)


def test_from_pretrained_missing_or_corrupt_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="model.safetensors"):
        DPTHead.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        DPTHead.from_pretrained(tmp_path)


# -- per-image min-max ----------------------------------------------------------------------------


def test_minmax_per_image_hand_computed():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 2.0]]], [[[-4.0, 0.0], [-2.0, -4.0]]]])  # [2,1,2,2]
    want = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]], [[[0.0, 1.0], [0.5, 0.0]]]])
    torch.testing.assert_close(minmax_per_image(x), want, rtol=0, atol=0)


def test_minmax_per_image_constant_image_gives_zeros():
    x = torch.stack([torch.full((1, 3, 4), 7.0), torch.arange(12.0).view(1, 3, 4)])
    out = minmax_per_image(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(1, 3, 4, dtype=torch.float16))
    assert out[1].min() == 0 and out[1].max() == 1


def test_from_pretrained_bad_config_raises(tmp_path):
    folder = save_head(tiny_head(), tmp_path)
    (folder / "config.json").write_text(json.dumps({"neck_hidden_sizes": [8, 16, 32]}))
    with pytest.raises(CheckpointError, match="config"):
        DPTHead.from_pretrained(folder)
