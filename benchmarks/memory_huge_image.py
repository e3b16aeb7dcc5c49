"""Peak resident memory of `genpercept predict` on one huge image (SPEC §8: "a huge image").

Writes a 12000x9000 PNG into a temporary folder, builds a tiny random checkpoint (the test helpers'
sizes: benchmarks.speed.presets TINY_UNET / TINY_VAE), runs `genpercept predict --processing-res 64` on it
in a child process and reads that child's peak resident set size (its ru_maxrss from wait4, i.e. its
VmHWM). Another child prepares the inputs, so this process stays small: Linux carries a parent's peak
into a child's ru_maxrss across fork and exec. A last child runs the same command on a 640x480 image:
the floor of the interpreter, torch and the model; the difference is what the huge image costs.

    python benchmarks/memory_huge_image.py --label after --json benchmarks/results/memory_huge_image.json

The JSON keeps one entry per label, so a "before" and an "after" run sit side by side in one file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def write_test_image(path: Path, width: int, height: int) -> None:
    """A structured RGB image (gradients plus a repeated noise tile): realistic decode cost, small file."""
    y, x = np.mgrid[0:height, 0:width].astype(np.uint32)
    tile = np.random.default_rng(0).integers(0, 32, (64, 64), dtype=np.uint32)
    noise = np.tile(tile, (height // 64 + 1, width // 64 + 1))[:height, :width]
    rgb = np.stack([(x * 255 // width + noise) % 256, (y * 255 // height + noise) % 256, (x + y) % 256], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path, compress_level=1)


def write_tiny_checkpoint(root: Path) -> None:
    """unet_depth_v2/ + vae/ with random weights, exactly as the test suite builds them."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import write_checkpoint_root

    write_checkpoint_root(root, tasks=("depth",))


def peak_rss_of(cmd: list[str]) -> tuple[int, float, int, str]:
    """Run `cmd` as a child; returns (peak RSS in bytes, wall seconds, exit code, last output line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    output = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's maximum
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.strip()]
    return usage.ru_maxrss * 1024, time.perf_counter() - start, proc.returncode, (lines[-1] if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=12000)
    parser.add_argument("--height", type=int, default=9000)
    parser.add_argument("--processing-res", type=int, default=64)
    parser.add_argument("--formats", default="npy")
    parser.add_argument("--label", default="run", help="Key of this run in the JSON (e.g. before, after).")
    parser.add_argument("--json", type=Path, default=None, help="Add this run to a results JSON.")
    parser.add_argument("--note", default="", help="What code was measured (e.g. a commit), kept in the JSON.")
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the inputs
    args = parser.parse_args()
    sizes = {"huge": (args.width, args.height), "floor": (640, 480)}
    if args.prepare is not None:
        write_tiny_checkpoint(args.prepare / "models")
        for name, (w, h) in sizes.items():
            (args.prepare / name).mkdir()
            write_test_image(args.prepare / name / "image.png", w, h)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, __file__, "--prepare", str(tmp), "--width", str(args.width),
                        "--height", str(args.height)], check=True, cwd=REPO)
        checkpoint = tmp / "models" / "unet_depth_v2"
        runs = {}
        for name, (w, h) in sizes.items():
            src = tmp / name
            cmd = [sys.executable, "-m", "genpercept_cli.cli", "predict", str(src / "image.png"), "-c",
                   str(checkpoint), "-o", str(tmp / f"out_{name}"), "--processing-res", str(args.processing_res),
                   "--formats", args.formats, "--device", "cpu"]
            rss, wall, rc, last = peak_rss_of(cmd)
            runs[name] = {"width": w, "height": h, "peak_rss_bytes": rss, "peak_rss_gib": round(rss / 2**30, 3),
                          "wall_s": round(wall, 1), "exit_code": rc, "summary": last}
            print(f"{name:5s} {w}x{h}: peak RSS {rss / 2**30:.2f} GiB ({rss / 1e9:.2f} GB), "
                  f"{wall:.1f} s, exit {rc}: {last}")

    record = {
        "note": args.note,
        "command": f"genpercept predict <image> -c <tiny random depth checkpoint> --processing-res "
                   f"{args.processing_res} --formats {args.formats} --device cpu",
        "runs": runs,
        "huge_minus_floor_gib": round((runs["huge"]["peak_rss_bytes"] - runs["floor"]["peak_rss_bytes"]) / 2**30, 3),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        results = json.loads(args.json.read_text(encoding="utf-8")) if args.json.exists() else {}
        results[args.label] = record
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json} [{args.label}]")


if __name__ == "__main__":
    main()
