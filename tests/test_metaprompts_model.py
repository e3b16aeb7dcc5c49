"""Meta Prompts model and converter (SPEC §9): the full-size key layout against the reference TSVs, tiny
releases through the strict converter, and the forward pass against a step-by-step computation written
here from the raw CompVis-named tensors of the release."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_metaprompts import tiny_config, tiny_release_state, write_tiny_release

from genpercept_cli.checkpoints import load_registry
from genpercept_cli.errors import CheckpointError
from genpercept_cli.models.metaprompts import config_from_spec, model_from_state
from genpercept_cli.models.metaprompts import model as model_module
from genpercept_cli.models.metaprompts.convert import (
    IGNORED,
    alias_names,
    convert_release,
    load_release,
    load_release_file,
    release_layout,
)
from genpercept_cli.models.metaprompts.unet import build_unet, unet_config, unet_features, unet_out

# The releases' layouts: committed copies (key, shape, dtype) of ../shared/reference/metaprompts/*_keys.tsv,
# so CI checks them on a clean clone; `test_committed_layouts_equal_the_shared_reference` keeps them in step.
LAYOUTS = Path(__file__).resolve().parent / "data" / "metaprompts_layout"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "metaprompts"
TSV = {"nyu": "depth_nyu", "kitti": "depth_kitti", "ade20k": "seg_ade20k", "cityscapes": "seg_cityscapes",
       "cityscapes-mapillary": "seg_cityscapes_extra"}


def _rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return [line.split("\t")[:3] for line in lines[1:]]


def _reference_keys(kind: str) -> dict[str, tuple[int, ...]]:
    rows = _rows(LAYOUTS / f"metaprompts_{TSV[kind]}_keys.tsv")
    return {r[0]: () if r[1] == "scalar" else tuple(int(d) for d in r[1].split("x")) for r in rows}


@pytest.mark.parametrize("kind", list(TSV))
def test_committed_layouts_equal_the_shared_reference(kind):
    shared = SHARED / f"metaprompts_{TSV[kind]}_keys.tsv"
    if not shared.is_file():
        pytest.skip(f"{shared} is not on this machine (the committed copy is what the layout tests check)")
    assert _rows(LAYOUTS / shared.name) == _rows(shared)


@pytest.mark.parametrize("kind", list(TSV))
def test_full_size_layout_equals_the_reference(kind):
    """Our model built from the registry config (on the meta device), named as the release, is exactly the
    reference key set: every key and shape, plus the aliases and the keys we drop for a stated reason."""
    config = config_from_spec(load_registry()[f"metaprompts-{kind}"])
    reference = _reference_keys(kind)
    ours = {name: release_shape for name, (_, release_shape, _) in release_layout(config).items()}
    aliases = set(alias_names(config))
    dropped = {k for k in reference if any(p.match(k) for p, _ in IGNORED)}
    assert set(ours) | aliases | dropped == set(reference)
    assert not (set(ours) & (aliases | dropped))
    assert {k: reference[k] for k in ours} == ours
    # what is dropped is exactly the unused VAE post_quant_conv (+ the seg model's time MLP and schedule)
    assert len(dropped) == (2 if config.task == "depth" else 2 + 4 + 13)
    assert len(aliases) == 4 * (config.refine_step - 1)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metaprompts")
    return {kind: write_tiny_release(folder / f"metaprompts_{kind}.pth", kind, seed=i)
            for i, kind in enumerate(("nyu", "ade20k", "cityscapes-mapillary"))}


_LOADED: dict = {}


def _load(path, kind):
    """(conversion, model) of a release file, loaded once per file (tests change models via monkeypatch)."""
    if path not in _LOADED:
        converted = load_release_file(path, config_from_spec(load_registry()[f"metaprompts-{kind}"]))
        _LOADED[path] = converted, model_from_state(converted.config, converted.state, path)
    return _LOADED[path]


@pytest.mark.parametrize("fusion_hidden, decoder_hidden", [(32, 8), (12, 4)])
def test_depth_fusion_and_decoder_widths_are_read_apart(fusion_hidden, decoder_hidden):
    """The reference fixes the fusion's deconvolution width at 32 and takes the decoder's from
    --num_filters: a release whose two widths differ converts, and each layer gets its own width."""
    state = tiny_release_state("nyu", fusion_hidden=fusion_hidden, decoder_hidden=decoder_hidden)
    assert state["encoder.layer4.deconv_layers.3.weight"].shape[1] == fusion_hidden  # deconv 2 of layer4
    assert state["decoder.deconv_layers.6.weight"].shape[1] == decoder_hidden
    converted = convert_release(state, tiny_config("nyu"), "x.pth")
    assert (converted.config.fusion_hidden, converted.config.decoder_hidden) == (fusion_hidden, decoder_hidden)
    model = model_from_state(converted.config, converted.state, "x.pth")
    assert model.fusion.layer2.deconv_layers[0].out_channels == fusion_hidden
    assert model.decoder.deconv_layers[0].out_channels == decoder_hidden
    with torch.no_grad():
        depth = model(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert depth.shape == (1, 1, 64, 64) and torch.isfinite(depth).all()


def test_folders_converted_with_one_depth_width_still_load():
    config = model_module.MetaPromptsConfig.from_params({"task": "depth", "depth_hidden": 8})
    assert (config.fusion_hidden, config.decoder_hidden) == (8, 8)


@pytest.mark.parametrize("kind", ["nyu", "ade20k", "cityscapes-mapillary"])
def test_tiny_release_round_trips_through_the_converter(releases, kind):
    raw, found = load_release(releases[kind])
    assert found == tiny_config(kind).task
    converted, model = _load(releases[kind], kind)
    layout = release_layout(converted.config)
    assert converted.config == tiny_config(kind)  # widths read back from the tensors
    state = model.state_dict()
    assert set(state) == {ours for ours, _, _ in layout.values()}
    for name, (ours, _, shape) in layout.items():
        assert torch.equal(state[ours], raw[name].reshape(shape)), name
    notes = " ".join(converted.notes)
    assert "post_quant_conv" not in notes and "VAE decoder side" in notes
    assert ("alias" in notes) == (converted.config.refine_step > 1)


def test_release_saved_from_data_parallel_loads(tmp_path):
    state = {f"module.{k}": v for k, v in tiny_release_state("nyu").items()}
    torch.save({"model": state, "optimizer": {}}, tmp_path / "ddp.pth")
    loaded, kind = load_release(tmp_path / "ddp.pth")
    assert kind == "depth" and "encoder.t1" in loaded


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("decoder.conv_layers.0.bias"),
         ["1 missing", "decoder.conv_layers.0.bias", "v1-5-pruned-emaonly.ckpt", "we refuse"]),
        (lambda s: s.__setitem__("encoder.t2", torch.zeros(1, 7)), ["1 wrong shape", "encoder.t2 1x7 (model 1x128)"]),
        (lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(1)), ["1 unexpected", "encoder.extra.weight"]),
        (lambda s: [s.pop(k) for k in [k for k in s if ".diffusion_model.output_blocks." in k]],
         ["missing", ", ...", "v1-5"]),
    ],
    ids=["missing", "wrong-shape", "unexpected", "many-missing"],
)
def test_strict_conversion_names_every_mismatch(edit, expected):
    state = tiny_release_state("nyu")
    edit(state)
    with pytest.raises(CheckpointError) as info:
        convert_release(state, tiny_config("nyu"), "x.pth")
    message = str(info.value)
    for part in expected:
        assert part in message
    assert message.count("\n") == 0


def test_alias_that_differs_from_the_unet_out_is_refused():
    state = tiny_release_state("nyu")
    state["encoder.cross_unet_conv3.2.bias"] = state["encoder.cross_unet_conv3.2.bias"] + 1
    with pytest.raises(CheckpointError, match="cross_unet_conv3.2.bias differs"):
        convert_release(state, tiny_config("nyu"), "x.pth")


def test_wrong_container_and_wrong_task_are_one_sentence(tmp_path, releases):
    torch.save({"weights": {}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not a Meta Prompts release"):
        load_release(tmp_path / "odd.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_release(tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="seg release, not depth"):
        load_release_file(releases["ade20k"], tiny_config("nyu"))


def test_unsafe_pickles_are_refused(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}, "hook": math.sqrt}, tmp_path / "code.pth")  # a global
    with pytest.raises(CheckpointError, match=r"holds non-tensor objects \(math.sqrt\).*refused for safety"):
        load_release(tmp_path / "code.pth")


# --- the forward pass, step by step ------------------------------------------------------------------

def _bn(x, s, p):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        training=False, eps=1e-5)


def _resblock(x, s, p, eps, emb=None):
    """A CompVis ResBlock (U-Net: in_layers/emb_layers/out_layers; VAE: norm1/conv1/norm2/conv2)."""
    unet = f"{p}.in_layers.0.weight" in s
    n1, c1, n2, c2, skip = (("in_layers.0", "in_layers.2", "out_layers.0", "out_layers.3", "skip_connection")
                            if unet else ("norm1", "conv1", "norm2", "conv2", "nin_shortcut"))
    h = F.conv2d(F.silu(F.group_norm(x, 32, s[f"{p}.{n1}.weight"], s[f"{p}.{n1}.bias"], eps)),
                 s[f"{p}.{c1}.weight"], s[f"{p}.{c1}.bias"], padding=1)
    if emb is not None:
        h = h + F.linear(F.silu(emb), s[f"{p}.emb_layers.1.weight"], s[f"{p}.emb_layers.1.bias"])[..., None, None]
    h = F.conv2d(F.silu(F.group_norm(h, 32, s[f"{p}.{n2}.weight"], s[f"{p}.{n2}.bias"], eps)),
                 s[f"{p}.{c2}.weight"], s[f"{p}.{c2}.bias"], padding=1)
    if f"{p}.{skip}.weight" in s:
        x = F.conv2d(x, s[f"{p}.{skip}.weight"], s[f"{p}.{skip}.bias"])
    return x + h


def _vae_mean(x, s, p):
    """SD's VAE encoder + quant_conv in CompVis terms, from the raw tensors: the posterior mean."""
    h = F.conv2d(x, s[f"{p}encoder.conv_in.weight"], s[f"{p}encoder.conv_in.bias"], padding=1)
    for level in range(4):
        for block in range(2):
            h = _resblock(h, s, f"{p}encoder.down.{level}.block.{block}", 1e-6)
        if level < 3:  # asymmetric padding, then a stride-2 conv
            h = F.conv2d(F.pad(h, (0, 1, 0, 1)), s[f"{p}encoder.down.{level}.downsample.conv.weight"],
                         s[f"{p}encoder.down.{level}.downsample.conv.bias"], stride=2)
    h = _resblock(h, s, f"{p}encoder.mid.block_1", 1e-6)
    a = f"{p}encoder.mid.attn_1"
    n = F.group_norm(h, 32, s[f"{a}.norm.weight"], s[f"{a}.norm.bias"], 1e-6)
    q, k, v = (F.conv2d(n, s[f"{a}.{m}.weight"], s[f"{a}.{m}.bias"]).flatten(2) for m in "qkv")  # [B,C,HW]
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1)  # [B,HW,HW]
    attended = (v @ weights.transpose(1, 2)).reshape(h.shape)
    h = h + F.conv2d(attended, s[f"{a}.proj_out.weight"], s[f"{a}.proj_out.bias"])
    h = _resblock(h, s, f"{p}encoder.mid.block_2", 1e-6)
    h = F.conv2d(F.silu(F.group_norm(h, 32, s[f"{p}encoder.norm_out.weight"], s[f"{p}encoder.norm_out.bias"], 1e-6)),
                 s[f"{p}encoder.conv_out.weight"], s[f"{p}encoder.conv_out.bias"], padding=1)
    return F.conv2d(h, s[f"{p}quant_conv.weight"], s[f"{p}quant_conv.bias"])[:, :4]


def _sd_out(feature, s, p):
    """SD's `out` head: GroupNorm32 -> SiLU -> conv 3x3 to 4 channels (the refinement feedback)."""
    h = F.silu(F.group_norm(feature, 32, s[f"{p}out.0.weight"], s[f"{p}out.0.bias"], 1e-5))
    return F.conv2d(h, s[f"{p}out.2.weight"], s[f"{p}out.2.bias"], padding=1)


def _manual_depth(model, s, x):
    """The released depth model's test forward on windows x [N, 3, h, w], written from the raw tensors."""
    cfg, n, (h, w) = model.config, x.shape[0], x.shape[-2:]
    unet = "encoder.unet.unet.diffusion_model."
    x = F.interpolate(x, ((h // 64 + cfg.resize_scale) * 64, (w // 64 + cfg.resize_scale) * 64),
                      mode="bilinear", align_corners=False)
    latent, features = _vae_mean(x, s, "encoder.encoder_vq."), []
    for i in range(1, cfg.refine_step + 1):
        a = f"encoder.text_adapter{i}.fc"
        prompts = F.gelu(F.linear(s[f"encoder.meta_prompts{i}"], s[f"{a}.0.weight"], s[f"{a}.0.bias"]))
        context = F.linear(prompts, s[f"{a}.2.weight"], s[f"{a}.2.bias"]).expand(n, -1, -1)  # no residual
        if i > 1:
            latent = _sd_out(features[0], s, unet)
        features = unet_features(model.unet, latent, s[f"encoder.t{i}"].expand(n, -1), context)
    maps = torch.einsum("bchw,bnc->bnhw", model.fusion(features), context)
    d = F.interpolate(maps, (h // 8, w // 8), mode="bilinear", align_corners=False)
    for j in range(3):
        d = F.relu(_bn(F.conv_transpose2d(d, s[f"decoder.deconv_layers.{3 * j}.weight"], stride=2), s,
                       f"decoder.deconv_layers.{3 * j + 1}"))
    d = F.relu(_bn(F.conv2d(d, s["decoder.conv_layers.0.weight"], s["decoder.conv_layers.0.bias"], padding=1), s,
                   "decoder.conv_layers.1"))
    d = F.relu(F.conv2d(d, s["last_layer_depth.0.weight"], s["last_layer_depth.0.bias"], padding=1))
    d = F.conv2d(d, s["last_layer_depth.2.weight"], s["last_layer_depth.2.bias"], padding=1)
    return torch.sigmoid(d) * cfg.max_depth


@torch.inference_mode()
def test_depth_window_matches_the_step_by_step_computation(releases):
    raw, _ = load_release(releases["nyu"])
    _, model = _load(releases["nyu"], "nyu")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours = model.predict(x)
    expected = _manual_depth(model, raw, x)
    assert ours.shape == (1, 1, 32, 32)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert 0 < float(ours.min()) and float(ours.max()) < 10.0


def _column_probe(x):
    """A stand-in for `predict` whose output tells where each window came from: [N, 1, h, w] with value
    100 * (first channel's left column mean) + column index."""
    ramp = torch.arange(x.shape[-1], dtype=x.dtype)
    return (100 * x[:, :1, :, :1].mean(dim=(2, 3), keepdim=True) + ramp).expand(-1, 1, x.shape[-2], -1)


def test_depth_forward_is_the_flip_averaged_shift_windows_of_predict(releases, monkeypatch):
    """NYU protocol on a 32x48 image: windows as wide as the image is high, shift_size 2 -> offsets 0 and
    16; each window is the mean of its plain and flipped-back predictions; overlaps averaged."""
    _, model = _load(releases["nyu"], "nyu")
    monkeypatch.setattr(model, "predict", _column_probe)  # forward's wiring only; the network is checked above
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    windows = torch.cat([x[..., 0:32], x[..., 16:48]])
    mean = (_column_probe(windows) + _column_probe(windows.flip(-1)).flip(-1)) / 2  # [2,1,32,32]
    expected = torch.zeros(1, 1, 32, 48)
    expected[..., 0:32] += mean[0:1]
    expected[..., 16:48] += mean[1:2]
    expected[..., 16:32] /= 2
    torch.testing.assert_close(model(x), expected)


def test_depth_columns_no_window_covers_take_the_nearest_covered_column(releases, monkeypatch):
    """KITTI-like: height 16, width 51, 4 shift windows at stride (51 - 16) // 3 = 11 cover columns 0-48;
    the reference leaves 49-50 as 0/0 (NaN) outside its eval crop; we repeat column 48."""
    _, model = _load(releases["nyu"], "nyu")
    monkeypatch.setattr(model, "predict", _column_probe)
    monkeypatch.setattr(model, "tta", replace(model.tta, shift_size=4, flip=False))
    x = torch.rand(1, 3, 16, 51, generator=torch.Generator().manual_seed(5))
    depth = model(x)
    assert torch.isfinite(depth).all()
    torch.testing.assert_close(depth[..., 49:], depth[..., 48:49].expand(-1, -1, -1, 2))
    left = _column_probe(x[..., 0:16])
    torch.testing.assert_close(depth[..., :11], left[..., :11])  # covered by the first window only


@torch.inference_mode()
def test_vae_and_resblock_names_match_compvis_semantics(releases):
    """Key names that share a shape (conv1/conv2, in/out layers) cannot be checked by shape: compute the
    VAE encoder and two U-Net ResBlocks the CompVis way from the raw tensors and compare."""
    raw, _ = load_release(releases["nyu"])
    _, model = _load(releases["nyu"], "nyu")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.testing.assert_close(model.vae(x), _vae_mean(x, raw, "encoder.encoder_vq."), rtol=1e-4, atol=1e-4)
    emb = torch.randn(1, model.config.time_dim)
    unet = "encoder.unet.unet.diffusion_model."
    for compvis, ours, channels in (("input_blocks.7.0", model.unet.down_blocks[2].resnets[0], 32),
                                    ("output_blocks.2.0", model.unet.up_blocks[0].resnets[2], 128)):
        h = torch.randn(1, channels, 8, 8)
        torch.testing.assert_close(ours(h, emb), _resblock(h, raw, unet + compvis, 1e-5, emb), rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_unet_walk_matches_diffusers_forward():
    """With diffusers' own time embedding passed as `emb`, SD's out head on the walk's finest feature is
    diffusers' U-Net output: the walk visits every block in order with the right skips."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config((32, 32, 64, 64), context_dim=16))
    for p in unet.parameters():  # diffusers zero-inits some convs, which would hide a skipped block
        p.data.normal_(0, 0.2)
    latent, context, t = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 16), torch.tensor([7])
    emb = unet.time_embedding(unet.time_proj(t))
    features = unet_features(unet, latent, emb, context)
    assert [tuple(f.shape[1:]) for f in features] == [(32, 8, 8), (32, 4, 4), (64, 2, 2), (64, 1, 1)]
    expected = unet(latent, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(unet_out(unet, features[0]), expected, rtol=1e-4, atol=1e-4)
    assert not hasattr(build_unet((32, 32, 64, 64), 16), "time_embedding")


@pytest.mark.parametrize("kind, steps", [("nyu", 3), ("cityscapes-mapillary", 1)])
@torch.inference_mode()
def test_refinement_runs_refine_step_unet_passes(releases, kind, steps, monkeypatch):
    _, model = _load(releases[kind], kind)
    calls = []

    def counting(unet, latent, emb, context):
        calls.append((tuple(latent.shape), tuple(emb.shape), tuple(context.shape)))
        return unet_features(unet, latent, emb, context)

    monkeypatch.setattr(model_module, "unet_features", counting)
    features, context = model.refine(torch.randn(1, 4, 8, 16))
    prompts = model.config.num_prompts
    assert calls == [((1, 4, 8, 16), (1, 128), (1, prompts, 32))] * steps
    assert [tuple(f.shape) for f in features] == [(1, 32, 8, 16), (1, 32, 4, 8), (1, 64, 2, 4), (1, 64, 1, 2)]
    assert tuple(context.shape) == (1, prompts, 32)


@torch.inference_mode()
def test_seg_crop_uses_the_shared_prompts_and_returns_logits_at_the_crop(releases):
    raw, _ = load_release(releases["ade20k"])
    _, model = _load(releases["ade20k"], "ade20k")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    context = raw["meta_prompts"].expand(1, -1, -1)  # 10 tiny prompts, no adapter
    latent, features = _vae_mean(x, raw, "encoder_vq."), []
    for i in range(1, 4):
        if i > 1:
            latent = _sd_out(features[0], raw, "unet.unet.diffusion_model.")
        features = unet_features(model.unet, latent, raw[f"t{i}"], context)
    levels = [torch.einsum("bchw,bnc->bnhw", model.neck.forward_level(i, f), context) for i, f in enumerate(features)]
    logits = F.interpolate(model.decode_head(levels), (64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.predict(x), logits, rtol=1e-3, atol=1e-3)
    assert logits.shape == (1, 150, 64, 64)
