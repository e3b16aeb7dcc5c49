"""The one-step diffusion-prior family (SPEC §3): a Stable Diffusion U-Net run once on the image latent.

    x in [-1, 1] -> VAE encode (mode x scale) -> U-Net(latent, t, prompt embedding) -> x0 from the output
    (parametrization at ᾱ_t) -> VAE decode -> task head (channel mean for 1-channel tasks, clip, to [0, 1])

GenPercept v1 and v2 are two parameter sets of this family (t = 1 with ᾱ = 0 and v-prediction, so the
prediction is −v; the 77- or 2-token empty prompt). The DPT-head variant replaces "x0 -> decode -> head"
by U-Net up-block features -> DPT head -> per-image min-max.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..dpt import DPTHead, minmax_per_image, prepare_dpt_unet, strip_unet_head_keys, unet_up_block_features
from ..errors import CheckpointError
from ..loading import empty_text_embedding, load_unet, load_vae
from ..tasks import TASKS
from . import sd
from .base import DenseModel, Family, register_family


@dataclass(frozen=True)
class OneStepParams:
    """What distinguishes one checkpoint of the family from another (a spec's `family_params`)."""

    timestep: int = 1
    alpha_bar: float = 0.0  # ᾱ at `timestep` of the training schedule; GenPercept's betas are all 1, so 0
    parametrization: str = "v"  # what the U-Net predicts: v, eps or x0 (see models.sd.to_x0)
    embedding: str = "v2"  # empty prompt: "v2" 2 tokens (unpadded), "v1" 77 tokens (padded)

    @classmethod
    def from_spec(cls, spec) -> OneStepParams:
        known = {f.name for f in fields(cls)}
        params = {"embedding": spec.embedding, **dict(spec.family_params)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise CheckpointError(f"checkpoint {spec.name!r} has unknown one-step parameters: {', '.join(unknown)}.")
        made = cls(**params)
        if made.parametrization not in sd.PARAMETRIZATIONS:
            raise CheckpointError(
                f"checkpoint {spec.name!r}: parametrization must be one of {', '.join(sd.PARAMETRIZATIONS)}."
            )
        return made


class OneStepModel(DenseModel):
    """U-Net + VAE (+ DPT head) and the prompt embedding, as one module.

    forward(x): x float [B, 3, h, w] in [-1, 1] -> [B, C, h, w] in [0, 1] (C = 1 for depth, disparity,
    DIS and matting; 3 for normals and seg), NaN where the decoder output was not finite; with a DPT head
    [B, 1, h', w'] min-maxed per image at the head's native size.
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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, h, w] in [-1, 1] -> latent [B, 4, h/8, w/8] (posterior mode x scale)."""
        return sd.encode_mode(self.vae, x, self.scale)

    def denoise(self, latent: torch.Tensor) -> torch.Tensor:
        """One U-Net step at the family's timestep -> the clean latent x0 (GenPercept: −v)."""
        embed = self.embedding.expand(latent.shape[0], -1, -1)  # [B,T,1024]
        out = self.unet(latent, self.params.timestep, encoder_hidden_states=embed, return_dict=False)[0]
        return sd.to_x0(out, latent, self.params.alpha_bar, self.params.parametrization)

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
            y = y.mean(dim=1, keepdim=True)
        return torch.where(finite, (y.clamp(-1.0, 1.0) + 1.0) / 2.0, float("nan"))

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
        latent = self.encode(x)  # [B,4,h/8,w/8]
        if self.dpt_head is not None:
            return self.dpt_predict(latent)
        return self.head(self.decode(self.denoise(latent)))


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


GENPERCEPT = register_family(Family(
    "genpercept", build_one_step,
    "Stable Diffusion 2.1 U-Net fine-tuned as a one-step predictor (GenPercept v1/v2, SPEC §3).",
))
