"""Video input (issue 21), recorded not timed: frames/s of a clip against the same frames as image files,
peak resident memory of a short and a long clip, and the flicker of the temporal alignment.

Builds the test suite's tiny random depth checkpoint and a noisy 64x64 mkv clip (H.264) in a temporary
folder. Frames/s: `run_predict` in this process on the clip (`--temporal none`: the same work as images)
and on its frames saved as PNGs, alternated `--repeats` times, best of each. Memory: `genpercept predict`
on a `--short` and a `--long` clip at `--processing-res` in child processes (peak RSS from wait4, as
memory_huge_image.py).
Flicker: mean |frame_t - frame_t-1| of a constructed panning depth sequence under a random per-frame
scale (0.5-2) and shift (+-0.5) plus noise, before and after `temporal.ClipAlignment`.

    python benchmarks/video.py --long 1000 --fps-frames 100 --repeats 1 --json benchmarks/results/video_cpu.json

(the recorded run: 2 shared cores at load average ~4, so 1000 frames rather than 2000 to fit the time).
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
    record = {"processing_res": args.processing_res, "memory": memory, "fps": fps, "flicker": flick,
              "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
