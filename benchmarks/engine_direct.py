"""The whole one-step model called directly on each backend, without the runner (issue 20): where the time goes.

bench-speed runs the engines through `predict`'s runner; this calls the SD2.1-size random model (U-Net + VAE)
once per backend on one input at resolution², so the engines' own speed is seen apart from reading, resizing
and writing. Backends: torch eager; ONNX Runtime with the session options `models.exported` sets and with
its defaults; OpenVINO f32 with the graph's dynamic shapes (as `--backend openvino` runs it) and reshaped to
the input's static shape. One process, one backend at a time (each released before the next); first call
timed apart, then `--repeats` calls.

    python benchmarks/engine_direct.py --resolution 256 --json benchmarks/results/engine_direct_cpu_256.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: our packages


def timed(call, x, repeats: int) -> tuple[dict, object]:
    """call(x) once (first call), then `repeats` times: seconds, and the last output."""
    began = time.perf_counter()
    out = call(x)
    first = time.perf_counter() - began
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        out = call(x)
        runs.append(time.perf_counter() - began)
    return {"first_s": first, "runs_s": runs, "median_s": statistics.median(runs)}, out


def main() -> None:
    import numpy as np
    import torch

    from benchmarks.speed.presets import build_random_model
    from genpercept_cli.backends.export import export_model
    from genpercept_cli.checkpoints import CheckpointSpec
    from genpercept_cli.models.exported import onnxruntime_runner, require

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="sd21", help="sd21, or tiny (a quick check of this script)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    res = args.resolution
    x = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = {}
    with tempfile.TemporaryDirectory(prefix="genpercept-engine-direct-") as tmp:
        model = build_random_model(args.preset, "vae", torch.device("cpu"), torch.float32, 0).eval()
        began = time.perf_counter()
        spec = CheckpointSpec(name="random", task="depth", output="random weights")
        export_model(model, spec, "onnx", Path(tmp) / "e")
        export_s = time.perf_counter() - began
        with torch.inference_mode():
            results["torch"], ref = timed(model, x, args.repeats)
            ref = ref.numpy()
        del model
        gc.collect()
        path = Path(tmp) / "e" / "model.onnx"
        ort, ov = require("onnxruntime"), require("openvino")
        calls = {"onnxruntime": lambda: onnxruntime_runner(path),
                 "onnxruntime_defaults": lambda: _ort_defaults(ort, path),
                 "openvino_dynamic": lambda: _openvino(ov, path, None),
                 "openvino_static": lambda: _openvino(ov, path, [1, 3, res, res])}
        for name, make in calls.items():
            began = time.perf_counter()
            run = make()
            load_s = time.perf_counter() - began
            results[name], out = timed(run, x.numpy(), args.repeats)
            results[name].update(load_s=load_s, max_abs_diff_to_torch=float(np.abs(np.asarray(out) - ref).max()))
            del run
            gc.collect()
            print(name, results[name], flush=True)
    for r in results.values():
        r["vs_torch"] = results["torch"]["median_s"] / r["median_s"]
    report = {"resolution": res, "dtype": "float32", "model": f"{args.preset} random U-Net + VAE (one graph)",
              "onnx_export_s": export_s, "backends": results, "load_average": os.getloadavg(),
              "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "openvino": ov.__version__},
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report))


def _ort_defaults(ort, path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]


def _openvino(ov, path: Path, shape):
    core = ov.Core()
    graph = core.read_model(str(path))
    if shape is not None:
        graph.reshape({0: shape})
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request, output = compiled.create_infer_request(), compiled.output(0)
    return lambda x: request.infer({0: x})[output]


if __name__ == "__main__":
    main()
