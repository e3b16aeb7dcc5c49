"""Inference engines beside PyTorch eager: one-graph ONNX / OpenVINO export, and ONNX Runtime / OpenVINO
as a model seam (`--backend`).

    genpercept export -c NAME --format onnx|openvino -o DIR   (backends.export)
    GenPerceptPipeline.from_checkpoint(NAME, backend="openvino")   the same runner, batching and
        post-processing; only the model call differs (models.exported.EngineModel)

An exported folder is a checkpoint of family "onnx" or "openvino" (its genpercept.json says so), so
`--checkpoint DIR` resolves through `checkpoints` and builds through the family registry like any other.
The engines are optional extras: genpercept[onnx], genpercept[openvino].
"""

from ..models.exported import BACKENDS, ENGINES, BackendError, EngineModel
from .export import FORMATS, engine_model, export_checkpoint, is_exported, resolve_backend

__all__ = ["BACKENDS", "ENGINES", "FORMATS", "BackendError", "EngineModel", "engine_model", "export_checkpoint",
           "is_exported", "resolve_backend"]
