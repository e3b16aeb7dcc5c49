"""What a task is: its prediction's shape and meaning, post-processing, output files, and how a saved
prediction is read back and checked for scoring.

Predictions are float32 at the input image's size: [H, W] for 1-channel tasks, [H, W, 3] otherwise.
How they are encoded may depend on the checkpoint: its output kind (`checkpoints.OUTPUT_KINDS`, e.g.
metric depth in metres) and, for segmentation, its label set (`palette.LABEL_SETS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, GenPerceptError
from ..files import exr_writer, npy_writer, png_writer, quantize, read_numeric_npy
from ..images import read_exr_channels

# rows of the float32 prediction, and the same rows of the uint8 [H, W, 3] input image (or None)
# -> the array stored for them (uint8 / uint16 for PNGs)
Encoder = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
# what a format's encoding returns -> an `atomic_write` writer of its file (`files.npy_writer`, ...)
Writer = Callable[[Any], Callable[[Path], None]]


@dataclass(frozen=True)
class Format:
    """One output file of a task.

    suffix: appended to the image stem ("_pred.png": img.jpg -> img_pred.png).
    encode: the stored array, computed per pixel (so it may run on stripes of rows); None stores the
        float32 prediction as it is.
    needs_image: encode reads the input image, which must then be uint8 [H, W, 3] at the prediction's size.
    writer: what encode returned -> the `files.atomic_write` writer of the file (default: np.save for a
        ".npy" suffix, PNG otherwise).
    per_pixel: False for encodings of the whole image at once (point clouds, meshes): never striped.
    """

    suffix: str
    encode: Encoder | None = None
    needs_image: bool = False
    writer: Writer | None = None
    per_pixel: bool = True

    def __post_init__(self):
        if self.writer is None:  # the two writers every task shares, by suffix
            object.__setattr__(self, "writer", npy_writer if self.suffix.endswith(".npy") else png_writer)


NPY = Format("_pred.npy")  # every task's float32 prediction, the file `genpercept eval --predictions` reads
EXR = Format("_pred.exr", writer=exr_writer)  # the same float32 values for compositors; eval reads it too


def to_uint8(pred: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """[0, 1] (clipped) -> round(v * 255) as uint8."""
    return quantize(pred, np.uint8)


def to_uint16(pred: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """[0, 1] (clipped) -> round(v * 65535) as uint16."""
    return quantize(pred, np.uint16)


@dataclass(frozen=True)
class Task:
    """A dense-prediction task. Subclasses override the methods where their task differs.

    name: the task's name (`--task`, a checkpoint spec's `task`).
    channels: of the post-processed prediction: 1 ([H, W]) or 3 ([H, W, 3]); the model's output may have
        more (class scores [K, H, W] become ids [H, W]).
    output: what a prediction means, in words (a checkpoint spec's default `output`).
    output_kind: how a checkpoint of this task is post-processed and scored unless its spec says
        otherwise (one of `checkpoints.OUTPUT_KINDS`).
    formats: format name -> Format, in documentation order.
    default_formats: the formats written when none are chosen.
    aliases: other names for formats, e.g. {"png": "png16"}: "png" is every task's main <stem>_pred.png.
    benchmark: the task of the benchmarks that score it (`genpercept eval`), e.g. "depth" for disparity.
    """

    name: str
    channels: int
    output: str
    output_kind: str
    formats: Mapping[str, Format]
    default_formats: tuple[str, ...]
    benchmark: str
    aliases: Mapping[str, str] = field(default_factory=dict)

    def postprocess(self, p, kind: str | None = None):
        """p: float tensor [C, H, W], the model's output resized to the input size -> this task's prediction
        (here: clipped to [0, 1], the range of the one-step models' outputs). kind: the checkpoint's output
        kind (`checkpoints.OUTPUT_KINDS`; None = the task's), for tasks whose outputs differ by kind."""
        return p.clamp(0.0, 1.0)

    def encoder(self, name: str, pred: np.ndarray, kind: str | None = None,
                labels: str | None = None, scene=None) -> Encoder | None:
        """The encoding of format `name` for the prediction `pred` of a checkpoint of output kind `kind` and
        label set `labels` (None: the task's defaults); None stores the float32 prediction as it is. Tasks
        whose encoding needs image-wide values (a colour range) compute them from `pred` here. scene: the
        camera and 3D options of this image (`geometry.SceneOptions`) for point clouds and meshes."""
        return self.formats[name].encode

    def value_problem(self, pred: np.ndarray, kind: str | None = None) -> str | None:
        """Why the values of a prediction about to be written cannot be (here: NaN or inf), or None."""
        return None if np.isfinite(pred).all() else "contains NaN or inf"

    def flip(self, pred: np.ndarray, axes: str) -> np.ndarray:
        """`pred` with the axes `axes` (e.g. "yz") negated; only normals have axes."""
        raise GenPerceptError(f"A normal flip only applies to the normal task, not to {self.name}.")

    def read_saved(self, stem: Path) -> np.ndarray:
        """The prediction `genpercept predict` saved for <stem>: <stem>_pred.npy as stored, else the float32
        <stem>_pred.exr of tasks that write one (channel Y, or R, G, B stacked as [H, W, 3]).

        Raises FileNotFoundError when there is none, files.NotNumericPrediction for a .npy of anything
        but bool, integers or floats, ValueError for an unreadable EXR or one without those channels."""
        npy = Path(f"{stem}{NPY.suffix}")
        if npy.is_file():
            return read_numeric_npy(npy)
        exr = Path(f"{stem}{EXR.suffix}")
        if "exr" in self.formats and exr.is_file():
            try:
                channels = read_exr_channels(exr)
            except DataError as exc:  # scored as unreadable, like a broken .npy: not the end of the run
                raise ValueError(str(exc)) from None
            names = ("Y",) if self.channels == 1 else ("R", "G", "B")
            if not all(name in channels for name in names):
                raise ValueError(f"{exr} has the channels {', '.join(sorted(channels))}, not {', '.join(names)}")
            return channels["Y"] if self.channels == 1 else np.stack([channels[n] for n in names], axis=-1)
        raise FileNotFoundError(npy)

    def check_saved(self, pred: np.ndarray, size: tuple[int, int], kind: str | None = None) -> str | None:
        """Why `pred` cannot be scored against a ground truth of `size` (H, W), or None. kind: the output kind
        the files hold (None = the task's), e.g. metric depth, whose NaN marks pixels without a prediction."""
        problem = self._shape_problem(pred, size)
        if problem is None and np.issubdtype(pred.dtype, np.floating) and self.value_problem(pred, kind):
            return "contains non-finite values"
        return problem

    def _shape_problem(self, pred: np.ndarray, size: tuple[int, int]) -> str | None:
        expected = tuple(size) if self.channels == 1 else (*size, self.channels)
        return None if pred.shape == expected else f"has shape {pred.shape}, expected {expected}"
