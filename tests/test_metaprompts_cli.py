"""Meta Prompts through the commands: `bench-speed -c` on tiny depth and segmentation checkpoints, and the
precision `--dtype auto` picks for them (the reference runs in fp32 on every device)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_metaprompts import write_tiny_converted
from typer.testing import CliRunner

from genpercept_cli.checkpoints import load_registry
from genpercept_cli.cli import app
from genpercept_cli.runtime.device import resolve_dtype

# Segmentation at test scale: keep-ratio resize to fit (96, 64), 64-px sliding crops.
SEG_PROTOCOL = dict(img_scale=(96, 64), crop=64, stride=32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    return {"nyu": write_tiny_converted(root / "metaprompts-nyu", "nyu"),
            "ade20k": write_tiny_converted(root / "metaprompts-ade20k", "ade20k", **SEG_PROTOCOL)}


def _bench(folder, out, *args):
    return CliRunner().invoke(app, ["bench-speed", "-c", str(folder), "--resolution", "32", "--input-size", "48",
                                    "--warmup", "0", "--repeats", "1", "--json", str(out), *args])


@pytest.mark.parametrize("kind, attention", [("nyu", "sdpa"), ("ade20k", "classic")])
def test_bench_speed_times_a_metaprompts_checkpoint(converted, tmp_path, kind, attention):
    out = tmp_path / "bench.json"
    result = _bench(converted[kind], out, "--protocol", "genpercept", "--protocol", "reference",
                    "--attention", attention)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["label"] for r in report["runs"]] == ["genpercept", "reference"]
    assert report["dtype"] == "float32" and report["attention"] == attention
    for run in report["runs"]:
        assert run["stages_ms"]["vae_encode"] > 0 and run["stages_ms"]["unet"] > 0
        assert "vae_decode" not in run["stages_ms"]  # Meta Prompts has no VAE decoder
        # refine_step = 3 U-Net passes per window: depth 48x48 is one shift window and its flip; seg 48x48
        # is rescaled to 64x64, one 64-px crop
        windows = 2 if kind == "nyu" else 1
        assert run["unet_samples_per_image"] == 3 * windows


@pytest.mark.parametrize("protocol", ["diffusers", "marigold:2x2"])
def test_bench_speed_refuses_marigold_protocols_on_metaprompts(converted, tmp_path, protocol):
    result = _bench(converted["nyu"], tmp_path / "bench.json", "--protocol", protocol)
    assert result.exit_code == 2, result.output
    assert "metaprompts family does not have" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bench.json").exists()


def test_auto_precision_is_the_family_reference_precision():
    from genpercept_cli.models import family_of

    cuda = torch.device("cuda")  # resolve_dtype only reads the device type: no GPU needed
    registry = load_registry()
    metaprompts = family_of(registry["metaprompts-nyu"]).dtype
    one_step = family_of(registry["depth"]).dtype
    assert resolve_dtype("auto", cuda, metaprompts) is torch.float32
    assert resolve_dtype("auto", cuda, one_step) is torch.float16
    assert resolve_dtype("fp16", cuda, metaprompts) is torch.float16  # --dtype still says otherwise


def test_from_checkpoint_builds_metaprompts_in_fp32_on_cuda(converted, monkeypatch):
    """eval and predict load through `from_checkpoint`: on a (pretended) CUDA device `auto` gives fp32."""
    from genpercept_cli import pipeline

    built = []

    def build(files, dtype):
        built.append(dtype)
        return torch.nn.Identity()

    monkeypatch.setattr(pipeline, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(pipeline, "build_model", build)
    monkeypatch.setattr(torch.nn.Identity, "to", lambda self, *a, **k: self)
    for dtype, expected in (("auto", torch.float32), ("fp16", torch.float16)):
        pipe = pipeline.GenPerceptPipeline.from_checkpoint(str(converted["nyu"]), dtype=dtype, fast_path=False)
        assert pipe.dtype is expected and built[-1] is expected
