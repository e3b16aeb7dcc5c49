"""Model families plug in without touching the runner or the CLI; the one-step family's parameters."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from genpercept_cli.cli import app
from genpercept_cli.errors import CheckpointError
from genpercept_cli.models import FAMILIES, DenseModel, Family, register_family
from genpercept_cli.models.sd import scaled_linear_alpha_bar, to_x0


class InvertedGray(DenseModel):
    """A toy family: depth = 1 - gray level, times a gain read from the checkpoint folder."""

    def __init__(self, gain: float):
        super().__init__()
        self.task, self.output_kind, self.channels = "depth", "affine_depth", 1
        self.gain = torch.nn.Parameter(torch.tensor(gain))

    def forward(self, x):  # [B,3,h,w] in [-1,1] -> [B,1,h,w] in [0,1]
        gray = (x.mean(dim=1, keepdim=True) + 1.0) / 2.0
        return (1.0 - gray) * self.gain


def build_inverted_gray(files, dtype=torch.float32):
    gain = json.loads((files.unet_dir / "gain.json").read_text())["gain"]
    return InvertedGray(gain).to(dtype).eval().requires_grad_(False)


@pytest.fixture()
def toy_family():
    register_family(Family("toy-inverted-gray", build_inverted_gray, "test family"))
    yield
    del FAMILIES["toy-inverted-gray"]


def test_a_new_family_runs_through_predict_without_touching_the_cli(toy_family, tmp_path):
    ckpt = tmp_path / "toy"
    ckpt.mkdir()
    (ckpt / "genpercept.json").write_text(json.dumps({"family": "toy-inverted-gray", "task": "depth",
                                                       "processing_res": 0}))
    (ckpt / "gain.json").write_text(json.dumps({"gain": 0.5}))
    src = tmp_path / "in"
    src.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(src / "a.png")
    result = CliRunner().invoke(app, ["predict", str(src), "-c", str(ckpt), "-o", str(tmp_path / "out"),
                                      "--formats", "npy"])
    assert result.exit_code == 0, result.output
    pred = np.load(tmp_path / "out" / "a_pred.npy")
    x = image.astype(np.float32) / 255.0 * 2.0 - 1.0
    expected = (1.0 - (x.mean(axis=2) + 1.0) / 2.0) * 0.5  # native size: no resize
    np.testing.assert_allclose(pred, expected, atol=1e-6)


def test_an_unknown_family_is_one_sentence(tmp_path):
    ckpt = tmp_path / "other"
    ckpt.mkdir()
    (ckpt / "genpercept.json").write_text(json.dumps({"family": "lotus", "task": "depth"}))
    from genpercept_cli.pipeline import GenPerceptPipeline

    with pytest.raises(CheckpointError, match="family 'lotus', which this version does not know"):
        GenPerceptPipeline.from_checkpoint(str(ckpt), device="cpu")


def test_genpercept_json_is_read_before_the_folder_name(checkpoint_root, tmp_path):
    import shutil

    from genpercept_cli.checkpoints import resolve_checkpoint

    root = tmp_path / "models"
    shutil.copytree(checkpoint_root / "vae", root / "vae")
    shutil.copytree(checkpoint_root / "unet_depth_v2", root / "my_finetune")  # a name that says nothing
    with pytest.raises(CheckpointError, match="pass --task"):
        resolve_checkpoint(str(root / "my_finetune"))
    (root / "my_finetune" / "genpercept.json").write_text(json.dumps(
        {"task": "disparity", "embedding": "v1", "processing_res": 512}))
    spec = resolve_checkpoint(str(root / "my_finetune"))
    assert (spec.task, spec.embedding, spec.processing_res, spec.kind) == ("disparity", "v1", 512, "affine_disparity")
    (root / "my_finetune" / "genpercept.json").write_text(json.dumps({"task": "edges"}))
    with pytest.raises(CheckpointError, match="says its task is 'edges', which is none of depth, disparity"):
        resolve_checkpoint(str(root / "my_finetune"))
    (root / "my_finetune" / "genpercept.json").write_text(json.dumps({"task": "depth", "colour": "red"}))
    with pytest.raises(CheckpointError, match="unknown key 'colour'"):
        resolve_checkpoint(str(root / "my_finetune"))


def test_one_step_parameters_change_the_maths(checkpoint_root):
    """The same weights with another timestep/parametrization give the x0 the formulas say."""
    from genpercept_cli.pipeline import GenPerceptPipeline

    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu", dtype="fp32")
    model = pipe.model
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.inference_mode():
        latent = model.encode(x)
        embed = model.embedding.expand(1, -1, -1)
        v1 = model.unet(latent, 1, encoder_hidden_states=embed).sample
        assert torch.equal(model.denoise(latent), -v1)  # GenPercept: ᾱ = 0, x0 = -v exactly
        model.params = type(model.params)(timestep=999, alpha_bar=scaled_linear_alpha_bar(999),
                                          parametrization="v")
        v999 = model.unet(latent, 999, encoder_hidden_states=embed).sample
        ab = scaled_linear_alpha_bar(999)
        torch.testing.assert_close(model.denoise(latent), ab**0.5 * latent - (1 - ab) ** 0.5 * v999)


def test_x0_conversions_invert_the_forward_process():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 5, 6, generator=gen), torch.randn(2, 4, 5, 6, generator=gen)
    for t in (0, 250, 999):
        ab = scaled_linear_alpha_bar(t)
        xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
        v = ab**0.5 * eps - (1 - ab) ** 0.5 * x0
        torch.testing.assert_close(to_x0(v, xt, ab, "v"), x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(to_x0(eps, xt, ab, "eps"), x0, atol=2e-2, rtol=1e-3)
        assert torch.equal(to_x0(x0, xt, ab, "x0"), x0)
    # SD's scaled_linear schedule: alpha_bar at t = 999 is 0.0047 (beta from 0.00085 to 0.012)
    assert abs(scaled_linear_alpha_bar(999) - 0.0046) < 2e-4 and abs(scaled_linear_alpha_bar(0) - 0.99915) < 1e-6
