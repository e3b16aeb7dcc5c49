"""The GPU check's end-to-end steps: `genpercept predict` on synthetic JPEGs and `genpercept eval` on a
synthetic archive, each through the CLI in its own process, as a user runs them; and what half precision
changes in a Meta Prompts model's output (`metaprompts-precision`).

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
    p = sub.add_parser("metaprompts-precision", help="Meta Prompts outputs in half precision vs fp32, same input")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="fp16,bf16", help="comma-separated half precisions to compare with fp32")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--small", action="store_true", help="test-sized images and protocol (the dry run)")
    p.add_argument("--json", type=Path, required=True)
    p.set_defaults(func=lambda a: metaprompts_precision(a.work, a.device, a.dtypes.split(","), a.small, a.json))


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


# Meta Prompts precision: tiny random releases (tests/tiny_metaprompts.py) at the released test protocol's
# sizes: NYU 480x640 (two shift windows and their flips), ADE20K 512x683 (two 512-px sliding crops).
# `small`: 48x64 inputs, segmentation rescaled to fit (96, 64) with 64-px crops.
PRECISION_CASES = {"nyu": ((480, 640), {}), "ade20k": ((512, 683), {})}
PRECISION_CASES_SMALL = {"nyu": ((48, 64), {}), "ade20k": ((48, 64), dict(img_scale=(96, 64), crop=64, stride=32))}


def metaprompts_precision(work: Path, device: str, dtypes: list[str], small: bool, json_path: Path) -> int:
    """Each case's model run through the pipeline (as `eval` runs it) on one synthetic photo in fp32 and
    in each of `dtypes`: depth max / mean |difference| in metres, segmentation share of changed labels and
    max |difference| of the class probabilities; `recoveries` counts batches the pipeline re-ran in fp32
    after a non-finite half-precision result."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_metaprompts import write_tiny_converted

    from genpercept_cli.images import read_rgb
    from genpercept_cli.pipeline import GenPerceptPipeline

    from .run import make_inputs

    results = {"device": device, "model": "tiny random Meta Prompts releases (tests/tiny_metaprompts.py)",
               "cases": {}}
    for kind, ((height, width), protocol) in (PRECISION_CASES_SMALL if small else PRECISION_CASES).items():
        folder = write_tiny_converted(work / f"metaprompts-{kind}", kind, **protocol)
        photo = make_inputs(work / f"in-{kind}", 1, max(height, width), seed=3)[0].path
        rgb = torch.from_numpy(np.ascontiguousarray(read_rgb(photo)[:height, :width])).permute(2, 0, 1)[None]
        outputs, recoveries = {}, {}
        for dtype in ["fp32", *dtypes]:
            pipe = GenPerceptPipeline.from_checkpoint(str(folder), device=device, dtype=dtype, fast_path=False)
            with torch.inference_mode():
                outputs[dtype] = pipe.predict_batch(rgb).float().cpu()
            recoveries[dtype] = pipe.recoveries
        case = {"input": [height, width], "task": pipe.task, "recoveries": recoveries, "vs_fp32": {}}
        reference = outputs["fp32"]
        for dtype in dtypes:
            diff = (outputs[dtype] - reference).abs()
            row = {"max_abs": diff.max().item(), "mean_abs": diff.mean().item()}
            if pipe.task == "semseg":
                row["labels_changed"] = (outputs[dtype].argmax(1) != reference.argmax(1)).float().mean().item()
            else:
                row["reference_mean"] = reference.mean().item()
            case["vs_fp32"][dtype] = row
        results["cases"][kind] = case
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results), flush=True)
    return 0
