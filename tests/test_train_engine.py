"""The training engine on tiny models: overfitting, export to `predict`, resume, two processes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_train import (
    CLI_MAIN,
    assert_predict_gives_the_model,
    tiny_config,
    tiny_settings,
    write_depth_folder,
    write_init,
)
from typer.testing import CliRunner

from genpercept_cli.cli import app
from genpercept_cli.cli.train import eval_validator
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.train.config import ConfigError
from genpercept_cli.train.engine import LOSS_FILE, Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster

TESTS = Path(__file__).parent


@pytest.fixture
def data(tmp_path):
    return write_depth_folder(tmp_path / "data")


def losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / LOSS_FILE).read_text().splitlines()]
    return {e["step"]: e["loss"] for e in lines if "loss" in e}


def test_tiny_model_overfits_four_samples(tmp_path, data):
    # The latent term alone (fixed t): the loss must fall at least 10x within 12 steps.
    cfg = tiny_config(tmp_path, data, "steps=12", "optim.lr=3e-3", "model.timestep=1", "loss.latent_mse=1",
                      "loss.pixel_mse=0", "loss.ssi=0", "loss.gradient=0", "optim.batch_size=4")
    records = Trainer(cfg).fit()
    curve = [r.loss for r in records]
    assert len(curve) == 12 and curve[-1] < curve[0] / 10, curve


def test_checkpoint_loads_in_predict_without_task_and_gives_the_trained_outputs(tmp_path, data):
    from genpercept_cli.pipeline import GenPerceptPipeline

    trainer = train(tiny_config(tmp_path, data, "steps=1"))
    ckpt = trainer.run / "checkpoint-1"
    assert sorted(p.name for p in ckpt.iterdir()) == ["training_state.pt", "unet_depth", "vae"]
    assert json.loads((ckpt / "unet_depth" / "genpercept.json").read_text())["task"] == "depth"
    pipe = GenPerceptPipeline.from_checkpoint(str(ckpt), device="cpu", dtype="fp32")
    assert pipe.spec.task == "depth" and pipe.model.params.timestep == 1
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(pipe.model(x), trained(x), atol=1e-6, rtol=0)
        assert not torch.equal(trained.unet.conv_out.weight, torch.zeros_like(trained.unet.conv_out.weight))
    assert_predict_gives_the_model(trained, ckpt, data, tmp_path / "pred", 16)


def test_resume_continues_the_uninterrupted_loss_curve(tmp_path, data):
    whole = train(tiny_config(tmp_path, data, "steps=4", run="whole"))
    first = train(tiny_config(tmp_path, data, "steps=2", run="parts"))
    assert (first.run / "checkpoint-2").is_dir()
    second = train(tiny_config(tmp_path, data, "steps=4", run="parts"))
    assert second.resumed_from == first.run / "checkpoint-2"
    assert not (first.run / "checkpoint-2" / "training_state.pt").exists()  # keep_states = 1: only the newest
    assert (first.run / "checkpoint-2" / "unet_depth" / "diffusion_pytorch_model.safetensors").is_file()
    a, b = losses(whole.run), losses(second.run)
    assert sorted(b) == [1, 2, 3, 4]
    assert all(abs(a[s] - b[s]) < 1e-6 for s in (1, 2, 3, 4)), (a, b)
    assert torch.equal(whole.model.unet.conv_out.weight, second.model.unet.conv_out.weight)


def test_cli_refuses_bad_settings_before_loading_anything(tmp_path, data):
    out = CliRunner().invoke(app, ["train", "--set", "optim.lr=0", "--set", 'model.unet="u"'])
    assert out.exit_code == 2 and "model.unet and model.vae" in out.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(tiny_settings(tmp_path, data, "optim.effective_batch=3")))
    out = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert out.exit_code == 2 and "must be a multiple of processes x optim.batch_size" in out.output
    if not torch.cuda.is_available():
        out = CliRunner().invoke(app, ["train", "--config", str(cfg), "--set", "optim.effective_batch=4",
                                       "--set", 'mixed_precision="fp16"'])
        assert out.exit_code == 2 and "needs a CUDA GPU" in out.output


TWO_PROCESS_MODELS = {
    "unet": (),
    # The U-Net features + DPT head as one DDP-wrapped module (its hooks on the plain U-Net inside).
    "dpt_head": ("data.size=[32, 32]", "model.dpt_head=true", "loss.latent_mse=0", "model.dpt_features=8"),
    "lora": ("model.lora_rank=2",),
}


@pytest.mark.parametrize("model", list(TWO_PROCESS_MODELS))
def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(tmp_path, data, model):
    # Global batch 4: one process runs 2 micro-batches of 2, two processes one micro-batch of 2 each.
    settings = tiny_settings(tmp_path, data, "steps=2", *TWO_PROCESS_MODELS[model], run="two")
    config = tmp_path / "train.toml"
    config.write_text("\n".join(settings))
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "GENPERCEPT_DIST_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--no-python", sys.executable, "-c", CLI_MAIN, "train", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = CliRunner().invoke(app, ["train", "--config", str(config), "--output", str(tmp_path / "one")])
    out, _ = proc.communicate(timeout=240)
    assert single.exit_code == 0, single.output
    assert proc.returncode == 0, out
    assert "2 processes x 1 x 2" in out and "1 processes x 2 x 2" in single.output
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2]
    assert all(abs(one[s] - two[s]) < 1e-5 for s in (1, 2)), (one, two)  # step 2: after an averaged update


def test_validation_scores_each_saved_checkpoint_as_eval_does(tmp_path, data):
    with pytest.raises(ConfigError, match="validation.dataset must be one of"):
        eval_validator(tiny_config(tmp_path, data, 'validation.dataset="nyu2"'))
    from _archives import write_tar
    from test_datasets import NYU_TAR, nyu_files

    from benchmarks.evaluate import EvalOptions, evaluate

    files, _ = nyu_files(np.random.default_rng(0))
    write_tar(tmp_path / "eval" / NYU_TAR, files)
    eval_dir = tmp_path / "eval"
    cfg = tiny_config(tmp_path, data, "steps=1", 'validation.dataset="nyu"', f'validation.data_dir="{eval_dir}"',
                      "validation.limit=1")
    trainer = train(cfg, validator=eval_validator(cfg))
    logged = [json.loads(line) for line in (trainer.run / LOSS_FILE).read_text().splitlines()]
    scores = next(e for e in logged if "val/absrel" in e)
    checkpoint = str(trainer.run / "checkpoint-1")
    options = EvalOptions(dataset="nyu", data_dir=eval_dir, checkpoint=checkpoint, limit=1, device="cpu")
    expected = evaluate(options).metrics
    assert scores["step"] == 1
    assert scores["val/absrel"] == pytest.approx(expected["absrel"], rel=1e-6)


def test_resume_refuses_a_newest_checkpoint_without_or_with_a_corrupt_state_and_overwrites_nothing(tmp_path, data):
    first = train(tiny_config(tmp_path, data, "steps=2", "save_every=1", "keep_states=2"))
    run, state = first.run, first.run / "checkpoint-2" / "training_state.pt"
    kept = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    state.write_bytes(kept[state][:100])  # cut short, as a killed copy would leave it
    with pytest.raises(GenPerceptError) as corrupt:
        train(tiny_config(tmp_path, data, "steps=3", "save_every=1", "keep_states=2"))
    assert str(corrupt.value).startswith(f"{state} is corrupt (") and "resume from checkpoint-1" in str(corrupt.value)
    state.unlink()
    out = CliRunner().invoke(app, ["train", "--config", str(write_config(tmp_path, data, "steps=3", "save_every=1"))])
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert f"{run / 'checkpoint-2'} has no training_state.pt" in " ".join(out.output.split())
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == {
        p: b for p, b in kept.items() if p != state}  # nothing rewritten, nothing logged again
    # Moved away as the sentence says: training resumes from checkpoint-1 and logs steps 2-3 once.
    (run / "checkpoint-2").rename(tmp_path / "moved")
    second = train(tiny_config(tmp_path, data, "steps=3", "save_every=1"))
    assert second.resumed_from == run / "checkpoint-1"
    assert [json.loads(line)["step"] for line in (run / LOSS_FILE).read_text().splitlines()] == [1, 2, 3]


def test_a_full_disk_while_saving_a_checkpoint_stops_with_a_sentence_and_leaves_no_partial_folder(
        tmp_path, data, monkeypatch):
    import genpercept_cli.files
    import genpercept_cli.train.export

    def torch_save_on_a_full_disk(obj, path):
        Path(path).write_bytes(b"PK")  # what torch writes before the stream fails, without an errno
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(genpercept_cli.train.export.torch, "save", torch_save_on_a_full_disk)
    monkeypatch.setattr(genpercept_cli.files, "free_bytes", lambda path: 4096.0, raising=False)
    out = CliRunner().invoke(app, ["train", "--config", str(write_config(tmp_path, data, "steps=1"))])
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert f"no space left on device while writing {tmp_path / 'run' / 'checkpoint-1'}" in " ".join(out.output.split())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["loss.jsonl"]  # no checkpoint, no temp folder


def test_exported_weights_get_the_umask_mode(tmp_path, data):
    old = os.umask(0o022)
    try:
        run = train(tiny_config(tmp_path, data, "steps=1")).run
    finally:
        os.umask(old)
    modes = {p.relative_to(run).as_posix(): p.stat().st_mode & 0o777 for p in run.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o644}, modes


def write_config(tmp: Path, data: Path, *extra: str) -> Path:
    """tiny_settings as a TOML file (for the CLI)."""
    config = tmp / "train.toml"
    config.write_text("\n".join(tiny_settings(tmp, data, *extra)))
    return config


def test_a_training_checkpoint_with_corrupt_weights_or_a_mistyped_config_is_named_in_a_sentence(tmp_path, monkeypatch):
    from genpercept_cli.errors import CheckpointError
    from genpercept_cli.loading import load_unet

    unet = tmp_path / "run" / "checkpoint-1" / "unet_depth"
    shutil.copytree(write_init(tmp_path / "init") / "unet_depth_v2", unet)
    weights = unet / "diffusion_pytorch_model.safetensors"
    good, config = weights.read_bytes(), json.loads((unet / "config.json").read_text())
    weights.write_bytes(good[:1000])  # cut short
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(weights))} is truncated or corrupt \\(.*\\)\\.$"):
        load_unet(unet)  # local: no advice to download it again
    with monkeypatch.context() as patch:  # the same file downloaded into the hub cache: download it again
        patch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "run"))
        with pytest.raises(CheckpointError, match=r"is truncated or corrupt \(.*\); download it again\.$"):
            load_unet(unet)
    weights.write_bytes(good)
    for key, value, expected in (("in_channels", "4", "an integer"),
                                 ("attention_head_dim", [2, "x"], "an integer (or a list of integers, one per block)"),
                                 ("down_block_types", "CrossAttnDownBlock2D", "a list of strings"),
                                 ("norm_eps", "small", "a number")):
        (unet / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError) as info:
            load_unet(unet)
        assert str(info.value) == f"{unet / 'config.json'}: {key} must be {expected}, not {value!r}."
