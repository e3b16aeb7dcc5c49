"""Data-parallel runs under torchrun on the CPU (gloo): 2 processes give what 1 process gives."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _archives import npy_bytes, png_bytes, write_tar, write_tree
from PIL import Image
from test_datasets import NYU_TAR, dis_files, hypersim_tree, matting_files, nyu_files, rng_image
from test_eval import write_preds
from typer.testing import CliRunner

from benchmarks.datasets import get_dataset
from benchmarks.evaluate import EvalOptions, evaluate
from genpercept_cli.cli import app
from genpercept_cli.palette import NYU40_PALETTE

TESTS = Path(__file__).parent
REPO = TESTS.parent


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1",
           "GENPERCEPT_DIST_TIMEOUT": "60", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _images(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sizes = [(20, 30), (30, 20), (24, 24), (17, 40)]
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        sub = folder / ("sub" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"img{i:02d}.png")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_predict_two_processes_write_what_one_writes(tmp_path, checkpoint_root):
    _images(tmp_path / "in", 9)
    ckpt = str(checkpoint_root / "unet_depth_v2")
    single = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "-c", ckpt, "-o", str(tmp_path / "one"),
                                      "--processing-res", "32", "--device", "cpu"])
    assert single.exit_code == 0, single.output
    code, out = finish(torchrun("-m", "genpercept_cli", "predict", "in", "-c", ckpt, "-o", "two",
                                "--processing-res", "32", "--device", "cpu", cwd=tmp_path))
    assert code == 0, out
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 27 and one == two  # every input once, bit-identical files
    assert out.count("wrote 9 of 9 images") == 1  # one summary, from rank 0
    assert "ranks=2" in out


def test_a_killed_rank_ends_the_run_and_skip_existing_completes_it(tmp_path, checkpoint_root):
    _images(tmp_path / "in", 40, seed=1)
    ckpt = str(checkpoint_root / "unet_depth_v2")
    args = ["-m", "genpercept_cli", "predict", "in", "-c", ckpt, "-o", "out", "--processing-res", "160",
            "--device", "cpu", "--formats", "npy"]
    proc = torchrun(*args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "out").rglob("*_pred.npy")):
        time.sleep(0.02)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run
    code, out = finish(proc)
    assert code != 0
    written = list((tmp_path / "out").rglob("*_pred.npy"))
    assert 0 < len(written) < 40, out
    for path in written:
        assert np.load(path).shape in ((20, 30), (30, 20), (24, 24), (17, 40))  # complete files only
    code, out = finish(torchrun(*args, "--skip-existing", cwd=tmp_path))
    assert code == 0, out
    assert len(list((tmp_path / "out").rglob("*_pred.npy"))) == 40
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]  # stale temp files removed


def _eval_cases(tmp_path: Path, checkpoint_root: Path) -> dict[str, dict]:
    """Miniature archives for a depth, a normal, a DIS, a matting and a seg benchmark, with predictions."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    rng = np.random.default_rng(7)
    write_tar(data / NYU_TAR, nyu_files(rng)[0])
    write_tree(data / "DIS5K", dis_files(rng)[0])
    write_tree(data / "P3M-10k/validation/P3M-500-NP", matting_files(rng, "original_image")[0])
    hypersim_tree(data, rng)
    normals = {}
    for i in (0, 1, 8):  # the first three stems of the shipped split list
        normals[f"test/{i:06d}_img.png"] = png_bytes(rng_image(rng, 6, 8))
        normals[f"test/{i:06d}_normal.png"] = png_bytes(rng.integers(1, 256, (6, 8, 3), dtype=np.uint8))
        normals[f"test/{i:06d}_intrins.npy"] = npy_bytes(np.eye(3, dtype=np.float32))
    write_tree(data / "dsine_eval/nyuv2", normals)
    noisy = np.random.default_rng(8)
    write_preds(pred / "nyu", get_dataset("nyu", data, 2), lambda s: s.gt * 0.5 + noisy.random(s.gt.shape))
    write_preds(pred / "normal", get_dataset("nyu-normal", data, 3),
                lambda s: s.gt + 0.3 * noisy.standard_normal(s.gt.shape).astype(np.float32))
    write_preds(pred / "dis", get_dataset("dis-te", data), lambda s: noisy.random(s.gt.shape).astype(np.float32))
    write_preds(pred / "matting", get_dataset("p3m-500-np", data), lambda s: noisy.random(s.gt.shape))
    write_preds(pred / "seg", get_dataset("hypersim-seg", data),
                lambda s: NYU40_PALETTE[noisy.integers(0, 41, s.gt.shape)].astype(np.float32) / 255)
    common = {"data_dir": str(data)}
    return {
        "nyu": {**common, "dataset": "nyu", "predictions": str(pred / "nyu"), "limit": 2},
        "normal": {**common, "dataset": "nyu-normal", "predictions": str(pred / "normal"), "limit": 3},
        "dis": {**common, "dataset": "dis-te", "predictions": str(pred / "dis")},
        "matting": {**common, "dataset": "p3m-500-np", "predictions": str(pred / "matting")},
        "seg": {**common, "dataset": "hypersim-seg", "predictions": str(pred / "seg")},
        "nyu-model": {**common, "dataset": "nyu", "checkpoint": str(checkpoint_root / "unet_depth_v2"), "limit": 2,
                      "processing_res": 64, "device": "cpu", "dtype": "fp32"},
        "dis-model": {**common, "dataset": "dis-te", "checkpoint": str(checkpoint_root / "unet_dis_v2"),
                      "processing_res": 32, "device": "cpu", "dtype": "fp32"},
    }


def test_sharded_eval_equals_one_process_for_every_task(tmp_path, checkpoint_root):
    cases = _eval_cases(tmp_path, checkpoint_root)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "results").mkdir()
    code, out = finish(torchrun(str(TESTS / "dist_eval_driver.py"), str(tmp_path / "cases.json"),
                                str(tmp_path / "results"), cwd=tmp_path))
    assert code == 0, out
    for name, options in cases.items():
        single = evaluate(EvalOptions(**options))
        sharded = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert sharded["ranks"] == 2
        assert json.loads(json.dumps(single.to_json(), default=str)) == sharded["json"], name  # exactly equal
        assert json.loads(json.dumps(single.rows, default=str)) == sharded["rows"], name
        assert single.n_images >= 2


def test_eval_command_under_torchrun_prints_once_and_writes_the_report(tmp_path, checkpoint_root):
    cases = _eval_cases(tmp_path, checkpoint_root)
    nyu = cases["nyu"]
    args = ["eval", "-d", "nyu", "--data-dir", nyu["data_dir"], "--predictions", nyu["predictions"], "--limit", "2"]
    single = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "one.json")])
    assert single.exit_code == 0, single.output
    code, out = finish(torchrun("-m", "genpercept_cli", *args, "-o", "two.json", cwd=tmp_path))
    assert code == 0, out
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one == two and out.count("nyu: 2 images") == 1


def test_bench_speed_under_torchrun_reports_each_rank_and_the_aggregate(tmp_path):
    code, out = finish(torchrun("-m", "genpercept_cli", "bench-speed", "--random-weights", "--model-size", "tiny",
                                "--resolution", "32", "--warmup", "0", "--repeats", "1", "--device", "cpu",
                                "--json", "bench.json", cwd=tmp_path))
    assert code == 0, out
    report = json.loads((tmp_path / "bench.json").read_text())
    ranks = report["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["images_per_s"] > 0 for r in ranks)
    assert report["aggregate_images_per_s"] == sum(r["images_per_s"] for r in ranks)
    assert out.count("aggregate") == 1  # rank 0 alone prints


@pytest.mark.usefixtures("one_thread")  # as each rank runs (OMP_NUM_THREADS=1): 2 threads move fp32 by an ulp
def test_predict_clip_two_processes_split_the_frames_and_write_what_one_writes(tmp_path, checkpoint_root):
    from test_video import write_clip

    (tmp_path / "in").mkdir()
    write_clip(tmp_path / "in" / "clip.mkv", frames=9, noisy=True)
    ckpt = str(checkpoint_root / "unet_depth_v2")
    args = ["--processing-res", "32", "--device", "cpu", "--batch-size", "2"]
    single = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "-c", ckpt, "-o", str(tmp_path / "one"),
                                      *args])
    assert single.exit_code == 0, single.output
    code, out = finish(torchrun("-m", "genpercept_cli", "predict", "in", "-c", ckpt, "-o", "two", *args,
                                cwd=tmp_path))
    assert code == 0, out
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == ["clip_colored.mp4", "clip_pred.npy", *(f"clip_pred/{t:06d}_pred.png" for t in range(9))]
    assert one == two  # aligned over the whole clip from the frames both ranks predicted
    assert out.count("wrote 1 of 1 clip (9 frames)") == 1  # one summary, from rank 0, frames counted once
