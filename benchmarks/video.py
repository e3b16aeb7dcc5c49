"""Video input (issue 21), recorded not timed: frames/s of a clip against the same frames as image files,
peak resident memory of a short and a long clip, and the flicker of the temporal alignment.

Builds the test suite's tiny random depth checkpoint and a noisy 64x64 mkv clip (H.264) in a temporary
folder. Frames/s: `run_predict` in this process on the clip (`--temporal none`: the same work as images)
and on its frames saved as PNGs, alternated `--repeats` times, best of each. Memory: `genpercept predict`
on a `--short` and a `--long` clip at `--processing-res` in child processes (peak RSS from wait4, as
memory_huge_image.py).
Flicker: mean |frame_t - frame_t-1| of a constructed panning depth sequence under a random per-frame
scale (0.5-2) and shift (+-0.5) plus noise, before and after `temporal.ClipAlignment`.

    python benchmarks/video.py --fps-frames 200 --repeats 5 --json benchmarks/results/video_cpu.json

(the recorded run: 100 and 2000 frames, 2 cores of a quiet machine; `goals` in the JSON checks the issue's
two targets: the long clip's peak within 5% of the short one's, the clip's frames/s at least 0.95x the images').
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.memory_huge_image import peak_rss_of, write_tiny_checkpoint


def write_clip(path: Path, frames: int, side: int = 64) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            image[:, : (i % side)] //= 2
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def frames_per_second(tmp: Path, frames: int, repeats: int, processing_res: int) -> dict:
    import torch
    from PIL import Image

    from genpercept_cli.pipeline import GenPerceptPipeline
    from genpercept_cli.predict import PredictOptions, discover_images, run_predict
    from genpercept_cli.video import FrameRange, read_frames

    clip = tmp / "fps" / "clip.mkv"
    clip.parent.mkdir()
    write_clip(clip, frames)
    stills = tmp / "stills"
    stills.mkdir()
    for t, frame in enumerate(read_frames(clip, FrameRange())):
        Image.fromarray(frame).save(stills / f"{t:05d}.png")
    pipe = GenPerceptPipeline.from_checkpoint(str(tmp / "models" / "unet_depth_v2"))
    options = PredictOptions(processing_res=processing_res, batch_size=4, formats="npy", temporal="none")
    best = {"clip": 0.0, "images": 0.0}
    for run in range(repeats + 1):  # the first round warms up
        for name, source in (("clip", clip), ("images", stills)):
            start = time.perf_counter()
            run_predict(pipe, discover_images(str(source)).images, tmp / f"out_{name}_{run}", options)
            if run:
                best[name] = max(best[name], frames / (time.perf_counter() - start))
    return {"frames": frames, "clip_fps": round(best["clip"], 1), "images_fps": round(best["images"], 1),
            "ratio": round(best["clip"] / best["images"], 3), "threads": torch.get_num_threads()}


def flicker_of_alignment(frames: int = 60, side: int = 96, noise: float = 0.002) -> dict:
    from genpercept_cli.temporal import ClipAlignment, flicker

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    truth = [0.2 + 0.5 * y + 0.3 * np.exp(-((x - 0.2 - 0.01 * t) ** 2 + (y - 0.5) ** 2) / 0.02) for t in range(frames)]
    distorted = [rng.uniform(0.5, 2.0) * d + rng.uniform(-0.5, 0.5) + rng.normal(0, noise, d.shape) for d in truth]
    alignment = ClipAlignment.fit(distorted)
    aligned = [alignment.apply(t, d) for t, d in enumerate(distorted)]
    low, high = min(d.min() for d in truth), max(d.max() for d in truth)
    return {"frames": frames, "noise": noise, "truth": round(flicker((d - low) / (high - low) for d in truth), 5),
            "unaligned": round(flicker(distorted), 5), "aligned": round(flicker(aligned), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--long", type=int, default=2000)
    parser.add_argument("--fps-frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processing-res", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tiny_checkpoint(tmp / "models")
        memory = {}
        for frames in (args.short, args.long):
            clip = tmp / f"mem{frames}" / "clip.mkv"
            clip.parent.mkdir()
            write_clip(clip, frames)
            cmd = [sys.executable, "-m", "genpercept_cli.cli", "predict", str(clip), "-c",
                   str(tmp / "models" / "unet_depth_v2"), "-o", str(tmp / f"out{frames}"), "--processing-res",
                   str(args.processing_res), "--batch-size", "4", "--device", "cpu"]
            rss, wall, rc, last = peak_rss_of(cmd)
            memory[str(frames)] = {"peak_rss_mib": round(rss / 2**20, 1), "wall_s": round(wall, 1), "exit_code": rc,
                                   "summary": last}
            print(f"{frames} frames at 64x64 (processing {args.processing_res}): peak RSS {rss / 2**20:.1f} MiB, "
                  f"{wall:.1f} s, exit {rc}")
        fps = frames_per_second(tmp, args.fps_frames, args.repeats, args.processing_res)
        print(f"frames/s: clip {fps['clip_fps']}, same frames as PNGs {fps['images_fps']} (x{fps['ratio']})")
    flick = flicker_of_alignment()
    print(f"flicker: truth {flick['truth']}, unaligned {flick['unaligned']}, aligned {flick['aligned']}")
    growth = memory[str(args.long)]["peak_rss_mib"] / memory[str(args.short)]["peak_rss_mib"]
    goals = {"long_over_short_peak_rss": round(growth, 3), "peak_rss_within_5pct": abs(growth - 1) <= 0.05,
             "clip_over_images_fps": fps["ratio"], "fps_at_least_0.95x": fps["ratio"] >= 0.95}
    print(f"goals: peak RSS {args.long}/{args.short} frames x{growth:.3f}, frames/s clip/images x{fps['ratio']}")
    record = {"processing_res": args.processing_res, "side": 64, "memory": memory, "fps": fps, "flicker": flick,
              "goals": goals, "load_average": [round(x, 1) for x in os.getloadavg()],
              "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
