"""What every model family provides, and the registry of families.

A family turns a fetched checkpoint into a `DenseModel`: an `nn.Module` whose `forward` maps a batch of
normalised images to the task's dense output. Everything around it (resizing, batching, precision,
output files, scoring) is family-independent and lives in `pipeline`, `runtime` and the tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoints import OUTPUT_KINDS  # noqa: F401  (re-exported)
from ..errors import CheckpointError
from ..resize import model_input, processed_size


class DenseModel(nn.Module):
    """A dense predictor.

    forward(x): x float [B, 3, h, w] in [-1, 1] at the processed size -> float [B, C, h', w'] in [0, 1]
    (C = `channels`; h', w' is the processed size or, for heads with a native size, that size; values
    may be NaN where the computation overflowed, so callers can detect it).
    """

    task: str = ""
    output_kind: str = ""
    channels: int = 1
    # How the family's reference prepares the input and resizes the prediction back (resize.py):
    size_rule: str = "floor"  # resize.SIZE_RULES
    rounds_input: bool = True  # the resized image is rounded to uint8 (False: kept in float)
    output_antialias: bool = True  # the prediction goes back to the input size with antialias

    def processed_size(self, height: int, width: int, processing_res: int) -> tuple[int, int]:
        """The size the model sees for an image of `height` x `width` (the family's size rule)."""
        return processed_size(height, width, processing_res, self.size_rule)

    def model_input(self, image, size: tuple[int, int]) -> torch.Tensor:
        """uint8 [H, W, 3] -> [1, 3, h, w] in [0, 255] at `size`: uint8, or float32 where the family's
        reference resizes without rounding (`rounds_input`)."""
        return model_input(image, size, rounded=self.rounds_input)


@dataclass(frozen=True)
class Family:
    """A model family: its name (a checkpoint spec's `family`) and how to build its model.

    build(files, dtype) -> DenseModel on the CPU in `dtype`, weights frozen for inference (callers that
    train switch `requires_grad` back on).
    dtype: the precision `auto` picks on every device, where the family's reference runs in one
    precision whatever the device (None: SPEC §3's fp16 on CUDA, fp32 elsewhere).
    sd_one_step: its model holds SD's one-step modules (`unet` called as a module, `vae` with encoder
    and decoder), on which `bench-speed`'s Marigold protocols and diffusers peer can run.
    """

    name: str
    build: Callable[..., DenseModel]
    doc: str = ""
    dtype: torch.dtype | None = None
    sd_one_step: bool = True


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make `family` buildable by name; a later registration of the same name replaces it."""
    FAMILIES[family.name] = family
    return family


def family_of(spec) -> Family:
    """The registered family of a checkpoint spec (CheckpointError naming the known ones)."""
    family = FAMILIES.get(spec.family)
    if family is None:
        raise CheckpointError(
            f"checkpoint {spec.name!r} is of family {spec.family!r}, which this version does not "
            f"know; known: {', '.join(FAMILIES)}."
        )
    return family


def build_model(files, dtype: torch.dtype = torch.float32) -> DenseModel:
    """The DenseModel of a fetched checkpoint (`checkpoints.CheckpointFiles`), by its spec's family."""
    return family_of(files.spec).build(files, dtype)
