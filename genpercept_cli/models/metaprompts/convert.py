"""Released Meta Prompts `.pth` files -> our model's weights, strictly; and the converted folder.

Releases (reference/metaprompts/*_keys.tsv): depth `{'model': state}` with keys under `encoder.*`,
`decoder.*`, `last_layer_depth.*`; segmentation mmcv `{'meta', 'state_dict', 'optimizer'}` with keys at the
top level. Both hold CompVis names for SD1.5 (`unet.unet.diffusion_model.*`, `encoder_vq.*`).

The reference loads them with `strict=False` over SD1.5, so a key a release lacks would silently keep its
SD1.5 value. We load strictly: every key the model needs must be in the file. A few keys a release holds
are not parameters of our model and are dropped with a note: the aliases `cross_unet_conv{2,3}` of the
U-Net's own `out` head (checked equal), the unused VAE `post_quant_conv` (and decoder), the U-Net time
MLP (replaced by the learned t_i) and the segmentation model's noise-schedule buffers.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ...errors import CheckpointError
from ...files import atomic_write
from .model import MetaPromptsConfig, build_model_from_config
from .unet import is_vae_attention_projection, unet_key_to_compvis, vae_key_to_compvis

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "genpercept.json"
SD15_FILE = "v1-5-pruned-emaonly.ckpt"
_UNET = "unet.unet.diffusion_model."
_VAE = "encoder_vq."
# Release keys that are not parameters of our model: (pattern, why), the depth prefix "encoder." optional.
IGNORED = (
    (re.compile(r"(encoder\.)?encoder_vq\.(post_quant_conv|decoder)\."), "VAE decoder side (unused)"),
    (re.compile(r"(encoder\.)?unet\.unet\.diffusion_model\.time_embed\."), "U-Net time MLP (replaced by t_i)"),
    (re.compile(r"sd_model\."), "noise-schedule buffers"),
)
TASK_OF = {"depth": "depth", "seg": "semseg"}  # config.task -> the genpercept task


@dataclass(frozen=True)
class Conversion:
    """Our model's weights from a release, and what was dropped on the way (one line per group)."""

    state: dict[str, torch.Tensor]
    config: MetaPromptsConfig
    notes: tuple[str, ...]


def _prefix(config: MetaPromptsConfig) -> str:
    return "encoder." if config.task == "depth" else ""


def release_name(key: str, config: MetaPromptsConfig) -> str:
    """Our state-dict key -> the key a release stores it under."""
    enc = _prefix(config)
    head, _, rest = key.partition(".")
    if head == "unet":
        return enc + _UNET + unet_key_to_compvis(rest)
    if head == "vae":
        return enc + _VAE + vae_key_to_compvis(rest)
    if head == "timesteps":
        return f"{enc}t{int(rest) + 1}"
    if config.task == "depth":
        if head == "meta_prompts":
            return f"encoder.meta_prompts{int(rest) + 1}"
        if head == "adapters":
            step, _, inner = rest.partition(".")
            return f"encoder.text_adapter{int(step) + 1}.{inner}"
        renamed = {"fusion": "encoder.", "decoder": "decoder.", "head": "last_layer_depth."}
    else:
        if key == "meta_prompts":
            return key
        renamed = {"neck": "", "decode_head": "decode_head.", "auxiliary_head": "auxiliary_head."}
    if head not in renamed:
        raise ValueError(f"no release name for {key!r}")
    return renamed[head] + rest


def release_layout(config: MetaPromptsConfig) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """{release key: (our key, shape in the release, our shape)} of every weight the model needs, built
    on the meta device (nothing allocated). Shapes differ only for the VAE attention's 1x1 convs."""
    with torch.device("meta"):
        model = build_model_from_config(config)
    vae = _prefix(config) + _VAE
    layout = {}
    for key, tensor in model.state_dict().items():
        name, ours = release_name(key, config), tuple(tensor.shape)
        conv = name.startswith(vae) and is_vae_attention_projection(name.removeprefix(vae))
        layout[name] = (key, ours + (1, 1) if conv else ours, ours)
    return layout


def alias_names(config: MetaPromptsConfig) -> dict[str, str]:
    """{alias key: the U-Net `out` key it repeats}: `cross_unet_conv{i}` for steps 2..refine_step."""
    enc = _prefix(config)
    return {f"{enc}cross_unet_conv{step}.{layer}.{p}": f"{enc}{_UNET}out.{layer}.{p}"
            for step in range(2, config.refine_step + 1) for layer in (0, 2) for p in ("weight", "bias")}


def load_release(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A released `.pth` -> (its state dict with any `module.` prefix stripped, "depth" or "seg").

    Read with `weights_only=True` (no arbitrary objects are unpickled), memory-mapped where possible.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist.")
    container = _torch_load(path)
    if isinstance(container, dict) and isinstance(container.get("model"), dict):
        state, kind = container["model"], "depth"
    elif isinstance(container, dict) and isinstance(container.get("state_dict"), dict):
        state, kind = container["state_dict"], "seg"
    else:
        raise CheckpointError(
            f"{path} is not a Meta Prompts release: expected {{'model': ...}} (depth) or mmcv's "
            "{'meta', 'state_dict', ...} (segmentation)."
        )
    if any(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds non-tensor values in its state dict; it is not a Meta Prompts release.")
    return state, kind


def _torch_load(path: Path):
    with warnings.catch_warnings():  # torch's note on pickle protocols: the file is read or refused, never asked about
        warnings.simplefilter("ignore", UserWarning)
        try:
            return _weights_only_load(path, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) files cannot be memory-mapped: read them whole
                raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({_first_line(exc)}).") from None
        return _weights_only_load(path, mmap=False)


def _weights_only_load(path: Path, mmap: bool):
    """torch.load with weights_only; its errors as one sentence (a RuntimeError passes when `mmap`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # an object weights_only refuses, or not a pickle at all
        if "GLOBAL" in str(exc) or _is_pickle(path):
            raise _unsafe(path, exc) from None
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({_first_line(exc)}).") from None
    except Exception as exc:  # EOFError, zip errors
        if mmap and isinstance(exc, RuntimeError):
            raise
        raise CheckpointError(f"{path} cannot be read safely as a PyTorch checkpoint ({_first_line(exc)}).") from None


def _is_pickle(path: Path) -> bool:
    """Whether the file is a pickle stream (protocol 2 or later starts with the PROTO opcode)."""
    with open(path, "rb") as fh:
        return fh.read(1) == pickle.PROTO


def _unsafe(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    """weights_only refused an object of the pickle (torch names its GLOBAL): say so, not torch's advice to
    unpickle it anyway."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return CheckpointError(f"{path} holds non-tensor objects{what}, which could run code when loaded, so it is "
                           "refused for safety; a Meta Prompts release holds tensors only.")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def fit_widths(config: MetaPromptsConfig, state: dict[str, torch.Tensor]) -> MetaPromptsConfig:
    """`config` with the widths the release's tensors show (SD1.5's for the real releases; narrower for
    test releases). Class count and refinement steps stay as the release's registry entry says, so a
    file of the wrong release fails the strict check."""
    enc, depth = _prefix(config), config.task == "depth"

    def dim(key: str, axis: int, default):
        return int(state[key].shape[axis]) if key in state and state[key].ndim > axis else default

    unet = tuple(dim(f"{enc}{_UNET}input_blocks.{1 + 3 * i}.0.in_layers.2.weight", 0, c)
                 for i, c in enumerate(config.unet_channels))
    vae = tuple(dim(f"{enc}{_VAE}encoder.down.{i}.block.0.conv1.weight", 0, c)
                for i, c in enumerate(config.vae_channels))
    prompts = "encoder.meta_prompts1" if depth else "meta_prompts"
    widths = dict(unet_channels=unet, vae_channels=vae, num_prompts=dim(prompts, 0, config.num_prompts),
                  prompt_dim=dim(prompts, 1, config.prompt_dim))
    if depth:
        widths.update(fusion_hidden=dim("encoder.layer2.deconv_layers.0.weight", 1, config.fusion_hidden),
                      decoder_hidden=dim("decoder.deconv_layers.0.weight", 1, config.decoder_hidden),
                      decoder_channels=dim("decoder.conv_layers.0.weight", 0, config.decoder_channels))
    else:
        widths.update(seg_channels=dim("decode_head.bottleneck.conv.weight", 0, config.seg_channels))
    return replace(config, **widths)


def convert_release(state: dict[str, torch.Tensor], config: MetaPromptsConfig, where: str) -> Conversion:
    """A release's state dict -> our weights, strictly (CheckpointError listing every mismatch)."""
    config = fit_widths(config, state)
    layout = release_layout(config)
    aliases = {k: v for k, v in alias_names(config).items() if k in state}
    ignored = {k: why for k in state for pattern, why in IGNORED if pattern.match(k)}
    missing = [k for k in layout if k not in state]
    unexpected = [k for k in state if k not in layout and k not in aliases and k not in ignored]
    wrong = [f"{k} {_shape(state[k].shape)} (model {_shape(layout[k][1])})"
             for k in layout if k in state and tuple(state[k].shape) != layout[k][1]]
    if missing or unexpected or wrong:
        raise CheckpointError(_mismatch_message(where, config, missing, unexpected, wrong))
    for alias, original in aliases.items():
        if not torch.equal(state[alias], state[original]):
            raise CheckpointError(
                f"{where}: {alias} differs from {original}, which it must repeat; the file is damaged.")
    weights = {ours: state[name].reshape(shape) for name, (ours, _, shape) in layout.items()}
    return Conversion(weights, config, _notes(aliases, ignored))


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _mismatch_message(where: str, config: MetaPromptsConfig, missing, unexpected, wrong) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    fill = (f"; the reference code would silently fill missing keys from SD1.5's {SD15_FILE}, we refuse"
            if missing else "")
    return (f"{where} does not match the Meta Prompts {config.task} layout "
            f"({config.refine_step} refinement steps): {'; '.join(parts)}{fill}.")


def _notes(aliases: dict, ignored: dict) -> tuple[str, ...]:
    notes = []
    if aliases:
        notes.append(f"{len(aliases)} alias keys cross_unet_conv* (equal to the U-Net's out head) kept once")
    by_reason: dict[str, int] = {}
    for why in ignored.values():
        by_reason[why] = by_reason.get(why, 0) + 1
    notes += [f"{count} keys of the {why} dropped" for why, count in by_reason.items()]
    return tuple(notes)


def load_release_file(path: Path, config: MetaPromptsConfig) -> Conversion:
    """Read and convert a released `.pth` for a model of `config`'s task."""
    state, kind = load_release(path)
    if kind != config.task:
        raise CheckpointError(f"{path} is a Meta Prompts {kind} release, not {config.task}; pick the matching release.")
    return convert_release(state, config, str(path))


def spec_json(config: MetaPromptsConfig, release: str | None = None) -> dict:
    """`genpercept.json` of a converted folder: what it is, so it loads by itself; `release`: the registry name
    of the released file it was converted from (`checkpoints.released_as`: its paper row)."""
    declared = {"task": TASK_OF[config.task], "family": "metaprompts", "family_params": config.to_params(),
                "output_kind": "metric_depth" if config.task == "depth" else "class_scores", "processing_res": 0}
    if config.labels:
        declared["labels"] = config.labels
    if release:
        declared["release"] = release
    return declared


def write_converted(state: dict[str, torch.Tensor], folder: Path, config: MetaPromptsConfig,
                    release: str | None = None) -> Path:
    """Write `model.safetensors` + `genpercept.json` into `folder`; each file appears whole or not at all
    (files.atomic_write: the umask's mode, a full disk raises DiskFullError), the JSON last, so a folder
    with it is complete. On an error the folder is removed when this call made it, and the weights
    when the folder held no earlier complete conversion."""
    from safetensors.torch import save_file

    folder = Path(folder)
    made, complete = not folder.exists(), (folder / SPEC_FILE).is_file()
    tensors = {k: v.contiguous() for k, v in state.items()}
    text = json.dumps(spec_json(config, release), indent=1)
    try:
        atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write(folder / SPEC_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        elif not complete:  # weights without the JSON would read as a conversion cut short
            (folder / WEIGHTS_FILE).unlink(missing_ok=True)
        raise
    return folder
