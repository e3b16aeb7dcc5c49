"""Low-rank adapters on the U-Net's attention projections (`model.lora_rank`), merged into the weights on export.

    y = W x + b + scale · B (A x)      A [r, in] ~ N(0, 1/r²), B [out, r] = 0, scale = alpha / r

Facts from GenPercept's LoRA ablation (configs `ablation/lora/*rank_{4,16,64,256,1024}`, trainer): the base
U-Net frozen, adapters on every attention's `to_q`, `to_k`, `to_v` and `to_out.0`, alpha = rank (scale 1),
Gaussian init of A, lr 3e-5 as the full fine-tune; the paper finds LoRA worse than fine-tuning the whole
U-Net (its ablation's public configs try ranks 4 to 1024). Written here rather than through `peft`: export
must merge the adapters into a plain U-Net state dict, and diffusers' peft integration (`add_adapter`,
fuse/unload) changed across the diffusers versions we support; this wrapper is 60 lines and needs no
extra package.
"""

from __future__ import annotations

import torch
from torch import nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # names (relative to an attention module) that get adapters


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update; `base` keeps the original weights untouched."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        a = torch.randn(rank, base.in_features, generator=generator) / rank  # peft's "gaussian" init
        self.lora_a = nn.Parameter(a.to(base.weight))  # [r, in]
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank).to(base.weight))  # [out, r]: starts as W

    def forward(self, x: torch.Tensor, *_unused) -> torch.Tensor:
        # diffusers < 0.28 without peft passes a LoRA `scale` positional argument to attention projections
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + scale · B A, [out, in], in the base weight's dtype."""
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        return (self.base.weight.float() + delta).to(self.base.weight.dtype)


def add_lora(unet: nn.Module, rank: int, alpha: float, seed: int) -> int:
    """Freeze `unet` and put a LoRALinear on every attention projection named in TARGETS, in place.

    alpha <= 0 means alpha = rank. A is drawn from a generator seeded `seed`, layer by layer in module
    order, so every process builds the same adapters. Returns the number of layers wrapped.
    """
    unet.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    targets = [(name, module) for name, module in unet.named_modules()
               if isinstance(module, nn.Linear) and any(name.endswith("." + t) for t in TARGETS)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(module, rank, alpha if alpha > 0 else float(rank), generator))
    return len(targets)


def adapter_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' A and B matrices, {name: tensor} (what resuming needs besides the frozen base)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}


def load_adapter_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved A and B matrices into the adapters of `module` (same names and shapes)."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict as if it had no adapters: `x.base.weight` -> `x.weight` = W + scale · B A,
    `x.base.bias` -> `x.bias`, A and B dropped. Without adapters: the plain state dict."""
    wrapped = {name: m for name, m in module.named_modules() if isinstance(m, LoRALinear)}
    state = {}
    for key, value in module.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in wrapped:  # an adapter's own A or B
            continue
        layer, _, part = owner.rpartition(".")
        if part == "base" and layer in wrapped:
            value = wrapped[layer].merged_weight() if leaf == "weight" else value
            key = f"{layer}.{leaf}"
        state[key] = value.detach()
    return state
