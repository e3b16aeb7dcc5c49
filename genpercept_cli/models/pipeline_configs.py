"""E2E-FT, Lotus-D and Marigold (one step): the one-step families published as diffusers pipeline folders,
and their `OneStepParams` read from a folder's own configs (scheduler, U-Net), the family's facts where the
configs say nothing, and the spec's `family_params` (registry entry or genpercept.json) over both.

All three run the same SD2 U-Net + VAE once (models.one_step); they differ by

| family   | U-Net input            | t    | step output                           | class labels        |
|----------|------------------------|------|---------------------------------------|---------------------|
| e2e-ft   | [image, 0] (8 ch) or   | T−1  | x0 = sqrt(ᾱ)·0 − sqrt(1−ᾱ)·v          | none                |
|          | image (4 ch); x_t = 0  |      | (DDIM pred_original_sample)           |                     |
| lotus-d  | image (4 ch)           | 999  | x0 = the output (regression)          | [sin e, cos e],     |
|          |                        |      |                                       | e = one-hot [1, 0]  |
| marigold | [image, x_t] (8 ch);   | T−1  | DDIM prev_sample at ᾱ_prev            | none                |
|          | x_t = 0 or seeded      |      | (zero-SNR: ᾱ_t = 0, so x0 = −v)        |                     |

t, ᾱ_t, the parametrisation and ᾱ_prev come from `scheduler/scheduler_config.json` (one "trailing"
DDIM step starts at T − 1); Lotus ignores its scheduler, as its reference passes timesteps=[999] and
uses the output as x0.

Text conditioning: every reference tokenises the empty prompt with padding="do_not_pad" and runs the
SD2 OpenCLIP-ViT-H text encoder shipped in the repo (1024-wide, the SD2/2.1 one), i.e. our packaged
2-token "v2" embedding (loading.empty_text_embedding), so no text encoder is loaded. (E2E-FT *trained*
with the 77-token padded embedding; its inference code uses 2 tokens, which we follow; "embedding": "v1"
in family_params selects the other.)

Outputs, in our conventions (documented deviations from each reference):
- depth: E2E-FT min-maxes each prediction to [0, 1] (its Marigold-based pipeline does it even for one
  member); Lotus clips each channel to [0, 1] before the channel mean; Marigold averages, then clips.
  All are affine-invariant depth (0 = near) or, for Lotus' *-disparity* release, disparity (1 = near).
- normals: E2E-FT L2-normalises n/(|n| + 1e-5); Marigold clips to [−1, 1] (maps z to [0, 1] when
  model_index.json says use_full_z_range = false), then normalises; Lotus clips.
  E2E-FT and Lotus predict in the frame their DSINE evaluation compares to without conversion (x left,
  y up, z toward the camera), so x is negated into ours (x right, y up, z toward the camera); Marigold's
  frame is ours.
- VAE latents are the posterior mode for all; Lotus' reference *samples* the posterior (unseeded), so
  its outputs vary run to run by the VAE's (small) posterior std; ours are deterministic.
- Marigold one step starts from zeros (deterministic) unless family_params set "sample": "noise" with a
  "noise_seed"; the noise is then drawn per image, so results do not depend on batching.
- Pre- and post-processing follow each reference (SPEC §3 step 1; README "Other models"):

  | family   | processed size                 | input resize              | padding            | back to input   |
  |----------|--------------------------------|---------------------------|--------------------|-----------------|
  | e2e-ft   | floor: int(side·min(R/W, R/H)) | uint8, rounded            | none               | bilinear, AA    |
  | lotus-d  | floor                          | uint8, rounded (*)        | none               | bilinear, AA (*)|
  | marigold | integer: side·R // max(H, W)   | float, not rounded        | edge to ×8, cropped| bilinear, no AA |

  (*) documented deviations: Lotus' reference resizes the normalised float image and resizes back with
  nearest. Under the floor rule the long side can be one pixel short of R (1070×1000 at 768: 767×717;
  diffusers gives 768×717).
- Timestep: E2E-FT's run.py loads its scheduler with timestep_spacing="trailing" whatever the config says
  (SCHEDULER_OVERRIDES), so its one step is at T − 1 even where a config says "leading".
"""

from __future__ import annotations

import genpercept_cli.models.sd as sd  # the module itself, not a name of our package's __init__

from ..checkpoints import PREDICTION_TYPES, read_json

# What each family does that no config of its release says (see the table above).
FAMILY_FACTS: dict[str, dict] = {
    "e2e-ft": {"sample": "zeros", "step": "x0", "depth_output": "minmax", "normal_output": "unit",
               "normal_flip": "x"},
    "lotus-d": {"timestep": 999, "alpha_bar": 0.0, "parametrization": "x0", "sample": "image",
                "task_switch": (1, 0), "depth_output": "clip_mean", "normal_output": "clip", "normal_flip": "x"},
    "marigold": {"sample": "zeros", "step": "ddim", "depth_output": "mean_clip", "normal_output": "clip+unit",
                 "normal_flip": "", "size_rule": "integer", "round_input": False, "pad_multiple": 8,
                 "output_antialias": False},
}
# Scheduler settings a family's reference passes when it loads the scheduler, over the config's own.
SCHEDULER_OVERRIDES: dict[str, dict] = {"e2e-ft": {"timestep_spacing": "trailing"}}
FAMILY_DOCS = {
    "e2e-ft": "E2E-FT (Garcia et al., WACV 2025): Marigold or SD2 fine-tuned end to end, one step from zeros.",
    "lotus-d": "Lotus-D (He et al., ICLR 2025): SD2 U-Net regressing x0 at t = 999 with a task switcher.",
    "marigold": "Marigold v1-1 (Ke et al., TPAMI 2025) run as one trailing DDIM step from zeros.",
}


def scheduler_params(config: dict) -> dict:
    """One DDIM step from a scheduler config: timestep, ᾱ there, ᾱ after it, parametrization."""
    alpha_bar = sd.alphas_cumprod(config)
    t, t_prev = sd.one_step_timesteps(config)
    prev = float(alpha_bar[t_prev]) if t_prev >= 0 else sd.final_alpha_bar(config, alpha_bar)
    return {"timestep": t, "alpha_bar": float(alpha_bar[t]), "alpha_bar_prev": prev,
            "parametrization": PREDICTION_TYPES[config.get("prediction_type", "epsilon")]}


def pipeline_params(spec, root) -> dict:
    """OneStepParams fields of a pipeline checkpoint at `root` (model_index.json, scheduler/, unet/):
    scheduler config < family facts < the spec's family_params (later wins)."""
    from_configs = {}
    if spec.family != "lotus-d":  # Lotus' reference ignores its scheduler (module docstring)
        config = read_json(root / "scheduler" / "scheduler_config.json")
        from_configs = scheduler_params({**config, **SCHEDULER_OVERRIDES.get(spec.family, {})})
    if spec.family == "marigold":  # diffusers' MarigoldNormalsPipeline reads it from model_index.json
        from_configs["full_z_range"] = bool(read_json(root / "model_index.json").get("use_full_z_range", True))
    return {**from_configs, **FAMILY_FACTS[spec.family], **dict(spec.family_params)}
