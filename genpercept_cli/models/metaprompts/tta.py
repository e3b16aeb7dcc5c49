"""Meta Prompts' test-time protocol: depth flip + shift windows, segmentation sliding windows and
multi-scale + flip aggregation (SPEC §9). Network-agnostic: `predict` is any callable on a batch.

Depth (the public depth test): windows as wide as the image is high slide along the width at stride
(W - window) // (shift_size - 1); the batch is [windows..., flipped windows...]; a window's prediction
is the mean of its plain and flipped-back outputs; overlapping windows are averaged per pixel and
columns no window covers are NaN (0 / 0), as in the reference. NYU: 480x640, shift 2 -> offsets 0, 160.
KITTI: 352x1216, shift 16 -> stride 57, columns 1207-1215 uncovered.

Segmentation (mmseg 0.30 semantics): the image is rescaled keeping its aspect ratio to fit `img_scale`
(ADE20K (2048, 512), Cityscapes (2048, 1024)) times each ratio - as uint8, by OpenCV's bilinear, which is
what mmcv's `imrescale` does before mmseg normalises - optionally flipped, and cut into
crop-sized windows on a stride grid whose last row/column is clamped to the border; window logits are
averaged per pixel, resized to the original size, turned into probabilities (softmax), flipped back and
averaged over all augmentations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import GenPerceptError
from ...resize import resize_bilinear

Predict = Callable[[torch.Tensor], torch.Tensor]

AUG_TEST_RATIOS = (1.0, 1.125, 1.25, 1.375, 1.5)  # the authors' --aug-test scales (segmentation/test.py)


@dataclass(frozen=True)
class DepthTTA:
    """Depth test-time settings: flip averaging, and `shift_size` windows along the width
    (1 = one window over the whole image; NYU 2, KITTI 16)."""

    flip: bool = True
    shift_size: int = 1

    def __post_init__(self):
        if self.shift_size < 1:
            raise GenPerceptError(f"the shift-window count must be at least 1; got {self.shift_size}.")


@dataclass(frozen=True)
class SegTTA:
    """Segmentation test-time settings: rescale ratios of the dataset's img_scale, and flip."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if not self.scales or min(self.scales) <= 0:
            raise GenPerceptError(f"test scales must be one or more positive ratios; got {self.scales}.")

    @classmethod
    def multi_scale_flip(cls) -> SegTTA:
        """The paper's multi-scale + flip test (ratios 1.0-1.5 in steps of 0.125, plus flip)."""
        return cls(scales=AUG_TEST_RATIOS, flip=True)


def predict_in_chunks(predict: Predict, batch: torch.Tensor, max_batch: int | None = None) -> torch.Tensor:
    """predict(batch) run on at most `max_batch` samples at a time (None: all at once), concatenated."""
    if not max_batch or batch.shape[0] <= max_batch:
        return predict(batch)
    return torch.cat([predict(chunk) for chunk in batch.split(max_batch)])


# -- depth ------------------------------------------------------------------------------------------

def shift_window_offsets(width: int, window: int, shift_size: int) -> list[int]:
    """Left columns of the depth shift windows: i * ((width - window) // (shift_size - 1)), i < shift_size.

    One window at 0 when `shift_size` is 1 or the window spans the whole width.
    """
    if shift_size <= 1 or window >= width:
        return [0]
    stride = (width - window) // (shift_size - 1)
    return [i * stride for i in range(shift_size)]


def depth_flip_shift_windows(predict: Predict, x: torch.Tensor, window: int | None = None, shift_size: int = 1,
                             flip: bool = True, max_batch: int | None = None) -> torch.Tensor:
    """The depth test: x [B, 3, H, W] -> [B, C, H, W], windows and flips averaged; NaN where uncovered.

    `predict`: [N, 3, H, w] -> [N, C, h', w'], resized bilinearly to the window when smaller (the depth
    decoder's output is 8 x (side // 8)); it receives the windows of all B images window-major, then the
    same flipped (N = 2 x windows x B with flip). `window` defaults to H (square windows); a window wider
    than the image becomes the whole image.
    """
    b, _, _, width = x.shape
    win = min(window or x.shape[-2], width)
    offsets = shift_window_offsets(width, win, shift_size)
    batch = torch.cat([x[..., o : o + win] for o in offsets])  # [S*B, 3, H, win]
    if flip:
        batch = torch.cat([batch, batch.flip(-1)])
    pred = predict_in_chunks(predict, batch, max_batch)
    if pred.shape[0] != batch.shape[0]:
        raise ValueError(f"predict must return {batch.shape[0]} maps, one per window; got {tuple(pred.shape)}")
    pred = resize_bilinear(pred, batch.shape[-2:])  # windows whose side is not a multiple of 8
    if flip:
        n = batch.shape[0] // 2
        pred = (pred[:n] + pred[n:].flip(-1)) / 2
    total = pred.new_zeros((b, pred.shape[1], x.shape[-2], width))
    count = pred.new_zeros(width)
    for i, o in enumerate(offsets):
        total[..., o : o + win] += pred[i * b : (i + 1) * b]
        count[o : o + win] += 1
    return total / count  # 0 / 0 = NaN on columns no window covers


def fill_uncovered_columns(depth: torch.Tensor) -> torch.Tensor:
    """Replace NaN columns of [..., H, W] (those no shift window covers) by the nearest covered column.

    Covered pixels are unchanged; a map without NaN columns is returned as is.
    """
    uncovered = torch.isnan(depth).flatten(0, -2).all(dim=0)  # [W]
    if not uncovered.any() or uncovered.all():
        return depth
    columns = torch.arange(depth.shape[-1], device=depth.device)
    covered = columns[~uncovered]
    nearest = covered[(columns[:, None] - covered[None, :]).abs().argmin(dim=1)]  # ties: the left one
    return depth[..., nearest]


# -- segmentation -----------------------------------------------------------------------------------

def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def slide_window_boxes(height: int, width: int, crop: int | Sequence[int],
                       stride: int | Sequence[int]) -> list[tuple[int, int, int, int]]:
    """mmseg slide-inference windows (y1, y2, x1, x2), row by row.

    ceil((size - crop) / stride) + 1 positions per axis; the last one is clamped to end at the border,
    and a crop larger than the image shrinks to the image (no padding).
    """
    (crop_h, crop_w), (stride_h, stride_w) = _pair(crop), _pair(stride)
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for r in range(rows):
        y2 = min(r * stride_h + crop_h, height)
        for c in range(cols):
            x2 = min(c * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes


def slide_window_logits(predict: Predict, x: torch.Tensor, crop: int | Sequence[int], stride: int | Sequence[int],
                        num_classes: int, max_batch: int | None = None) -> torch.Tensor:
    """Sliding-window logits: x [B, 3, H, W] -> [B, K, H, W], the per-pixel mean over windows.

    `predict`: crops [N, 3, h, w] -> logits [N, K, h', w']; maps smaller than the crop (the head's
    stride-4 output) are resized bilinearly to the crop, as mmseg's encode_decode does. All windows of
    the B images go through `predict` together (window-major), `max_batch` at a time.
    """
    b, _, height, width = x.shape
    boxes = slide_window_boxes(height, width, crop, stride)
    batch = torch.cat([x[..., y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    logits = predict_in_chunks(predict, batch, max_batch)
    if logits.shape[:2] != (batch.shape[0], num_classes):
        raise ValueError(f"predict must return [{batch.shape[0]}, {num_classes}, h, w]; got {tuple(logits.shape)}")
    logits = resize_bilinear(logits, batch.shape[-2:])
    total = logits.new_zeros((b, num_classes, height, width))
    count = logits.new_zeros((height, width))
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        total[..., y1:y2, x1:x2] += logits[i * b : (i + 1) * b]
        count[y1:y2, x1:x2] += 1
    return total / count


def keep_ratio_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """(h, w) of an image rescaled as large as fits `scale` = (long edge, short edge) limits, keeping its
    aspect ratio (mmcv `rescale_size`: factor min(long / max(h, w), short / min(h, w)), rounded half up)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def imrescale_uint8(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """x [B, 3, H, W] = rgb / 255 * 2 - 1 -> the same for the uint8 images rgb resized to `size` (h, w) by
    OpenCV's bilinear (INTER_LINEAR, rounded to uint8): mmcv's `imrescale` in mmseg's test-time Resize,
    which runs before normalisation. x itself when the size does not change.

    The uint8 image is recovered from x by rounding, exact for x in fp32 or fp16 (bf16 has already lost
    it); OpenCV runs on the CPU, and the result comes back to x's device and dtype.
    """
    import cv2

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    rgb = ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    height, width = size
    resized = np.stack([cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in rgb])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0 * 2.0 - 1.0


def aug_scale(img_scale: Sequence[int], ratio: float) -> tuple[int, int]:
    """The img_scale of one test ratio, as mmseg's MultiScaleFlipAug computes it (truncated)."""
    return int(img_scale[0] * ratio), int(img_scale[1] * ratio)


def seg_multi_scale_flip(predict: Predict, x: torch.Tensor, img_scale: Sequence[int], crop: int | Sequence[int],
                         stride: int | Sequence[int], num_classes: int, scales: Sequence[float] = (1.0,),
                         flip: bool = False, max_batch: int | None = None) -> torch.Tensor:
    """Class probabilities [B, K, H, W] of x [B, 3, H, W] (at its original size), averaged over scales x flips.

    For each ratio r (and flip): `imrescale_uint8` to keep_ratio_size(H, W, aug_scale(img_scale, r)),
    flip, sliding-window logits, bilinear back to (H, W), softmax over classes, flip back. With
    scales (1.0,) and no flip this is mmseg's single-scale test.
    """
    height, width = x.shape[-2:]
    total = None
    flips = (False, True) if flip else (False,)
    for ratio in scales:
        scaled = imrescale_uint8(x, keep_ratio_size(height, width, aug_scale(img_scale, ratio)))
        for flipped in flips:
            view = scaled.flip(-1) if flipped else scaled
            logits = slide_window_logits(predict, view, crop, stride, num_classes, max_batch)
            probs = resize_bilinear(logits, (height, width)).softmax(dim=1)
            probs = probs.flip(-1) if flipped else probs
            total = probs if total is None else total + probs
    return total / (len(scales) * len(flips))
