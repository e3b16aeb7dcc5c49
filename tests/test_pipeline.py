"""The one-step pipeline against an independent, step-by-step computation of SPEC §3."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genpercept_cli.loading import empty_text_embedding
from genpercept_cli.pipeline import GenPerceptPipeline, processed_size, resize_uint8

TASKS = ("depth", "disparity", "normal", "dis", "matting", "seg")


@pytest.fixture(scope="module")
def pipes(checkpoint_root):
    return {
        task: GenPerceptPipeline.from_checkpoint(str(checkpoint_root / f"unet_{task}_v2"), device="cpu")
        for task in TASKS
    }


def reference_one_step(pipe, image: np.ndarray, res: int) -> np.ndarray:
    """SPEC §3 written out with diffusers' public API calls (not the pipeline's own methods)."""
    H, W = image.shape[:2]
    f = min(res / W, res / H) if res else 1.0
    h, w = (int(H * f), int(W * f)) if res else (H, W)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous().to(torch.float32)  # NCHW
    if (h, w) != (H, W):  # torchvision-v1 uint8 resize: float, bilinear + antialias, round, back to uint8
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).round()
    x = x.clamp(0, 255).to(torch.uint8).to(torch.float32) / 255 * 2 - 1
    vae, unet = pipe.stages.vae, pipe.stages.unet
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode() * 0.18215
        emb = empty_text_embedding("v2")
        v = unet(z, torch.tensor([1]), encoder_hidden_states=emb).sample
        y = vae.decode(-v / 0.18215).sample
    if pipe.task in ("depth", "disparity", "dis", "matting"):
        y = y.mean(dim=1, keepdim=True)
    p = (y.clamp(-1, 1) + 1) / 2
    if (h, w) != (H, W):  # a same-size antialiased resize is the identity (up to 1.2e-7 of float noise)
        p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
    p = p.clamp(0, 1)[0]
    if pipe.task == "normal":
        n = 2 * p - 1
        return (n / n.norm(dim=0, keepdim=True)).permute(1, 2, 0).numpy()
    return p[0].numpy() if p.shape[0] == 1 else p.permute(1, 2, 0).numpy()


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("shape,res", [((45, 70), 64), ((64, 48), 0)])
def test_pipeline_matches_reference_math_fp32(pipes, task, shape, res):
    image = random_image(*shape)
    ours = pipes[task](image, processing_res=res)
    ref = reference_one_step(pipes[task], image, res)
    assert ours.shape == ref.shape == (shape + ((3,) if task in ("normal", "seg") else ()))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    # a non-degenerate output, so the comparison above is not trivially true
    assert ours.std() > 1e-4


def test_normals_are_unit_vectors(pipes):
    n = pipes["normal"](random_image(30, 41), processing_res=48)
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)


def test_processed_size_floors_the_long_side():
    assert processed_size(480, 640, 768) == (576, 768)
    assert processed_size(1000, 333, 768) == (768, int(333 * 0.768))  # 255.744 -> 255
    assert processed_size(17, 23, 0) == (17, 23)


def test_resize_uint8_rounds_through_float():
    x = torch.tensor([[[[0, 255, 0, 255]]]], dtype=torch.uint8).expand(1, 3, 2, 4)
    out = resize_uint8(x, (1, 2))
    # antialiased bilinear of [0,255,0,255] down by 2 averages with a triangle filter: 3 taps per output
    expected = F.interpolate(x.float(), size=(1, 2), mode="bilinear", antialias=True).round()
    assert torch.equal(out.float(), expected)
    assert out.dtype == torch.uint8


def test_bucketed_batches_equal_one_by_one(pipes):
    pipe = pipes["depth"]
    images = [random_image(40, 60, 1), random_image(30, 45, 2), random_image(60, 40, 3), random_image(40, 60, 4)]
    batched = pipe(images, processing_res=48, batch_size=3)
    single = [pipe(im, processing_res=48) for im in images]
    # 40x60 and 30x45 share the processed size 32x48, so they are stacked in one batch
    assert processed_size(40, 60, 48) == processed_size(30, 45, 48)
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_v2_embedding_is_first_two_rows_of_v1():
    v1, v2 = empty_text_embedding("v1"), empty_text_embedding("v2")
    assert v1.shape == (1, 77, 1024) and v2.shape == (1, 2, 1024)
    assert torch.equal(v1[:, :2], v2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu_close_to_fp32(checkpoint_root, pipes, dtype):
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu", dtype=dtype)
    image = random_image(40, 56, 5)
    half = pipe(image, processing_res=48)
    full = pipes["depth"](image, processing_res=48)
    assert np.isfinite(half).all()
    # 8 (bf16) / 11 (fp16) mantissa bits through ~40 tiny layers: measured max error ~1e-2
    assert np.abs(half - full).max() < 0.05


def test_non_finite_half_precision_batch_is_rerun_in_fp32(checkpoint_root, pipes):
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu", dtype="bf16")

    def overflow(module, args, output):  # what an fp16 VAE encoder overflow looks like
        return output * float("inf") if output.dtype != torch.float32 else output

    handle = pipe.stages.vae.encoder.register_forward_hook(overflow)
    try:
        image = random_image(40, 56, 6)
        out = pipe(image, processing_res=48)
    finally:
        handle.remove()
    assert pipe.recoveries == 1
    assert pipe.dtype == torch.bfloat16 and pipe.stages.unet.dtype == torch.bfloat16  # restored
    # the recovered batch is the fp32 result (up to the bf16 rounding of the stored weights)
    assert np.abs(out - pipes["depth"](image, processing_res=48)).max() < 0.05
    assert np.isfinite(out).all()


def test_dpt_head_model_through_the_released_layout(tmp_path):
    from tiny_models import write_dpt_checkpoint

    from genpercept_cli.dpt import minmax_per_image, unet_up_block_features

    root = write_dpt_checkpoint(tmp_path / "models")
    pipe = GenPerceptPipeline.from_checkpoint(str(root / "unet_disparity_dpt_head_v2"))
    assert pipe.spec.task == "disparity" and pipe.stages.dpt_head is not None
    image = random_image(50, 75, 8)
    ours = pipe(image, processing_res=96)  # 64x96: the head's native size equals it
    # reference: resize, encode, U-Net up-block features at t=1, head, per-image min-max, resize back
    x = resize_uint8(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), (64, 96)).float() / 255 * 2 - 1
    with torch.no_grad():
        z = pipe.stages.vae.encode(x).latent_dist.mode() * 0.18215
        feats = unet_up_block_features(pipe.stages.unet, z, 1, empty_text_embedding("v2"))
        d = minmax_per_image(pipe.stages.dpt_head(feats))
        d = F.interpolate(d, size=(50, 75), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    np.testing.assert_allclose(ours, d[0, 0].numpy(), atol=1e-6)
    assert ours.min() >= 0 and ours.max() <= 1 and ours.std() > 1e-3


def test_decoder_inf_is_not_hidden_by_the_clip(checkpoint_root, pipes):
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_matting_v2"), device="cpu", dtype="bf16")

    def overflow(module, args, output):  # +inf from a half-precision decoder: the clip would make it 1
        return output + float("inf") if output.dtype != torch.float32 else output

    handle = pipe.stages.vae.decoder.register_forward_hook(overflow)
    try:
        out = pipe(random_image(40, 56, 9), processing_res=48)
    finally:
        handle.remove()
    assert pipe.recoveries == 1 and np.isfinite(out).all() and out.max() < 1.0


def test_too_thin_processed_size_is_refused():
    from genpercept_cli.errors import GenPerceptError

    with pytest.raises(GenPerceptError, match="too thin"):
        processed_size(1, 300, 32)
    assert processed_size(12, 300, 0) == (12, 300)
