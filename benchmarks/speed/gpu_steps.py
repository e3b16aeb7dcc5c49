"""The GPU check's end-to-end steps: `genpercept predict` on synthetic JPEGs and `genpercept eval` on a
synthetic archive, each through the CLI in its own process, as a user runs them.

predict-e2e writes a random-weight checkpoint in the released layout (fp16 U-Net and VAE, no download),
then times the CLI twice: on the first `warm` images and on all of them. The difference cancels start-up,
model loading and warm-up, so `images_per_s` is what a long run sees from JPEG on disk to files written;
`images_per_s_with_start` includes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def add_step_parsers(sub) -> None:
    p = sub.add_parser("predict-e2e", help="genpercept predict on synthetic JPEGs, timed")
    for flag, default in (("--device", "cuda"), ("--dtype", "fp16"), ("--model-size", "sd21")):
        p.add_argument(flag, default=default)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--warm", type=int, default=16)
    p.add_argument("--side", type=int, default=1152)
    p.add_argument("--resolution", type=int, default=768)
    p.add_argument("--json", type=Path, required=True)
    p.set_defaults(func=lambda a: predict_e2e(a.work, a.device, a.dtype, a.model_size, a.images, a.warm, a.side,
                                              a.resolution, a.json))
    p = sub.add_parser("eval-e2e", help="genpercept eval on a synthetic NYU archive")
    for flag, default in (("--device", "cuda"), ("--dtype", "fp16")):
        p.add_argument(flag, default=default)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--resolution", type=int, default=768)
    p.add_argument("--json", type=Path, required=True)
    p.set_defaults(func=lambda a: eval_e2e(a.work, a.checkpoint, a.device, a.dtype, a.resolution, a.json))


def write_random_checkpoint(root: Path, model_size: str, device: str) -> Path:
    """root/unet_depth_v2 + root/vae with random weights (fp16, as released); returns the U-Net folder."""
    import torch

    from .presets import build_random_model

    model = build_random_model(model_size, "vae", torch.device(device), torch.float16)
    model.unet.to("cpu").save_pretrained(root / "unet_depth_v2", safe_serialization=True)
    model.vae.to("cpu").save_pretrained(root / "vae", safe_serialization=True)
    return root / "unet_depth_v2"


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "genpercept_cli", *map(str, args)]


def timed(argv: list[str], env: dict | None = None) -> float:
    """Seconds the command took (`env`: extra environment variables); raises CalledProcessError (output
    shown) when it fails."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def predict_e2e(work: Path, device: str, dtype: str, model_size: str, images: int, warm: int, side: int,
                resolution: int, json_path: Path) -> int:
    from .run import make_inputs

    unet = write_random_checkpoint(work / "checkpoint", model_size, device)
    warm = max(1, min(warm, images - 1))
    make_inputs(work / "warm", warm, side, seed=1)
    make_inputs(work / "all", images, side, seed=2)
    common = ["-c", unet, "--device", device, "--dtype", dtype, "--batch-size", 0, "--processing-res", resolution,
              "--formats", "npy,png16,color"]
    t_warm = timed(cli("predict", work / "warm", "-o", work / "out_warm", *common))
    t_all = timed(cli("predict", work / "all", "-o", work / "out_all", *common))
    # the same run with batch k + 1 launched only after batch k is collected: what the overlap gains
    t_serial = timed(cli("predict", work / "all", "-o", work / "out_serial", *common), {"GENPERCEPT_QUEUE_DEPTH": "1"})
    written = sorted(p.name for p in (work / "out_all").rglob("*") if p.is_file())
    result = {
        "device": device, "dtype": dtype, "model_size": model_size, "input_side": side, "resolution": resolution,
        "images": images, "warm_images": warm, "seconds_warm_run": t_warm, "seconds_full_run": t_all,
        # None where the run is too short for the difference to mean anything (the dry run)
        "images_per_s": (images - warm) / (t_all - t_warm) if t_all > 1.05 * t_warm else None,
        "images_per_s_with_start": images / t_all, "files_written": len(written),
        "seconds_full_run_queue_depth_1": t_serial,
        "images_per_s_queue_depth_1": (images - warm) / (t_serial - t_warm) if t_serial > 1.05 * t_warm else None,
        "formats": "npy,png16,color", "batch_size": "auto",
    }
    json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result), flush=True)
    return 0 if len(written) == 3 * images else 1


def eval_e2e(work: Path, checkpoint: Path, device: str, dtype: str, resolution: int, json_path: Path) -> int:
    """NYU's archive layout with two synthetic samples (tests/test_datasets.py), scored by the CLI."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from _archives import write_tar
    from test_datasets import NYU_TAR, nyu_files

    files, _ = nyu_files(np.random.default_rng(0))
    write_tar(work / "data" / NYU_TAR, files)
    out = work / "eval_result.json"
    seconds = timed(cli("eval", "-d", "nyu", "--data-dir", work / "data", "-c", checkpoint / "unet_depth_v2",
                        "--limit", 2, "--device", device, "--dtype", dtype, "--processing-res", resolution, "-o", out))
    result = {"seconds": seconds, "samples": 2, "report": json.loads(out.read_text(encoding="utf-8"))}
    json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0
