"""Model sizes for `bench-speed` as diffusers configs, and modules with random weights built from them.

`--random-weights` builds SD2.1-size modules from their configs on the meta device and fills them with
small uniform values (scaled by 1/sqrt(fan-in), norms at 1), so no download is needed and no value
overflows; speed does not depend on the weights' values.
"""

from __future__ import annotations

# SD2.1 U-Net (SPEC §2) and the SD VAE, as diffusers configs.
SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
)
# The same block layout with tiny widths, for fast tests (tests/tiny_models.py uses these).
TINY_UNET = {**SD21_UNET, "sample_size": 8, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1,
             "attention_head_dim": (2, 2, 4, 4), "norm_num_groups": 4}
TINY_VAE = {**SD_VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4,
            "sample_size": 32}
PRESETS = {"sd21": (SD21_UNET, SD_VAE, 256), "tiny": (TINY_UNET, TINY_VAE, 8)}  # + DPT fusion width


def _fill_random_(name: str, t) -> None:
    """Small values that keep activations O(1): U(+-1/sqrt(fan_in)) weights, unit norms, tiny biases."""
    if t.ndim >= 2:
        bound = t[0].numel() ** -0.5
        t.uniform_(-bound, bound)
    elif name.endswith("weight"):  # GroupNorm / LayerNorm scales
        t.fill_(1.0)
    else:
        t.uniform_(-0.01, 0.01)


def random_module(factory, device, dtype):
    """Build `factory()` on the meta device (no init), allocate it on `device` in `dtype`, fill it."""
    import torch

    with torch.device("meta"):
        module = factory()
    module = module.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            _fill_random_(name, p)
        if any(True for _ in module.buffers()):
            raise RuntimeError(f"{type(module).__name__} has buffers that random_module cannot fill.")
    return module.eval().requires_grad_(False)


def build_random_model(preset: str, head: str, device, dtype, seed: int = 0):
    """A one-step model with random weights: SD2.1-size ("sd21") or tiny ("tiny") U-Net + VAE (+ DPT
    head); a depth model, or a disparity model with the DPT head."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from genpercept_cli.loading import empty_text_embedding
    from genpercept_cli.models import OneStepModel

    diffusers.logging.set_verbosity_error()
    unet_config, vae_config, dpt_width = PRESETS[preset]
    torch.manual_seed(seed)

    def make_unet():
        unet = UNet2DConditionModel(**unet_config)
        if head == "dpt":
            from genpercept_cli.dpt import prepare_dpt_unet

            prepare_dpt_unet(unet)
        return unet

    dpt_head = None
    if head == "dpt":
        from genpercept_cli.dpt import DPTHead

        dpt_head = random_module(lambda: DPTHead(unet_config["block_out_channels"], dpt_width), device, dtype)
    return OneStepModel(
        unet=random_module(make_unet, device, dtype),
        vae=random_module(lambda: AutoencoderKL(**vae_config), device, dtype),
        embedding=empty_text_embedding("v2").to(device, dtype),
        task="disparity" if head == "dpt" else "depth",
        dpt_head=dpt_head,
    )
