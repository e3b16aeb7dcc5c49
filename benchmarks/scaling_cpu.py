"""`genpercept predict` throughput in 1 process and in N processes under torchrun, on this machine's CPU.

Writes `--images` synthetic images and a tiny random checkpoint (tests/tiny_models.py) into a temporary
folder, then runs the same command three ways: one process (torch's default threads), one process with
one thread, and `torchrun --standalone --nproc-per-node N` (one thread per process, as torchrun sets).
Reports the run's own time (the "wrote ... in T s" summary: model loading and imports excluded) and
the whole command's wall time.

    python benchmarks/scaling_cpu.py --images 48 --res 256 --json benchmarks/results/scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    found = re.search(r"wrote (\d+) of (\d+) images in ([\d.]+) s", out.stdout + out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    images, seconds = int(found[1]), float(found[3])
    return {"images": images, "run_s": seconds, "images_per_s": round(images / seconds, 2), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import write_checkpoint_root

    with tempfile.TemporaryDirectory(prefix="genpercept-scaling-") as tmp:
        tmp = Path(tmp)
        write_checkpoint_root(tmp / "models", tasks=("depth",))
        rng = np.random.default_rng(0)
        (tmp / "in").mkdir()
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)).save(tmp / "in" / f"{i:03d}.png")
        predict = ["predict", str(tmp / "in"), "-c", str(tmp / "models" / "unet_depth_v2"), "--processing-res",
                   str(args.res), "--formats", "npy", "--device", "cpu"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        runs = {
            "1 process": run([sys.executable, "-m", "genpercept_cli", *predict, "-o", str(tmp / "a")], env),
            "1 process, 1 thread": run([sys.executable, "-m", "genpercept_cli", *predict, "-o", str(tmp / "b")],
                                       {**env, "OMP_NUM_THREADS": "1"}),
            f"torchrun {args.nproc} processes": run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
                 "-m", "genpercept_cli", *predict, "-o", str(tmp / "c")], env),
        }
    base = runs["1 process"]["images_per_s"]
    for name, result in runs.items():
        result["speedup_vs_1_process"] = round(result["images_per_s"] / base, 2)
        print(f"{name}: {result['images_per_s']} img/s in the run ({result['run_s']} s), {result['wall_s']} s wall")
    report = {"command": f"predict {args.images} images 384x384 --processing-res {args.res} --formats npy",
              "model": "tiny random checkpoint (tests/tiny_models.py)", "device": "cpu",
              "logical_cpus": os.cpu_count(), "machine": platform.machine(), "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
