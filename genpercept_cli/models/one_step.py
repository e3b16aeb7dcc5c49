"""The one-step diffusion-prior family (SPEC §3): a Stable Diffusion U-Net run once on the image latent.

    x in [-1, 1] -> VAE encode (mode x scale) -> U-Net(latent, t, prompt embedding) -> x0 from the output
    (parametrization at ᾱ_t) -> VAE decode -> task head (channel mean for 1-channel tasks, clip, to [0, 1])

GenPercept v1 and v2 are two parameter sets of this family (t = 1 with ᾱ = 0 and v-prediction, so the
prediction is −v; the 77- or 2-token empty prompt). The DPT-head variant replaces "x0 -> decode -> head"
by U-Net up-block features -> DPT head -> per-image min-max. E2E-FT, Lotus-D and Marigold (one step) are
further parameter sets, registered as their own families and read from their pipeline folders'
configs (models.pipeline_configs): an 8-channel U-Net sees [image latent, x_t], a class label may
select the task, the step may end in DDIM's sample instead of x0, and the head may differ.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

import genpercept_cli.models.sd as sd  # the module itself, not a name of our package's __init__

from ..dpt import DPTHead, minmax_per_image, prepare_dpt_unet, strip_unet_head_keys, unet_up_block_features
from ..errors import CheckpointError
from ..loading import empty_text_embedding, load_unet, load_vae
from ..resize import SIZE_RULES, pad_to_multiple
from ..tasks import TASKS
from .base import DenseModel, Family, register_family
from .pipeline_configs import FAMILY_DOCS, pipeline_params

CHOICES = {  # field -> allowed values, checked when a spec's parameters are read
    "parametrization": sd.PARAMETRIZATIONS,
    "sample": ("image", "zeros", "noise"),
    "step": ("x0", "ddim"),
    "depth_output": ("mean_clip", "clip_mean", "minmax"),
    "normal_output": ("clip", "unit", "clip+unit"),
    "size_rule": SIZE_RULES,
    "round_input": (True, False),
    "output_antialias": (True, False),
}


@dataclass(frozen=True)
class OneStepParams:
    """What distinguishes one checkpoint of the family from another (a spec's `family_params`)."""

    timestep: int = 1
    alpha_bar: float = 0.0  # ᾱ at `timestep` of the training schedule; GenPercept's betas are all 1, so 0
    parametrization: str = "v"  # what the U-Net predicts: v, eps or x0 (see models.sd.to_x0)
    embedding: str = "v2"  # empty prompt: "v2" 2 tokens (unpadded), "v1" 77 tokens (padded)
    sample: str = "image"  # x_t the step starts from: the image latent, zeros, or seeded Gaussian noise
    noise_seed: int = 0  # seed of sample = "noise" (one draw per image: results do not depend on batching)
    step: str = "x0"  # what the latent decoded is: x0, or DDIM's sample at alpha_bar_prev ("ddim")
    alpha_bar_prev: float = 1.0  # ᾱ the "ddim" step goes to
    task_switch: tuple | None = None  # Lotus: one-hot e, fed as class_labels [sin e, cos e]
    depth_output: str = "mean_clip"  # 1-channel head: mean, clip | clip, mean | mean, clip, min-max per image
    normal_output: str = "clip"  # normals: clip to [-1, 1] | n / (|n| + 1e-5) | clip, then n / |n|
    normal_flip: str = ""  # axes negated to bring the model's normal frame to ours (tasks.normal)
    full_z_range: bool = True  # False: the model's z lives in [-1, 1] for [0, 1] (Marigold's use_full_z_range)
    # Pre- and post-processing of the family's reference (resize.py; README "Other models"):
    size_rule: str = "floor"  # "floor": int(side * min(R/W, R/H)); "integer": side * R // max(H, W)
    round_input: bool = True  # the resized image is rounded to uint8 before normalising
    pad_multiple: int = 1  # the normalised image is edge-padded (bottom, right) to a multiple; output cropped
    output_antialias: bool = True  # the prediction is resized back to the input size with antialias

    @classmethod
    def from_spec(cls, spec, params: dict | None = None) -> OneStepParams:
        """The spec's family_params (or `params`, already merged) with the spec's embedding, validated."""
        known = {f.name for f in fields(cls)}
        params = {"embedding": spec.embedding, **(dict(spec.family_params) if params is None else params)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise CheckpointError(f"checkpoint {spec.name!r} has unknown one-step parameters: {', '.join(unknown)}.")
        for name, allowed in CHOICES.items():
            if params.get(name, getattr(cls, name)) not in allowed:
                raise CheckpointError(f"checkpoint {spec.name!r}: {name} must be one of {', '.join(allowed)}.")
        flip = params.get("normal_flip", "")
        if not isinstance(flip, str) or set(flip) - set("xyz"):
            raise CheckpointError(f"checkpoint {spec.name!r}: normal_flip must be axes among x, y, z, not {flip!r}.")
        pad = params.get("pad_multiple", 1)
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 1:
            raise CheckpointError(f"checkpoint {spec.name!r}: pad_multiple must be a whole number of pixels, "
                                  f"at least 1, not {pad!r}.")
        if params.get("task_switch") is not None:
            params["task_switch"] = tuple(params["task_switch"])
        return cls(**params)


class OneStepModel(DenseModel):
    """U-Net + VAE (+ DPT head) and the prompt embedding, as one module.

    forward(x): x float [B, 3, h, w] in [-1, 1] -> [B, C, h, w] in [0, 1] (C = 1 for depth, disparity,
    DIS and matting; 3 for normals and seg), NaN where the decoder output was not finite; with a DPT head
    [B, 1, h', w'] min-maxed per image at the head's native size. With params.pad_multiple > 1 (Marigold)
    x is edge-padded to that multiple before encoding and the output cropped back to h x w.
    """

    def __init__(self, unet, vae, embedding: torch.Tensor, task: str, params: OneStepParams = OneStepParams(),
                 dpt_head=None, output_kind: str | None = None):
        super().__init__()
        self.unet, self.vae, self.dpt_head = unet, vae, dpt_head
        self.register_buffer("embedding", embedding, persistent=False)  # [1, T, 1024]
        self.task, self.params = task, params
        self.output_kind = output_kind or TASKS[task].output_kind
        self.channels = TASKS[task].channels
        self.scale = sd.latent_scale(vae)
        self.tiled_decode_above: int | None = None  # image pixels above which `decode` goes tile by tile
        self.in_channels = unet.config.in_channels  # 8: [image latent, x_t]; kept, as compiling hides .config
        self.size_rule, self.rounds_input = params.size_rule, params.round_input
        self.output_antialias = params.output_antialias
        switch = params.task_switch
        labels = None if switch is None else torch.tensor(switch, dtype=embedding.dtype)[None]  # [1, K]
        self.register_buffer("class_labels", None if labels is None else torch.cat([labels.sin(), labels.cos()], 1),
                             persistent=False)  # [1, 2K]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, h, w] in [-1, 1] -> latent [B, 4, h/8, w/8] (posterior mode x scale)."""
        return sd.encode_mode(self.vae, x, self.scale)

    def denoise(self, latent: torch.Tensor) -> torch.Tensor:
        """One U-Net step at the family's timestep -> the latent to decode [B, 4, h, w]: x0 (GenPercept: −v)
        or, with step = "ddim", DDIM's next sample."""
        p, batch = self.params, latent.shape[0]
        x_t = self.start_sample(latent)  # [B,4,h,w]
        unet_in = torch.cat([latent, x_t], dim=1) if self.in_channels == 2 * latent.shape[1] else latent
        embed = self.embedding.expand(batch, -1, -1)  # [B,T,1024]
        labels = None if self.class_labels is None else self.class_labels.expand(batch, -1)  # [B,2K]
        out = self.unet(unet_in, p.timestep, encoder_hidden_states=embed, class_labels=labels, return_dict=False)[0]
        if p.step == "ddim":
            return sd.ddim_step(out, x_t, p.alpha_bar, p.alpha_bar_prev, p.parametrization)
        return sd.to_x0(out, x_t, p.alpha_bar, p.parametrization)

    def start_sample(self, latent: torch.Tensor) -> torch.Tensor:
        """x_t [B, 4, h, w]: the image latent itself, zeros, or N(0, 1) seeded by noise_seed, the same
        draw for every image of that size (so a batch gives what one image at a time gives)."""
        if self.params.sample == "image":
            return latent
        if self.params.sample == "zeros":
            return torch.zeros_like(latent)
        gen = torch.Generator().manual_seed(self.params.noise_seed)
        noise = torch.randn((1, *latent.shape[1:]), generator=gen)  # on the CPU: the same on every device
        return noise.to(latent).expand_as(latent)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 4, h/8, w/8] -> [B, 3, h, w]; tile by tile above `tiled_decode_above` pixels."""
        pixels = latent.shape[-2] * latent.shape[-1] * 64
        if self.tiled_decode_above is not None and pixels > self.tiled_decode_above:
            return self.decode_tiled(latent)
        return sd.decode(self.vae, latent, self.scale)

    def decode_tiled(self, latent: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
        return sd.decode_tiled(self.vae, latent, self.scale, tile, overlap)

    def head(self, y: torch.Tensor) -> torch.Tensor:
        """Decoder output [B, 3, h, w] -> [B, C, h, w] in [0, 1] (C = 1 for 1-channel tasks, else 3)."""
        y = y.float()
        finite = torch.isfinite(y).all(dim=1, keepdim=True)  # [B,1,h,w]; inf must not hide behind the clip
        if self.channels == 1:
            out = self.depth_head(y)
        elif self.task == "normal":
            out = (self.normal_head(y) + 1.0) / 2.0
        else:
            out = (y.clamp(-1.0, 1.0) + 1.0) / 2.0
        return torch.where(finite, out, float("nan"))

    def depth_head(self, y: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] -> [B, 1, h, w] in [0, 1], as the family's reference does it (depth_output)."""
        if self.params.depth_output == "clip_mean":
            return ((y.clamp(-1.0, 1.0) + 1.0) / 2.0).mean(dim=1, keepdim=True)
        out = (y.mean(dim=1, keepdim=True).clamp(-1.0, 1.0) + 1.0) / 2.0
        return minmax_per_image(out) if self.params.depth_output == "minmax" else out

    def normal_head(self, y: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] -> normals in [-1, 1] in our frame (normal_output, then normal_flip)."""
        kind = self.params.normal_output
        if kind == "unit":
            n = y / (y.norm(dim=1, keepdim=True) + 1e-5)
        else:
            n = y.clamp(-1.0, 1.0)
            if not self.params.full_z_range:  # z in [-1, 1] stands for [0, 1]: camera-facing normals only
                n = torch.cat([n[:, :2], n[:, 2:] * 0.5 + 0.5], dim=1)
            if kind == "clip+unit":
                n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-6)
        signs = torch.tensor([-1.0 if axis in self.params.normal_flip else 1.0 for axis in "xyz"], device=y.device)
        return n * signs.view(1, 3, 1, 1)

    def dpt_predict(self, latent: torch.Tensor) -> torch.Tensor:
        """U-Net up-block features -> DPT head -> per-image min-max, [B, 1, h', w'].

        The head's native size is 32x its coarsest feature (the processed size when that is a multiple
        of 64); like the reference, it is min-maxed there and resized once, in post-processing.
        """
        embed = self.embedding.expand(latent.shape[0], -1, -1)
        features = unet_up_block_features(self.unet, latent, self.params.timestep, embed)
        return minmax_per_image(self.dpt_head(features).float())

    def compile_parts(self, wrap) -> None:
        """Replace the parts worth compiling by `wrap(part)`: the VAE encoder and decoder, and the U-Net
        (the DPT head instead for the feature U-Net, whose up-block hooks would defeat tracing)."""
        self.vae.encoder, self.vae.decoder = wrap(self.vae.encoder), wrap(self.vae.decoder)
        if self.dpt_head is None:
            self.unet = wrap(self.unet)
        else:
            self.dpt_head = wrap(self.dpt_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.params.pad_multiple)  # Marigold: whole latents, no lost rows/columns
        latent = self.encode(x)  # [B,4,h/8,w/8]
        if self.dpt_head is not None:
            return self.dpt_predict(latent)
        return self.head(self.decode(self.denoise(latent)))[..., :h, :w]  # the padding cropped off


def build_one_step(files, dtype: torch.dtype = torch.float32) -> OneStepModel:
    """Load a fetched one-step checkpoint (`checkpoints.CheckpointFiles`) on the CPU in `dtype`."""
    params = OneStepParams.from_spec(files.spec)
    dpt = files.dpt_dir is not None
    if dpt:  # the DPT-head U-Net has no output layers: drop their keys, and the layers themselves
        unet = load_unet(files.unet_dir, dtype, key_filter=strip_unet_head_keys, prepare=prepare_dpt_unet)
    else:
        unet = load_unet(files.unet_dir, dtype)
    vae = load_vae(files.vae_dir, dtype)
    head = DPTHead.from_pretrained(files.dpt_dir, dtype=dtype) if dpt else None
    embedding = empty_text_embedding(params.embedding).to(dtype)
    return OneStepModel(unet, vae, embedding, files.spec.task, params, dpt_head=head, output_kind=files.spec.kind)


def build_pipeline_one_step(files, dtype: torch.dtype = torch.float32) -> OneStepModel:
    """Load an E2E-FT, Lotus-D or Marigold pipeline folder (unet/, vae/, scheduler/ beside model_index.json)
    on the CPU in `dtype`, with parameters from its configs (models.pipeline_configs)."""
    spec = files.spec
    params = OneStepParams.from_spec(spec, pipeline_params(spec, files.unet_dir.parent))
    unet, vae = load_unet(files.unet_dir, dtype), load_vae(files.vae_dir, dtype)
    embedding = empty_text_embedding(params.embedding).to(dtype)
    return OneStepModel(unet, vae, embedding, spec.task, params, output_kind=spec.kind)


GENPERCEPT = register_family(Family(
    "genpercept", build_one_step,
    "Stable Diffusion 2.1 U-Net fine-tuned as a one-step predictor (GenPercept v1/v2, SPEC §3).",
))
for _name, _doc in FAMILY_DOCS.items():
    register_family(Family(_name, build_pipeline_one_step, _doc))
