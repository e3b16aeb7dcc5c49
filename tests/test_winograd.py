"""Winograd convolutions (runtime.winograd): which convolutions take it, how close they stay to the direct
maths, and that only our pipeline's forward runs them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.runtime import winograd
from genpercept_cli.runtime.device import measured_fast_path
from genpercept_cli.runtime.winograd import MIN_PIXELS, eligible, winograd_available, winograd_convolutions

needs_nnpack = pytest.mark.skipif(not winograd_available(), reason="this torch build has no NNPACK")


def _conv_inputs(h=64, w=64, cin=8, cout=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cin, h, w, generator=gen)
    weight = torch.randn(cout, cin, 3, 3, generator=gen) / (9 * cin) ** 0.5
    return x, weight, torch.randn(cout, generator=gen)


def test_which_convolutions_are_eligible():
    x, w, _ = _conv_inputs()
    assert MIN_PIXELS == 64 * 64 and eligible(x, w, 1, 1) and eligible(x, w, (1, 1), (1, 1), (1, 1), 1)
    assert eligible(x, w, 1, 0)  # any symmetric padding
    assert not eligible(x[..., :63, :], w, 1, 1)  # 63 x 64 pixels: under MIN_PIXELS
    assert eligible(x[..., :63, :], w, 1, 1, min_pixels=63 * 64)
    assert not eligible(x, w, 2, 1)  # strided (the VAE's downsampling)
    assert not eligible(x, w, 1, 1, dilation=2)
    assert not eligible(x, w[:, :4], 1, 1, groups=2)
    assert not eligible(x, w, 1, "same")
    assert not eligible(x, w[..., :1, :1], 1, 0)  # 1x1 shortcut convolutions
    assert not eligible(x.bfloat16(), w.bfloat16(), 1, 1)  # fp32 only
    assert not eligible(x.requires_grad_(), w, 1, 1)  # inference only


@needs_nnpack
@pytest.mark.parametrize("padding", [1, (1, 1), 0])
def test_one_convolution_matches_the_direct_maths(padding):
    x, w, b = _conv_inputs(72, 64)
    direct = F.conv2d(x, w, b, 1, padding)
    mode = winograd_convolutions()
    with mode:
        fast = F.conv2d(x, w, b, 1, padding)
    assert mode.calls == 1 and fast.shape == direct.shape
    assert (fast - direct).abs().max() <= 1e-5 * direct.abs().max()  # different rounding, same maths
    assert not torch.equal(fast, direct)  # it did run another algorithm


@needs_nnpack
def test_small_maps_and_other_ops_pass_through_unchanged():
    x, w, b = _conv_inputs(32, 32)
    mode = winograd_convolutions()
    with mode:
        small = F.conv2d(x, w, b, 1, 1)
        strided = F.conv2d(x, w, b, 2, 1)
        act = F.silu(x)
    assert mode.calls == 0
    assert torch.equal(small, F.conv2d(x, w, b, 1, 1)) and torch.equal(strided, F.conv2d(x, w, b, 2, 1))
    assert torch.equal(act, F.silu(x))


def test_opt_in_by_environment(monkeypatch):
    assert measured_fast_path("cpu", torch.float32) == {}  # the default stays the exact maths
    monkeypatch.setenv("GENPERCEPT_WINOGRAD", "on")
    assert measured_fast_path("cpu", torch.float32) == {"winograd": True}
    assert "winograd" not in measured_fast_path("cpu", torch.bfloat16)  # NNPACK is fp32 only
    assert "winograd" not in measured_fast_path("cuda", torch.float32)


@needs_nnpack
def test_pipeline_runs_winograd_only_inside_its_forward(checkpoint_root, monkeypatch):
    """fp32 from_checkpoint with GENPERCEPT_WINOGRAD=on: Winograd for the tiny VAE's 64 x 96 maps, within
    1e-4 of the direct maths in [0, 1]; the modules themselves stay plain convolutions."""
    calls = []
    real = winograd.conv2d
    monkeypatch.setattr(winograd, "conv2d", lambda *a: calls.append(a[0].shape) or real(*a))
    folder = str(checkpoint_root / "unet_depth_v2")
    exact = GenPerceptPipeline.from_checkpoint(folder, device="cpu")
    monkeypatch.setenv("GENPERCEPT_WINOGRAD", "on")
    fast = GenPerceptPipeline.from_checkpoint(folder, device="cpu")
    assert fast.winograd and not exact.winograd
    image = np.random.default_rng(3).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    got = fast(image, processing_res=0)
    assert calls and all(shape[-2] * shape[-1] >= MIN_PIXELS for shape in calls)
    n = len(calls)
    want = exact(image, processing_res=0)
    assert len(calls) == n  # the exact pipeline ran none
    assert got.shape == want.shape == (96, 64) and want.std() > 1e-4
    assert 0 < np.abs(got - want).max() <= 1e-4
    with torch.inference_mode():  # the same modules called directly: plain convolutions
        fast.model.vae.decoder(torch.zeros(1, 4, 12, 8))
    assert len(calls) == n


def test_compile_turns_winograd_off(checkpoint_root):
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu", fast_path=False)
    assert pipe.optimize(winograd=True, compile=True, compile_backend="eager").winograd is False
