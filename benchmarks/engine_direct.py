"""The whole one-step model called directly on each backend, without the runner (issue 20): where the time goes.

bench-speed runs the engines through `predict`'s runner; this calls the SD2.1-size random model (U-Net + VAE)
once per backend on one input at resolution², so the engines' own speed is seen apart from reading, resizing
and writing. Backends: torch eager; ONNX Runtime with the session options `models.exported` sets and with
its defaults; OpenVINO f32 with the graph's dynamic shapes (as `--backend openvino` runs it) and reshaped to
the input's static shape. One process, one backend at a time (each released before the next); first call
timed apart, then `--repeats` calls.

    python benchmarks/engine_direct.py --resolution 256 --json benchmarks/results/engine_direct_cpu_256.json

`--parts` times the three parts apart instead (VAE encoder on the image, U-Net step on its latent, VAE
decoder on a latent), each exported alone, torch eager and ONNX Runtime (the session options
`models.exported` sets) called alternately `--repeats` times after one warm-up call each; each part's
floating-point operations (torch's FlopCounterMode: 2 per multiply-add of the convolutions, matrix products
and attention) and the rate each engine reaches; ONNX Runtime's profile of the last call: the share of each
operator type.

    python benchmarks/engine_direct.py --parts --resolution 256 --json benchmarks/results/engine_parts_cpu_256.json
"""

from __future__ import annotations

import argparse
import functools
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
    parser.add_argument("--parts", action="store_true", help="time the encoder, U-Net and decoder apart")
    args = parser.parse_args()
    if args.parts:
        report = parts(args.resolution, args.repeats, args.preset)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(report))
        return
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


def parts(res: int, repeats: int, preset: str) -> dict:
    """Encoder, U-Net step and decoder of the random model, each exported alone: torch eager and ONNX Runtime
    called alternately, seconds per call (medians), and ONNX Runtime's time by operator type."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.speed.presets import build_random_model
    from genpercept_cli.backends.export import write_onnx
    from genpercept_cli.models.exported import require

    ort = require("onnxruntime")
    model = build_random_model(preset, "vae", torch.device("cpu"), torch.float32, 0).eval()
    gen = torch.Generator().manual_seed(0)
    latent = (1, 4, res // 8, res // 8)
    pieces = {"vae_encoder": (model.encode, torch.rand(1, 3, res, res, generator=gen) * 2 - 1),
              "unet": (model.denoise, torch.randn(latent, generator=gen)),
              "vae_decoder": (model.decode, torch.randn(latent, generator=gen))}
    results = {}
    with tempfile.TemporaryDirectory(prefix="genpercept-engine-parts-") as tmp:
        for name, (call, x) in pieces.items():
            folder = Path(tmp) / name
            folder.mkdir()
            began = time.perf_counter()
            write_onnx(_part_module(call), folder / "model.onnx", example=x)
            export_s = time.perf_counter() - began
            options = _session_options(folder)
            session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                ref = call(x).numpy()
            flops = counter.get_total_flops()
            with torch.inference_mode():
                out = session.run(None, feed)[0]  # warm-up (shape planning)
                engines = {"torch": functools.partial(call, x),
                           "onnxruntime": functools.partial(session.run, None, feed)}
                times = {engine: [] for engine in engines}
                for _ in range(repeats):
                    for engine, run in engines.items():
                        began = time.perf_counter()
                        run()
                        times[engine].append(time.perf_counter() - began)
            ops = _operator_shares(Path(session.end_profiling()))
            medians = {engine: statistics.median(t) for engine, t in times.items()}
            results[name] = {"torch_s": medians["torch"], "onnxruntime_s": medians["onnxruntime"],
                             "onnxruntime_over_torch": medians["onnxruntime"] / medians["torch"], "gflop": flops / 1e9,
                             "gflop_per_s": {engine: flops / 1e9 / t for engine, t in medians.items()},
                             "runs_s": times, "export_s": export_s,
                             "max_abs_diff_to_torch": float(np.abs(out - ref).max()),
                             "onnxruntime_operator_shares": ops}
            print(name, {k: v for k, v in results[name].items() if k != "runs_s"}, flush=True)
            del session, engines
            gc.collect()
    total = {engine: sum(r[f"{engine}_s"] for r in results.values()) for engine in ("torch", "onnxruntime")}
    gflop = sum(r["gflop"] for r in results.values())
    return {"resolution": res, "dtype": "float32", "model": f"{preset} random U-Net + VAE, parts exported apart",
            "parts": results, "sum_s": total, "sum_onnxruntime_over_torch": total["onnxruntime"] / total["torch"],
            "sum_gflop": gflop, "cpu_mhz": _cpu_mhz(),
            "load_average": os.getloadavg(), "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports for the first core (Linux), None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    return next((float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")), None)


def _part_module(call):
    """A bound method of the model (encode, denoise, decode) as the module torch.onnx traces."""
    import torch

    class Part(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = call.__self__  # its weights are this module's

        def forward(self, x):
            return call(x)

    return Part()


def _session_options(folder: Path):
    """The onnxruntime backend's session options (`models.exported`), with profiling into `folder`."""
    from genpercept_cli.models.exported import session_options

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    return options


def _operator_shares(profile: Path) -> dict:
    """Share of the last run's kernel time by operator type, from an ONNX Runtime profile (largest first)."""
    events = json.loads(profile.read_text(encoding="utf-8"))
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]["ts"] if runs else 0
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= last:
            op = e["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + e["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: round(t / whole, 4) for op, t in sorted(totals.items(), key=lambda kv: -kv[1]) if t / whole >= 0.002}


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
