"""E2E-FT, Lotus-D and Marigold (one step) on tiny random checkpoints in their released pipeline layouts
(tests/tiny_families.py), against each family's published inference maths written out below with plain
diffusers modules (UNet2DConditionModel, AutoencoderKL, DDIMScheduler) — never our model code."""

import json
import shutil
import sys
import types
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_families import SD_DDIM, write_pipeline_repo
from typer.testing import CliRunner

from genpercept_cli.checkpoints import (
    DETECT,
    CheckpointSpec,
    cached_status,
    default_checkpoint,
    fetch_checkpoint,
    load_registry,
    required_files,
    resolve_checkpoint,
)
from genpercept_cli.cli import app
from genpercept_cli.errors import CheckpointError, OfflineError
from genpercept_cli.models.sd import alphas_cumprod, one_step_timesteps

NAMES = {"e2e-ft-depth": "e2e-ft", "e2e-ft-normals": "e2e-ft", "e2e-ft-sd-depth": "e2e-ft",
         "e2e-ft-sd-normals": "e2e-ft", "lotus-d-depth": "lotus-d", "lotus-d-normal": "lotus-d",
         "marigold-depth-1step": "marigold", "marigold-normals-1step": "marigold"}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """One 32x48 RGB image in a folder, and the image itself (uint8 [H, W, 3])."""
    folder = tmp_path_factory.mktemp("photo")
    image = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "a.png")
    return folder, image


def _predict(folder, ckpt, out, processing_res: int = 0) -> np.ndarray:
    result = CliRunner().invoke(app, ["predict", str(folder), "-c", str(ckpt), "-o", str(out),
                                      "--processing-res", str(processing_res), "--formats", "npy"])
    assert result.exit_code == 0, result.output
    return np.load(out / "a_pred.npy")


# ---- the references, step by step ------------------------------------------------------------------

def _components(root):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(root / "unet").eval()
    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    return unet, vae, DDIMScheduler.from_pretrained(root / "scheduler")


def _empty_prompt() -> torch.Tensor:
    """[1, 2, 1024]: the empty prompt tokenised with padding="do_not_pad" (BOS, EOS), as all three
    references encode it; rows 0-1 of the packaged 77-token SD2 text-encoder output (causal encoder)."""
    with resources.files("genpercept_cli").joinpath("data", "sd21_empty_text_embed_77x1024_fp16.npy").open("rb") as fh:
        return torch.from_numpy(np.load(fh)[:2].astype(np.float32))[None]


def _image_latent(vae, image):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0  # [1,3,H,W] in [-1,1]
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor  # posterior mode (Lotus: see below)


def _unit(n):  # [3, H, W] -> unit vectors, as our writer and the DSINE metric see them
    return n / np.linalg.norm(n, axis=0, keepdims=True)


@torch.no_grad()
def e2e_ft_reference(root, image, task):
    """diffusion-e2e-ft Marigold/marigold_pipeline.py, single_infer(noise="zeros", 1 step), then __call__;
    run.py loads the scheduler with timestep_spacing="trailing" (its default), over the config's own."""
    from diffusers import DDIMScheduler

    unet, vae, _ = _components(root)
    scheduler = DDIMScheduler.from_pretrained(root / "scheduler", timestep_spacing="trailing")
    rgb = _image_latent(vae, image)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    assert int(t) == 999  # trailing spacing: the one step is the last training step
    latent = torch.zeros_like(rgb)
    unet_in = torch.cat([rgb, latent], dim=1) if unet.config.in_channels == 8 else rgb
    v = unet(unet_in, t, encoder_hidden_states=_empty_prompt()).sample
    x0 = scheduler.step(v, t, latent).pred_original_sample
    y = vae.decode(x0 / vae.config.scaling_factor).sample[0]  # [3,H,W]
    if task == "normal":
        n = (y / (torch.norm(y, dim=0, keepdim=True) + 1e-5)).numpy()
        return _unit(n * np.array([-1.0, 1.0, 1.0])[:, None, None]).transpose(1, 2, 0)  # x left -> x right
    d = (y.mean(0).clip(-1.0, 1.0) + 1.0) / 2.0
    return ((d - d.min()) / (d.max() - d.min())).numpy()


@torch.no_grad()
def lotus_d_reference(root, image, task):
    """Lotus pipeline.py LotusDPipeline with infer.py's task_emb, t = 999, output_type "np" — but the VAE
    posterior's mode where the reference samples it (our documented deviation)."""
    unet, vae, _ = _components(root)
    rgb = _image_latent(vae, image)
    task_emb = torch.tensor([1.0, 0.0])[None]
    task_emb = torch.cat([torch.sin(task_emb), torch.cos(task_emb)], dim=-1)  # [1,4]
    pred = unet(rgb, 999, encoder_hidden_states=_empty_prompt(), class_labels=task_emb).sample
    img = (vae.decode(pred / vae.config.scaling_factor).sample[0] / 2 + 0.5).clamp(0, 1).numpy()  # postprocess
    if task == "normal":
        return _unit((img * 2.0 - 1.0) * np.array([-1.0, 1.0, 1.0])[:, None, None]).transpose(1, 2, 0)
    return img.mean(axis=0)


@torch.no_grad()
def marigold_reference(root, image, task, noise_seed=None, processing_res=0):
    """diffusers MarigoldDepth/NormalsPipeline at one step, ensemble 1. MarigoldImageProcessor.preprocess:
    uint8 / 255 in float, * 2 - 1, long side to processing_res in integers (side * R // max(H, W)),
    bilinear with antialias, no rounding, edge-padded (bottom, right) to a multiple of 8. Then x_T = zeros
    (or a seeded N(0, 1)), scheduler.step(...).prev_sample, decode, depth mean/clip or normals clip/normalise,
    the padding cropped off, bilinear back to the input size *without* antialias (normals renormalised)."""
    unet, vae, scheduler = _components(root)
    height, width = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0  # [1,3,H,W]
    if processing_res:
        size = (height * processing_res // max(height, width), width * processing_res // max(height, width))
        x = torch.nn.functional.interpolate(x, size, mode="bilinear", antialias=True)
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
    rgb = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    if noise_seed is None:
        target = torch.zeros_like(rgb)
    else:
        target = torch.randn(rgb.shape, generator=torch.Generator().manual_seed(noise_seed))
    out = unet(torch.cat([rgb, target], dim=1), t, encoder_hidden_states=_empty_prompt()).sample
    target = scheduler.step(out, t, target).prev_sample
    y = vae.decode(target / vae.config.scaling_factor).sample  # [1,3,8h',8w']
    if task == "normal":
        n = y.clip(-1.0, 1.0)
        if not json.loads((root / "model_index.json").read_text()).get("use_full_z_range", True):
            n[:, 2] = n[:, 2] * 0.5 + 0.5
        pred = n / torch.norm(n, dim=1, keepdim=True).clamp(min=1e-6)
    else:
        pred = (y.mean(1, keepdim=True).clip(-1.0, 1.0) + 1.0) / 2.0
    pred = torch.nn.functional.interpolate(pred[..., :h, :w], (height, width), mode="bilinear", antialias=False)
    if task == "normal":
        return _unit(pred[0].numpy()).transpose(1, 2, 0)
    return pred[0, 0].numpy()


REFERENCES = {"e2e-ft": e2e_ft_reference, "e2e-ft-sd": e2e_ft_reference, "e2e-ft-sd-4ch": e2e_ft_reference,
              "lotus-d": lotus_d_reference, "marigold": marigold_reference}
MARIGOLD_NORMALS = {"_class_name": "MarigoldNormalsPipeline", "prediction_type": "normals",
                    "use_full_z_range": False}  # v0-1 says true; false exercises diffusers' z remap


# ---- predict == the published maths ------------------------------------------------------------------

@pytest.mark.parametrize("release,task", [("e2e-ft", "depth"), ("e2e-ft", "normal"), ("e2e-ft-sd", "depth"),
                                          ("e2e-ft-sd", "normal"), ("e2e-ft-sd-4ch", "depth"),
                                          ("e2e-ft-sd-4ch", "normal"), ("lotus-d", "depth"), ("lotus-d", "normal"),
                                          ("marigold", "depth"), ("marigold", "normal")])
def test_predict_equals_the_published_inference_maths(release, task, photo, tmp_path):
    folder, image = photo
    index = MARIGOLD_NORMALS if (release, task) == ("marigold", "normal") else None
    root = write_pipeline_repo(tmp_path / f"tiny-{release}-{task}", release, seed=5, index=index)
    pred = _predict(folder, root, tmp_path / "out")
    expected = REFERENCES[release](root, image, task)
    assert pred.shape == expected.shape
    np.testing.assert_allclose(pred, expected, atol=2e-5, rtol=0)


def test_marigold_with_seeded_noise_draws_what_the_seed_gives(photo, tmp_path):
    """genpercept.json beside model_index.json switches Marigold from zeros to seeded noise."""
    folder, image = photo
    root = write_pipeline_repo(tmp_path / "marigold-depth", "marigold", seed=6)
    (root / "genpercept.json").write_text(json.dumps({"family_params": {"sample": "noise", "noise_seed": 11}}))
    pred = _predict(folder, root, tmp_path / "out")
    np.testing.assert_allclose(pred, marigold_reference(root, image, "depth", noise_seed=11), atol=2e-5, rtol=0)
    assert np.abs(pred - marigold_reference(root, image, "depth")).max() > 1e-3  # the noise matters


# ---- each family's pre- and post-processing, as its reference does it --------------------------------------

def _pipes(tmp_path, *releases):
    from genpercept_cli.pipeline import GenPerceptPipeline

    return [GenPerceptPipeline.from_checkpoint(str(write_pipeline_repo(tmp_path / f"{r}-depth", r)), device="cpu",
                                               dtype="fp32", fast_path=False) for r in releases]


def test_marigold_sizes_in_integers_as_diffusers_and_the_others_floor(tmp_path):
    """diffusers: side * R // max(H, W); GenPercept's, E2E-FT's and Lotus' code: int(side * min(R/W, R/H))."""
    marigold, e2e_ft = _pipes(tmp_path, "marigold", "e2e-ft")
    sizes = [(h, w) for h in range(300, 1500, 29) for w in range(300, 1500, 31)] + [(1000, 1070)]
    differ = 0
    for h, w in sizes:
        integer = (h * 768 // max(h, w), w * 768 // max(h, w))
        scale = min(768 / w, 768 / h)
        floor = (int(h * scale), int(w * scale))
        assert marigold.processed_size(h, w, 768) == integer, (h, w)
        assert e2e_ft.processed_size(h, w, 768) == floor, (h, w)
        differ += integer != floor
    assert differ > 0.02 * len(sizes)  # the two rules differ often enough for this to tell them apart
    assert marigold.processed_size(1000, 1070, 768) == (717, 768)
    assert e2e_ft.processed_size(1000, 1070, 768) == (717, 767)


def test_marigold_input_is_the_float_resize_and_the_others_round_to_uint8(tmp_path):
    marigold, e2e_ft = _pipes(tmp_path, "marigold", "e2e-ft")
    image = np.random.default_rng(4).integers(0, 256, (73, 96, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # [1,3,73,96] in [0,255]
    resized = torch.nn.functional.interpolate(x, (76, 100), mode="bilinear", antialias=True)
    got = marigold.model_input(image, (76, 100))
    assert got.dtype == torch.float32 and not torch.equal(got, got.round())
    torch.testing.assert_close(got, resized, atol=1e-4, rtol=0)
    rounded = e2e_ft.model_input(image, (76, 100))
    assert rounded.dtype == torch.uint8 and torch.equal(rounded, resized.round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("task", ["depth", "normal"])
@pytest.mark.parametrize("res", [0, 100, 56])  # native 73x96 (padded to 80x96), up to 76x100, down to 42x56
def test_marigold_pads_crops_and_resizes_as_diffusers(task, res, tmp_path):
    image = np.random.default_rng(8).integers(0, 256, (73, 96, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    index = MARIGOLD_NORMALS if task == "normal" else None
    root = write_pipeline_repo(tmp_path / f"tiny-marigold-{task}", "marigold", seed=9, index=index)
    pred = _predict(tmp_path / "in", root, tmp_path / "out", processing_res=res)
    expected = marigold_reference(root, image, task, processing_res=res)
    assert pred.shape == expected.shape
    np.testing.assert_allclose(pred, expected, atol=2e-5, rtol=0)


def test_marigold_float_inputs_batch_and_recover_in_fp32(tmp_path):
    """Float inputs stack into batches exactly, and a non-finite half-precision batch re-runs in fp32."""
    from genpercept_cli.pipeline import GenPerceptPipeline

    (marigold,) = _pipes(tmp_path, "marigold")
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (73, 96, 3), dtype=np.uint8) for _ in range(3)]
    batched = marigold(images, processing_res=100, batch_size=3)
    for image, pred in zip(images, batched):
        np.testing.assert_allclose(pred, marigold(image, processing_res=100), atol=1e-6, rtol=0)
    half = GenPerceptPipeline(marigold.model, marigold.spec, "cpu", torch.bfloat16)
    rgb = marigold.model_input(images[0], (76, 100))  # float32 [1,3,76,100]
    x = half.normalise(rgb)  # normalised in fp32, then cast
    assert x.dtype == torch.bfloat16 and torch.equal(x, (rgb / 255.0 * 2.0 - 1.0).to(torch.bfloat16))
    out = half._checked(rgb, torch.full((1, 1, 76, 100), float("nan")))
    assert half.recoveries == 1
    torch.testing.assert_close(out, marigold.predict_batch(rgb), atol=1e-6, rtol=0)


def test_e2e_ft_runs_the_trailing_step_whatever_its_scheduler_config_says(photo, tmp_path):
    """run.py passes timestep_spacing="trailing" when it loads the scheduler: t = 999 even for "leading"."""
    folder, image = photo
    root = write_pipeline_repo(tmp_path / "e2e-depth", "e2e-ft", seed=5, scheduler={"timestep_spacing": "leading"})
    pred = _predict(folder, root, tmp_path / "out")
    np.testing.assert_allclose(pred, e2e_ft_reference(root, image, "depth"), atol=2e-5, rtol=0)


@pytest.mark.parametrize("params,message", [({"normal_flip": "w"}, "normal_flip must be axes among x, y, z"),
                                            ({"depth_output": "median"}, "depth_output must be one of"),
                                            ({"steps": 4}, "unknown one-step parameters: steps"),
                                            ({"size_rule": "ceil"}, "size_rule must be one of floor, integer"),
                                            ({"pad_multiple": 0}, "pad_multiple must be a whole number of pixels")])
def test_bad_family_params_are_one_sentence(params, message, photo, tmp_path):
    root = write_pipeline_repo(tmp_path / "e2e-depth", "e2e-ft")
    (root / "genpercept.json").write_text(json.dumps({"family_params": params}))
    result = CliRunner().invoke(app, ["predict", str(photo[0]), "-c", str(root), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# ---- which family a folder is ---------------------------------------------------------------------------

@pytest.mark.parametrize("release,family,res", [("e2e-ft", "e2e-ft", 768), ("e2e-ft-sd", "e2e-ft", 768),
                                                ("e2e-ft-sd-4ch", "e2e-ft", 768),
                                                ("lotus-d", "lotus-d", 768), ("marigold", "marigold", 768)])
def test_the_family_is_read_from_the_folder_configs(release, family, res, tmp_path):
    spec = resolve_checkpoint(str(write_pipeline_repo(tmp_path / "some-depth-model", release)))
    assert (spec.family, spec.task, spec.processing_res, spec.embedding) == (family, "depth", res, "v2")
    assert spec.unet_dir.name == "unet" and spec.vae_dir.name == "vae"
    assert resolve_checkpoint(str(spec.unet_dir)) == spec  # the pipeline's unet/ stands for the pipeline


@pytest.mark.parametrize("release,change,message", [
    ("e2e-ft", {"in_channels": 12}, "has in_channels 12 and class_embed_type None (pipeline "
     "'StableDiffusionPipeline'), which matches no one-step family"),
    ("marigold", {"in_channels": 4}, "has in_channels 4 and class_embed_type None (pipeline "
     "'MarigoldDepthPipeline'), which matches no one-step family"),
    ("lotus-d", {"in_channels": 8}, "a generative Lotus-G model, which is not one-step"),
    ("e2e-ft", {"class_embed_type": "timestep"}, "class_embed_type 'timestep'"),
])
def test_a_config_matching_no_family_is_refused_naming_what_was_found(release, change, message, photo, tmp_path):
    root = write_pipeline_repo(tmp_path / "odd-depth", release, **change)
    result = CliRunner().invoke(app, ["predict", str(photo[0]), "-c", str(root), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("scheduler,message", [
    ({"_class_name": "LCMScheduler"}, "is a LCMScheduler, not the DDIM scheduler whose one step marigold runs"),
    ({"prediction_type": "flow"}, "has prediction_type 'flow'"),
])
def test_a_scheduler_the_maths_does_not_cover_is_refused(scheduler, message, tmp_path):
    root = write_pipeline_repo(tmp_path / "m-depth", "marigold", scheduler=scheduler)
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint(str(root))


def test_a_pipeline_folder_without_a_task_in_its_name_asks_for_it(tmp_path):
    root = write_pipeline_repo(tmp_path / "finetune", "lotus-d")
    with pytest.raises(CheckpointError, match="pass --task"):
        resolve_checkpoint(str(root))
    assert resolve_checkpoint(str(root), task="normal").task == "normal"


# ---- registry and hub ------------------------------------------------------------------------------------

def test_registry_names_families_resolution_and_licence():
    registry = load_registry()
    for name, family in NAMES.items():
        spec = registry[name]
        assert (spec.family, spec.subfolder, spec.vae, spec.processing_res) == (family, "unet", "vae", 768)
        assert spec.license and spec.is_pipeline
    assert registry["marigold-normals-1step"].repo == "prs-eth/marigold-normals-v1-1"
    assert registry["lotus-d-disparity"].kind == "affine_disparity"
    assert default_checkpoint("depth") == "depth"  # GenPercept stays the default


def test_hub_files_of_a_pipeline_repo_are_only_the_needed_ones():
    repo = "GonzaloMG/stable-diffusion-e2e-ft-normals"
    assert required_files(resolve_checkpoint("e2e-ft-sd-normals")) == [(repo, path) for path in (
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors")]


def test_offline_pipeline_repo_names_files_and_the_folder_to_pass(tmp_path):
    spec = resolve_checkpoint("lotus-d-normal")
    with pytest.raises(OfflineError) as err:
        fetch_checkpoint(spec, cache_dir=tmp_path, local_files_only=True)
    msg = str(err.value)
    assert "jingheya/lotus-normal-d-v1-1/scheduler/scheduler_config.json" in msg
    assert "into FOLDER/ keeping their paths in the repository and pass --checkpoint FOLDER," in msg
    assert cached_status(spec, cache_dir=tmp_path) == "not cached"


def _as_hub_cache(cache, repo, root):
    """Copy a tiny repo to where the hub client caches `repo`."""
    base = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(root, base / "snapshots" / ("0" * 40))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)


def test_an_unknown_hub_pipeline_repo_gets_its_family_from_the_cached_configs(tmp_path):
    _as_hub_cache(tmp_path / "cache", "someone/lotus-normal-d-copy", write_pipeline_repo(tmp_path / "r", "lotus-d"))
    spec = resolve_checkpoint("someone/lotus-normal-d-copy")
    assert (spec.family, spec.task, spec.subfolder) == (DETECT, "normal", "unet")
    files = fetch_checkpoint(spec, cache_dir=tmp_path / "cache")
    assert files.spec.family == "lotus-d" and files.unet_dir.name == "unet"
    assert cached_status(spec, cache_dir=tmp_path / "cache") == "cached"


def test_a_registry_entry_whose_configs_say_another_family_is_refused(tmp_path):
    _as_hub_cache(tmp_path / "cache", "jingheya/lotus-depth-d-v1-0", write_pipeline_repo(tmp_path / "r", "e2e-ft"))
    with pytest.raises(CheckpointError, match="registered as lotus-d, but its configs .* read as e2e-ft"):
        fetch_checkpoint(resolve_checkpoint("lotus-d-depth"), cache_dir=tmp_path / "cache")


def test_single_file_releases_go_to_the_releases_module(tmp_path, monkeypatch):
    """The Meta Prompts seam: .pth files and registry entries with `file` are handled by releases.py."""
    calls = []
    fake = types.ModuleType("genpercept_cli.releases")
    fake.spec_for_file = lambda path, registry, task: calls.append(("spec", path, "depth" in registry, task)) or "s"
    fake.release_paths = lambda spec: (tmp_path / "converted", tmp_path / "raw.pth")
    fake.release_status = lambda spec: "downloaded"
    monkeypatch.setitem(sys.modules, "genpercept_cli.releases", fake)
    weights = tmp_path / "nyu.pth"
    weights.write_bytes(b"x")
    assert resolve_checkpoint(str(weights), task="depth") == "s"
    assert calls == [("spec", weights.resolve(), True, "depth")]
    release = CheckpointSpec(name="mp", task="depth", output="metric depth", family="metaprompts",
                             file="nyu.pth", url="https://example.org/mp")
    files = fetch_checkpoint(release)
    assert (files.unet_dir, files.vae_dir, files.weights_file) == (tmp_path / "converted", None, tmp_path / "raw.pth")
    assert cached_status(release) == "downloaded"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file; --checkpoint takes a folder"):
        resolve_checkpoint(str(tmp_path / "notes.txt"))


# ---- the schedule maths against diffusers' own scheduler -----------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
                                       {"beta_schedule": "linear", "timestep_spacing": "leading"}])
def test_schedule_and_one_step_timesteps_equal_diffusers_ddim(overrides):
    from diffusers import DDIMScheduler

    config = {**SD_DDIM, **overrides}
    scheduler = DDIMScheduler.from_config(config)
    torch.testing.assert_close(alphas_cumprod(config).float(), scheduler.alphas_cumprod, atol=1e-6, rtol=1e-5)
    scheduler.set_timesteps(1)
    assert one_step_timesteps(config)[0] == int(scheduler.timesteps[0])


def test_bench_speed_runs_a_pipeline_family_folder(tmp_path):
    root = write_pipeline_repo(tmp_path / "marigold-depth", "marigold")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench-speed", "-c", str(root), "--resolution", "32", "--warmup", "0",
                                      "--repeats", "1", "--protocol", "genpercept", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["stages_ms"]["unet"] > 0


def test_eval_runs_a_family_folder_on_the_depth_protocol_in_its_own_space(tmp_path):
    """A Lotus disparity release is aligned in disparity space, an E2E-FT depth release in depth space."""
    from _archives import write_tar
    from test_datasets import NYU_TAR, nyu_files

    write_tar(tmp_path / "data" / NYU_TAR, nyu_files(np.random.default_rng(0))[0])
    for name, release, space in (("lotus-depth-d-disparity", "lotus-d", "disparity"),
                                 ("e2e-ft-depth", "e2e-ft", "depth")):
        root = write_pipeline_repo(tmp_path / name, release)
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(app, ["eval", "-d", "nyu", "--data-dir", str(tmp_path / "data"), "-c", str(root),
                                          "--limit", "1", "--processing-res", "64", "-o", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        assert report["protocol"]["space"] == space and report["metrics"]["absrel"] > 0
