"""Half-precision layers in fp32 kernels (runtime.fp32_kernels): the same products and fp32 sums as the
half-precision kernels, which layers take them, the per-CPU policy, and that only our forward runs them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.runtime import device as device_module
from genpercept_cli.runtime.device import measured_fast_path
from genpercept_cli.runtime.fp32_kernels import MIN_ROWS, fp32_kernels, native_half_kernels

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = [torch.bfloat16, torch.float16]
BF16_TOL = 2e-2  # as tests/test_bench.py: a bf16 model against the exact fp32 one, in [0, 1]


def _layer(kind, dtype, rows=MIN_ROWS, seed=0):
    """(F.conv2d or F.linear, input, weight, bias) in `dtype`, applied to `rows` pixels or tokens."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "conv":
        x = torch.randn(1, 16, rows // 16, 16, generator=gen)
        weight = torch.randn(12, 16, 3, 3, generator=gen) / 12
        return F.conv2d, x.to(dtype), weight.to(dtype), torch.randn(12, generator=gen).to(dtype)
    x = torch.randn(rows, 40, generator=gen)
    weight = torch.randn(24, 40, generator=gen) / 6
    return F.linear, x.to(dtype), weight.to(dtype), torch.randn(24, generator=gen).to(dtype)


def _call(func, x, weight, bias):
    return func(x, weight, bias, 1, 1) if func is F.conv2d else func(x, weight, bias)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_layer_is_the_upcast_maths_rounded_once(kind, dtype):
    """Inside the block: exactly fp32(x) * fp32(w) + fp32(b) by the fp32 kernel, rounded to the dtype."""
    func, x, weight, bias = _layer(kind, dtype)
    want = _call(func, x.float(), weight.float(), bias.float()).to(dtype)
    mode = fp32_kernels()
    with mode:
        got = _call(func, x, weight, bias)
    assert mode.calls == 1 and got.dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_layer_stays_within_one_rounding_of_the_native_kernel(kind, dtype):
    """Both kernels form the same exact products and add them in fp32; only the order of the sums differs
    (at most n * eps32 * sum|x w| apart, the textbook bound for n terms), then each rounds to the dtype."""
    func, x, weight, bias = _layer(kind, dtype, seed=1)
    native = _call(func, x, weight, bias).float()
    with fp32_kernels():
        fast = _call(func, x, weight, bias).float()
    info = torch.finfo(dtype)
    spacing = info.eps * torch.maximum(native.abs(), fast.abs()).clamp(min=info.tiny)  # one ulp, or more
    terms = weight[0].numel() + 1
    magnitude = _call(func, x.float().abs(), weight.float().abs(), bias.float().abs())
    sums = terms * torch.finfo(torch.float32).eps * magnitude
    assert ((fast - native).abs() <= spacing + sums).all()
    assert (fast == native).float().mean() > 0.5  # most values round identically


def test_what_passes_through_unchanged():
    mode = fp32_kernels()
    func, x, weight, bias = _layer("conv", torch.float32)
    with mode:
        fp32 = _call(func, x, weight, bias)
    assert mode.calls == 0 and torch.equal(fp32, _call(func, x, weight, bias))
    func, x, weight, bias = _layer("linear", torch.bfloat16, rows=MIN_ROWS - 1)  # too few rows to pay off
    with mode:
        few = _call(func, x, weight, bias)
        act = F.silu(x)
    assert mode.calls == 0 and torch.equal(few, _call(func, x, weight, bias)) and torch.equal(act, F.silu(x))
    func, x, weight, bias = _layer("conv", torch.bfloat16)
    conv = torch.nn.Conv2d(16, 12, 3, padding=1).to(torch.bfloat16)
    with mode, torch.inference_mode():
        conv(x)  # a module's call goes through F.conv2d
    assert mode.calls == 1 and conv.weight.dtype == torch.bfloat16  # its weights are left as they were


def test_native_half_kernels_asks_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: True)
    assert native_half_kernels(torch.bfloat16) is False and native_half_kernels(torch.float16) is True
    assert native_half_kernels(torch.float32) is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_half_kernels(torch.bfloat16) is True  # a torch without the probe: native kernels


@pytest.mark.parametrize("amx", [True, False])
def test_the_fast_path_follows_the_cpu(monkeypatch, amx):
    monkeypatch.setattr(device_module, "native_half_kernels", lambda dtype: amx)
    want = {"channels_last": True} if amx else {"fp32_kernels": True}
    assert measured_fast_path("cpu", torch.bfloat16) == want
    assert measured_fast_path("cpu", torch.float16) == ({} if amx else {"fp32_kernels": True})
    assert measured_fast_path("cpu", torch.float32) == {}  # the exact maths
    assert measured_fast_path("cuda", torch.bfloat16) == {}


def test_pipeline_runs_fp32_kernels_only_inside_its_forward(checkpoint_root, monkeypatch):
    """A tiny bf16 model with fp32 kernels: its VAE's layers (48 x 64 maps) take them, the result stays
    within the bf16 tolerance of the exact fp32 pipeline, and the modules themselves still run natively."""
    modes = []
    real_init = fp32_kernels.__init__
    monkeypatch.setattr(fp32_kernels, "__init__", lambda self, *a: modes.append(self) or real_init(self, *a))
    folder = str(checkpoint_root / "unet_depth_v2")
    exact = GenPerceptPipeline.from_checkpoint(folder, device="cpu")
    native = GenPerceptPipeline.from_checkpoint(folder, device="cpu", dtype="bf16", fast_path=False)
    fast = GenPerceptPipeline.from_checkpoint(folder, device="cpu", dtype="bf16", fast_path=False)
    assert fast.optimize(fp32_kernels=True).fp32_kernels and not native.fp32_kernels
    rgb = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 3, 48, 64), dtype=np.uint8))
    want, plain = exact.predict_batch(rgb), native.predict_batch(rgb)
    assert modes == []  # neither the fp32 nor the native bf16 pipeline entered the mode
    got = fast.predict_batch(rgb)
    assert len(modes) == 1 and modes[0].calls > 0
    assert want.std() > 1e-3 and (got - want).abs().max() <= BF16_TOL
    assert (got - plain).abs().max() <= BF16_TOL  # the same maths as the native kernels
    calls = modes[0].calls
    with torch.inference_mode():  # the same modules called directly: native kernels, no mode
        latent = torch.randn(1, 4, 6, 8, dtype=torch.bfloat16)
        assert torch.equal(fast.model.vae.decoder(latent), native.model.vae.decoder(latent))
    assert len(modes) == 1 and modes[0].calls == calls


def test_fp32_kernels_only_for_half_precision_on_the_cpu(checkpoint_root):
    folder = str(checkpoint_root / "unet_depth_v2")
    fp32 = GenPerceptPipeline.from_checkpoint(folder, device="cpu", fast_path=False)
    assert fp32.optimize(fp32_kernels=True).fp32_kernels is False  # nothing to upcast
    bf16 = GenPerceptPipeline.from_checkpoint(folder, device="cpu", dtype="bf16", fast_path=False)
    assert bf16.optimize(fp32_kernels=True, compile=True, compile_backend="eager").fp32_kernels is False
