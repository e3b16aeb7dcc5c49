"""The peer a user would pick: diffusers' `MarigoldDepthPipeline` at one step, on our modules.

Same U-Net (with Marigold's 8-channel `conv_in`, `protocols.marigold_unet`), same VAE, same empty-prompt
embedding, same dtype and memory layout, same inputs and writers (the runner of `genpercept predict`):
only how the network is run differs. One DDIM step with "trailing" spacing (t = 999, v-prediction), as
the one-step Marigold checkpoints are configured; ensemble 1.
"""

from __future__ import annotations

from genpercept_cli.errors import GenPerceptError

from .protocols import PipeStandIn


def peer_problem() -> str | None:
    """Why the peer cannot run here (one sentence), or None when it can; imports nothing heavy."""
    from importlib.util import find_spec

    if find_spec("transformers") is None:
        return "diffusers' MarigoldDepthPipeline needs transformers, which is not installed."
    if find_spec("diffusers.pipelines.marigold") is None:
        return "diffusers' MarigoldDepthPipeline needs diffusers >= 0.28."
    return None


def marigold_pipeline_class():
    """diffusers' MarigoldDepthPipeline (diffusers >= 0.28, which imports transformers for it)."""
    try:
        from diffusers.pipelines.marigold.pipeline_marigold_depth import MarigoldDepthPipeline
    except ImportError as exc:
        raise GenPerceptError(
            f"the diffusers protocol needs diffusers >= 0.28 with transformers installed ({exc})."
        ) from None
    return MarigoldDepthPipeline


def one_step_scheduler():
    """SD2's DDIM schedule, v-prediction, trailing spacing: one step runs the U-Net once at t = 999."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=0, timestep_spacing="trailing")


class DiffusersMarigoldPeer(PipeStandIn):
    """`predict_batch` calls MarigoldDepthPipeline (a `PipeStandIn`)."""

    def __init__(self, pipe, unet, seed: int = 0):
        import diffusers

        cls = marigold_pipeline_class()
        super().__init__(pipe)
        self.seed = seed
        self.version = diffusers.__version__
        self.peer = cls(unet=unet, vae=pipe.model.vae, scheduler=one_step_scheduler(), text_encoder=None,
                        tokenizer=None, prediction_type="depth", default_denoising_steps=1,
                        default_processing_resolution=0)
        self.peer.empty_text_embedding = pipe.model.embedding  # [1, T, 1024]: no text encoder needed
        self.peer.set_progress_bar_config(disable=True)

    @property
    def recoveries(self) -> int:
        return 0  # diffusers' pipeline has no fp32 retry

    def predict_batch(self, rgb):
        """uint8 [B, 3, h, w] (already at processing size) -> float32 [B, 1, h, w] in [0, 1]."""
        import torch

        gen = torch.Generator(self.pipe.device).manual_seed(self.seed)
        with torch.inference_mode():
            out = self.peer(rgb.to(self.pipe.device), num_inference_steps=1, ensemble_size=1,
                            processing_resolution=0, match_input_resolution=False, batch_size=rgb.shape[0],
                            generator=gen, output_type="pt")
        return out.prediction.float()
