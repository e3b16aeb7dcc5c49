"""Wall time of `genpercept eval` by batch size: the model runs through the one runner, batched by size.

Builds a synthetic NYUv2 archive (the real layout: the first N lines of the shipped split list, 480x640
RGB and 16-bit depth PNGs) and a tiny random checkpoint (the test suite's, tests/tiny_models.py), then
times `evaluate()` end to end (decode, model, alignment, metrics) for each batch size, with one warm-up
run, and checks that every batch size gives the metrics of batch 1.

    python benchmarks/eval_batching.py --samples 32 --res 256 --json benchmarks/results/eval_batching_cpu.json

The tiny model makes per-batch overheads visible; with SD2.1-size weights on a CPU the compute per
image dominates and batching gains little (see benchmarks/results/README.md).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_nyu_archive(root: Path, samples: int, seed: int = 0) -> None:
    """`root/nyuv2/nyu_labeled_extracted.tar` holding the first `samples` lines of the split list."""
    split = REPO / "benchmarks" / "splits" / "depth" / "nyu_test.txt"
    lines = split.read_text(encoding="utf-8").split("\n")[:samples]
    rng = np.random.default_rng(seed)
    (root / "nyuv2").mkdir(parents=True)
    with tarfile.open(root / "nyuv2" / "nyu_labeled_extracted.tar", "w") as tar:
        for line in lines:
            rgb_name, depth_name, filled_name = line.split()
            coarse = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
            rgb = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.BICUBIC))
            depth = rng.integers(500, 9000, (480, 640)).astype(np.uint16)
            for name, array in ((rgb_name, rgb), (depth_name, depth), (filled_name, depth)):
                data = _png(array)
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from tiny_models import write_checkpoint_root

    from benchmarks.evaluate import EvalOptions, evaluate
    from genpercept_cli.pipeline import GenPerceptPipeline

    runs = []
    with tempfile.TemporaryDirectory(prefix="genpercept-eval-batching-") as tmp:
        tmp = Path(tmp)
        write_nyu_archive(tmp / "data", args.samples)
        write_checkpoint_root(tmp / "models", tasks=("depth",))
        pipe = GenPerceptPipeline.from_checkpoint(str(tmp / "models" / "unet_depth_v2"), device="cpu", dtype="fp32")
        base = None
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            opts = EvalOptions(dataset="nyu", data_dir=tmp / "data", processing_res=args.res, batch_size=bs,
                               limit=args.samples)
            evaluate(EvalOptions(**{**opts.__dict__, "limit": min(2 * bs, args.samples)}), pipe=pipe)  # warm-up
            start = time.perf_counter()
            result = evaluate(opts, pipe=pipe)
            seconds = time.perf_counter() - start
            base = base or result.metrics
            worst = max(abs(result.metrics[k] - base[k]) / max(abs(base[k]), 1e-12) for k in base)
            runs.append({"batch_size": bs, "seconds": round(seconds, 3),
                         "images_per_s": round(result.n_images / seconds, 2),
                         "max_relative_metric_difference_to_batch_1": worst})
            print(f"batch {bs}: {seconds:.2f} s, {result.n_images / seconds:.2f} img/s, "
                  f"max relative metric difference to batch 1: {worst:.1e}")
    for run in runs:
        run["speedup_vs_batch_1"] = round(runs[0]["seconds"] / run["seconds"], 2)
    report = {"command": f"eval --dataset nyu (synthetic, {args.samples} samples) --processing-res {args.res}",
              "model": "tiny random checkpoint (tests/tiny_models.py)", "device": "cpu", "dtype": "fp32",
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
