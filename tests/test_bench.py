"""`genpercept bench-speed` on tiny random models, the Marigold baseline's maths, and the fast path
against the exact fp32 pipeline (SPEC §3, §5)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmarks.speed import (
    SD21_UNET,
    SD_VAE,
    MarigoldBaseline,
    Protocol,
    StageClock,
    build_random_model,
    ddim_schedule,
    ddim_step,
    ensemble_median,
    marigold_unet,
    parse_protocols,
)
from genpercept_cli.cli import app
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.runtime import device as device_module
from genpercept_cli.runtime.device import measured_fast_path
from genpercept_cli.runtime.winograd import winograd_available

TASKS = ("depth", "normal", "seg")
# Fast path vs the fp32 pipeline, predict_batch outputs in [0, 1] on the tiny models (measured max):
CHANNELS_LAST_TOL = 1e-5  # measured <= 2.1e-7: only the convolution kernels' summation order changes
BF16_TOL = 2e-2  # measured <= 4e-3 (mean 3e-4): bf16 keeps 8 mantissa bits
TILED_TOL = 5e-2  # 16-latent-px tiles, 8 overlap on a 24x24 latent; GroupNorm sees per-tile statistics


def _bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        ["bench-speed", "--random-weights", "--model-size", "tiny", "--resolution", "64", "--warmup", "1",
         "--json", str(out), *args],
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_bench_speed_tiny_reports_sane_numbers(tmp_path):
    report = _bench(tmp_path, "--no-overlap-io", "--protocol", "genpercept", "--protocol", "reference",
                    "--protocol", "marigold:2x2", "--num-images", "1", "--repeats", "2")
    for key in ("protocol", "device", "dtype", "resolution", "batch_size", "latency_ms_per_image",
                "images_per_s", "peak_memory_mb", "stages_ms"):
        assert key in report
    assert (report["protocol"], report["device"], report["dtype"], report["resolution"]) == (
        "genpercept", "cpu", "float32", 64)
    assert report["environment"]["versions"]["torch"] == torch.__version__
    assert [r["label"] for r in report["runs"]] == ["genpercept", "reference", "marigold_2x2"]
    for run in report["runs"]:
        assert run["repeats"] == 2 and len(run["latency_ms_per_image_runs"]) == 2
        assert run["latency_ms_per_image"] > 0 and run["peak_memory_mb"] > 0
        assert run["images_per_s"] == pytest.approx(1000 / run["latency_ms_per_image"])
        assert set(run["stages_ms"]) >= {"load", "vae_encode", "unet", "vae_decode", "postprocess", "write"}
        assert all(v > 0 for v in run["stages_ms"].values())
        for stages, total in zip(run["stages_ms_runs"], run["latency_ms_per_image_runs"], strict=True):
            assert sum(stages.values()) <= total  # nothing overlaps in series
    one_step, reference, marigold = report["runs"]
    assert one_step["unet_samples_per_image"] == 1 and reference["unet_samples_per_image"] == 1
    assert marigold["unet_samples_per_image"] == 2 * 2
    assert report["speedups"]["marigold_2x2"] == pytest.approx(
        marigold["latency_ms_per_image"] / one_step["latency_ms_per_image"])
    assert reference["optimizations"]["batch_size_1"] and not reference["optimizations"]["channels_last"]


def test_bench_speed_overlapped_io_compute_stages_within_end_to_end(tmp_path):
    report = _bench(tmp_path, "--overlap-io", "--num-images", "3", "--repeats", "1")
    stages = report["stages_ms_runs"][0]
    compute = sum(v for k, v in stages.items() if k not in ("load", "write"))  # these run in threads
    assert 0 < compute <= report["latency_ms_per_image"]
    assert stages["load"] > 0 and stages["write"] > 0 and report["optimizations"]["overlap_io"]


def test_bench_speed_dpt_head_times_the_head(tmp_path):
    report = _bench(tmp_path, "--head", "dpt", "--repeats", "1", "--batch-size", "2")
    assert report["batch_size"] == 2 and report["num_images"] == 2
    assert "dpt_head" in report["stages_ms"] and "vae_decode" not in report["stages_ms"]


def test_bench_speed_needs_exactly_one_weight_source():
    result = CliRunner().invoke(app, ["bench-speed", "--resolution", "64"])
    assert result.exit_code == 2 and "--random-weights" in result.output


def test_parse_protocols_reads_steps_ensemble_and_repeats():
    assert parse_protocols(["marigold:10x10@1", "reference"], 5, 2) == [
        Protocol("genpercept"), Protocol("marigold", 10, 10, 1), Protocol("reference")]
    assert parse_protocols(["marigold"], 5, 2)[1] == Protocol("marigold", 5, 2)
    for bad in ("marigold:0x1", "reference:2x2", "ddim"):
        with pytest.raises(GenPerceptError):
            parse_protocols([bad], 10, 10)


def test_sd21_presets_have_the_released_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD_VAE)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724  # 3.46 GB in fp32 (SPEC §2)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


# -- the Marigold baseline ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pipe():
    model = build_random_model("tiny", "vae", torch.device("cpu"), torch.float32)
    from genpercept_cli.checkpoints import CheckpointSpec

    return GenPerceptPipeline(model, CheckpointSpec(name="tiny", task="depth", output="random"))


@pytest.mark.parametrize("steps,ensemble,member_batch,calls", [(2, 3, 1, 6), (2, 3, 2, 4), (1, 1, 1, 1)])
def test_marigold_runs_steps_times_ensemble_unet_evaluations(tiny_pipe, steps, ensemble, member_batch, calls):
    seen = []
    clock = StageClock(torch.device("cpu"))
    rgb = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
    with marigold_unet(tiny_pipe.stages.unet) as unet:
        handle = unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
        out = MarigoldBaseline(tiny_pipe, unet, steps, ensemble, member_batch, clock).predict_batch(rgb)
        handle.remove()
    assert len(seen) == 2 * calls  # two images
    assert sum(s[0] for s in seen) == 2 * steps * ensemble and all(s[1] == 8 for s in seen)
    assert out.shape == (2, 1, 16, 24) and 0.0 <= out.min() and out.max() <= 1.0
    assert tiny_pipe.stages.unet.conv_in.in_channels == 4  # restored


def test_ddim_v_prediction_step_lands_on_the_clean_sample():
    schedule = ddim_schedule(10)
    assert [t for t, _, _ in schedule][:2] == [999, 899] and schedule[-1][2] == 1.0
    x0, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t, a, _ = schedule[3]
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a**0.5 * eps - (1 - a) ** 0.5 * x0
    torch.testing.assert_close(ddim_step(x_t, v, a, 1.0), x0)


def test_ensemble_median_undoes_per_member_affine_maps():
    base = torch.rand(1, 16, 16)
    members = torch.stack([s * base + b for s, b in ((1.0, 0.0), (0.5, 0.2), (2.0, -0.3), (0.8, 0.1))])
    expected = (base - base.min()) / (base.max() - base.min())
    torch.testing.assert_close(ensemble_median(members), expected, atol=1e-5, rtol=0)


# -- the fast path against the exact fp32 pipeline ------------------------------------------------
def _pipes(root, task, **kwargs):
    return GenPerceptPipeline.from_checkpoint(str(root / f"unet_{task}_v2"), device="cpu", **kwargs)


def _rgb(h=48, w=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (2, 3, h, w), dtype=np.uint8))


@pytest.mark.parametrize("task", TASKS)
def test_channels_last_matches_fp32_within_1e5(checkpoint_root, task):
    exact = _pipes(checkpoint_root, task).predict_batch(_rgb())
    fast = _pipes(checkpoint_root, task).optimize(channels_last=True).predict_batch(_rgb())
    assert (fast - exact).abs().max() <= CHANNELS_LAST_TOL


@pytest.mark.parametrize("task", TASKS)
def test_bf16_channels_last_matches_fp32_within_2e2(checkpoint_root, task):
    exact = _pipes(checkpoint_root, task).predict_batch(_rgb())
    fast = _pipes(checkpoint_root, task, dtype="bf16").optimize(channels_last=True).predict_batch(_rgb())
    assert fast.dtype == torch.float32
    assert (fast - exact).abs().max() <= BF16_TOL


def test_tiled_decode_matches_full_decode_within_5e2(checkpoint_root):
    pipe = _pipes(checkpoint_root, "depth")
    with torch.inference_mode():
        model = pipe.model
        latent = model.denoise(model.encode(pipe.normalise(_rgb(192, 192)[:1])))  # [1,4,24,24]
        full = model.head(model.decode(latent))
        tiled = model.head(model.decode_tiled(latent, tile=16, overlap=8))
    assert tiled.shape == full.shape
    assert (tiled - full).abs().max() <= TILED_TOL


def test_tiled_decode_triggers_only_above_the_threshold(checkpoint_root, monkeypatch):
    pipe = _pipes(checkpoint_root, "depth").optimize(tiled_decode_above=48 * 64)
    used = []
    monkeypatch.setattr(pipe.model, "decode_tiled", lambda latent: used.append(latent.shape) or torch.zeros(1))
    exact = _pipes(checkpoint_root, "depth").predict_batch(_rgb(48, 64))
    torch.testing.assert_close(pipe.predict_batch(_rgb(48, 64)), exact, atol=0, rtol=0)  # at the threshold
    with torch.inference_mode():
        pipe.model.decode(torch.zeros(1, 4, 8, 9))
    assert used == [(1, 4, 8, 9)]


def test_measured_fast_path_keeps_only_measured_winners(monkeypatch):
    # on a CPU with AMX; without it bf16 takes fp32 kernels instead (tests/test_fp32_kernels.py)
    monkeypatch.setattr(device_module, "native_half_kernels", lambda dtype: True)
    assert measured_fast_path("cpu", torch.bfloat16) == {"channels_last": True}
    assert measured_fast_path("cpu", torch.float32) == {}  # channels-last within noise; Winograd not exact
    assert measured_fast_path("cuda", torch.float16) == {}  # not measured in this repository yet


def test_batch_buckets_pad_exactly(checkpoint_root):
    pipe = _pipes(checkpoint_root, "depth")
    rgb = torch.cat([_rgb(seed=1), _rgb(seed=2)])[:3]
    one_by_one = torch.cat([pipe.predict_batch(rgb[i : i + 1]) for i in range(3)])
    pipe.batch_buckets = True  # what optimize(compile=True) sets: 3 images run as a batch of 4
    torch.testing.assert_close(pipe.predict_batch(rgb), one_by_one, atol=1e-6, rtol=0)


def test_bench_speed_with_a_checkpoint_in_the_released_layout(tmp_path, checkpoint_root):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench-speed", "-c", str(checkpoint_root / "unet_matting_v2"), "--resolution", "32", "--warmup", "0",
        "--repeats", "1", "--protocol", "genpercept", "--protocol", "reference", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"] == str(checkpoint_root / "unet_matting_v2")
    assert report["stages_ms"]["unet"] > 0 and report["speedups"]["reference"] > 0


@pytest.mark.parametrize("args,message", [(["--num-images", "-2"], "--num-images"), (["--json", "."], "is a folder")])
def test_bench_option_errors(args, message):
    result = CliRunner().invoke(app, ["bench-speed", "--random-weights", "--model-size", "tiny", *args])
    assert result.exit_code == 2 and message in result.output


# -- the peer: diffusers' MarigoldDepthPipeline at one step on our modules -------------------------
@pytest.fixture()
def marigold_importable(monkeypatch):
    """The peer's module imports transformers for its text encoder, which the peer never runs (the
    empty-prompt embedding is handed over); where transformers is not installed, names stand in."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("transformers") is None:
        stand_in = types.ModuleType("transformers")
        stand_in.CLIPTextModel = type("CLIPTextModel", (), {})
        stand_in.CLIPTokenizer = type("CLIPTokenizer", (), {})
        monkeypatch.setitem(sys.modules, "transformers", stand_in)


PEER_MISSING = "the diffusers protocol needs diffusers >= 0.28"


def _diffusers_has_marigold() -> bool:
    import importlib.util

    return importlib.util.find_spec("diffusers.pipelines.marigold") is not None


def test_peer_runs_the_unet_once_at_t999_on_our_modules(tiny_pipe, marigold_importable):
    from benchmarks.speed.peer import DiffusersMarigoldPeer

    if not _diffusers_has_marigold():  # diffusers 0.27 (our lower bound): one sentence, not a traceback
        with pytest.raises(GenPerceptError, match=PEER_MISSING):
            DiffusersMarigoldPeer(tiny_pipe, tiny_pipe.model.unet)
        return

    calls = []
    with marigold_unet(tiny_pipe.model.unet) as unet:
        handle = unet.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((args[0].shape, int(args[1]), kwargs["encoder_hidden_states"])),
            with_kwargs=True)
        try:
            peer = DiffusersMarigoldPeer(tiny_pipe, unet)
            out = peer.predict_batch(torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8))
        finally:
            handle.remove()
    assert out.shape == (2, 1, 32, 48) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert len(calls) == 1 and calls[0][0] == (2, 8, 4, 6) and calls[0][1] == 999
    assert torch.equal(calls[0][2], tiny_pipe.model.embedding.expand(2, -1, -1))
    assert tiny_pipe.model.unet.conv_in.in_channels == 4  # restored after the swap


def test_bench_speed_measures_the_peer_beside_us(tmp_path, marigold_importable):
    if not _diffusers_has_marigold():
        result = CliRunner().invoke(app, ["bench-speed", "--random-weights", "--model-size", "tiny", "--resolution",
                                          "64", "--protocol", "diffusers", "--repeats", "1"])
        assert result.exit_code == 2 and PEER_MISSING in result.output
        return
    report = _bench(tmp_path, "--protocol", "genpercept", "--protocol", "diffusers", "--repeats", "1",
                    "--batch-size", "0", "--winograd")
    one_step, peer = report["runs"]
    assert peer["label"] == "diffusers_marigold_1x1" and peer["peer"].endswith("MarigoldDepthPipeline")
    assert peer["unet_samples_per_image"] == 1 and peer["stages_ms"]["vae_decode"] > 0
    assert report["speedups"]["diffusers_marigold_1x1"] == pytest.approx(
        peer["latency_ms_per_image"] / one_step["latency_ms_per_image"])
    assert report["batch_size"] == 1 and report["batch_size_auto"]  # automatic: 1 on the CPU
    # Winograd is how our pipeline runs the modules; the peer calls them itself
    assert one_step["optimizations"]["winograd"] is winograd_available()
    assert peer["optimizations"]["winograd"] is False
    assert one_step["optimizations"]["fp32_kernels"] is peer["optimizations"]["fp32_kernels"] is False  # fp32
    assert report["environment"]["allocator"]["mode"] in ("tuned", "system")


def test_bench_speed_runs_the_peer_on_native_half_kernels(tmp_path, marigold_importable):
    """bf16 with --fp32-kernels: our forward takes them; the reference loop and the peer (where this
    diffusers has it) call the same modules natively."""
    others = ["reference"] + (["diffusers"] if _diffusers_has_marigold() else [])
    protocols = [a for name in ["genpercept", *others] for a in ("--protocol", name)]
    report = _bench(tmp_path, "--dtype", "bf16", *protocols, "--repeats", "1", "--fp32-kernels")
    one_step, *rest = report["runs"]
    assert [r["protocol"] for r in rest] == others and len(rest) >= 1
    assert {r["dtype"] for r in report["runs"]} == {"bfloat16"}
    assert one_step["optimizations"]["fp32_kernels"] is True
    assert all(r["optimizations"]["fp32_kernels"] is False for r in rest)
