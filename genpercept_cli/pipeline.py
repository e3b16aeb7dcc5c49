"""Inference with a dense model: the convenience around `DenseModel.forward` (SPEC §3).

    uint8 RGB -> resize (the family's size rule, antialias; rounded to uint8 or not) -> [-1, 1] -> model
    (GenPercept: VAE encode, U-Net at t = 1, x0 = −v, VAE decode, task head) -> resize back (normals
    renormalised)

`GenPerceptPipeline` holds the model on a device in a compute dtype, runs batches (a half-precision
batch that overflows is re-run on a separate fp32 copy of the model, never by casting the shared
weights), post-processes, and predicts for images through the one runner (`runtime.runner`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointSpec, fetch_checkpoint, resolve_checkpoint
from .errors import GenPerceptError
from .models import DenseModel, build_model, family_of
from .resize import (
    MIN_SIDE,
    check_processing_res,
    image_to_tensor,
    processed_size,
    resize_float,
    resize_uint8,
    upload,
)
from .runtime.device import measured_fast_path, resolve_device, resolve_dtype
from .tasks import get_task

__all__ = ["GenPerceptPipeline", "Launched", "NonFiniteError", "MIN_SIDE", "check_processing_res", "image_to_tensor",
           "processed_size", "resize_float", "resize_uint8"]


class NonFiniteError(GenPerceptError):
    """A batch that stayed non-finite even after the fp32 retry."""


@dataclass
class Launched:
    """A batch queued on the device by `GenPerceptPipeline.launch`, not yet checked or collected."""

    rgb: torch.Tensor  # [B, 3, h, w] in [0, 255] as given, uint8 or float32 (the fp32 retry re-runs it)
    out: torch.Tensor  # float32 [B, C, h', w'] on the device; its values exist once `ready` has passed
    ready: torch.cuda.Event | None  # CUDA: recorded on the launching stream after the model; else None


class GenPerceptPipeline:
    """Dense prediction with a checkpoint of any family.

    >>> pipe = GenPerceptPipeline.from_checkpoint("depth")
    >>> depth = pipe(image)  # float32 [H, W] in [0, 1], 0 = near
    """

    def __init__(
        self,
        model: DenseModel,
        spec: CheckpointSpec,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.model = model
        self.spec = spec
        self.task = spec.task
        self.device = torch.device(device)
        self.dtype = dtype
        self.recoveries = 0  # batches re-run in fp32 after a non-finite half-precision result
        self._fp32_model: DenseModel | None = None
        self._side: torch.cuda.Stream | None = None  # CUDA: where `finish` checks and copies results

    @property
    def stages(self) -> DenseModel:
        """The model (the name the 0.1 API used for its modules: `pipe.stages.unet`, `.vae`, ...)."""
        return self.model

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
        backend: str | None = None,
        log=None,
    ) -> GenPerceptPipeline:
        """Resolve, fetch and load a checkpoint (registry name, hub id or local folder).

        fast_path: switch on what `bench-speed` measured to win for this device and dtype
        (`runtime.device.measured_fast_path`: none for fp32, so fp32 stays the exact SPEC §3 maths, unless
        GENPERCEPT_WINOGRAD=on asks for Winograd convolutions); compile: opt-in `torch.compile`.
        backend: torch, onnxruntime, openvino or auto (`backends.resolve_backend`; None: torch, or an exported
        folder's engine): an engine replaces only the model (exported once into the cache; `log` hears of it).
        """
        from .backends import engine_model, is_exported, resolve_backend

        spec = checkpoint if isinstance(checkpoint, CheckpointSpec) else resolve_checkpoint(checkpoint, task)
        on_engine = backend in ("onnxruntime", "openvino") or (backend is None and is_exported(spec))
        device = "cpu" if on_engine and device in (None, "auto") else device  # engines run on the CPU
        device = resolve_device(device)
        backend = resolve_backend(backend, device, spec, dtype)
        if backend != "torch":
            if compile:
                raise GenPerceptError("--compile applies to the torch backend only.")
            engine_dtype = resolve_dtype(dtype, device, torch.float32)  # engines: fp32 unless asked
            model = engine_model(spec, backend, engine_dtype, cache_dir, log or (lambda message: None))
            return cls(model, spec, device, torch.float32)  # the engine takes fp32 input whatever its precision
        dtype = resolve_dtype(dtype, device, family_of(spec).dtype)
        files = fetch_checkpoint(spec, cache_dir=cache_dir)
        pipe = cls(build_model(files, dtype).to(device), spec, device, dtype)
        options = measured_fast_path(device, dtype) if fast_path else {}
        if options or compile:
            pipe.optimize(**options, compile=compile)
        return pipe

    # -- fast path (`optimize`; from_checkpoint switches on what was measured to win) ---------------
    batch_buckets = False  # pad batches to powers of two (set by optimize(compile=True))
    cuda_graphs = False
    winograd = False  # large fp32 CPU convolutions by Winograd (set by optimize(winograd=True))
    fp32_kernels = False  # half-precision CPU layers in fp32 kernels (set by optimize(fp32_kernels=True))

    @property
    def tiled_decode_above(self) -> int | None:
        """Image pixels (h*w) above which the model decodes tile by tile (bounded memory, not exact)."""
        return getattr(self.model, "tiled_decode_above", None)

    @tiled_decode_above.setter
    def tiled_decode_above(self, pixels: int | None) -> None:
        for model in (self.model, self._fp32_model):
            if model is not None and hasattr(model, "tiled_decode_above"):
                model.tiled_decode_above = pixels

    def optimize(
        self,
        channels_last: bool = False,
        compile: bool = False,
        tiled_decode_above: int | None = None,
        cuda_graphs: bool = False,
        compile_backend: str = "inductor",
        winograd: bool = False,
        fp32_kernels: bool = False,
    ) -> GenPerceptPipeline:
        """Switch fast-path options on in place; returns self. Measured by `genpercept bench-speed`.

        channels_last: NHWC weights, so oneDNN / cuDNN pick NHWC convolution kernels (not bit-exact).
        compile: `torch.compile` the parts the model names (`compile_parts`; the whole model otherwise)
        with static shapes; batches are padded to a power of two, so each processed size compiles at
        most log2(batch) + 1 times.
        cuda_graphs: with compile on CUDA, replay CUDA graphs for each static shape ("reduce-overhead").
        tiled_decode_above: decode images with more pixels than this tile by tile (bounded memory).
        winograd: fp32 3x3 convolutions on large CPU feature maps by Winograd (`runtime.winograd`; not
        bit-exact: ~1e-5 of the output scale); off where NNPACK is missing, and under `compile`.
        fp32_kernels: a bf16/fp16 model's convolutions and linear layers multiply in fp32 CPU kernels
        (`runtime.fp32_kernels`: the same products and fp32 sums, faster on CPUs without AMX); off for
        fp32 models, on CUDA and under `compile`.
        """
        from .runtime.fp32_kernels import HALF
        from .runtime.winograd import winograd_available

        self.winograd = winograd and not compile and winograd_available()
        self.fp32_kernels = fp32_kernels and not compile and self.device.type == "cpu" and self.dtype in HALF
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.tiled_decode_above = tiled_decode_above
        if cuda_graphs and not (compile and self.device.type == "cuda"):
            raise GenPerceptError("CUDA graphs need --compile and a CUDA device.")
        if compile:
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            mode = "reduce-overhead" if cuda_graphs else None
            wrap = functools.partial(torch.compile, backend=compile_backend, mode=mode, dynamic=False)
            if hasattr(self.model, "compile_parts"):
                self.model.compile_parts(wrap)
            else:
                self.model.forward = wrap(self.model.forward)
            self.batch_buckets, self.cuda_graphs = True, cuda_graphs
        return self

    def convolutions(self) -> contextlib.ExitStack:
        """The context the model runs in: the kernels `optimize` chose for its convolutions and linear
        layers (fp32 kernels for a half-precision model, then Winograd for the large fp32 3x3 ones)."""
        from .runtime.fp32_kernels import fp32_kernels
        from .runtime.winograd import winograd_convolutions

        stack = contextlib.ExitStack()
        if self.winograd:
            stack.enter_context(winograd_convolutions())
        if self.fp32_kernels:  # entered last, so it sees each call first and hands fp32 calls on
            stack.enter_context(fp32_kernels())
        return stack

    # -- batches -------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_batch(self, rgb: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [0, 255] (`model_input`'s uint8 or float32, at processing size) -> float32
        [B, C, h', w'] in [0, 1].

        Half-precision overflow (inf/NaN) is detected per batch and the batch is re-run on a separate
        fp32 copy of the model (made on first need; the shared weights are never cast).
        """
        return self._checked(rgb, self._run(rgb))

    def _checked(self, rgb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (the model's output for `rgb`) if finite, else the fp32 copy's output for `rgb`.

        Reads `out` on the current stream (a host synchronisation); raises NonFiniteError."""
        if torch.isfinite(out).all():
            return out
        if self.dtype == torch.float32:
            raise NonFiniteError("the model produced non-finite values in float32.")
        self.recoveries += 1
        out = self._fp32()(self.normalise(rgb, torch.float32)).float()
        if not torch.isfinite(out).all():
            raise NonFiniteError("the model produced non-finite values even in float32.")
        return out

    # -- batches in flight (the runner's CUDA data path) ---------------------------------------
    @property
    def queue_depth(self) -> int:
        """Batches the runner may have launched and not yet collected: 2 on CUDA (the GPU computes
        batch k + 1 while the host collects batch k), 1 elsewhere (launching is computing).
        GENPERCEPT_QUEUE_DEPTH=1 turns the overlap off on CUDA (the GPU check measures both)."""
        if self.device.type != "cuda":
            return 1
        value = os.environ.get("GENPERCEPT_QUEUE_DEPTH", "").strip() or "2"
        if not value.isdigit() or int(value) < 1:
            raise GenPerceptError(
                f"GENPERCEPT_QUEUE_DEPTH must be a whole number of batches, at least 1; got {value!r}.")
        return int(value)

    @torch.inference_mode()
    def launch(self, rgb: torch.Tensor) -> Launched:
        """Queue the model on [B, 3, h, w] in [0, 255] (`model_input`'s, at processing size) without waiting for it.

        On CUDA this returns as soon as the kernels are queued; `finish` collects the result.
        Elsewhere the model has run when this returns."""
        out = self._run(rgb)
        if self.cuda_graphs:  # the next replay overwrites the graph's static output buffer
            out = out.clone()
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))  # this device's, not the current device's
        return Launched(rgb, out, ready)

    @torch.inference_mode()
    def finish(self, launched: Launched, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """A launched batch's post-processed arrays: `postprocess_batch(predict_batch(rgb), sizes)`.

        On CUDA the finite check, post-processing and the one device-to-host copy run on a side stream
        that waits for this batch only, so the host waits for its results while the GPU runs the batches
        launched after it. A non-finite batch is re-run in fp32 (synchronously) or raises NonFiniteError.
        """
        out = launched.out
        if launched.ready is not None:
            side = self._side_stream()
            side.wait_event(launched.ready)
            out.record_stream(side)  # made on the launching stream: not reused until the side is done
            with torch.cuda.stream(side):
                if torch.isfinite(out).all():  # waits for the side stream only, i.e. for this batch
                    return self.postprocess_batch(out, sizes)
        return self.postprocess_batch(self._checked(launched.rgb, out), sizes)

    def _side_stream(self) -> torch.cuda.Stream:
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        return self._side

    def _run(self, rgb: torch.Tensor) -> torch.Tensor:
        n = rgb.shape[0]
        if self.batch_buckets and n & (n - 1):  # compiled: pad to a power of two so recompiles stay rare
            pad = (1 << n.bit_length()) - n
            rgb = torch.cat([rgb, rgb[-1:].expand(pad, -1, -1, -1)])  # per-sample maths: exact
            return self._run(rgb)[:n]
        if self.cuda_graphs:  # outputs of the previous graph replay may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        with self.convolutions():
            return self.model(self.normalise(rgb)).float()

    def normalise(self, rgb: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[B, 3, h, w] in [0, 255] -> the model's input x = rgb / 255 * 2 - 1 on the device, in `dtype`.

        Uploaded as it is (uint8, or float32 for families that do not round; pinned, non-blocking on
        CUDA) and converted on the device; a float input is normalised in fp32 before the cast, so a
        half-precision model sees its fraction as well as it can hold it."""
        x, dtype = upload(rgb, self.device), dtype or self.dtype
        if x.is_floating_point():
            return (x.float() / 255.0 * 2.0 - 1.0).to(dtype)
        return x.to(dtype) / 255.0 * 2.0 - 1.0

    def _fp32(self) -> DenseModel:
        """An fp32 copy of the model, eager (compiled parts are copied as their originals)."""
        if self._fp32_model is None:
            compiled = [(parent, name, child) for parent in self.model.modules()
                        for name, child in parent.named_children() if hasattr(child, "_orig_mod")]
            for parent, name, child in compiled:
                setattr(parent, name, child._orig_mod)
            try:
                self._fp32_model = copy.deepcopy(self.model).float()
            finally:
                for parent, name, child in compiled:
                    setattr(parent, name, child)
        return self._fp32_model

    # -- post-processing -----------------------------------------------------------------------
    @torch.inference_mode()
    def postprocess(self, pred: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """[C, h, w] model output -> numpy at the input size: [H, W] (1-channel) or [H, W, C].

        Resized bilinearly (with antialias unless the family's reference goes without), then the task's
        post-processing (`tasks.Task.postprocess`): [0, 1] outputs clipped there; normals come back as
        unit vectors n = 2p - 1, renormalised after the resize.
        """
        p = resize_float(pred[None].float(), size, self.model.output_antialias)[0]  # [C,H,W]
        p = get_task(self.task).postprocess(p, self.spec.kind)  # e.g. clipped to [0, 1]; normals: unit vectors
        return _host_array(p)

    @torch.inference_mode()
    def postprocess_batch(self, preds: torch.Tensor, sizes: list[tuple[int, int]],
                          one_copy: bool | None = None) -> list[np.ndarray]:
        """[B, C, h, w] model outputs -> for each image what `postprocess` returns at its size.

        The whole batch is resized (one call per distinct input size) and post-processed by the task
        on the model's device; values equal `postprocess`'s. one_copy (default: on CUDA) brings the
        batch to the host in one device-to-host copy; on the CPU that copy would only double memory.
        """
        task = get_task(self.task)
        outs: list[torch.Tensor] = [preds] * len(sizes)  # placeholders, all replaced below
        for size in dict.fromkeys(tuple(s) for s in sizes):
            index = [i for i, s in enumerate(sizes) if tuple(s) == size]
            resized = resize_float(preds[index].float(), size, self.model.output_antialias)  # [n,C,H,W]
            for row, i in zip(resized, index):
                outs[i] = task.postprocess(row, self.spec.kind)  # [C',H,W], any channel count
        if not (preds.device.type == "cuda" if one_copy is None else one_copy):
            return [_host_array(o) for o in outs]
        flat = torch.cat([o.reshape(-1) for o in outs]).cpu()  # the batch's one device-to-host copy
        arrays, start = [], 0
        for o in outs:
            arrays.append(_host_array(flat[start : start + o.numel()].view(o.shape)))
            start += o.numel()
        return arrays

    def processed_size(self, height: int, width: int, processing_res: int) -> tuple[int, int]:
        """The size the model sees for an image of height x width (the model's size rule)."""
        return self.model.processed_size(height, width, processing_res)

    def model_input(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """uint8 [H, W, 3] -> the model's [1, 3, h, w] in [0, 255] at `size` (uint8, or float32 for a
        family whose reference does not round the resized image: `DenseModel.model_input`)."""
        return self.model.model_input(image, size)

    def __call__(self, images, processing_res: int | None = None, batch_size: int = 1):
        """Predict for one uint8 [H, W, 3] image or a list of them; returns the same arity.

        Images are bucketed by processed size and stacked `batch_size` at a time (the one runner).
        Raises GenPerceptError for an image too thin for the model or a batch that fails.
        """
        from .runtime.runner import Job, Loaded, run

        single = isinstance(images, np.ndarray)
        images = [images] if single else list(images)
        res = check_processing_res(self.spec.processing_res if processing_res is None else processing_res)
        jobs = [Job(i, self.processed_size(*image.shape[:2], res)) for i, image in enumerate(images)]
        results: list[np.ndarray | None] = [None] * len(images)

        def load(job: Job) -> Loaded:
            image = images[job.index]
            return Loaded(job, self.model_input(image, job.size), image.shape[:2])

        def keep(loaded: Loaded, prediction: np.ndarray) -> None:
            results[loaded.job.index] = prediction

        report = run(self, jobs, load, keep, batch_size=batch_size, workers=1, sink_workers=1, overlap=False,
                     describe=lambda job: f"image {job.index}")
        if report.failed:
            raise GenPerceptError(report.failed[0][1])
        return results[0] if single else results


def _host_array(p: torch.Tensor) -> np.ndarray:
    """[C, H, W] -> numpy on the host: [H, W] for one channel, else [H, W, C] (a view where possible)."""
    return p[0].cpu().numpy() if p.shape[0] == 1 else p.permute(1, 2, 0).cpu().numpy()
