"""`model.dpt_head`: training the U-Net features + a fresh DPT head, exported in the released layout."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_train import (
    assert_predict_gives_the_model,
    tiny_config,
    write_depth_folder,
)

from genpercept_cli.dpt import minmax_per_image, unet_up_block_features
from genpercept_cli.train.config import ConfigError
from genpercept_cli.train.engine import Trainer, train
from genpercept_cli.train.losses import gradient_loss, pixel_mse, ssi_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

# The DPT head's output has the image's size for sides that are multiples of 32; a head 8 wide.
DPT = ("data.size=[32, 32]", "model.dpt_head=true", "loss.latent_mse=0", "model.dpt_features=8")


@pytest.fixture
def data(tmp_path):
    return write_depth_folder(tmp_path / "data", size=32)


def test_dpt_head_overfits_four_samples(tmp_path, data):
    # Fixed t, no flips: the loss (pixel MSE + SSI + gradient on the head output) falls at least 5x in 50 steps.
    cfg = tiny_config(tmp_path, data, *DPT, "steps=50", "optim.lr=1e-2", "model.timestep=1", "data.flip_p=0",
                      "optim.batch_size=4", task="disparity")
    curve = [r.loss for r in Trainer(cfg).fit()]
    assert len(curve) == 50 and np.mean(curve[-5:]) < curve[0] / 5, curve


def test_dpt_loss_is_the_depth_terms_on_the_raw_head_output(tmp_path, data):
    cfg = tiny_config(tmp_path, data, *DPT, "model.timestep=1", task="disparity")
    trainer = Trainer(cfg)
    model = trainer.model
    from genpercept_cli.train.engine import recipe_loss

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 32, 32, generator=gen).expand(-1, 3, -1, -1) * 2 - 1
    mask = torch.rand(2, 1, 32, 32, generator=gen) > 0.2
    batch = {"rgb": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, "target": target, "mask": mask,
             "timesteps": torch.tensor([1, 1])}
    with torch.no_grad():
        total, terms = recipe_loss(model, trainer.net, batch, cfg.loss)
        latent = model.encode(batch["rgb"])
        feats = unet_up_block_features(model.unet, latent, 1, model.embedding.expand(2, -1, -1))
        raw = model.dpt_head(feats)  # [2,1,32,32]
    goal = target[:, :1]
    expected = pixel_mse(raw, goal, mask) + 0.5 * ssi_loss(raw, goal, mask) + 2.0 * gradient_loss(raw, goal, mask)
    assert sorted(terms) == ["gradient", "pixel_mse", "ssi"]
    assert torch.allclose(total, expected, atol=1e-6, rtol=1e-5)


def test_dpt_checkpoint_loads_in_predict_without_task_and_gives_the_trained_outputs(tmp_path, data):
    from genpercept_cli.pipeline import GenPerceptPipeline

    trainer = train(tiny_config(tmp_path, data, *DPT, "steps=2", task="disparity"))
    ckpt = trainer.run / "checkpoint-2"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "dpt_head_identity", "training_state.pt", "unet_disparity_dpt_head", "vae"]
    spec = json.loads((ckpt / "unet_disparity_dpt_head" / "genpercept.json").read_text())
    assert spec["task"] == "disparity" and spec["dpt_head"] is True
    pipe = GenPerceptPipeline.from_checkpoint(str(ckpt), device="cpu", dtype="fp32")
    assert pipe.spec.task == "disparity" and pipe.model.dpt_head is not None
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trained = trainer.model.eval()
    with torch.no_grad():
        ours = trained(x)
        assert torch.allclose(pipe.model(x), ours, atol=1e-6, rtol=0)
        raw = trained.dpt_head(unet_up_block_features(trained.unet, trained.encode(x), 1,
                                                      trained.embedding.expand(2, -1, -1)))
    assert torch.equal(ours, minmax_per_image(raw))  # the inference path: raw head output min-maxed per image
    assert_predict_gives_the_model(trained, ckpt, data, tmp_path / "pred", 32)


def test_dpt_resume_continues_the_uninterrupted_loss_curve(tmp_path, data):
    whole = train(tiny_config(tmp_path, data, *DPT, "steps=3", run="whole"))
    train(tiny_config(tmp_path, data, *DPT, "steps=1", run="parts"))
    second = train(tiny_config(tmp_path, data, *DPT, "steps=3", run="parts"))
    assert second.resumed_from == Path(second.run) / "checkpoint-1"
    a, b = (_losses(t.run) for t in (whole, second))
    assert sorted(b) == [1, 2, 3] and all(abs(a[s] - b[s]) < 1e-6 for s in (1, 2, 3)), (a, b)
    for p, q in zip(whole.model.dpt_head.parameters(), second.model.dpt_head.parameters(), strict=True):
        assert torch.equal(p, q)


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


@pytest.mark.parametrize(("setting", "message"), [
    ('model.task="normal"', "model.task must be depth or disparity"),
    ("loss.latent_mse=1.0", "no latent output to supervise"),
    ("data.size=[48, 48]", "multiples of 32 with model.dpt_head"),
])
def test_dpt_settings_that_cannot_work_are_refused(tmp_path, data, setting, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, data, *DPT, setting)


def test_the_dpt_example_config_is_valid():
    from genpercept_cli.train.config import load_config

    example = Path(__file__).parent.parent / "examples" / "train" / "disparity_dpt_head.toml"
    cfg = load_config(example, ["model.lora_rank=16"])
    assert cfg.model.dpt_head and cfg.model.task == "disparity" and cfg.loss.latent_mse == 0
    assert cfg.model.lora_rank == 16 and cfg.data.sources[1].size == [352, 1216]
