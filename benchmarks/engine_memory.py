"""Peak resident memory of one model call on each backend, each in a fresh process (issue 20).

bench-speed runs every protocol in one process, so an engine's peak there includes the PyTorch weights
the other protocols use. Here a parent exports SD2.1-size random modules once (ONNX, then OpenVINO IR
from a copy) into a temporary folder, and one child per backend loads only its own model and predicts
once at resolution²; the child's peak resident set (ru_maxrss from wait4) and its times are recorded.
ONNX Runtime runs twice: with the session options `models.exported` sets (no pre-packed weight copies,
no memory arena) and with ONNX Runtime's defaults. Each child also samples its own anonymous and
file-backed resident memory (RssAnon, RssFile of /proc/self/status, every 10 ms): a graph an engine maps
from its file (OpenVINO's IR) is counted in the resident set as page cache the kernel can drop, while
anonymous memory is what the process holds. Then, where this process may create a memory cgroup (v1 or
v2), OpenVINO runs again capped at 1.3x torch's peak resident set (issue 20's memory target): whether it
finishes there, and at what speed.

    python benchmarks/engine_memory.py --resolution 256 --json benchmarks/results/engine_memory_cpu_256.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: our packages
REPO = Path(__file__).resolve().parent.parent
CHILD = """
import sys, threading, time, torch
mode, folder, res, preset = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
peak = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in peak:
                peak[key] = max(peak[key], int(line.split()[1]))
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
x = (torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1)
began = time.perf_counter()
if mode == "torch":
    from benchmarks.speed.presets import build_random_model
    model = build_random_model(preset, "vae", torch.device("cpu"), torch.float32, 0).eval()
    run = lambda: model(x)
elif mode == "onnxruntime-defaults":
    import onnxruntime as ort
    session = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    run = lambda: session.run(None, {"image": x.numpy()})[0]
else:
    from pathlib import Path
    from genpercept_cli.models.exported import runner
    path = Path(folder) / ("model.onnx" if mode == "onnxruntime" else "model.xml")
    call = runner(path, mode)
    run = lambda: call(x.numpy())
loaded = time.perf_counter()
with torch.inference_mode():
    run()
called = time.perf_counter()
time.sleep(0.05)  # one more sample
print(f"{loaded - began:.2f} {called - loaded:.2f} {peak['RssAnon'] / 1024:.1f} {peak['RssFile'] / 1024:.1f}")
"""
MODES = ("torch", "onnxruntime", "onnxruntime-defaults", "openvino")


def export(folder: Path, preset: str) -> dict:
    """SD2.1-size random depth model -> folder/onnx (ONNX) and folder/openvino (IR); seconds taken."""
    import torch

    from benchmarks.speed.presets import build_random_model
    from genpercept_cli.backends.export import export_model, write_openvino
    from genpercept_cli.checkpoints import CheckpointSpec

    model = build_random_model(preset, "vae", torch.device("cpu"), torch.float32, 0).eval()
    spec = CheckpointSpec(name="random-sd21-vae", task="depth", output="random weights")
    began = time.perf_counter()
    export_model(model, spec, "onnx", folder / "onnx")
    onnx_s = time.perf_counter() - began
    del model
    (folder / "openvino").mkdir()
    for f in (folder / "onnx").iterdir():
        if f.name.startswith("model.onnx"):
            shutil.copy(f, folder / "openvino" / f.name)
    began = time.perf_counter()
    write_openvino(folder / "openvino" / "model.onnx", folder / "openvino" / "model.xml")
    return {"onnx_export_s": onnx_s, "openvino_convert_s": time.perf_counter() - began}


def child(mode: str, folder: Path, resolution: int, preset: str, cgroup: Path | None = None) -> dict:
    """Run one backend in a fresh process (inside `cgroup` when given); its peak RSS (MiB, from wait4), peak
    anonymous and file-backed resident memory (sampled), load and call seconds."""
    sub = folder / ("openvino" if mode == "openvino" else "onnx")
    command = [sys.executable, "-c", CHILD, mode, str(sub), str(resolution), preset]
    if cgroup is not None:  # join the cgroup, then become the child
        command = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *command]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        if cgroup is not None:
            return {"finished": False, "exit_code": code}
        raise SystemExit(f"{mode}: the child failed with exit code {code}")
    load_s, call_s, anon, file = (float(v) for v in out.split())
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": anon, "peak_file_mb": file, "load_s": load_s,
            "call_s": call_s}


def memory_cgroup(limit_mib: int) -> tuple[Path, str] | None:
    """A new memory cgroup capped at limit_mib (v1's memory controller, else v2's), or None where this process
    may not create one; with the name of its peak-usage file."""
    candidates = ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.max_usage_in_bytes"),
                  (Path("/sys/fs/cgroup"), "memory.max", "memory.peak"))
    for root, limit_file, peak_file in candidates:
        if not (root / limit_file).exists() and not (root / "cgroup.subtree_control").exists():
            continue
        group = root / f"genpercept-engine-memory-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_mib * 2**20))
            return group, peak_file
        except OSError:
            if group.exists():
                group.rmdir()
    return None


def capped(folder: Path, resolution: int, preset: str, limit_mib: int) -> dict:
    """OpenVINO's child in a memory cgroup of limit_mib: finished or killed, and its figures."""
    found = memory_cgroup(limit_mib)
    if found is None:
        return {"limit_mib": limit_mib, "cgroup": "none could be created here: not run"}
    group, peak_file = found
    for path in (folder / "openvino").iterdir():  # out of the page cache: read again inside the cgroup, charged there
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    try:
        result = child("openvino", folder, resolution, preset, cgroup=group)
        peak = group / peak_file
        if peak.exists():
            result["cgroup_peak_mb"] = int(peak.read_text()) / 2**20
    finally:
        group.rmdir()
    return {"limit_mib": limit_mib, "finished": True, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--preset", default="sd21", help="sd21, or tiny (a quick check of this script)")
    parser.add_argument("--export-into", type=Path, help=argparse.SUPPRESS)  # the exporting child
    args = parser.parse_args()
    if args.export_into is not None:
        print(json.dumps(export(args.export_into, args.preset)))
        return
    with tempfile.TemporaryDirectory(prefix="genpercept-engine-memory-") as tmp:
        # in a child too: a parent's peak would be carried into every child's ru_maxrss
        done = subprocess.run([sys.executable, __file__, "--export-into", tmp, "--preset", args.preset], cwd=REPO,
                              check=True, stdout=subprocess.PIPE, text=True)
        timings = json.loads(done.stdout.strip().splitlines()[-1])
        results = {}
        for mode in MODES:
            results[mode] = child(mode, Path(tmp), args.resolution, args.preset)
            print(mode, results[mode], flush=True)
        limit = round(1.3 * results["torch"]["peak_rss_mb"])
        results["openvino_capped"] = capped(Path(tmp), args.resolution, args.preset, limit)
        print("openvino_capped", results["openvino_capped"], flush=True)
    report = {"resolution": args.resolution, "dtype": "float32", "model": f"{args.preset} random U-Net + VAE",
              "exports": timings, "backends": results, "load_average": os.getloadavg(),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
