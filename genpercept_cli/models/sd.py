"""Stable Diffusion building blocks shared by the diffusion-prior families: VAE latents and the
conversions from what a U-Net predicts to the clean latent x0, for any timestep.

Latents are the VAE posterior's mode (its mean, never a sample) times the VAE's scaling factor, read
from the VAE config (0.18215 for SD1.x/2.x); a family that uses unscaled latents passes 1.
"""

from __future__ import annotations

import math

import torch

SD_LATENT_SCALE = 0.18215
PARAMETRIZATIONS = ("v", "eps", "x0")


def latent_scale(vae) -> float:
    """The VAE config's `scaling_factor` (diffusers' default for AutoencoderKL: 0.18215)."""
    return float(getattr(vae.config, "scaling_factor", SD_LATENT_SCALE))


def encode_mode(vae, x: torch.Tensor, scale: float) -> torch.Tensor:
    """x [B, 3, h, w] in [-1, 1] -> latent [B, 4, h/8, w/8]: posterior mean x `scale`."""
    moments = vae.quant_conv(vae.encoder(x))  # [B,8,h/8,w/8]
    mean, _logvar = moments.chunk(2, dim=1)
    return mean * scale


def decode(vae, latent: torch.Tensor, scale: float) -> torch.Tensor:
    """latent [B, 4, h, w] -> image-space output [B, 3, 8h, 8w] (roughly in [-1, 1])."""
    return vae.decoder(vae.post_quant_conv(latent / scale))


def decode_tiled(vae, latent: torch.Tensor, scale: float, tile: int = 64, overlap: int = 16) -> torch.Tensor:
    """`decode` in overlapping latent tiles (`tile` latent px = 8x image px), feathered together.

    Peak activation memory is that of one tile instead of the whole image. Not exact: the VAE
    decoder's GroupNorms see per-tile statistics (tests/test_bench.py measures the error).
    Returns float32 [B, 3, 8h, 8w].
    """
    h, w = latent.shape[-2:]
    out = torch.zeros(latent.shape[0], 3, 8 * h, 8 * w, device=latent.device)
    total = torch.zeros(1, 1, 8 * h, 8 * w, device=latent.device)
    for y0 in _tile_starts(h, tile, tile - overlap):
        for x0 in _tile_starts(w, tile, tile - overlap):
            part = latent[..., y0 : y0 + tile, x0 : x0 + tile]
            y = decode(vae, part, scale).float()  # [B,3,8t,8t]
            th, tw = y.shape[-2:]
            weight = (_feather(th, 8 * overlap, y0 > 0, y0 + tile < h, out.device)[:, None]
                      * _feather(tw, 8 * overlap, x0 > 0, x0 + tile < w, out.device)[None, :])
            out[..., 8 * y0 : 8 * y0 + th, 8 * x0 : 8 * x0 + tw] += y * weight
            total[..., 8 * y0 : 8 * y0 + th, 8 * x0 : 8 * x0 + tw] += weight
    return out / total


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length), `step` apart, the last flush."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, step), length - tile]


def _feather(length: int, ramp: int, lead: bool, trail: bool, device) -> torch.Tensor:
    """1-D blending weights in (0, 1]: linear ramps over `ramp` px at the edges that overlap a neighbour."""
    w = torch.ones(length, device=device)
    ramp = min(ramp, length)
    up = (torch.arange(ramp, device=device) + 0.5) / ramp
    if lead:
        w[:ramp] = torch.minimum(w[:ramp], up)
    if trail:
        w[length - ramp :] = torch.minimum(w[length - ramp :], up.flip(0))
    return w


def alphas_cumprod(config: dict) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1, float64 [T], from a diffusers scheduler config (scheduler_config.json).

    Reads num_train_timesteps, beta_start, beta_end, beta_schedule ("scaled_linear": betas =
    linspace(sqrt(b0), sqrt(b1), T)², "linear": linspace(b0, b1, T)), trained_betas and
    rescale_betas_zero_snr (shift and scale sqrt(ᾱ) so that ᾱ_{T-1} = 0, Lin et al. 2024, Alg. 1).
    Raises ValueError for a schedule it does not know.
    """
    steps = int(config.get("num_train_timesteps", 1000))
    b0, b1 = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(b0, b1, steps, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule {schedule!r} is not one of scaled_linear, linear.")
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    if config.get("rescale_betas_zero_snr", False):
        root = alpha_bar.sqrt()
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
        alpha_bar = root**2
    return alpha_bar


def scaled_linear_alpha_bar(timestep: int, beta_start: float = 0.00085, beta_end: float = 0.012,
                            steps: int = 1000) -> float:
    """ᾱ_t of SD's "scaled_linear" schedule: betas = linspace(sqrt(b0), sqrt(b1), steps)², ᾱ_t = Π(1 − β)."""
    config = {"beta_schedule": "scaled_linear", "beta_start": beta_start, "beta_end": beta_end,
              "num_train_timesteps": steps}
    return float(alphas_cumprod(config)[timestep])


def one_step_timesteps(config: dict) -> tuple[int, int]:
    """(t, t_prev) of a one-step DDIM schedule from a scheduler config; t_prev < 0 is "past the end".

    One step of T training steps: "trailing" and "linspace" spacing start at T − 1, "leading" at
    steps_offset (diffusers' DDIMScheduler.set_timesteps); the step goes to t − T.
    """
    steps = int(config.get("num_train_timesteps", 1000))
    spacing = config.get("timestep_spacing", "leading")
    if spacing in ("trailing", "linspace"):
        t = steps - 1
    elif spacing == "leading":
        t = int(config.get("steps_offset", 0))
    else:
        raise ValueError(f"timestep_spacing {spacing!r} is not one of trailing, linspace, leading.")
    return t, t - steps


def final_alpha_bar(config: dict, alpha_bar: torch.Tensor) -> float:
    """ᾱ after the last DDIM step: 1 with set_alpha_to_one, else ᾱ_0 (diffusers' final_alpha_cumprod)."""
    return 1.0 if config.get("set_alpha_to_one", True) else float(alpha_bar[0])


def to_x0(output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, parametrization: str) -> torch.Tensor:
    """The clean latent x0 from a U-Net `output` at a timestep with cumulative ᾱ, given the `sample` x_t.

    v:   x0 = sqrt(ᾱ)·x_t − sqrt(1 − ᾱ)·v     (with ᾱ = 0, GenPercept's one step: x0 = −v exactly)
    eps: x0 = (x_t − sqrt(1 − ᾱ)·eps) / sqrt(ᾱ)
    x0:  x0 = output
    """
    if parametrization == "x0":
        return output
    if parametrization == "v":
        if alpha_bar == 0.0:
            return -output
        return math.sqrt(alpha_bar) * sample - math.sqrt(1.0 - alpha_bar) * output
    if parametrization == "eps":
        if alpha_bar <= 0.0:
            raise ValueError("an eps-prediction cannot give x0 at a timestep where ᾱ = 0.")
        return (sample - math.sqrt(1.0 - alpha_bar) * output) / math.sqrt(alpha_bar)
    raise ValueError(f"unknown parametrization {parametrization!r}; use one of {', '.join(PARAMETRIZATIONS)}.")


def to_eps(output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, parametrization: str) -> torch.Tensor:
    """The noise eps implied by a U-Net `output` at ᾱ given the sample x_t (inverse of the forward process).

    v:   eps = sqrt(ᾱ)·v + sqrt(1 − ᾱ)·x_t
    eps: eps = output
    x0:  eps = (x_t − sqrt(ᾱ)·x0) / sqrt(1 − ᾱ)
    """
    if parametrization == "eps":
        return output
    if parametrization == "v":
        return math.sqrt(alpha_bar) * output + math.sqrt(1.0 - alpha_bar) * sample
    if parametrization == "x0":
        return (sample - math.sqrt(alpha_bar) * output) / math.sqrt(1.0 - alpha_bar)
    raise ValueError(f"unknown parametrization {parametrization!r}; use one of {', '.join(PARAMETRIZATIONS)}.")


def ddim_step(output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, alpha_bar_prev: float,
              parametrization: str) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from x_t at ᾱ to the sample at ᾱ_prev:
    sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev)·eps, with x0 and eps from the U-Net output."""
    x0 = to_x0(output, sample, alpha_bar, parametrization)
    eps = to_eps(output, sample, alpha_bar, parametrization)
    return math.sqrt(alpha_bar_prev) * x0 + math.sqrt(1.0 - alpha_bar_prev) * eps
