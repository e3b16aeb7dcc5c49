"""The CUDA path on tiny models (`pytest -m cuda`; run on a GPU by benchmarks/speed/gpu_check.sh).

Without a GPU every test here is skipped with that reason; the CPU suite covers the same code paths
where it can (tests/test_pipeline.py, tests/test_runner.py, tests/test_bench.py).

Stated tolerances, against the fp32 CPU result of the same tiny model (outputs in [0, 1]):
    CUDA fp32 (TF32 convolutions allowed, cuDNN's default)   max abs error < 0.02
    CUDA fp16 / bf16 (11 / 8 mantissa bits)                   max abs error < 0.05 (CPU half: ~1e-2)
    resize on the GPU vs the CPU (uint8)                      at most 1 level, on < 1% of pixels
"""

import numpy as np
import pytest
import torch
from test_runner import predictions_by_index

from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.resize import model_input, upload_resize
from genpercept_cli.runtime.runner import Job, Loaded, run

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/speed/gpu_check.sh)"),
]


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cpu_pipe(checkpoint_root):
    return GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu")


def cuda_pipe(checkpoint_root, dtype, task="depth"):
    return GenPerceptPipeline.from_checkpoint(str(checkpoint_root / f"unet_{task}_v2"), device="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 0.02), ("fp16", 0.05), ("bf16", 0.05)])
def test_cuda_matches_cpu_fp32(checkpoint_root, cpu_pipe, dtype, tolerance):
    pipe = cuda_pipe(checkpoint_root, dtype)
    images = [random_image(40, 56, 1), random_image(56, 40, 2), random_image(40, 56, 3)]
    got = pipe(images, processing_res=48, batch_size=2)
    want = cpu_pipe(images, processing_res=48)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.isfinite(g).all()
        assert np.abs(g - w).max() < tolerance
    assert pipe.recoveries == 0


def test_channels_last_on_cuda_matches(checkpoint_root, cpu_pipe):
    pipe = cuda_pipe(checkpoint_root, "fp16").optimize(channels_last=True)
    image = random_image(48, 64, 4)
    assert np.abs(pipe(image, processing_res=64) - cpu_pipe(image, processing_res=64)).max() < 0.05


def test_fp16_overflow_is_rerun_in_fp32_on_the_gpu(checkpoint_root, cpu_pipe):
    pipe = cuda_pipe(checkpoint_root, "fp16")

    def overflow(module, args, output):  # what an fp16 VAE encoder overflow looks like
        return output * float("inf") if output.dtype != torch.float32 else output

    handle = pipe.stages.vae.encoder.register_forward_hook(overflow)
    try:
        image = random_image(40, 56, 6)
        out = pipe(image, processing_res=48)
    finally:
        handle.remove()
    assert pipe.recoveries == 1 and pipe.stages.unet.dtype == torch.float16
    assert np.abs(out - cpu_pipe(image, processing_res=48)).max() < 0.02


def test_forced_out_of_memory_halves_the_batch_on_the_gpu(checkpoint_root):
    pipe = cuda_pipe(checkpoint_root, "fp16")
    images = [random_image(40, 56, i) for i in range(5)]
    want = pipe(images, processing_res=48, batch_size=1)
    real, seen = pipe.predict_batch, []

    def oom_above_two(rgb):
        seen.append(rgb.shape[0])
        if rgb.shape[0] > 2:
            raise torch.OutOfMemoryError("forced")
        return real(rgb)

    pipe.predict_batch = oom_above_two
    got = pipe(images, processing_res=48, batch_size=5)
    assert seen == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, 3 -> 1 + 2
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-3)  # batched fp16 kernels may differ in the last bits


def test_batch_postprocess_on_the_gpu_matches_per_image(checkpoint_root):
    pipe = cuda_pipe(checkpoint_root, "fp32", task="normal")
    preds = torch.rand(3, 3, 24, 32, device="cuda")
    sizes = [(40, 56), (40, 56), (31, 45)]
    batch = pipe.postprocess_batch(preds, sizes)
    for p, size, got in zip(preds, sizes, batch, strict=True):
        np.testing.assert_allclose(got, pipe.postprocess(p, size), atol=1e-6)


def test_gpu_resize_within_one_level_of_the_cpu_resize():
    image = random_image(300, 451, 7)
    size = (170, 256)
    cpu = model_input(image, size)
    gpu = upload_resize(image, size, torch.device("cuda"))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_runner_on_cuda_keeps_every_job_once(checkpoint_root):
    pipe = cuda_pipe(checkpoint_root, "fp16")
    sizes = [(32, 48), (48, 32), (32, 48), (32, 48), (48, 32)]
    seen = {}

    def load(job):
        return Loaded(job, model_input(random_image(*sizes[job.index], job.index), sizes[job.index]),
                      sizes[job.index])

    def sink(loaded, prediction):
        seen[loaded.job.index] = prediction.shape

    report = run(pipe, [Job(i, s) for i, s in enumerate(sizes)], load, sink, batch_size=2, workers=2)
    assert report.done == 5 and not report.failed
    assert seen == dict(enumerate(sizes))


def test_measured_memory_model_fits_what_it_predicts(checkpoint_root):
    from genpercept_cli.runtime.memory import auto_batch_size, cuda_peak_bytes, fit_memory_model

    pipe = cuda_pipe(checkpoint_root, "fp16")
    peak = cuda_peak_bytes(pipe, (64, 96))
    model = fit_memory_model(peak)
    assert model.per_image_bytes > 0
    assert 0.5 * model.peak(4) <= peak(4) <= 2 * model.peak(4)  # close to linear (cuDNN workspaces vary)
    assert 1 <= auto_batch_size(pipe, (64, 96)) <= 32


# -- batches in flight: the runner launches batch k + 1 before collecting batch k ----------------------
def _batches_of(sizes, batch_size):
    """The runner's batches for known sizes: job indices grouped by size (first appearance), then chunked."""
    groups: dict = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return [g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def test_depth_2_runner_on_cuda_equals_batch_by_batch(checkpoint_root):
    pipe = cuda_pipe(checkpoint_root, "fp16")
    assert pipe.queue_depth == 2
    sizes = [(32, 48), (48, 32), (32, 48), (32, 48), (48, 32), (32, 48), (64, 64)]  # processed (h, w)
    inputs = [model_input(random_image(h + 9, w + 13, i), (h, w)) for i, (h, w) in enumerate(sizes)]
    calls = []
    for name in ("launch", "finish"):
        real = getattr(pipe, name)
        setattr(pipe, name, lambda *a, real=real, name=name: (calls.append(name), real(*a))[1])
    got = predictions_by_index(pipe, inputs, sizes, pad=(9, 13))
    batches = _batches_of(sizes, 2)
    assert calls[:3] == ["launch", "launch", "finish"] and calls.count("launch") == len(batches) == 4
    for batch in batches:  # the same batches, synchronously: the same kernels, so the same values
        rgb = torch.cat([inputs[i] for i in batch])
        want = pipe.postprocess_batch(pipe.predict_batch(rgb), [(sizes[i][0] + 9, sizes[i][1] + 13) for i in batch])
        for i, w in zip(batch, want, strict=True):
            assert got[i].shape == w.shape == (sizes[i][0] + 9, sizes[i][1] + 13)
            np.testing.assert_allclose(got[i], w, rtol=0, atol=1e-6)
    assert pipe.recoveries == 0


def test_finish_collects_its_batch_while_the_next_is_queued_and_leaves_nothing_pending(checkpoint_root):
    pipe = cuda_pipe(checkpoint_root, "fp16", task="normal")
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8, generator=gen)
    second = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8, generator=gen)
    sizes = {"first": [(60, 80), (37, 41)], "second": [(32, 48)] * 3}
    want = {"first": pipe.postprocess_batch(pipe.predict_batch(first), sizes["first"]),
            "second": pipe.postprocess_batch(pipe.predict_batch(second), sizes["second"])}
    launched = {"first": pipe.launch(first), "second": pipe.launch(second)}  # second queued behind first
    for name in ("first", "second"):
        got = pipe.finish(launched[name], sizes[name])
        assert pipe._side_stream().query()  # nothing of this collection is still queued on the side stream
        kept = [g.copy() for g in got]
        torch.cuda.synchronize()  # if anything were still writing into the arrays, it would show now
        for g, k, w in zip(got, kept, want[name], strict=True):
            np.testing.assert_array_equal(g, k)
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
            assert g.shape == w.shape and np.isfinite(g).all()


def test_fp16_overflow_collected_by_finish_is_rerun_in_fp32(checkpoint_root, cpu_pipe):
    pipe = cuda_pipe(checkpoint_root, "fp16")

    def overflow(module, args, output):  # what an fp16 VAE encoder overflow looks like
        return output * float("inf") if output.dtype != torch.float32 else output

    rgb = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    sizes = [(40, 56), (32, 48)]
    handle = pipe.stages.vae.encoder.register_forward_hook(overflow)
    try:
        got = pipe.finish(pipe.launch(rgb), sizes)
    finally:
        handle.remove()
    assert pipe.recoveries == 1 and pipe.stages.unet.dtype == torch.float16
    want = cpu_pipe.postprocess_batch(cpu_pipe.predict_batch(rgb), sizes)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.abs(g - w).max() < 0.02
