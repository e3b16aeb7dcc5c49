"""`model.lora_rank`: low-rank adapters on the attention projections, base frozen, merged on export."""

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file
from tiny_train import (
    tiny_config,
    write_depth_folder,
)

from genpercept_cli.loading import load_unet
from genpercept_cli.train.engine import Trainer, train
from genpercept_cli.train.lora import LoRALinear

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # cross-attention: in 1024, out 8
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def data(tmp_path):
    return write_depth_folder(tmp_path / "data")


def init_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tmp_path / "init" / "unet_depth_v2" / WEIGHTS))


def test_only_the_adapters_train_and_the_base_stays_unchanged(tmp_path, data):
    trainer = Trainer(tiny_config(tmp_path, data, "model.lora_rank=4", "steps=2"))
    base = load_unet(tmp_path / "init" / "unet_depth_v2")
    attentions = [m for m in base.modules() if isinstance(m, Attention)]
    targets = [m for name, m in base.named_modules() if name.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    assert len(attentions) > 0 and len(targets) == 4 * len(attentions)
    expected = sum(4 * (m.in_features + m.out_features) for m in targets)  # A [r, in] + B [out, r] per layer
    unet = trainer.model.unet
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == expected
    assert all(n.endswith((".lora_a", ".lora_b")) for n, _ in trainable)
    assert sum(isinstance(m, LoRALinear) for m in unet.modules()) == len(targets)
    trainer.fit()
    frozen = {n.replace(".base.", "."): p for n, p in unet.named_parameters() if not p.requires_grad}
    start = init_weights(tmp_path)
    assert sorted(frozen) == sorted(start)
    assert all(torch.equal(frozen[k], start[k]) for k in start)
    assert unet.get_submodule(LAYER).lora_b.abs().sum() > 0  # B starts at 0: the adapters did move


def test_lora_loss_falls(tmp_path, data):
    # Latent term only, fixed t, rank 4: the loss falls at least 5x within 20 steps.
    cfg = tiny_config(tmp_path, data, "model.lora_rank=4", "steps=20", "optim.lr=3e-3", "model.timestep=1",
                      "loss.latent_mse=1", "loss.pixel_mse=0", "loss.ssi=0", "loss.gradient=0", "optim.batch_size=4")
    curve = [r.loss for r in Trainer(cfg).fit()]
    assert len(curve) == 20 and curve[-1] < curve[0] / 5, curve


def test_export_merges_the_adapters_and_loads_in_predict(tmp_path, data):
    from genpercept_cli.pipeline import GenPerceptPipeline

    trainer = train(tiny_config(tmp_path, data, "model.lora_rank=4", "model.lora_alpha=8", "steps=2"))
    ckpt = trainer.run / "checkpoint-2"
    saved = load_file(str(ckpt / "unet_depth" / WEIGHTS))
    start = init_weights(tmp_path)
    assert sorted(saved) == sorted(start)  # a plain U-Net: no adapter keys
    layer = trainer.model.unet.get_submodule(LAYER)
    a, b = layer.lora_a.detach(), layer.lora_b.detach()  # [4, 1024], [8, 4]
    merged = start[f"{LAYER}.weight"] + (8 / 4) * b @ a
    assert torch.allclose(saved[f"{LAYER}.weight"], merged, atol=1e-7, rtol=0)
    untouched = [k for k in start if ".to_" not in k or k.endswith(".bias")]  # to_out.0's bias has no adapter
    assert untouched and all(torch.equal(saved[k], start[k]) for k in untouched)
    pipe = GenPerceptPipeline.from_checkpoint(str(ckpt), device="cpu", dtype="fp32")
    assert pipe.spec.task == "depth"
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(pipe.model(x), trainer.model.eval()(x), atol=1e-5, rtol=0)


def test_lora_resume_continues_the_uninterrupted_loss_curve(tmp_path, data):
    whole = train(tiny_config(tmp_path, data, "model.lora_rank=2", "steps=3", run="whole"))
    train(tiny_config(tmp_path, data, "model.lora_rank=2", "steps=1", run="parts"))
    second = train(tiny_config(tmp_path, data, "model.lora_rank=2", "steps=3", run="parts"))
    assert second.resumed_from == second.run / "checkpoint-1"
    a, b = (_losses(t.run) for t in (whole, second))
    assert sorted(b) == [1, 2, 3] and all(abs(a[s] - b[s]) < 1e-6 for s in (1, 2, 3)), (a, b)
    one, two = whole.model.unet.get_submodule(LAYER), second.model.unet.get_submodule(LAYER)
    assert torch.equal(one.lora_b, two.lora_b) and torch.equal(one.base.weight, two.base.weight)


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


def test_a_negative_rank_is_refused(tmp_path, data):
    from genpercept_cli.train.config import ConfigError

    with pytest.raises(ConfigError, match="model.lora_rank and model.lora_alpha must be >= 0"):
        tiny_config(tmp_path, data, "model.lora_rank=-1")
