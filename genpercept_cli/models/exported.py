"""Exported folders as families: `genpercept.json` says "onnx" or "openvino" and the folder's graph runs on
that engine (backends.export; imported on build, so the engines stay optional)."""

from __future__ import annotations

import torch

from .base import Family, register_family

ENGINE_OF = {"onnx": "onnxruntime", "openvino": "openvino"}  # the engine an exported folder runs on by default


def build_exported(files, dtype: torch.dtype = torch.float32):
    """The EngineModel of an exported folder (`checkpoints.CheckpointFiles` of its spec)."""
    from ..backends.export import load_exported

    return load_exported(files.unet_dir, files.spec, dtype=dtype)


for _format, _engine in ENGINE_OF.items():
    register_family(Family(_format, build_exported, f"an exported model run by {_engine}", dtype=torch.float32,
                           sd_one_step=False))
