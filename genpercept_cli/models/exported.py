"""Exported folders as a model family (genpercept.json says "onnx" or "openvino"), and the ONNX Runtime and
OpenVINO sessions behind the `DenseModel` interface: the model seam of `--backend`.

    x float32 [B, 3, h, w] in [-1, 1] -> engine (one graph: encode, U-Net, decode, head) -> [B, C, h', w']

`EngineModel` carries the facts the runner and post-processing read from a model (task, channels, size
rule, rounding, antialias), so resizing, batching, post-processing and writers are those of the torch
backend. Engines run on the CPU in fp32 unless a lower precision is asked for (OpenVINO only: its CPU
default is bf16 where the CPU has it, so f32 is set explicitly).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import SPEC_FILE
from ..errors import GenPerceptError
from .base import DenseModel, Family, register_family

BACKENDS = ("torch", "onnxruntime", "openvino", "auto")
ENGINES = ("onnxruntime", "openvino")
EXTRAS = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino"),
          "onnx": ("onnx", "onnx"), "onnxscript": ("onnxscript", "onnx")}  # module -> (import name, extra)
ENGINE_OF = {"onnx": "onnxruntime", "openvino": "openvino"}  # the engine an exported folder runs on by default
OV_PRECISION = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class BackendError(GenPerceptError):
    """A backend that is not installed, or an exported model that cannot be used."""


def require(module: str):
    """Import an optional engine module, or raise BackendError naming the extra that installs it."""
    name, extra = EXTRAS[module]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BackendError(f"{name} is not installed; install it with: pip install 'genpercept[{extra}]'.") from None


def available(backend: str) -> bool:
    """Whether an engine's package imports (for `--backend auto`, which skips engines not installed)."""
    try:
        require(backend)
    except BackendError:
        return False
    return True


class EngineModel(DenseModel):
    """An exported one-graph model run by ONNX Runtime or OpenVINO, with the DenseModel facts of its source.

    forward(x): x float [B, 3, h, w] in [-1, 1] -> float32 [B, C, h', w'] in [0, 1] on x's device.
    """

    def __init__(self, run, backend: str, task: str, output_kind: str, processing: dict):
        super().__init__()
        self._run, self.backend = run, backend
        self.task, self.output_kind = task, output_kind
        self.channels = int(processing["channels"])
        self.size_rule = processing["size_rule"]
        self.rounds_input = bool(processing["round_input"])
        self.output_antialias = bool(processing["output_antialias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())  # [B,3,h,w] float32
        return torch.from_numpy(np.asarray(self._run(array), dtype=np.float32)).to(x.device)


def onnxruntime_runner(path: Path):
    """run(x float32 [B, 3, h, w]) -> [B, C, h', w'] through an ONNX Runtime CPU session of `path`."""
    ort = require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BackendError(f"{path} cannot be loaded by ONNX Runtime ({_first_line(exc)}).") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def session_options():
    """The ONNX Runtime session options of the onnxruntime backend."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No arena (shapes vary from bucket to bucket) and no pre-packed weight copies. Measured against the
    # defaults on the SD2.1-size graph at 256² (benchmarks/engine_memory.py, README "Inference engines"):
    # the same peak (4287 vs 4171 MiB, torch 4401) and speed (7.05 vs 6.88 s per call): neither holds a copy.
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    return options


def openvino_runner(path: Path, dtype: torch.dtype = torch.float32):
    """run(x float32 [B, 3, h, w]) -> [B, C, h', w'] through OpenVINO on the CPU at `dtype`'s precision
    (set explicitly: OpenVINO's CPU default is bf16 where the CPU supports it)."""
    ov = require("openvino")
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_PRECISION_HINT": OV_PRECISION[dtype]})
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise BackendError(f"{path} cannot be loaded by OpenVINO ({_first_line(exc)}).") from None
    request, output = compiled.create_infer_request(), compiled.output(0)
    return lambda x: request.infer({0: x})[output]


def runner(path: Path, backend: str, dtype: torch.dtype = torch.float32):
    """The engine call for a model file: ONNX Runtime reads .onnx; OpenVINO reads .onnx or .xml."""
    if backend == "onnxruntime":
        if path.suffix != ".onnx":
            raise BackendError(f"{path.parent} holds an OpenVINO model, which ONNX Runtime cannot run; "
                               "use --backend openvino.")
        if dtype != torch.float32:
            raise BackendError("the onnxruntime backend runs in fp32 only; use --dtype fp32 (or the openvino backend).")
        return onnxruntime_runner(path)
    return openvino_runner(path, dtype)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200].rstrip(".")


def load_exported(folder: Path, spec, backend: str | None = None, dtype: torch.dtype = torch.float32) -> EngineModel:
    """The EngineModel of an exported folder (its genpercept.json read by `checkpoints`, here `spec`)."""
    params = spec.family_params
    backend = backend or ENGINE_OF[spec.family]
    try:
        processing, name = params["processing"], params["file"]
        complete = all(key in processing for key in ("channels", "size_rule", "round_input", "output_antialias"))
    except (KeyError, TypeError):
        complete = False
    if not complete:
        raise BackendError(f"{folder}/{SPEC_FILE} is not that of an exported model; export it again.") from None
    path = folder / name
    if not path.is_file() or path.stat().st_size == 0:
        raise BackendError(f"{folder} lacks {name} (or it is empty); export the model again.")
    return EngineModel(runner(path, backend, dtype), backend, spec.task, spec.kind, processing)


def build_exported(files, dtype: torch.dtype = torch.float32) -> EngineModel:
    """The EngineModel of an exported folder (`checkpoints.CheckpointFiles` of its spec)."""
    return load_exported(files.unet_dir, files.spec, dtype=dtype)


for _format, _engine in ENGINE_OF.items():
    register_family(Family(_format, build_exported, f"an exported model run by {_engine}", dtype=torch.float32,
                           sd_one_step=False))
