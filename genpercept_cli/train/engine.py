"""The training loop (Hugging Face accelerate): one process, several GPUs or several machines alike.

One optimiser step = `optim.effective_batch` samples drawn by the `BatchPlan` (the same on every process);
process r takes its contiguous share and runs it in micro-batches of `optim.batch_size`, gradients
accumulating without synchronisation until the last one. Each sample's loss is divided by the effective
batch over the processes, so after DDP's mean the gradient is that of the mean loss over the global batch,
whatever the split (tests/test_train_engine.py checks 2 processes against 1).

The recipe (`recipe_loss`, paper §3-4): frozen VAE, trainable U-Net, input the RGB latent, t random in
[0, 1000) or fixed, the empty-prompt embedding; the U-Net's output v gives x0 = −v (ᾱ = 0: GenPercept's
schedule has every beta 1); image-level losses on the decoded x0 (and, with loss.latent_mse > 0, MSE against
the label's latent), as the released configurations weight them (train.losses, README "Train").
Options: model.dpt_head (U-Net features -> a DPT head trained in pixel space, `recipe_loss`) and
model.lora_rank (adapters on the attention projections, base frozen, `train.lora`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..dpt import DPTHead, prepare_dpt_unet, strip_unet_head_keys, unet_up_block_features
from ..errors import GenPerceptError
from ..files import atomic_write, check_writable, disk_full_error, is_disk_full
from ..loading import empty_text_embedding, load_unet, load_vae
from ..models import sd
from ..models.one_step import OneStepModel, OneStepParams
from . import data as train_data
from . import export, lora
from .config import NUM_TRAIN_TIMESTEPS, TASK_TERMS, ConfigError, TrainConfig, check_world, resolved_precision
from .losses import latent_mse, task_loss

LOSS_FILE = "loss.jsonl"


@dataclass
class StepRecord:
    """One line of RUN/loss.jsonl: the global-batch mean loss and its terms (already weighted)."""

    step: int
    loss: float
    terms: dict
    lr: float
    samples_per_s: float


def build_model(cfg: TrainConfig, resumed: Path | None = None) -> OneStepModel:
    """The one-step model to train, VAE frozen: the U-Net of model.unet (or of the checkpoint `resumed` from,
    unless adapters are trained: the base stays model.unet's) trainable, or frozen with LoRA adapters on its
    attention projections; with model.dpt_head, the U-Net without its output layers + a DPT head (fresh, or
    the checkpoint's)."""
    m = cfg.model
    unet_dir = Path(m.unet) if resumed is None or m.lora_rank else resumed / export.unet_folder(cfg)
    strip = {"key_filter": strip_unet_head_keys, "prepare": prepare_dpt_unet} if m.dpt_head else {}
    unet = load_unet(unet_dir, **strip)
    head = None
    if m.dpt_head:
        head = DPTHead.from_pretrained(resumed / export.DPT_FOLDER) if resumed else fresh_dpt_head(unet, cfg)
        head.requires_grad_(True).train()
    if m.lora_rank:
        lora.add_lora(unet, m.lora_rank, m.lora_alpha, cfg.seed)  # the base frozen, adapters trainable
    else:
        unet.requires_grad_(True)
    unet.train()
    if m.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = OneStepParams(timestep=export.inference_timestep(cfg), embedding=m.embedding)
    return OneStepModel(unet, load_vae(Path(m.vae)), empty_text_embedding(m.embedding), m.task, params, dpt_head=head)


def fresh_dpt_head(unet, cfg: TrainConfig) -> DPTHead:
    """A DPT head for `unet`'s up-block widths (its block_out_channels, finest first), PyTorch's default
    initialisation drawn from seed cfg.seed (every process builds the same head)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return DPTHead(tuple(unet.config.block_out_channels), cfg.model.dpt_features)


class DPTNet(nn.Module):
    """U-Net features -> DPT head as one module: accelerate wraps it whole (one DDP syncs both), and the
    up-block hooks of `unet_up_block_features` sit on the plain U-Net inside, not on the wrapper."""

    def __init__(self, unet, head: DPTHead):
        super().__init__()
        self.unet, self.head = unet, head

    def forward(self, latent: torch.Tensor, timesteps: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """latent [B, 4, h, w], timesteps int64 [B], embed [B, T, 1024] -> raw head output [B, 1, 8h, 8w]
        (sides of 8h, 8w multiples of 32; DPTHead.forward)."""
        return self.head(unet_up_block_features(self.unet, latent, timesteps, embed))


def trainable_part(model: OneStepModel) -> nn.Module:
    """What the optimiser updates and accelerate wraps: the U-Net, or the U-Net + DPT head."""
    return model.unet if model.dpt_head is None else DPTNet(model.unet, model.dpt_head)


def recipe_loss(model: OneStepModel, net, batch: dict, weights) -> tuple[torch.Tensor, dict]:
    """Per-sample total loss [B] and its weighted terms {name: [B]} for one micro-batch.

    batch: rgb, target [B, 3, H, W] in [-1, 1], mask bool [B, 1, H, W], timesteps int64 [B];
    `net` is the (possibly DDP-wrapped) `trainable_part(model)`.

    DPT head: its raw output is supervised in pixel space with the depth terms (pixel MSE + SSI +
    gradient matching against the normalised target's channel 0), as GenPercept's DPT-head config trains
    it (`mse_loss`, `least_square_ssi_loss`, `grad_loss`; no latent term). Inference min-maxes the output
    per image, so only its shape counts there: SSI and gradient matching are what shape it, the pixel
    MSE keeps its scale anchored to the [-1, 1] target so the optimisation stays well conditioned.
    """
    rgb, target, mask = batch["rgb"], batch["target"], batch["mask"]
    embed = model.embedding.expand(rgb.shape[0], -1, -1)  # [B,T,1024]
    if model.dpt_head is not None:
        with torch.no_grad():
            rgb_latent = model.encode(rgb)  # [B,4,h,w]
        pred = net(rgb_latent, batch["timesteps"], embed).float()  # [B,1,H,W]
        terms = task_loss(model.task, pred, target, mask, weights)
        return sum(terms.values()), terms
    with torch.no_grad():
        rgb_latent, target_latent = model.encode(rgb), model.encode(target)  # [B,4,h,w] each
    v = net(rgb_latent, batch["timesteps"], encoder_hidden_states=embed, return_dict=False)[0]
    pred = sd.to_x0(v, rgb_latent, 0.0, "v")  # −v
    terms = {}
    if weights.latent_mse > 0:
        terms["latent_mse"] = weights.latent_mse * latent_mse(pred.float(), target_latent.float(), mask,
                                                              weights.reduction)
    if _image_weights(model.task, weights):
        decoded = sd.decode(model.vae, pred, model.scale).float()  # [B,3,H,W]
        terms.update(task_loss(model.task, decoded, target, mask, weights))
    return sum(terms.values()), terms


def _image_weights(task: str, w) -> bool:
    """Whether any image-level term of `task` has a positive weight (else the decoder is skipped)."""
    return any(getattr(w, name) > 0 for name in TASK_TERMS[task])


def lr_factor(step: int, warmup: int, decay_steps: int, final_ratio: float) -> float:
    """The reference's IterExponential: s / warmup while s < warmup (the first step's lr is 0), then
    final_ratio^((s − warmup)/(decay_steps − warmup)), final_ratio from step decay_steps on."""
    if step < warmup:
        return step / warmup
    if step >= decay_steps:
        return final_ratio
    return final_ratio ** ((step - warmup) / (decay_steps - warmup))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.adam_8bit:
        try:
            import bitsandbytes
        except ImportError:
            raise ConfigError("optim.adam_8bit needs the bitsandbytes package: pip install bitsandbytes.") from None
        return bitsandbytes.optim.AdamW8bit(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def check_trackers(names: list[str]) -> None:
    """Refuse a tracker whose package is missing, before any work."""
    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for name in names:
        if importlib.util.find_spec(packages[name]) is None:
            raise ConfigError(f"trackers asks for {name}, which is not installed: pip install {packages[name]}.")


class Trainer:
    """Holds the accelerator, model, optimiser, lr schedule and data plan of one run in `cfg.output`."""

    def __init__(self, cfg: TrainConfig, validator=None, accelerator=None):
        """validator(checkpoint_dir) -> {metric: value}: scores each saved checkpoint (the CLI passes
        `genpercept eval` on cfg.validation's dataset); None = no validation."""
        from accelerate import Accelerator

        self.cfg, self.run, self.validator = cfg, Path(cfg.output), validator
        check_trackers(cfg.trackers)
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError('mixed_precision = "fp16" needs a CUDA GPU; use "bf16" or "no" on the CPU.')
        precision = resolved_precision(cfg, torch.cuda.is_available())
        # cpu=True without CUDA: accelerate then sets up gloo for several CPU processes instead of running each alone
        self.acc = accelerator or Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                                              log_with=cfg.trackers or None, project_dir=str(self.run))
        self.micro_steps = check_world(cfg, self.acc.num_processes)
        self.pool = ThreadPoolExecutor(cfg.data.workers) if cfg.data.workers > 0 else None
        self.sources = [train_data.make_source(s.kind, s.path, cfg.model.task, tuple(s.size or cfg.data.size),
                                               cfg.data.depth_quantile, s.depth_range or None, cfg.data.normal_mask)
                        for s in cfg.data.sources]
        fixed = None if cfg.model.timestep == "random" else int(cfg.model.timestep)
        self.plan = train_data.BatchPlan([len(s) for s in self.sources], [s.ratio for s in cfg.data.sources],
                                         cfg.seed, cfg.data.flip_p, fixed)
        check_writable(self.run, "output", folder=True)  # read-only or full: refused before the model loads
        # the newest checkpoint's state, read before the model: a missing or corrupt one is refused at once
        self.resumed_from, state = export.resume_point(self.run)
        self.model = build_model(cfg, self.resumed_from).to(self.acc.device)
        trainable = trainable_part(self.model)
        self.optimizer = make_optimizer(cfg, [p for p in trainable.parameters() if p.requires_grad])
        o = cfg.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(lr_factor, warmup=o.warmup_steps, decay_steps=o.decay_steps,
                                              final_ratio=o.final_ratio))
        self.net, self.optimizer = self.acc.prepare(trainable, self.optimizer)
        self.step = 0
        if state is not None:
            self._load_state(state)

    # -- state --------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "plan": self.plan.state_dict(), "config": asdict(self.cfg),
                "adapters": lora.adapter_state(self.acc.unwrap_model(self.net))}

    def _load_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.plan.load_state_dict(state["plan"])
        lora.load_adapter_state(self.acc.unwrap_model(self.net), state.get("adapters", {}))
        self.step = int(state["step"])

    def save(self) -> Path | None:
        """Write RUN/checkpoint-<step> (main process) and evaluate it when a validation set is configured."""
        path = None
        if self.acc.is_main_process:
            vae_dir = Path(self.cfg.model.vae)
            path = export.save_checkpoint(self.run, self.step, self.model, self.cfg, vae_dir, self._state())
            export.prune_states(self.run, self.cfg.keep_states)
            self._validate(path)
        self.acc.wait_for_everyone()
        return path

    def _validate(self, path: Path) -> None:
        if self.validator is None:
            return
        metrics = {f"val/{k}": float(x) for k, x in self.validator(path).items() if isinstance(x, (int, float))}
        self._write_log({"step": self.step, **metrics})

    # -- the loop -----------------------------------------------------------------------------------
    def train_step(self) -> StepRecord:
        """One optimiser step over the next global batch; returns its global-mean loss."""
        start = time.perf_counter()
        cfg, acc = self.cfg, self.acc
        draws = self.plan.next_batch(cfg.optim.effective_batch, cfg.optim.batch_size, NUM_TRAIN_TIMESTEPS)
        per_rank = cfg.optim.effective_batch // acc.num_processes
        share = draws[acc.process_index * per_rank : (acc.process_index + 1) * per_rank]
        sums: dict[str, torch.Tensor] = {}
        for i in range(self.micro_steps):
            chunk = share[i * cfg.optim.batch_size : (i + 1) * cfg.optim.batch_size]
            loaded = train_data.load_batch(self.sources, chunk, cfg.model.task, self.pool)
            batch = {k: v.to(acc.device) for k, v in loaded.items()}
            last = i == self.micro_steps - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.net), acc.autocast():
                total, terms = recipe_loss(self.model, self.net, batch, cfg.loss)
                acc.backward(total.sum() / per_rank)
            for name, value in {"loss": total, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float().sum()
        if cfg.optim.max_grad_norm > 0:
            acc.clip_grad_norm_(self.net.parameters(), cfg.optim.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        means = self._global_means(sums)
        elapsed = time.perf_counter() - start
        loss = means.pop("loss")
        return StepRecord(self.step, loss, means, lr, cfg.optim.effective_batch / elapsed)

    def _global_means(self, sums: dict) -> dict:
        """Per-term sums of every process -> means over the global batch (floats, the same on every rank)."""
        names = list(sums)
        local = torch.stack([torch.as_tensor(sums[n], device=self.acc.device) for n in names])
        gathered = self.acc.gather(local).view(self.acc.num_processes, len(names)).sum(0)
        return {n: float(x) / self.cfg.optim.effective_batch for n, x in zip(names, gathered)}

    def fit(self, on_step=None) -> list[StepRecord]:
        """Train until `cfg.steps`, logging every `log_every` steps and saving every `save_every` (and at the
        end); `on_step(record)` is called after each step. Returns this call's records."""
        cfg = self.cfg
        if self.acc.is_main_process:
            self.run.mkdir(parents=True, exist_ok=True)
            self._trim_log()
        if cfg.trackers:
            self.acc.init_trackers("genpercept_train", config=_flat(asdict(cfg)))
        records = []
        while self.step < cfg.steps:
            record = self.train_step()
            records.append(record)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._write_log(asdict(record))
            if on_step is not None:
                on_step(record)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
        if cfg.trackers:
            self.acc.end_training()
        return records

    def _trim_log(self) -> None:
        """Drop the RUN/loss.jsonl lines past the step training resumes from (a stopped run logged them after
        its last checkpoint; they are trained again), so each step is logged once."""
        path = self.run / LOSS_FILE
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= self.step]
        if len(kept) < len(lines):
            atomic_write(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))

    def _write_log(self, entry: dict) -> None:
        """Append to RUN/loss.jsonl (always) and to the configured trackers (main process)."""
        if not self.acc.is_main_process:
            return
        try:
            with open(self.run / LOSS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.run / LOSS_FILE) from None
            raise
        if self.cfg.trackers:
            flat = {k: v for k, v in _flat(entry).items() if isinstance(v, (int, float)) and k != "step"}
            self.acc.log(flat, step=entry["step"])


def _logged_step(line: str) -> float:
    """The step of a loss.jsonl line; infinity for a line cut short by a killed run (so it is dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _flat(table: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become strings (tracker configs take scalars)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return out


def train(cfg: TrainConfig, on_step=None, validator=None) -> Trainer:
    """Run (or resume) the training `cfg` describes; returns the trainer (its `run` holds the checkpoints)."""
    trainer = Trainer(cfg, validator)
    if trainer.step >= cfg.steps:
        raise GenPerceptError(f"{trainer.resumed_from} is already at step {trainer.step} of {cfg.steps}; "
                              "raise steps to train further.")
    trainer.fit(on_step)
    return trainer
