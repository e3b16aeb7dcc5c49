"""The protocols `bench-speed` measures, and the Marigold baseline: DDIM steps, an 8-channel U-Net and
the ensemble of its members."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

from genpercept_cli.errors import GenPerceptError

from .presets import random_module

_PROTOCOL = re.compile(
    r"^(?P<name>genpercept|reference|marigold|diffusers|onnxruntime|openvino)(?::(?P<s>\d+)x(?P<e>\d+))?(?:@(?P<r>\d+))?$"
)


# -- protocols ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """One measured protocol: `name`, Marigold's steps and ensemble size, repeats (None = --repeats)."""

    name: str
    steps: int = 1
    ensemble: int = 1
    repeats: int | None = None

    @property
    def label(self) -> str:
        if self.name == "diffusers":
            return "diffusers_marigold_1x1"
        return f"marigold_{self.steps}x{self.ensemble}" if self.name == "marigold" else self.name


def parse_protocols(specs: list[str], steps: int, ensemble: int) -> list[Protocol]:
    """'genpercept', 'reference', 'marigold' (uses steps/ensemble), 'marigold:SxE', 'diffusers' (the
    peer: diffusers' MarigoldDepthPipeline at one step), 'onnxruntime' or 'openvino' (the same model
    exported as one graph, run by that engine through the same runner), each with an optional '@N'
    repeat count. The
    one-step protocol is always measured, first unless listed."""
    protocols = []
    for spec in specs:
        match = _PROTOCOL.match(spec.strip().lower())
        if not match:
            raise GenPerceptError(
                f"unknown protocol {spec!r}; use genpercept, reference, marigold, marigold:SxE, diffusers, "
                "onnxruntime or openvino, "
                "optionally followed by @N repeats (e.g. marigold:10x10@1)."
            )
        name, s, e, r = match["name"], match["s"], match["e"], match["r"]
        if s and name != "marigold":
            raise GenPerceptError(f"{spec!r}: only the marigold protocol takes steps x ensemble.")
        repeats = int(r) if r else None
        if name == "marigold":
            p = Protocol(name, int(s or steps), int(e or ensemble), repeats)
        else:
            p = Protocol(name, repeats=repeats)
        if p.steps < 1 or p.ensemble < 1 or (p.repeats is not None and p.repeats < 1):
            raise GenPerceptError(f"{spec!r}: steps, ensemble size and repeats must be at least 1.")
        protocols.append(p)
    if not any(p.name == "genpercept" for p in protocols):
        protocols.insert(0, Protocol("genpercept"))
    return protocols


# -- the Marigold baseline ------------------------------------------------------------------------
@contextmanager
def marigold_unet(unet):
    """The same U-Net with an 8-channel `conv_in` (image latent + noisy latent) and, for a DPT feature
    U-Net, its output layers back: Marigold's network at the cost of one 3x3 conv's extra inputs.

    Swapped in place and restored on exit, so no second 3.5 GB U-Net is held in memory.
    """
    import torch
    from torch import nn

    base = getattr(unet, "_orig_mod", unet)  # under torch.compile
    names = ("conv_in", "conv_norm_out", "conv_act", "conv_out")
    saved = {name: getattr(base, name) for name in names}
    ref = base.conv_in.weight
    nhwc = ref.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    cfg = base.config

    def make(factory):
        return random_module(factory, ref.device, ref.dtype).to(memory_format=fmt)

    base.conv_in = make(lambda: nn.Conv2d(2 * cfg.in_channels, cfg.block_out_channels[0], 3, padding=1))
    if isinstance(base.conv_out, nn.Identity):
        width = cfg.block_out_channels[0]
        base.conv_norm_out = make(lambda: nn.GroupNorm(cfg.norm_num_groups, width, eps=cfg.norm_eps))
        base.conv_act = nn.SiLU()
        base.conv_out = make(lambda: nn.Conv2d(width, cfg.out_channels, 3, padding=1))
    try:
        yield unet
    finally:
        for name, module in saved.items():
            setattr(base, name, module)


def ddim_schedule(steps: int, train_steps: int = 1000) -> list[tuple[int, float, float]]:
    """[(t, alpha_bar_t, alpha_bar_prev)] for S evenly spaced DDIM steps from t = 999 down, on SD's
    "scaled linear" betas (0.00085 -> 0.012); the last step lands on alpha_bar = 1 (the clean sample)."""
    import torch

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, train_steps, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, 0).tolist()
    ts = [round(train_steps - 1 - i * (train_steps - 1) / steps) for i in range(steps)]
    prev = [alpha_bar[t] for t in ts[1:]] + [1.0]
    return [(t, alpha_bar[t], p) for t, p in zip(ts, prev, strict=True)]


def ddim_step(x, v, alpha_bar: float, alpha_bar_prev: float):
    """One deterministic DDIM update for a v-prediction model: x_t -> x_prev."""
    x0 = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * v
    eps = (1 - alpha_bar) ** 0.5 * x + alpha_bar**0.5 * v
    return alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev) ** 0.5 * eps


def ensemble_median(members, iterations: int = 3):
    """Ensemble E predictions [E, C, h, w] in [0, 1] into one [C, h, w] in [0, 1].

    1-channel (affine-invariant) maps: each member is aligned to the per-pixel median with a
    least-squares scale and shift, `iterations` times, then the median of the aligned members is
    min-max normalised. Marigold fits the same per-member affine alignment with an iterative optimiser;
    either way it is O(E*h*w) per iteration, far below one U-Net call (`stages_ms["ensemble"]`).
    Other maps: the per-pixel median.
    """
    m = members.float()
    if m.shape[0] == 1:
        return m[0]
    if m.shape[1] != 1:
        return m.median(dim=0).values
    flat = m.flatten(1)  # [E,N]
    for _ in range(iterations):
        ref = flat.median(dim=0).values  # [N]
        centred = flat - flat.mean(dim=1, keepdim=True)
        variance = centred.pow(2).mean(1, keepdim=True).clamp_min(1e-12)
        scale = (centred * (ref - ref.mean())).mean(1, keepdim=True) / variance
        flat = scale * centred + ref.mean()
    out = flat.median(dim=0).values
    out = (out - out.min()) / (out.max() - out.min()).clamp_min(1e-12)
    return out.view(m.shape[1:])


class PipeStandIn:
    """Looks like a GenPerceptPipeline to the runners: sizes and post-processing are `pipe`'s; subclasses
    run the network their own way in `predict_batch`."""

    def __init__(self, pipe):
        self.pipe, self.task, self.spec = pipe, pipe.task, pipe.spec

    @property
    def recoveries(self) -> int:
        return self.pipe.recoveries

    def postprocess(self, pred, size):
        return self.pipe.postprocess(pred, size)

    def postprocess_batch(self, preds, sizes):
        return self.pipe.postprocess_batch(preds, sizes)

    def processed_size(self, height: int, width: int, processing_res: int):
        return self.pipe.processed_size(height, width, processing_res)

    def model_input(self, image, size):
        return self.pipe.model_input(image, size)


class MarigoldBaseline(PipeStandIn):
    """`predict_batch` runs the multi-step protocol (a `PipeStandIn`).

    Per image and ensemble member (members batched `member_batch` at a time): VAE encode of the image
    (per member, as the reference Marigold does), Gaussian noise, S DDIM steps of the 8-channel U-Net
    on [image latent, noisy latent] with the same empty-prompt embedding, VAE decode, task head;
    then `ensemble_median`.
    """

    def __init__(self, pipe, unet, steps: int, ensemble: int, member_batch: int, clock, seed: int = 0):
        super().__init__(pipe)
        self.unet = unet
        self.ensemble, self.member_batch, self.clock = ensemble, max(1, member_batch), clock
        self.schedule = ddim_schedule(steps)
        self.seed = seed

    def predict_batch(self, rgb):
        """uint8 [B, 3, h, w] -> float32 [B, C, h, w] in [0, 1]."""
        import torch

        with torch.inference_mode(), self.pipe.convolutions():  # the one-step run's fast path, for a fair ratio
            return torch.cat([self._predict_one(rgb[i : i + 1], self.seed + i) for i in range(rgb.shape[0])])

    def _predict_one(self, rgb, seed: int):
        import torch

        pipe = self.pipe
        gen = torch.Generator().manual_seed(seed)
        members = []
        for start in range(0, self.ensemble, self.member_batch):
            n = min(self.member_batch, self.ensemble - start)
            cond = pipe.model.encode(pipe.normalise(rgb.expand(n, -1, -1, -1)))  # [n,4,h/8,w/8]
            x = torch.randn(cond.shape, generator=gen).to(cond.device, cond.dtype)
            embed = pipe.model.embedding.expand(n, -1, -1)
            for t, alpha_bar, alpha_bar_prev in self.schedule:
                sample = torch.cat([cond, x], dim=1)  # [n,8,h/8,w/8]
                v = self.unet(sample, t, encoder_hidden_states=embed, return_dict=False)[0]
                x = ddim_step(x, v, alpha_bar, alpha_bar_prev)
            members.append(pipe.model.head(pipe.model.decode(x)))  # [n,C,h,w] in [0,1]
        with self.clock.stage("ensemble"):
            return ensemble_median(torch.cat(members))[None]
