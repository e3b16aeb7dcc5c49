"""Turn checkpoint folders into modules: U-Net, VAE, DPT head, empty-prompt embedding (SPEC §2)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .checkpoints import read_json
from .errors import CheckpointError

EMBED_FILE = "sd21_empty_text_embed_77x1024_fp16.npy"
EMBED_TOKENS = {"v1": 77, "v2": 2}
EMBED_DIM = 1024


def empty_text_embedding(version: str = "v2") -> torch.Tensor:
    """The SD2.1 empty-prompt embedding, float32 [1, T, 1024]; T = 2 (v2, unpadded) or 77 (v1, padded).

    Provenance: the 77x1024 fp16 array published with GenPercept v1 (OpenCLIP ViT-H text encoder of
    SD2.1, last hidden state). The text transformer is causal, so rows 0-1 of the padded output are the
    unpadded 2-token output; the v2 constant is therefore exact up to fp16 rounding (|err| <= 2^-11 rel.).
    """
    if version not in EMBED_TOKENS:
        raise CheckpointError(f"unknown embedding version {version!r}; use v1 or v2.")
    with resources.files("genpercept_cli").joinpath("data").joinpath(EMBED_FILE).open("rb") as fh:
        table = np.load(fh)  # [77, 1024] float16
    return torch.from_numpy(table[: EMBED_TOKENS[version]].astype(np.float32))[None]


def read_config(folder: Path) -> dict:
    """`folder/config.json` without its "_" keys (one sentence when missing or not a JSON object)."""
    # v1 U-Nets say "CustomUNet2DConditionModel": same weights, so the class name is never trusted.
    return {k: v for k, v in read_json(folder / "config.json").items() if not k.startswith("_")}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} is missing; copy it from the released checkpoint.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        # downloading again only mends a download: a local file (a training checkpoint) is named, not advised on
        advice = "; download it again" if _in_hub_cache(path) else ""
        raise CheckpointError(f"{path} is truncated or corrupt ({exc}){advice}.") from None


def _in_hub_cache(path: Path) -> bool:
    """Whether `path` lies in the Hugging Face hub cache (a file `fetch_checkpoint` downloaded)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(path).absolute().is_relative_to(Path(HF_HUB_CACHE).absolute())


# The JSON kinds of a diffusers config value, in a sentence's words.
_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_config_types(cls, config: dict, path: Path) -> None:
    """Refuse a `config.json` value whose JSON type the field of `cls.__init__` cannot take, naming the field
    (diffusers would fail deep inside, e.g. in_channels = "4" -> "not all arguments converted during string
    formatting"). The field's default gives its kind; a scalar field may also hold one value per block (a
    list), null is always allowed, and fields without a default are not checked."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        default = params[key].default if key in params else None
        is_list = isinstance(default, (list, tuple))
        kind = type(default[0]) if is_list and default else type(default)
        if kind not in _KIND_WORDS or value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if (is_list and not isinstance(value, list)) or not all(_is_kind(item, kind) for item in items):
            plural = _KIND_WORDS[kind].removeprefix("an ").removeprefix("a ") + "s"
            words = f"a list of {plural}" if is_list else _KIND_WORDS[kind] + (
                f" (or a list of {plural}, one per block)" if isinstance(value, list) else "")
            raise CheckpointError(f"{path}: {key} must be {words}, not {value!r}.")


def _is_kind(value, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path, dtype: torch.dtype) -> None:
    """Load `state` into a meta-initialised module; every key must match, names listed otherwise."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise CheckpointError(f"{where} does not match its config: {'; '.join(parts)}.")
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)


def _build(cls, folder: Path, dtype: torch.dtype, key_filter=None, prepare=None):
    """A diffusers model of class `cls` from `folder`, strictly loaded; `key_filter(state)` edits the
    weights and `prepare(module)` the (meta-device) module before loading."""
    import diffusers

    diffusers.logging.set_verbosity_error()  # unknown v1 config keys would otherwise warn
    config = read_config(folder)
    check_config_types(cls, config, folder / "config.json")
    state = read_weights(folder / "diffusion_pytorch_model.safetensors")
    if key_filter is not None:
        state = key_filter(state)
    try:
        with torch.device("meta"):  # no random init of 865M parameters we overwrite anyway
            module = cls.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} is not a valid {cls.__name__} config ({exc}).") from None
    if prepare is not None:
        module = prepare(module)
    load_strict(module, state, folder, dtype)
    return module.eval().requires_grad_(False)


def load_unet(folder: Path, dtype: torch.dtype = torch.float32, key_filter=None, prepare=None):
    """diffusers UNet2DConditionModel from `folder` (see `_build` for `key_filter` and `prepare`)."""
    from diffusers import UNet2DConditionModel

    unet = _build(UNet2DConditionModel, folder, dtype, key_filter, prepare)
    if unet.config.cross_attention_dim != EMBED_DIM:
        raise CheckpointError(
            f"{folder} has cross_attention_dim {unet.config.cross_attention_dim}, not the SD2.1 {EMBED_DIM}."
        )
    return unet


def load_vae(folder: Path, dtype: torch.dtype = torch.float32):
    """diffusers AutoencoderKL from `folder` (the released VAE stores fp16 weights)."""
    from diffusers import AutoencoderKL

    return _build(AutoencoderKL, folder, dtype)
