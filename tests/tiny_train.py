"""Tiny training setups: a random tiny checkpoint to start from, a few synthetic paired samples, a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny_models import TASK_FOLDERS, UNET_CONFIG, make_vae

from genpercept_cli.train.config import load_config


def write_init(root: Path, task: str = "depth", seed: int = 0) -> Path:
    """A starting point in the released layout: a tiny U-Net with diffusers' own initialisation (zero output
    conv, as a fresh fine-tune starts from a trained net rather than from noise) beside the tiny fp16 VAE."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    UNet2DConditionModel(**UNET_CONFIG).save_pretrained(root / TASK_FOLDERS[task], safe_serialization=True)
    make_vae(seed + 100).half().save_pretrained(root / "vae", safe_serialization=True)
    return root


def write_depth_folder(root: Path, count: int = 4, size: int = 16, seed: int = 0) -> Path:
    """root/rgb/sNN.png + root/depth/sNN.npy: smooth images whose depth is a function of the image."""
    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(count):
        a, b = rng.uniform(0.2, 1.0, 2)
        depth = 1.0 + a * xx + b * yy  # a ramp: every sample different, all learnable from the colours
        rgb = np.stack([xx * a, yy * b, (xx + yy) / 2], axis=-1)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(root / "rgb" / f"s{i:02d}.png")
        np.save(root / "depth" / f"s{i:02d}.npy", depth.astype(np.float32))
    return root


def tiny_settings(tmp: Path, data: Path, *extra: str, task: str = "depth", run: str = "run") -> list[str]:
    """Settings (--set style, also valid TOML lines) training the tiny `task` U-Net at 16x16 in tmp/`run`:
    4 samples per step in micro-batches of 2, lr 1e-3 without warm-up; `extra` overrides."""
    ckpt = tmp / "init"
    if not ckpt.exists():
        write_init(ckpt, task)
    settings = [f'model.unet="{ckpt / f"unet_{task}_v2"}"', f'model.vae="{ckpt / "vae"}"', f'model.task="{task}"',
            f'data.sources=[{{kind="folder", path="{data}"}}]', "data.size=[16, 16]", "optim.effective_batch=4",
            "optim.batch_size=2", "optim.warmup_steps=0", "optim.lr=1e-3", "steps=4", "save_every=1000",
            "log_every=1", f'output="{tmp / run}"', *extra]
    return list({item.partition("=")[0]: item for item in settings}.values())  # a later key replaces an earlier


def tiny_config(tmp: Path, data: Path, *extra: str, task: str = "depth", run: str = "run"):
    """The TrainConfig of `tiny_settings`."""
    return load_config(None, tiny_settings(tmp, data, *extra, task=task, run=run))


CLI_MAIN = "from genpercept_cli.cli import main; main()"  # `python -c CLI_MAIN train ...` (torchrun tests)


def assert_predict_gives_the_model(model, checkpoint, data: Path, out: Path, res: int) -> None:
    """`genpercept predict -c checkpoint` on data/rgb/s00.png writes what `model` computes for it (1e-6)."""
    from typer.testing import CliRunner

    from genpercept_cli.cli import app

    result = CliRunner().invoke(app, ["predict", str(data / "rgb"), "-c", str(checkpoint), "-o", str(out),
                                      "--device", "cpu", "--processing-res", str(res), "--formats", "npy"])
    assert result.exit_code == 0, result.output
    pred = np.load(out / "s00_pred.npy")
    image = torch.from_numpy(np.array(Image.open(data / "rgb" / "s00.png"))).float()
    with torch.no_grad():
        expected = model(image.permute(2, 0, 1)[None] / 127.5 - 1)[0, 0].numpy()
    assert np.allclose(pred, expected, atol=1e-6)
