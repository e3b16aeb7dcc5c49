"""The GPU check's preparation and plan, checked on the CPU so they cannot rot.

The wheel list and pip command lines are built (not run); every planned command line is parsed by the
parser that will run it; and the plan itself runs end to end in its dry-run mode (tiny models on the
CPU) through the shell script, writing the files the device tool brings back.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.main import get_command

from benchmarks.speed import gpu_check
from benchmarks.speed.gpu_check import OUT_FILES, PLATFORMS, WHEELS, Sizes, check_wheels, plan
from genpercept_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return path


def test_download_command_fetches_exactly_the_wheels_for_the_device(tmp_path):
    cmd = gpu_check.download_command(tmp_path / "w", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--implementation") + 1] == "cp"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == list(PLATFORMS)
    assert cmd[cmd.index("-d") + 1] == str(tmp_path / "w")
    assert cmd[-len(WHEELS):] == [f"{n}=={v}" for n, v in WHEELS.items()] == ["diffusers==0.42.1",
                                                                              "importlib-metadata==8.7.0"]


def test_wheel_versions_are_within_what_pyproject_supports():
    text = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'"diffusers>=([\d.]+)"', text).group(1)
    as_tuple = [tuple(int(x) for x in v.split(".")) for v in (lowest, WHEELS["diffusers"])]
    assert as_tuple[0] <= as_tuple[1] <= (0, 42, 99)  # the newest diffusers our support range names


def test_check_wheels_wants_one_version_of_each_and_nothing_else(tmp_path):
    files = [fake_wheel(tmp_path, n, v) for n, v in WHEELS.items()]
    assert check_wheels(tmp_path) == sorted(files)
    extra = fake_wheel(tmp_path, "importlib-metadata", "8.6.0")
    with pytest.raises(ValueError, match="one importlib-metadata 8.7.0 wheel"):
        check_wheels(tmp_path)
    extra.unlink()
    fake_wheel(tmp_path, "torch", "2.11.0")
    with pytest.raises(ValueError, match="does not need: torch"):
        check_wheels(tmp_path)


def test_install_command_is_offline_and_matches_the_shell_script(tmp_path):
    for n, v in WHEELS.items():
        fake_wheel(tmp_path, n, v)
    cmd = gpu_check.install_command(tmp_path, "/tmp/site")
    flags = ["--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade"]
    assert cmd[:4] == ["python3", "-m", "pip", "install"] and all(f in cmd for f in flags)
    assert cmd[cmd.index("--target") + 1] == "/tmp/site" and [Path(p).name for p in cmd if p.endswith(".whl")] == [
        "diffusers-0.42.1-py3-none-any.whl", "importlib_metadata-8.7.0-py3-none-any.whl"]
    script = (ROOT / "benchmarks/speed/gpu_check.sh").read_text()
    assert all(f in script for f in flags) and "--target" in script
    assert "benchmarks.speed.gpu_check run" in script
    assert "gpu_check wheels --dest .whl" in (ROOT / "benchmarks/speed/prepare_gpu_wheels.sh").read_text()
    assert "/.whl/" in (ROOT / ".gitignore").read_text().split()  # the wheels never enter git


def bench_lines(steps) -> list[list[str]]:
    return [args for s in steps if "bench-group" in s.argv for args in json.loads(s.argv[-1])]


def test_gpu_plan_covers_the_issue_in_priority_order(tmp_path):
    steps = plan(tmp_path, Sizes(), python="python3")
    assert [s.name for s in steps] == ["environment", "headline", "pytest_cuda", "sweep", "predict_e2e", "eval_e2e",
                                       "metaprompts_precision", "compile"]
    precision = steps[6].argv
    assert precision[precision.index("--dtypes") + 1] == "fp16,bf16" and "--small" not in precision
    lines = bench_lines(steps)
    valued = ("--dtype", "--resolution", "--model-size", "--device", "--batch-size", "--head")
    opts = [{k: a[a.index(k) + 1] for k in valued if k in a} | {"flags": a} for a in lines]
    headline = [o for o in opts if "marigold:10x1@1" in o["flags"]]
    assert sorted(o["--dtype"] for o in headline) == ["bf16", "fp16"]
    assert all(o["--resolution"] == "768" and o["--model-size"] == "sd21" and o["--device"] == "cuda" for o in opts)
    assert all({"genpercept", "diffusers"} <= set(o["flags"]) for o in headline)
    assert sorted({int(o["--batch-size"]) for o in opts}) == [0, 1, 4, 8, 16]  # 0: the automatic batch size
    flags = {f for a in lines for f in a if f.startswith("--")}
    assert {"--channels-last", "--no-channels-last", "--compile", "--cuda-graphs"} <= flags
    assert any(o.get("--head") == "dpt" for o in opts)
    assert "-m" in steps[2].argv and steps[2].argv[steps[2].argv.index("-m", 3) + 1] == "cuda"
    assert gpu_check.BUDGET_S <= 480  # the issue's 8 minutes


def test_every_planned_command_line_parses(tmp_path):
    steps = plan(tmp_path, Sizes(), python="python3")
    bench = get_command(app).commands["bench-speed"]
    for args in bench_lines(steps):
        ctx = bench.make_context("bench-speed", list(args))  # parses and type-checks without running
        assert ctx.params["random_weights"] is True and ctx.params["json_path"] is not None
    for step in steps:
        if step.argv[1:3] == ["-m", "benchmarks.speed.gpu_check"] and "bench-group" not in step.argv:
            with pytest.raises(SystemExit) as info:  # argparse: parse, then --help exits 0 before running
                gpu_check.main([*step.argv[3:], "--help"])
            assert info.value.code == 0


def test_dry_run_end_to_end_writes_what_comes_back(tmp_path):
    """The shell script on the CPU with tiny sizes: bench rows, predict outputs, the files for $OUT."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GENPERCEPT_WHEELS": str(tmp_path / "no-wheels"),
           "TMPDIR": str(tmp_path)}
    env.pop("OUT", None)
    cmd = ["bash", str(ROOT / "benchmarks/speed/gpu_check.sh"), str(out), "--dry-run", "--steps",
           "headline,predict_e2e"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, shlex.join(cmd) + "\n" + (out / "gpu_check.log").read_text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)  # <= 8 plain files, one folder deep
    report = json.loads((out / "gpu_check.json").read_text())
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("headline", "ok"), ("predict_e2e", "ok")]
    results = report["results"]
    for dtype in ("fp32", "bf16"):
        labels = [r["label"] for r in results[f"bench_{dtype}_b2"]["runs"]]
        assert labels[0] == "genpercept" and labels[-1] == "marigold_2x1"
        assert len(labels) == (3 if Sizes.dry_run().peer else 2)  # the peer where transformers is installed
    predict = results["predict"]
    assert predict["files_written"] == 3 * predict["images"] == 18 and predict["warm_images"] == 1
    assert predict["images_per_s"] is None or predict["images_per_s"] > 0
    assert predict["seconds_full_run_queue_depth_1"] > 0  # the same run without the launch-ahead overlap
    assert "GENPERCEPT_QUEUE_DEPTH=1" in (out / "summary.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "| bench_fp32_b2 | float32 | 64 | 2 | genpercept |" in summary and "predict end to end" in summary
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/bench_fp32_b2.json" in names and all(n.endswith((".json", ".xml")) for n in names)


def test_bench_group_runs_without_the_peer_when_it_cannot_run(tmp_path, monkeypatch):
    """A broken peer costs only its own rows: the configuration is measured again without it."""
    from benchmarks.speed import peer

    def missing():
        raise peer.GenPerceptError("the diffusers protocol needs diffusers >= 0.28 with transformers installed.")

    monkeypatch.setattr(peer, "marigold_pipeline_class", missing)
    args = gpu_check.bench_args(Sizes.dry_run(), "fp32", 1, tmp_path / "b.json", ("genpercept", "diffusers"),
                                "--warmup", "0")
    assert gpu_check.bench_group(json.dumps([args])) == 0
    assert [r["label"] for r in json.loads((tmp_path / "b.json").read_text())["runs"]] == ["genpercept"]


def test_metaprompts_precision_step_records_half_precision_against_fp32(tmp_path):
    """The step's dry run: tiny Meta Prompts depth and segmentation models, fp32 and bf16 on one input."""
    out = tmp_path / "precision.json"
    assert gpu_check.main(["metaprompts-precision", "--device", "cpu", "--dtypes", "bf16", "--small",
                           "--work", str(tmp_path / "w"), "--json", str(out)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert sorted(cases) == ["ade20k", "nyu"]
    assert cases["nyu"]["task"] == "depth" and cases["ade20k"]["task"] == "semseg"
    for case in cases.values():
        row = case["vs_fp32"]["bf16"]
        assert 0 < row["mean_abs"] <= row["max_abs"]  # bf16 rounds: the outputs move, and are finite
        assert case["recoveries"] == {"fp32": 0, "bf16": 0}
    assert 0 <= cases["ade20k"]["vs_fp32"]["bf16"]["labels_changed"] <= 1
    assert 0 < cases["nyu"]["vs_fp32"]["bf16"]["max_abs"] < cases["nyu"]["vs_fp32"]["bf16"]["reference_mean"]
