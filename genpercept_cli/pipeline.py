"""The one-step GenPercept pipeline (SPEC §3), as numbered steps.

    uint8 RGB -> resize (floor, antialias) -> [-1, 1] -> VAE encode (mode x 0.18215)
    -> U-Net at t = 1 with the empty prompt -> negate -> VAE decode -> task head -> resize back

Images of equal processed size are stacked into one batch: the maths is per-sample, so batching is
exact. The DPT-head variant replaces "negate -> decode" with U-Net features -> DPT head -> per-image
min-max.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import CheckpointFiles, CheckpointSpec, fetch_checkpoint, resolve_checkpoint
from .errors import GenPerceptError

LATENT_SCALE = 0.18215
MIN_SIDE = 8  # the VAE encoder halves three times; thinner inputs break its strided convolutions
TIMESTEP = 1
ONE_CHANNEL_TASKS = ("depth", "disparity", "dis", "matting")


class NonFiniteError(GenPerceptError):
    """A batch that stayed non-finite even after the fp32 retry."""


def check_processing_res(processing_res: int, name: str = "processing_res") -> int:
    """Refuse a processing resolution no image can use; returns it. It must be 0 (native size) or at
    least MIN_SIDE: the long side becomes `processing_res` and the short side is no longer."""
    if processing_res != 0 and processing_res < MIN_SIDE:
        raise GenPerceptError(
            f"{name} must be 0 (native size) or at least {MIN_SIDE} pixels, the model's smallest side; "
            f"got {processing_res}."
        )
    return processing_res


def processed_size(height: int, width: int, processing_res: int) -> tuple[int, int]:
    """(h, w) after scaling the long side to `processing_res` (floor); 0 keeps the native size.

    Raises GenPerceptError when the short side would be under MIN_SIDE pixels; the message gives sizes
    as width x height, the way image sizes are written.
    """
    if processing_res == 0:
        size = height, width
    else:
        scale = min(processing_res / width, processing_res / height)
        size = int(height * scale), int(width * scale)
    if min(size) < MIN_SIDE:
        becomes = (f"becomes {size[1]}x{size[0]} at processing resolution {processing_res}" if processing_res
                   else "at its native size")
        raise GenPerceptError(
            f"the image is too thin: {width}x{height} {becomes}, and the model needs at least {MIN_SIDE} "
            "pixels a side."
        )
    return size


def resize_float(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialias of a float tensor [B, C, H, W] (the one resize of the tool)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> uint8 [B, 3, h, w] as torchvision v1 does for tensors: float, resize, round.

    Torch's native uint8 antialias kernel differs by +-1 on ~20% of pixels, so it is not used.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return resize_float(x.float(), size).round_().clamp_(0, 255).to(torch.uint8)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> uint8 [1, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].contiguous()


@dataclass
class Stages:
    """The modules of one checkpoint, already on the device in the compute dtype."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    embedding: torch.Tensor  # [1, T, 1024]
    dpt_head: torch.nn.Module | None = None


class GenPerceptPipeline:
    """One-step dense prediction with a GenPercept checkpoint.

    >>> pipe = GenPerceptPipeline.from_checkpoint("depth")
    >>> depth = pipe(image)  # float32 [H, W] in [0, 1], 0 = near
    """

    def __init__(
        self,
        stages: Stages,
        spec: CheckpointSpec,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.stages = stages
        self.spec = spec
        self.task = spec.task
        self.device = torch.device(device)
        self.dtype = dtype
        self.recoveries = 0  # batches re-run in fp32 after a non-finite half-precision result

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | CheckpointSpec = "depth",
        task: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        cache_dir: str | Path | None = None,
        fast_path: bool = True,
        compile: bool = False,
    ) -> GenPerceptPipeline:
        """Resolve, fetch and load a checkpoint (registry name, hub id or local folder).

        fast_path: switch on what `bench-speed` measured to win for this device and dtype (none for
        fp32, so fp32 stays the exact SPEC §3 maths); compile: opt-in `torch.compile`.
        """
        spec = checkpoint if isinstance(checkpoint, CheckpointSpec) else resolve_checkpoint(checkpoint, task)
        files = fetch_checkpoint(spec, cache_dir=cache_dir)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        pipe = cls(load_stages(files, device, dtype), spec, device, dtype)
        options = measured_fast_path(device, dtype) if fast_path else {}
        if options or compile:
            pipe.optimize(**options, compile=compile)
        return pipe

    # -- fast path (all opt-in: the defaults run the exact SPEC §3 maths) -------------------------
    tiled_decode_above: int | None = None  # image pixels (h*w) above which `decode` goes tile by tile
    batch_buckets = False  # pad batches to powers of two (set by optimize(compile=True))
    cuda_graphs = False

    def optimize(
        self,
        channels_last: bool = False,
        compile: bool = False,
        tiled_decode_above: int | None = None,
        cuda_graphs: bool = False,
        compile_backend: str = "inductor",
    ) -> GenPerceptPipeline:
        """Switch fast-path options on in place; returns self. Measured by `genpercept bench-speed`.

        channels_last: NHWC weights, so oneDNN / cuDNN pick NHWC convolution kernels (not bit-exact).
        compile: `torch.compile` the VAE encoder/decoder, the U-Net (not the DPT-feature U-Net, whose
        up-block hooks would defeat tracing) and the DPT head, with static shapes; batches are padded to
        a power of two, so each processed size compiles at most log2(batch) + 1 times.
        cuda_graphs: with compile on CUDA, replay CUDA graphs for each static shape ("reduce-overhead").
        tiled_decode_above: decode images with more pixels than this tile by tile (bounded memory).
        """
        s = self.stages
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for module in (s.unet, s.vae, s.dpt_head):
            if module is not None:
                module.to(memory_format=fmt)
        self.tiled_decode_above = tiled_decode_above
        if cuda_graphs and not (compile and self.device.type == "cuda"):
            raise GenPerceptError("CUDA graphs need --compile and a CUDA device.")
        if compile:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            mode = "reduce-overhead" if cuda_graphs else None
            wrap = functools.partial(torch.compile, backend=compile_backend, mode=mode, dynamic=False)
            s.vae.encoder, s.vae.decoder = wrap(s.vae.encoder), wrap(s.vae.decoder)
            if s.dpt_head is None:
                s.unet = wrap(s.unet)
            else:
                s.dpt_head = wrap(s.dpt_head)
            self.batch_buckets, self.cuda_graphs = True, cuda_graphs
        return self

    # -- the steps -----------------------------------------------------------------------------
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, h, w] -> latent [B, 4, h/8, w/8] (distribution mode x 0.18215)."""
        x = rgb.to(self.device, self.dtype) / 255.0 * 2.0 - 1.0  # [B,3,h,w] in [-1,1]
        vae = self.stages.vae
        moments = vae.quant_conv(vae.encoder(x))  # [B,8,h/8,w/8]
        mean, _logvar = moments.chunk(2, dim=1)
        return mean * LATENT_SCALE

    def denoise(self, latent: torch.Tensor) -> torch.Tensor:
        """One U-Net step at t = 1: the prediction is -v (DDIM with alpha_bar = 0, v-prediction)."""
        embed = self.stages.embedding.expand(latent.shape[0], -1, -1)  # [B,T,1024]
        v = self.stages.unet(latent, TIMESTEP, encoder_hidden_states=embed, return_dict=False)[0]
        return -v

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 4, h/8, w/8] -> image-space prediction [B, 3, h, w], roughly in [-1, 1]."""
        pixels = latent.shape[-2] * latent.shape[-1] * 64
        if self.tiled_decode_above is not None and pixels > self.tiled_decode_above:
            return self.decode_tiled(latent)
        vae = self.stages.vae
        return vae.decoder(vae.post_quant_conv(latent / LATENT_SCALE))

    def decode_tiled(self, latent: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
        """`decode` in overlapping latent tiles (`tile` latent px = 8x image px), feathered together.

        Peak activation memory is that of one tile instead of the whole image. Not exact: the VAE
        decoder's GroupNorms see per-tile statistics (see tests/test_bench.py for the measured error).
        Returns float32 [B, 3, h, w].
        """
        h, w = latent.shape[-2:]
        out = torch.zeros(latent.shape[0], 3, 8 * h, 8 * w, device=latent.device)
        total = torch.zeros(1, 1, 8 * h, 8 * w, device=latent.device)
        vae = self.stages.vae
        for y0 in _tile_starts(h, tile, tile - overlap):
            for x0 in _tile_starts(w, tile, tile - overlap):
                part = latent[..., y0 : y0 + tile, x0 : x0 + tile]
                y = vae.decoder(vae.post_quant_conv(part / LATENT_SCALE)).float()  # [B,3,8t,8t]
                th, tw = y.shape[-2:]
                weight = (_feather(th, 8 * overlap, y0 > 0, y0 + tile < h, out.device)[:, None]
                          * _feather(tw, 8 * overlap, x0 > 0, x0 + tile < w, out.device)[None, :])
                out[..., 8 * y0 : 8 * y0 + th, 8 * x0 : 8 * x0 + tw] += y * weight
                total[..., 8 * y0 : 8 * y0 + th, 8 * x0 : 8 * x0 + tw] += weight
        return out / total

    def head(self, y: torch.Tensor) -> torch.Tensor:
        """Decoder output [B, 3, h, w] -> [B, C, h, w] in [0, 1] (C = 1 for 1-channel tasks, else 3)."""
        y = y.float()
        finite = torch.isfinite(y).all(dim=1, keepdim=True)  # [B,1,h,w]; inf must not hide behind the clip
        if self.task in ONE_CHANNEL_TASKS:
            y = y.mean(dim=1, keepdim=True)
        return torch.where(finite, (y.clamp(-1.0, 1.0) + 1.0) / 2.0, float("nan"))

    def dpt_predict(self, latent: torch.Tensor) -> torch.Tensor:
        """DPT-head variant: U-Net up-block features -> DPT head -> per-image min-max, [B, 1, h', w'].

        The head's native size is 32x its coarsest feature (the processed size when that is a multiple
        of 64); like the reference, it is min-maxed there and resized once, in `postprocess`.
        """
        from .dpt import minmax_per_image, unet_up_block_features

        embed = self.stages.embedding.expand(latent.shape[0], -1, -1)
        features = unet_up_block_features(self.stages.unet, latent, TIMESTEP, embed)
        return minmax_per_image(self.stages.dpt_head(features).float())

    @torch.inference_mode()
    def predict_batch(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, h, w] (already at processing size) -> float32 [B, C, h, w] in [0, 1].

        Half-precision overflow (inf/NaN) is detected per batch and the batch is re-run in fp32.
        """
        out = self._run(rgb)
        if not torch.isfinite(out).all():
            if self.dtype == torch.float32:
                raise NonFiniteError("the model produced non-finite values in float32.")
            self.recoveries += 1
            with self._precision(torch.float32):
                out = self._run(rgb)
            if not torch.isfinite(out).all():
                raise NonFiniteError("the model produced non-finite values even in float32.")
        return out

    def _run(self, rgb: torch.Tensor) -> torch.Tensor:
        n = rgb.shape[0]
        if self.batch_buckets and n & (n - 1):  # compiled: pad to a power of two so recompiles stay rare
            pad = (1 << n.bit_length()) - n
            rgb = torch.cat([rgb, rgb[-1:].expand(pad, -1, -1, -1)])  # per-sample maths: exact
            return self._run_batch(rgb)[:n]
        return self._run_batch(rgb)

    def _run_batch(self, rgb: torch.Tensor) -> torch.Tensor:
        if self.cuda_graphs:  # outputs of the previous graph replay may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        latent = self.encode(rgb)  # [B,4,h/8,w/8]
        if self.stages.dpt_head is not None:
            return self.dpt_predict(latent)
        return self.head(self.decode(self.denoise(latent)))

    def _precision(self, dtype: torch.dtype):
        return _Precision(self, dtype)

    # -- post-processing -----------------------------------------------------------------------
    @torch.inference_mode()
    def postprocess(self, pred: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """[C, h, w] in [0, 1] -> numpy at the input size: [H, W] (1-channel) or [H, W, 3].

        Normals come back as unit vectors n = 2p - 1, renormalised after the resize.
        """
        p = resize_float(pred[None].float(), size)[0].clamp(0.0, 1.0)  # [C,H,W]
        if self.task == "normal":
            n = p * 2.0 - 1.0
            p = n / n.norm(dim=0, keepdim=True).clamp_min(1e-6)
        if p.shape[0] == 1:
            return p[0].cpu().numpy()
        return p.permute(1, 2, 0).cpu().numpy()

    def __call__(self, images, processing_res: int | None = None, batch_size: int = 1):
        """Predict for one uint8 [H, W, 3] image or a list of them; returns the same arity.

        Images are bucketed by processed size and stacked `batch_size` at a time.
        """
        single = isinstance(images, np.ndarray)
        images = [images] if single else list(images)
        res = check_processing_res(self.spec.processing_res if processing_res is None else processing_res)
        results: list[np.ndarray | None] = [None] * len(images)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            buckets.setdefault(processed_size(*image.shape[:2], res), []).append(i)
        for size, indices in buckets.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                rgb = torch.cat([resize_uint8(image_to_tensor(images[i]), size) for i in chunk])
                preds = self.predict_batch(rgb)
                for i, pred in zip(chunk, preds):
                    results[i] = self.postprocess(pred, images[i].shape[:2])
        return results[0] if single else results


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


class _Precision:
    """Temporarily run all stages in another dtype (lossless round trip fp16/bf16 -> fp32 -> back)."""

    def __init__(self, pipe: GenPerceptPipeline, dtype: torch.dtype):
        self.pipe, self.dtype, self.saved = pipe, dtype, pipe.dtype

    def _cast(self, dtype: torch.dtype) -> None:
        s = self.pipe.stages
        for module in (s.unet, s.vae, s.dpt_head):
            if module is not None:
                module.to(dtype)
        s.embedding = s.embedding.to(dtype)
        self.pipe.dtype = dtype

    def __enter__(self):
        self._cast(self.dtype)

    def __exit__(self, *exc):
        self._cast(self.saved)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda if available, else cpu; refuses a cuda request without a GPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenPerceptError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise GenPerceptError(f"device {device} is not supported; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenPerceptError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu.")
    return device


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto'/None -> fp16 on CUDA, fp32 elsewhere; names fp32/fp16/bf16 accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise GenPerceptError(f"unknown dtype {dtype!r}; choose auto, fp32, fp16 or bf16.")
    return _DTYPES[dtype]


# `optimize()` switches that measured faster (benchmarks/results, `genpercept bench-speed`); pairs not
# measured get none. fp32 on CPU: channels-last was within noise (0.97x at 256², 0.98x at 512²).
MEASURED_FAST_PATH: dict[tuple[str, torch.dtype], dict] = {
    ("cpu", torch.bfloat16): {"channels_last": True},  # 1.43x at 256² and 512²: no NCHW<->blocked reorders
}


def measured_fast_path(device: torch.device | str, dtype: torch.dtype) -> dict:
    """Keyword arguments for `GenPerceptPipeline.optimize` that won on this kind of device and dtype."""
    return dict(MEASURED_FAST_PATH.get((torch.device(device).type, dtype), {}))


def load_stages(files: CheckpointFiles, device: torch.device, dtype: torch.dtype) -> Stages:
    """Load the U-Net, VAE (and DPT head) of a fetched checkpoint onto `device` in `dtype`."""
    from .loading import empty_text_embedding, load_unet, load_vae

    dpt = files.dpt_dir is not None
    unet = load_unet(files.unet_dir, dtype, dpt=dpt).to(device)
    vae = load_vae(files.vae_dir, dtype).to(device)
    head = None
    if dpt:
        from .dpt import DPTHead

        head = DPTHead.from_pretrained(files.dpt_dir, dtype=dtype).to(device)
    embedding = empty_text_embedding(files.spec.embedding).to(device, dtype)
    return Stages(unet=unet, vae=vae, embedding=embedding, dpt_head=head)
