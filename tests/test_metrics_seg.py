"""Segmentation confusion matrix, mIoU conventions and pixel accuracy (SPEC §6.5)."""

import math

import numpy as np
import pytest

from benchmarks.metrics.seg import SegAccumulator, confusion_matrix, decode_seg_prediction, iou_per_class
from genpercept_cli.palette import NYU40_CLASSES, NYU40_PALETTE


def _pixels_from_matrix(matrix):
    """(pred, gt) [1, N] id images whose confusion matrix is `matrix` (rows gt, columns pred)."""
    gt, pred = [], []
    for (g, p), count in np.ndenumerate(matrix):
        gt += [g] * count
        pred += [p] * count
    return np.array([pred]), np.array([gt])


def test_confusion_matrix_2x2_with_ignore_255():
    gt = np.array([[1, 1], [2, 255]])
    pred = np.array([[1, 2], [2, 0]])
    cm = confusion_matrix(pred, gt, num_classes=3)
    np.testing.assert_array_equal(cm, [[0, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert cm.dtype == np.int64


def test_confusion_matrix_gt_0_and_minus_1_ignored():
    gt = np.array([[0, -1, 2, 255]])
    pred = np.array([[1, 1, 2, 1]])
    expected = [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    np.testing.assert_array_equal(confusion_matrix(pred, gt, num_classes=3), expected)


def test_confusion_matrix_random_matches_loop():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 41, (20, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 41, gt.shape)
    expected = np.zeros((41, 41), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g not in (0, 255):
            expected[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt), expected)


@pytest.mark.parametrize("pred_value, gt_value", [(41, 1), (-1, 1), (1, 41)])
def test_confusion_matrix_out_of_range_ids_raise(pred_value, gt_value):
    with pytest.raises(ValueError, match="outside|must lie"):
        confusion_matrix(np.array([[pred_value]]), np.array([[gt_value]]))


def test_confusion_matrix_out_of_range_pred_on_ignored_pixel_is_fine():
    cm = confusion_matrix(np.array([[99, 1]]), np.array([[255, 1]]), num_classes=3)
    assert cm.sum() == 1


def test_pred_0_on_labelled_pixel_counts_wrong():
    acc = SegAccumulator()
    acc.update(np.array([[0, 1]]), np.array([[1, 1]]))
    result = acc.compute()
    assert result["pixel_acc"] == pytest.approx(50.0)
    # class 1: tp 1, gt 2, pred 1 -> IoU 1 / 2
    assert result["per_class_iou"]["wall"] == pytest.approx(50.0)
    assert result["miou"] == pytest.approx(50.0)


# rows = gt, columns = pred, classes 0..3; class 3 is absent from GT and never predicted (empty union)
HAND_MATRIX = np.array([[0, 0, 0, 0], [0, 3, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]])


def test_iou_per_class_hand_matrix_with_empty_union_class():
    # IoU1 = 3 / (4 + 3 - 3); IoU2 = 2 / (3 + 3 - 2); class 3 empty -> NaN; class 0 never scored
    iou = iou_per_class(HAND_MATRIX, "mmseg")
    np.testing.assert_allclose(iou[1:3], [0.75, 0.5])
    assert math.isnan(iou[0]) and math.isnan(iou[3])


@pytest.mark.parametrize("convention", ["mmseg", "detectron2"])
def test_seg_accumulator_hand_matrix_miou_62_5_pixel_acc_5_of_7(convention):
    acc = SegAccumulator(num_classes=4, convention=convention)
    acc.update(*_pixels_from_matrix(HAND_MATRIX))
    result = acc.compute()
    np.testing.assert_array_equal(acc.matrix, HAND_MATRIX)
    assert result["miou"] == pytest.approx(62.5)
    assert result["pixel_acc"] == pytest.approx(100 * 5 / 7)
    assert list(result["per_class_iou"]) == ["class_1", "class_2", "class_3"]
    assert math.isnan(result["per_class_iou"]["class_3"])


@pytest.mark.parametrize("convention, expected_miou", [("mmseg", 100 * (0.75 + 2 / 3 + 0) / 3),
                                                       ("detectron2", 100 * (0.75 + 2 / 3) / 2)])
def test_class_predicted_but_absent_from_gt(convention, expected_miou):
    # one class-1 pixel predicted as class 3, which has no GT pixel
    matrix = np.array([[0, 0, 0, 0], [0, 3, 0, 1], [1, 0, 2, 0], [0, 0, 0, 0]])
    acc = SegAccumulator(num_classes=4, convention=convention)
    acc.update(*_pixels_from_matrix(matrix))
    result = acc.compute()
    assert result["miou"] == pytest.approx(expected_miou)
    class_3 = result["per_class_iou"]["class_3"]
    assert (class_3 == 0.0) if convention == "mmseg" else math.isnan(class_3)


def test_seg_accumulator_two_images_equal_one_concatenated():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 41, (8, 20))
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 41, gt.shape))
    split, whole = SegAccumulator(), SegAccumulator()
    split.update(pred[:, :7], gt[:, :7])
    split.update(pred[:, 7:], gt[:, 7:])
    whole.update(pred, gt)
    np.testing.assert_array_equal(split.matrix, whole.matrix)
    assert split.compute()["miou"] == pytest.approx(whole.compute()["miou"])


def test_seg_accumulator_nyu40_names_exclude_unlabeled():
    acc = SegAccumulator()
    acc.update(np.array([[1, 2]]), np.array([[1, 40]]))
    result = acc.compute()
    assert tuple(result["per_class_iou"]) == NYU40_CLASSES[1:]
    assert result["per_class_iou"]["wall"] == pytest.approx(100.0)
    assert result["per_class_iou"]["floor"] == 0.0  # predicted, not in GT (mmseg counts it)
    assert result["per_class_iou"]["otherprop"] == 0.0
    assert result["miou"] == pytest.approx(100 / 3)


def test_seg_accumulator_nothing_labelled_raises():
    acc = SegAccumulator()
    acc.update(np.array([[1]]), np.array([[255]]))
    with pytest.raises(ValueError, match="no labelled"):
        acc.compute()


def test_seg_accumulator_bad_convention_raises():
    with pytest.raises(ValueError, match="convention"):
        SegAccumulator(convention="cityscapes")


def test_decode_seg_prediction_nearest_palette_colour():
    rgb = NYU40_PALETTE[[[0, 1, 40]]].astype(np.int16)
    rgb[0, 1] += 3  # slightly off wall colour still decodes to wall
    labels = decode_seg_prediction(np.clip(rgb, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(labels, [[0, 1, 40]])
