"""Tiny random checkpoints of the diffusers-pipeline one-step families, in their released hub layout:

    root/model_index.json                       # as the release's (pipeline class, component list)
    root/scheduler/scheduler_config.json        # the release's scheduler config, key for key
    root/unet/{config.json, diffusion_pytorch_model.safetensors}
    root/vae/{config.json, diffusion_pytorch_model.safetensors}

(text_encoder/, tokenizer/ and feature_extractor/ are left out: nothing reads them.) U-Net and VAE have
SD2's block layout at tiny widths (benchmarks.speed.presets), with the released input channels and
class embedding: E2E-FT (Marigold- or SD-based, trained with --noise_type zeros) and Marigold 8 channels,
an E2E-FT fine-tune without a noise type 4, Lotus-D 4 with a 4-input projection class embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import make_unet, make_vae

_COMPONENTS = {"scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}
SD_DDIM = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0,
            "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "thresholding": False, "timestep_spacing": "leading",
            "trained_betas": None}

# family -> (model_index.json, scheduler_config.json, U-Net config overrides), as each release has them
RELEASES = {
    "e2e-ft": (  # GonzaloMG/marigold-e2e-ft-depth (Marigold-based, 8 channels)
        {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.31.0.dev0",
         "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": True,
         "safety_checker": [None, None], **_COMPONENTS},
        {**SD_DDIM, "_diffusers_version": "0.31.0.dev0", "timestep_spacing": "trailing"},
        {"in_channels": 8},
    ),
    "e2e-ft-sd": (  # GonzaloMG/stable-diffusion-e2e-ft-depth: trained with --noise_type zeros, which doubles
        # SD2's conv_in to 8 channels ([image latent, zeros])
        {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.31.0.dev0", **_COMPONENTS},
        {**SD_DDIM, "_diffusers_version": "0.31.0.dev0", "timestep_spacing": "trailing"},
        {"in_channels": 8},
    ),
    "e2e-ft-sd-4ch": (  # an SD fine-tune trained without --noise_type: SD2's 4-channel conv_in, image latent only
        {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.31.0.dev0", **_COMPONENTS},
        {**SD_DDIM, "_diffusers_version": "0.31.0.dev0", "timestep_spacing": "trailing"},
        {"in_channels": 4},
    ),
    "lotus-d": (  # jingheya/lotus-depth-d-v1-0
        {"_class_name": "LotusDPipeline", "_diffusers_version": "0.28.0.dev0", **_COMPONENTS},
        {**SD_DDIM, "_diffusers_version": "0.28.0.dev0", "prediction_type": "sample"},
        {"in_channels": 4, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 4},
    ),
    "marigold": (  # prs-eth/marigold-depth-v1-1 (zero-SNR, trailing)
        {"_class_name": "MarigoldDepthPipeline", "_diffusers_version": "0.32.0", "default_denoising_steps": 4,
         "default_processing_resolution": 768, "prediction_type": "depth", "scale_invariant": True,
         "shift_invariant": True, **_COMPONENTS},
        {**SD_DDIM, "_diffusers_version": "0.32.0", "rescale_betas_zero_snr": True,
         "timestep_spacing": "trailing"},
        {"in_channels": 8},
    ),
}


def write_pipeline_repo(root: Path, release: str, seed: int = 0, index: dict | None = None,
                        scheduler: dict | None = None, **unet_overrides) -> Path:
    """A tiny copy of a release (a RELEASES key) at `root`; `index`, `scheduler` and `unet_overrides`
    replace or add config keys (to build mismatching folders)."""
    model_index, scheduler_config, unet_config = RELEASES[release]
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({**model_index, **(index or {})}, indent=2))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**scheduler_config, **(scheduler or {})}, indent=2))
    make_unet(seed, **{**unet_config, **unet_overrides}).save_pretrained(root / "unet", safe_serialization=True)
    make_vae(seed + 100).save_pretrained(root / "vae", safe_serialization=True)
    return root
