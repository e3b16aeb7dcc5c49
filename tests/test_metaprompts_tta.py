"""Meta Prompts test-time protocol on hand-checkable cases: depth shift windows + flip, segmentation sliding
windows, keep-ratio rescale sizes, multi-scale + flip aggregation, and the TTA settings."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from genpercept_cli.errors import GenPerceptError
from genpercept_cli.models.metaprompts.tta import (
    AUG_TEST_RATIOS,
    DepthTTA,
    SegTTA,
    aug_scale,
    depth_flip_shift_windows,
    fill_uncovered_columns,
    keep_ratio_size,
    seg_multi_scale_flip,
    shift_window_offsets,
    slide_window_boxes,
    slide_window_logits,
)


def _column_ramp(batch: torch.Tensor) -> torch.Tensor:
    """A predictor that is not flip-symmetric: channel 0 plus the column index inside the window."""
    return batch[:, :1] + torch.arange(batch.shape[-1], dtype=batch.dtype)


def _image(b, h, w, seed=0):
    return torch.randn((b, 3, h, w), generator=torch.Generator().manual_seed(seed))


def _uint8_image(h, w, seed=0) -> np.ndarray:
    """A random uint8 [h, w, 3] photo stand-in."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _normalised(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [h, w, 3] -> x [1, 3, h, w] = rgb / 255 * 2 - 1, as the pipeline feeds the model."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0


# -- depth -------------------------------------------------------------------------------------------------

def test_shift_window_offsets_nyu():
    assert shift_window_offsets(640, 480, 2) == [0, 160]


def test_shift_window_offsets_kitti():
    offsets = shift_window_offsets(1216, 352, 16)
    assert offsets == [57 * i for i in range(16)]  # (1216 - 352) // 15 = 57
    assert offsets[-1] + 352 == 1207  # columns 1207-1215 are left uncovered


@pytest.mark.parametrize(("width", "window", "shift_size"), [(640, 480, 1), (480, 480, 2), (300, 480, 16)])
def test_shift_window_offsets_single_window(width, window, shift_size):
    assert shift_window_offsets(width, window, shift_size) == [0]


def test_depth_windows_average_by_coverage_without_flip():
    # 4x6 image, 4-wide windows at offsets 0 and 2: columns 2-3 are covered twice.
    x = _image(1, 4, 6)
    out = depth_flip_shift_windows(_column_ramp, x, window=4, shift_size=2, flip=False)
    # Column c gets c (first window) and c - 2 (second window) where each covers it.
    ramp = torch.tensor([0.0, 1.0, (2 + 0) / 2, (3 + 1) / 2, 2.0, 3.0])
    torch.testing.assert_close(out, x[:, :1] + ramp)


def test_depth_flip_averages_a_window_with_its_flipped_back_prediction():
    # Plain: x + j; flipped then flipped back: x + (w - 1 - j); mean: x + (w - 1) / 2 everywhere.
    x = _image(2, 4, 6, seed=1)
    out = depth_flip_shift_windows(_column_ramp, x, window=4, shift_size=2, flip=True)
    torch.testing.assert_close(out, x[:, :1] + 1.5)


def test_depth_window_defaults_to_the_image_height_and_batch_layout():
    x = _image(2, 4, 6, seed=2)
    seen = []

    def record(batch):
        seen.append(batch.clone())
        return batch[:, :1]

    out = depth_flip_shift_windows(record, x, shift_size=2, flip=True)
    (batch,) = seen
    assert batch.shape == (8, 3, 4, 4)  # 2 windows x 2 images, then the same flipped
    for i, o in enumerate((0, 2)):  # window-major: [window 0 of each image, window 1 of each image]
        torch.testing.assert_close(batch[2 * i : 2 * i + 2], x[..., o : o + 4])
    torch.testing.assert_close(batch[4:], batch[:4].flip(-1))
    torch.testing.assert_close(out, x[:, :1])  # a flip-equivariant predictor is returned unchanged


def test_depth_kitti_leaves_columns_1207_to_1215_nan():
    x = _image(1, 352, 1216, seed=3)
    sizes = []

    def identity(batch):
        sizes.append(batch.shape[0])
        return batch[:, :1]

    out = depth_flip_shift_windows(identity, x, window=352, shift_size=16, flip=True)
    assert sizes == [32]  # 16 windows + their flips, as the reference batches them
    assert torch.isnan(out[..., 1207:]).all() and not torch.isnan(out[..., :1207]).any()
    torch.testing.assert_close(out[..., :1207], x[:, :1, :, :1207])


def test_depth_uncovered_gaps_between_windows_are_nan():
    # Width 9, window 2, 3 windows: stride 3 -> covered 0-1, 3-4, 6-7; 2, 5, 8 are not.
    out = depth_flip_shift_windows(_column_ramp, _image(1, 2, 9), window=2, shift_size=3, flip=False)
    nan_columns = torch.isnan(out[0, 0]).all(dim=0).nonzero().flatten().tolist()
    assert nan_columns == [2, 5, 8]


def test_depth_max_batch_splits_calls_without_changing_the_result():
    x = _image(1, 4, 10, seed=4)
    sizes = []

    def ramp(batch):
        sizes.append(batch.shape[0])
        return _column_ramp(batch)

    whole = depth_flip_shift_windows(ramp, x, window=4, shift_size=4, flip=True)
    chunked = depth_flip_shift_windows(ramp, x, window=4, shift_size=4, flip=True, max_batch=3)
    assert sizes == [8, 3, 3, 2]
    torch.testing.assert_close(chunked, whole)


def test_depth_window_maps_smaller_than_the_window_are_resized_to_it():
    # A 12-high image: the decoder's map is 8 (8 x (12 // 8)) high; constants survive the bilinear resize.
    x = _image(1, 12, 20, seed=11)
    out = depth_flip_shift_windows(lambda b: torch.full((b.shape[0], 1, 8, 8), 3.0), x, shift_size=3)
    torch.testing.assert_close(out, torch.full((1, 1, 12, 20), 3.0))


def test_fill_uncovered_columns_copies_the_nearest_covered_column():
    depth = torch.tensor([[[[1.0, 2.0, math.nan, 4.0, math.nan, math.nan]]]]).expand(1, 1, 2, 6).clone()
    filled = fill_uncovered_columns(depth)
    torch.testing.assert_close(filled[0, 0, 0], torch.tensor([1.0, 2.0, 2.0, 4.0, 4.0, 4.0]))
    full = torch.ones((1, 1, 2, 3))
    assert fill_uncovered_columns(full) is full


# -- segmentation windows --------------------------------------------------------------------------------

def test_slide_boxes_ade_512x683():
    assert slide_window_boxes(512, 683, 512, 341) == [(0, 512, 0, 512), (0, 512, 171, 683)]


def test_slide_boxes_cityscapes_1024x2048():
    assert slide_window_boxes(1024, 2048, 1024, 512) == [(0, 1024, 0, 1024), (0, 1024, 512, 1536),
                                                         (0, 1024, 1024, 2048)]


def test_slide_boxes_small_grid_clamps_the_last_window_to_the_border():
    # 5x7, crop 3, stride 2: 2 rows (y 0-3, 2-5), 3 columns (x 0-3, 2-5, 4-7; the last is clamped).
    assert slide_window_boxes(5, 7, 3, 2) == [(0, 3, 0, 3), (0, 3, 2, 5), (0, 3, 4, 7),
                                              (2, 5, 0, 3), (2, 5, 2, 5), (2, 5, 4, 7)]


def test_slide_boxes_crop_larger_than_the_image_is_the_image():
    assert slide_window_boxes(3, 4, 5, 2) == [(0, 3, 0, 4)]


def test_slide_logits_average_overlapping_windows_per_pixel():
    x = _image(2, 5, 7, seed=5)

    def window_id(batch):  # each window's logits are its index in the grid (images of a window share it)
        ids = torch.arange(batch.shape[0] // 2, dtype=batch.dtype).repeat_interleave(2)
        return ids[:, None, None, None].expand(-1, 2, *batch.shape[-2:])

    out = slide_window_logits(window_id, x, crop=3, stride=2, num_classes=2)
    assert out.shape == (2, 2, 5, 7)
    assert out[0, 0, 0, 0] == 0  # window 0 only
    assert out[1, 1, 2, 2] == (0 + 1 + 3 + 4) / 4  # the four windows around the centre-left
    assert out[0, 0, 2, 4] == (1 + 2 + 4 + 5) / 4
    assert out[1, 0, 4, 6] == 5  # the clamped bottom-right window only


def test_slide_logits_place_each_window_where_it_was_cut():
    x = _image(1, 5, 7, seed=6)
    out = slide_window_logits(lambda batch: batch[:, :2], x, crop=3, stride=2, num_classes=2)
    torch.testing.assert_close(out, x[:, :2])


def test_slide_logits_resize_a_stride_4_map_to_the_crop():
    x = _image(1, 8, 12, seed=7)
    seen = []

    def quarter(batch):
        seen.append(tuple(batch.shape))
        return torch.full((batch.shape[0], 3, 2, 2), 0.25)

    out = slide_window_logits(quarter, x, crop=8, stride=4, num_classes=3)
    assert seen == [(2, 3, 8, 8)]  # windows x 0-8 and 4-12, batched together
    torch.testing.assert_close(out, torch.full((1, 3, 8, 12), 0.25))


def test_slide_logits_refuse_a_wrong_class_count():
    with pytest.raises(ValueError, match="predict must return"):
        slide_window_logits(lambda b: b[:, :2], _image(1, 4, 4), crop=4, stride=4, num_classes=3)


# -- keep-ratio sizes and scales ----------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "scale", "expected"), [
    ((480, 640), (2048, 512), (512, 683)),  # short side to 512: 640 * 512 / 480 = 682.67 -> 683
    ((640, 480), (2048, 512), (683, 512)),  # portrait
    ((512, 683), (2048, 512), (512, 683)),  # already fits
    ((256, 2560), (2048, 512), (205, 2048)),  # long side caps: factor 0.8, 204.8 -> 205
    ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes: native size
    ((480, 640), (2304, 576), (576, 768)),  # ADE ratio 1.125: factor 1.2
    ((1024, 2048), (3072, 1536), (1536, 3072)),  # Cityscapes ratio 1.5
])
def test_keep_ratio_size(size, scale, expected):
    assert keep_ratio_size(*size, scale) == expected


def test_aug_scales_of_the_paper_ratios():
    assert [aug_scale((2048, 512), r) for r in AUG_TEST_RATIOS] == [
        (2048, 512), (2304, 576), (2560, 640), (2816, 704), (3072, 768)]
    assert aug_scale((2048, 1024), 1.375) == (2816, 1408)


# -- multi-scale + flip ------------------------------------------------------------------------------------

def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_seg_flip_averages_softmax_flipped_back():
    # 4x8 image at img_scale (8, 4): no rescale; crop 4 stride 4 -> two side-by-side windows. Class-0 logit is
    # the column inside the window, class 1 is 0: plain p0 = sigmoid(c % 4); the flipped pass, flipped back,
    # gives sigmoid(3 - c % 4).
    x = _image(1, 4, 8, seed=8)

    def ramp(batch):
        logits = torch.zeros((batch.shape[0], 2, *batch.shape[-2:]))
        logits[:, 0] = torch.arange(batch.shape[-1], dtype=torch.float32)
        return logits

    probs = seg_multi_scale_flip(ramp, x, img_scale=(8, 4), crop=4, stride=4, num_classes=2, flip=True)
    expected = torch.tensor([(_sigmoid(c % 4) + _sigmoid(3 - c % 4)) / 2 for c in range(8)])
    torch.testing.assert_close(probs[0, 0], expected.expand(4, 8))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones((1, 4, 8)))


def test_seg_scales_rescale_keeping_ratio_and_average_probabilities():
    # Ratios 1.0 and 1.5 of img_scale (8, 4) make the 4x8 image 4x8 and 6x12; one window each (crop 100).
    x = _image(1, 4, 8, seed=9)
    seen = []

    def by_width(batch):  # constant logits [w / 4, 0]: a different answer per scale
        seen.append(tuple(batch.shape[-2:]))
        logits = torch.zeros((batch.shape[0], 2, *batch.shape[-2:]))
        logits[:, 0] = batch.shape[-1] / 4
        return logits

    probs = seg_multi_scale_flip(by_width, x, img_scale=(8, 4), crop=100, stride=50, num_classes=2,
                                 scales=(1.0, 1.5), flip=True)
    assert seen == [(4, 8), (4, 8), (6, 12), (6, 12)]
    assert probs.shape == (1, 2, 4, 8)
    torch.testing.assert_close(probs[0, 0], torch.full((4, 8), (_sigmoid(2.0) + _sigmoid(3.0)) / 2))


def test_seg_single_scale_is_softmax_of_resized_window_logits():
    # 6x10 image, img_scale (8, 4): rescaled to 4x7 (factor 2/3, 6.67 -> 7) as uint8 by OpenCV, windows at
    # that size, the logits resized back to 6x10 before the softmax.
    rgb = _uint8_image(6, 10, seed=10)
    x = _normalised(rgb)
    probs = seg_multi_scale_flip(lambda b: b * 2, x, img_scale=(8, 4), crop=4, stride=3, num_classes=3)
    scaled = _normalised(cv2.resize(rgb, (7, 4), interpolation=cv2.INTER_LINEAR))
    logits = torch.nn.functional.interpolate(scaled * 2, size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs, logits.softmax(dim=1))


def _mmcv_rescale_size(h: int, w: int, scale) -> tuple[int, int]:
    """mmcv rescale_size with keep_ratio, written out here: factor min(long/long edge, short/short edge),
    sides int(side * factor + 0.5)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def test_seg_rescales_the_uint8_image_with_opencv_at_every_scale_and_flip():
    """mmseg's test: per ratio, img_scale x ratio (truncated) -> keep-ratio size -> cv2 INTER_LINEAR on the
    uint8 image -> flip -> normalise. The crops predict sees are exactly those images."""
    rgb = _uint8_image(37, 53, seed=11)
    seen = []

    def record(batch):
        seen.append(batch.clone())
        return torch.zeros((batch.shape[0], 2, *batch.shape[-2:]))

    seg_multi_scale_flip(record, _normalised(rgb), img_scale=(64, 32), crop=200, stride=100, num_classes=2,
                         scales=(1.0, 1.375), flip=True)
    expected = []
    for ratio in (1.0, 1.375):
        h, w = _mmcv_rescale_size(37, 53, (int(64 * ratio), int(32 * ratio)))
        image = _normalised(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR))
        expected += [image, image.flip(-1)]
    assert [tuple(b.shape[-2:]) for b in expected] == [(32, 46), (32, 46), (44, 63), (44, 63)]
    assert len(seen) == 4
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_imrescale_keeps_an_image_already_at_its_size():
    # Cityscapes at 1024x2048 and ratio 1 is not resized at all.
    from genpercept_cli.models.metaprompts.tta import imrescale_uint8

    x = _normalised(_uint8_image(8, 16, seed=12))
    assert imrescale_uint8(x, (8, 16)) is x
    assert imrescale_uint8(x.half(), (4, 8)).dtype == torch.float16


# -- settings ----------------------------------------------------------------------------------------------

def test_tta_settings_defaults_and_paper_multi_scale_flip():
    assert DepthTTA() == DepthTTA(flip=True, shift_size=1)
    assert SegTTA() == SegTTA(scales=(1.0,), flip=False)
    assert SegTTA.multi_scale_flip() == SegTTA(scales=(1.0, 1.125, 1.25, 1.375, 1.5), flip=True)


@pytest.mark.parametrize("make", [lambda: DepthTTA(shift_size=0), lambda: SegTTA(scales=()),
                                  lambda: SegTTA(scales=(1.0, -0.5))])
def test_tta_settings_refuse_impossible_values(make):
    with pytest.raises(GenPerceptError):
        make()
