"""The Meta Prompts family (SPEC §9): released `.pth` files or their converted folders -> a DenseModel.

A checkpoint reaches `build` either as a converted folder (`model.safetensors` + `genpercept.json`, our
key names, loaded strictly and fast) or as a raw release (`files.weights_file`), which is converted on
load and, where the folder is writable, written out so the next load is the fast one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..base import Family, register_family
from .convert import SPEC_FILE, WEIGHTS_FILE, load_release_file, write_converted
from .model import MetaPromptsConfig, MetaPromptsDepth, MetaPromptsSeg, build_model_from_config

__all__ = ["METAPROMPTS", "MetaPromptsConfig", "MetaPromptsDepth", "MetaPromptsSeg", "build_metaprompts",
           "config_from_spec", "model_from_state"]


def config_from_spec(spec) -> MetaPromptsConfig:
    """The model config of a checkpoint spec: its `family_params`, and its label set."""
    params = dict(spec.family_params)
    if spec.labels and "labels" not in params:
        params["labels"] = spec.labels
    return MetaPromptsConfig.from_params(params)


def model_from_state(config: MetaPromptsConfig, state: dict[str, torch.Tensor], where,
                     dtype: torch.dtype = torch.float32):
    """A model of `config` holding `state` (our key names, every key required), frozen, in eval mode."""
    from ...loading import load_strict

    with torch.device("meta"):  # allocate nothing twice: the weights are assigned, not copied
        model = build_model_from_config(config)
    load_strict(model, state, where, dtype)
    return model.eval().requires_grad_(False)


def build_metaprompts(files, dtype: torch.dtype = torch.float32):
    """Load a fetched Meta Prompts checkpoint (`checkpoints.CheckpointFiles`) on the CPU in `dtype`."""
    from ...checkpoints import read_json
    from ...files import DiskFullError
    from ...loading import read_weights

    config = config_from_spec(files.spec)
    if files.weights_file is None:  # a converted folder: its genpercept.json says what was converted
        folder = Path(files.unet_dir)
        declared = read_json(folder / SPEC_FILE).get("family_params", {})
        config = MetaPromptsConfig.from_params(declared) if declared else config
        return model_from_state(config, read_weights(folder / WEIGHTS_FILE), folder, dtype)
    converted = load_release_file(Path(files.weights_file), config)
    model = model_from_state(converted.config, converted.state, files.weights_file, dtype)
    if files.unet_dir is not None:
        try:  # the next load reads the converted folder instead of unpickling 3.7 GB again
            write_converted(converted.state, Path(files.unet_dir), converted.config)
        except (OSError, DiskFullError) as exc:  # a cache only: the model is loaded either way
            warnings.warn(f"could not write the converted checkpoint to {files.unet_dir} ({exc}); "
                          "it will be converted again next time.", stacklevel=2)
    return model


METAPROMPTS = register_family(Family(
    "metaprompts", build_metaprompts,
    "SD1.5 with meta prompts, recurrent refinement and dense heads (Meta Prompts, SPEC §9).",
    dtype=torch.float32,  # the reference casts the U-Net's input to fp32: its published numbers are fp32's
    sd_one_step=False,  # the U-Net is walked block by block and there is no VAE decoder
))
