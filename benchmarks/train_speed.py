"""Training throughput and peak memory of one recipe step (`genpercept_cli.train.engine.recipe_loss` +
backward + optimiser step) with random weights (benchmarks/speed/presets.py), tiny or SD2.1-size.

A step is: VAE-encode image and label (no grad), U-Net forward, latent MSE, VAE-decode, the depth losses,
backward through decoder and U-Net, optimiser step. The first step is a warm-up and is not timed (unless
only one is run). Memory: CUDA's max_memory_allocated, or the process's peak RSS on the CPU. `static_gb`
is computed: weights + gradients + optimiser state of the U-Net, plus the frozen VAE. `--saved-only`
counts instead the bytes autograd saves for the backward (the activation memory), exactly, on any device.

    python benchmarks/train_speed.py --preset tiny --res 64 --batch 4 --steps 6 \
        --json benchmarks/results/train_cpu_tiny_64.json
    python benchmarks/train_speed.py --preset sd21 --res 768 --batch 2 --precision bf16 --checkpointing --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OPTIMISER_STATE_BYTES = {"adamw": 8, "adam8bit": 2, "sgd": 0}  # per parameter (fp32 AdamW: exp_avg + exp_avg_sq)


def build(preset: str, device, checkpointing: bool, optimiser: str):
    import torch

    from benchmarks.speed.presets import build_random_model

    model = build_random_model(preset, "vae", device, torch.float32)
    model.unet.requires_grad_(True).train()
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
    params = list(model.unet.parameters())
    if optimiser == "adamw":
        opt = torch.optim.AdamW(params, lr=3e-5)
    elif optimiser == "adam8bit":
        import bitsandbytes

        opt = bitsandbytes.optim.AdamW8bit(params, lr=3e-5)
    else:
        opt = torch.optim.SGD(params, lr=3e-5)
    return model, opt


# The step the recorded results measured: the depth terms plus the latent MSE (the release's default has
# no latent term; it costs one [B, 4, h, w] MSE, nothing measurable beside the decoder)
STEP_LOSSES = {"latent_mse": 1.0}


def step(model, opt, batch: dict, precision: str, device) -> float:
    """One timed recipe step; returns its loss."""
    import torch

    from genpercept_cli.train.config import LossConfig
    from genpercept_cli.train.engine import recipe_loss

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        total, _ = recipe_loss(model, model.unet, batch, LossConfig(**STEP_LOSSES))
    total.mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(total.detach().mean())


def saved_activation_bytes(model, batch: dict, precision: str, device) -> int:
    """Bytes autograd keeps for the backward of one recipe forward (each storage counted once): the
    activation memory of a training step, exact on any device, without running the backward."""
    import torch

    from genpercept_cli.train.config import LossConfig
    from genpercept_cli.train.engine import recipe_loss

    storages: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            recipe_loss(model, model.unet, batch, LossConfig(**STEP_LOSSES))
    return sum(n for ptr, n in storages.items() if ptr not in params)  # weights are not activations


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args) -> dict:
    import torch

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, opt = build(args.preset, device, args.checkpointing, args.optimizer)
    b, r = args.batch, args.res
    batch = {"rgb": torch.rand(b, 3, r, r, device=device) * 2 - 1,
             "target": torch.rand(b, 3, r, r, device=device) * 2 - 1,
             "mask": torch.ones(b, 1, r, r, dtype=torch.bool, device=device),
             "timesteps": torch.randint(0, 1000, (b,), device=device)}
    if args.saved_only:
        saved = saved_activation_bytes(model, batch, args.precision, device)
        return {"preset": args.preset, "res": r, "batch": b, "precision": args.precision,
                "gradient_checkpointing": args.checkpointing, "saved_activations_gb": saved / 2**30,
                "saved_activations_gb_per_sample": saved / b / 2**30, "torch": torch.__version__}
    times = []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        loss = step(model, opt, batch, args.precision, device)
        synchronize(device)
        times.append(time.perf_counter() - start)
    timed = times[1:] or times
    unet_params = sum(p.numel() for p in model.unet.parameters())
    vae_params = sum(p.numel() for p in model.vae.parameters())
    static = unet_params * (4 + 4 + OPTIMISER_STATE_BYTES[args.optimizer]) + vae_params * 4
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process_peak_rss"
    return {
        "preset": args.preset, "res": r, "batch": b, "precision": args.precision, "optimizer": args.optimizer,
        "gradient_checkpointing": args.checkpointing, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.platform(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "steps_timed": len(timed),
        "s_per_step": sum(timed) / len(timed), "samples_per_s": b * len(timed) / sum(timed),
        "step_times_s": [round(t, 4) for t in times], "loss_last": loss,
        "unet_params": unet_params, "vae_params": vae_params, "static_gb": static / 2**30,
        "peak_gb": peak, "peak_kind": peak_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("tiny", "sd21"), default="tiny")
    parser.add_argument("--res", type=int, default=64, help="square image side in pixels (a multiple of 8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="steps run; the first is a warm-up when more than one")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    parser.add_argument("--optimizer", choices=tuple(OPTIMISER_STATE_BYTES), default="adamw")
    parser.add_argument("--checkpointing", action="store_true", help="U-Net gradient checkpointing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--saved-only", action="store_true",
                        help="only count the activation bytes autograd saves in one forward (no backward, no timing)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
