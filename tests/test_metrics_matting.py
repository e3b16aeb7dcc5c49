"""Matting metrics (P3M/AIM whole-image protocol): hand-computed cases and the documented quirks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmarks.metrics import matting
from benchmarks.metrics.matting import MattingAccumulator, connectivity_error, matting_metrics

PRED_3X3 = np.array([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2], [1.0, 1.0, 0.0]])
ALPHA_3X3 = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.6], [1.0, 0.0, 0.0]])
# |diff| = [0, .5, 0], [.2, .2, .4], [0, 1, 0] -> sum 2.3; squares .25 + .04 + .04 + .16 + 1 = 1.49
TRIMAP_3X3 = np.array([[0, 128, 255], [0, 128, 128], [255, 0, 0]], np.uint8)


def test_sad_mse_mad_3x3_hand_computed():
    scores = matting_metrics(PRED_3X3, ALPHA_3X3)
    assert list(scores) == ["sad", "mse", "mad", "grad", "conn"]
    assert scores["sad"] == pytest.approx(2.3 / 1000)
    assert scores["mse"] == pytest.approx(1.49 / 9)
    assert scores["mad"] == pytest.approx(2.3 / 9)


def test_trimap_errors_3x3_hand_computed():
    scores = matting_metrics(PRED_3X3, ALPHA_3X3, TRIMAP_3X3)
    # forced pred: fg (0,2), (2,0) -> 1; bg (0,0), (1,0), (2,1), (2,2) -> 0; unknown (0,1), (1,1), (1,2) kept
    # |forced - alpha| = [0, .5, 0], [0, .2, .4], [0, 0, 0] -> sum 1.1, squares .25 + .04 + .16 = .45
    assert scores["sad_trimap"] == pytest.approx(1.1 / 1000)
    assert scores["mse_trimap"] == pytest.approx(0.45 / 3)
    assert scores["mad_trimap"] == pytest.approx(1.1 / 3)
    # raw |pred - alpha| on fg pixels: 0 + 0; on bg pixels: 0 + .2 + 1 + 0
    assert scores["sad_fg"] == pytest.approx(0.0)
    assert scores["sad_bg"] == pytest.approx(1.2 / 1000)


def test_trimap_three_channel_uses_first_channel():
    flat = matting_metrics(PRED_3X3, ALPHA_3X3, TRIMAP_3X3)
    rgb = matting_metrics(PRED_3X3, ALPHA_3X3, np.repeat(TRIMAP_3X3[..., None], 3, axis=2))
    assert flat == rgb


def test_trimap_without_unknown_falls_back_to_other_values_count():
    trimap = np.array([[0, 255], [64, 0]], np.uint8)  # no 128: divisor = 4 - #255 - #0 = 1
    pred, alpha = np.array([[0.0, 1.0], [0.3, 0.0]]), np.array([[0.0, 1.0], [0.5, 0.0]])
    scores = matting.trimap_errors(pred, alpha, trimap)
    assert scores["mad_trimap"] == pytest.approx(0.2 / 1)
    assert scores["mse_trimap"] == pytest.approx(0.04 / 1)


def test_trimap_all_known_and_exact_gives_zero_not_nan():
    trimap = np.array([[0, 255]], np.uint8)
    scores = matting.trimap_errors(np.array([[0.4, 0.6]]), np.array([[0.0, 1.0]]), trimap)
    assert scores["mse_trimap"] == 0.0 and scores["mad_trimap"] == 0.0 and scores["sad_trimap"] == 0.0


def test_uint8_inputs_are_divided_by_255_in_float64():
    pred8 = (PRED_3X3 * 255).round().astype(np.uint8)
    alpha8 = (ALPHA_3X3 * 255).round().astype(np.uint8)
    assert matting_metrics(pred8, alpha8) == matting_metrics(pred8 / 255.0, alpha8 / 255.0)


# --------------------------------------------------------------------------------------------------------
# Gradient
# --------------------------------------------------------------------------------------------------------


def test_grad_is_sum_of_squared_magnitude_differences_over_10_with_scipy_gaussian_derivatives():
    rng = np.random.default_rng(0)
    pred, alpha = rng.random((16, 20)), ndimage.gaussian_filter(rng.random((16, 20)), 2)

    def magnitude(x):  # the documented call: order (1, 0) is d/drow, (0, 1) d/dcol; mode "reflect"
        gy = ndimage.gaussian_filter(x, sigma=1.4, order=(1, 0))
        gx = ndimage.gaussian_filter(x, sigma=1.4, order=(0, 1))
        return np.hypot(gx, gy)

    expected = np.sum((magnitude(pred) - magnitude(alpha)) ** 2) / 10
    assert matting.gradient_error(pred, alpha) == pytest.approx(expected, rel=1e-12)


def test_grad_ignores_constant_offset_but_sad_does_not():
    alpha = np.tile(np.linspace(0, 0.8, 12), (10, 1))
    scores = matting_metrics(alpha + 0.1, alpha)
    assert scores["grad"] == pytest.approx(0.0, abs=1e-20)
    assert scores["sad"] == pytest.approx(0.1 * 120 / 1000)


def test_grad_of_ramp_vs_flat_is_nonzero_and_symmetric():
    ramp = np.tile(np.linspace(0, 1, 15), (15, 1))
    flat = np.full((15, 15), 0.5)
    grad = matting.gradient_error(ramp, flat)
    assert grad > 0 and grad == pytest.approx(matting.gradient_error(flat, ramp))


# --------------------------------------------------------------------------------------------------------
# Connectivity
# --------------------------------------------------------------------------------------------------------


def test_conn_perfect_prediction_is_zero():
    alpha = ndimage.gaussian_filter(np.random.default_rng(1).random((12, 12)), 1.5)
    assert connectivity_error(alpha, alpha) == 0.0


def test_conn_1x2_hand_computed():
    # A: pred 1.0, alpha 0.2; B: pred = alpha = 1.0, 4-connected to A.
    # t = 0.1, 0.2: largest component {A, B}; t = 0.30000000000000004: {B}, so A gets level t_2 = 0.2.
    # A: d_pred = 0.8 >= 0.15 -> phi 0.2; d_alpha = 0 -> phi 1. B stays at level 1 -> phi 1 for both.
    assert connectivity_error(np.array([[1.0, 1.0]]), np.array([[0.2, 1.0]])) == pytest.approx(0.8 / 1000)


@pytest.mark.parametrize("skip_empty_levels,expected", [(True, 0.0), (False, 0.5 / 1000)])
def test_conn_empty_intersection_quirk_skip_empty_levels(skip_empty_levels, expected):
    # One pixel, pred 1.0, alpha 0.55: the intersection is empty from t = 0.6 on.
    # P3M (skip): the pixel is never assigned -> level 1 -> d_pred 0, d_alpha -0.45 -> phi 1 and 1 -> 0.
    # MATLAB (assign): level t_5 = 0.5 -> d_pred 0.5 -> phi 0.5; d_alpha 0.05 < 0.15 -> phi 1 -> 0.5 / 1000.
    got = connectivity_error(np.array([[1.0]]), np.array([[0.55]]), skip_empty_levels=skip_empty_levels)
    assert got == pytest.approx(expected, abs=1e-15)


def test_conn_quirk_flag_reaches_matting_metrics_and_accumulator():
    pred, alpha = np.array([[1.0]]), np.array([[0.55]])
    assert matting_metrics(pred, alpha, conn_skip_empty_levels=False)["conn"] == pytest.approx(5e-4)
    acc = MattingAccumulator(conn_skip_empty_levels=False)
    acc.update(pred, alpha)
    assert acc.compute()["conn"] == pytest.approx(5e-4)


def test_conn_alpha_153_over_255_below_threshold_0_6_in_float64_not_float32():
    # thresholds[6] = np.arange(0, 1.1, 0.1)[6] = 0.6000000000000001
    # float64 153/255 = 0.59999999999999998 < t_6 but float32 153/255 = 0.60000002 >= t_6.
    thresholds = np.arange(0, 1.1, 0.1)
    assert (153 / 255) < thresholds[6] <= np.float32(153 / 255)
    # A: pred 1, alpha 153/255; B: pred = alpha = 1.
    # float64: A leaves the component at t_6 -> level 0.5 -> phi_pred 1 - 0.5, phi_alpha 1 (d = 0.1) -> 0.5e-3
    # float32: A leaves at t_7 -> level 0.6000000000000001 -> phi_pred 0.6, phi_alpha 1 (d ~ 2e-8) -> 0.4e-3
    pred = np.array([[255, 255]], np.uint8)
    alpha = np.array([[153, 255]], np.uint8)
    assert matting_metrics(pred, alpha)["conn"] == pytest.approx(0.5e-3)
    f32 = matting_metrics(pred.astype(np.float32) / 255, alpha.astype(np.float32) / 255)
    assert f32["conn"] == pytest.approx(0.4e-3)


# --------------------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------------------


def test_matting_accumulator_means_every_key_and_keeps_rows():
    acc = MattingAccumulator()
    acc.update(PRED_3X3, ALPHA_3X3, TRIMAP_3X3, name="x")
    acc.update(ALPHA_3X3, ALPHA_3X3, TRIMAP_3X3, name="perfect")
    scores = acc.compute()
    whole = {"sad", "mse", "mad", "grad", "conn"}
    assert set(scores) == whole | {"sad_trimap", "mse_trimap", "mad_trimap", "sad_fg", "sad_bg"}
    assert scores["sad"] == pytest.approx(2.3 / 1000 / 2)
    assert scores["mse_trimap"] == pytest.approx(0.45 / 3 / 2)
    rows = acc.per_image_rows()
    assert [r["name"] for r in rows] == ["x", "perfect"] and rows[1]["conn"] == 0.0


def test_matting_accumulator_drops_trimap_keys_unless_every_image_has_one():
    acc = MattingAccumulator()
    acc.update(PRED_3X3, ALPHA_3X3, TRIMAP_3X3)
    acc.update(PRED_3X3, ALPHA_3X3)
    assert set(acc.compute()) == {"sad", "mse", "mad", "grad", "conn"}


def test_matting_shape_mismatch_and_empty_accumulator_raise():
    with pytest.raises(ValueError, match="shape"):
        matting_metrics(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no images"):
        MattingAccumulator().compute()
