"""Depth alignment and metrics (SPEC §6.1) against hand-computed cases and inline reference formulas."""

import math

import numpy as np
import pytest

from benchmarks.metrics.depth import (
    DEPTH_METRIC_KEYS,
    align_depth,
    align_least_squares,
    depth_metrics,
    reference_subsample_columns,
    uniform_subsample_indices,
)


def _all_valid(shape):
    return np.ones(shape, dtype=bool)


def test_metric_keys_in_spec_order():
    assert DEPTH_METRIC_KEYS == (
        "absrel", "sqrel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "irmse", "silog",
    )


def test_depth_metrics_hand_computed_2x2():
    pred = np.array([[1.0, 2.0], [3.0, 16.0]])
    gt = np.array([[2.0, 2.0], [2.0, 20.0]])
    m = depth_metrics(pred, gt, _all_valid((2, 2)))
    # |p-g|/g = 1/2, 0, 1/2, 4/20 -> mean 1.2 / 4
    assert m["absrel"] == pytest.approx(0.3)
    # (p-g)^2/g = 1/2, 0, 1/2, 16/20 -> mean 1.8 / 4
    assert m["sqrel"] == pytest.approx(0.45)
    # (p-g)^2 = 1, 0, 1, 16
    assert m["rmse"] == pytest.approx(math.sqrt(18 / 4))
    # ratios max(p/g, g/p) = 2, 1, 1.5, 1.25: 1.25 is not < 1.25 (strict); 1.5625 = 1.25^2 > 1.5
    assert m["delta1"] == pytest.approx(0.25)
    assert m["delta2"] == pytest.approx(0.75)
    assert m["delta3"] == pytest.approx(0.75)  # 2 > 1.25^3 = 1.953
    # 1/p - 1/g = 1/2, 0, -1/6, 1/80
    assert m["irmse"] == pytest.approx(math.sqrt((1 / 4 + 1 / 36 + 1 / 6400) / 4))
    logs = [math.log(0.5), 0.0, math.log(1.5), math.log(0.8)]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(d * d for d in logs) / 4))
    assert m["log10"] == pytest.approx(sum(abs(d) for d in logs) / math.log(10) / 4)
    mean_d = sum(logs) / 4
    assert m["silog"] == pytest.approx(100 * math.sqrt(sum(d * d for d in logs) / 4 - mean_d**2))


def test_depth_metrics_delta_strict_at_exact_threshold_ratio_1_5625():
    # 25 / 16 = 1.5625 = 1.25^2 exactly in binary floating point
    m = depth_metrics(np.array([16.0]), np.array([25.0]), np.array([True]))
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.0, 0.0, 1.0)


def test_depth_metrics_random_matches_inline_formulas():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 10.0, (17, 23))
    pred = gt * rng.uniform(0.7, 1.4, gt.shape)
    valid = rng.random(gt.shape) > 0.3
    pred_with_junk = np.where(valid, pred, -5.0)  # invalid pixels must not be read
    m = depth_metrics(pred_with_junk, gt, valid)
    p, g = pred[valid], gt[valid]
    d = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    expected = {
        "absrel": np.mean(np.abs(p - g) / g),
        "sqrel": np.mean((p - g) ** 2 / g),
        "rmse": np.sqrt(np.mean((p - g) ** 2)),
        "rmse_log": np.sqrt(np.mean(d**2)),
        "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.5625),
        "delta3": np.mean(ratio < 1.953125),
        "irmse": np.sqrt(np.mean((1 / p - 1 / g) ** 2)),
        "silog": 100 * np.sqrt(np.mean(d**2) - np.mean(d) ** 2),
    }
    assert set(m) == set(DEPTH_METRIC_KEYS)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key
    assert all(type(v) is float for v in m.values())


def test_depth_metrics_perfect_prediction():
    gt = np.linspace(1.0, 9.0, 12).reshape(3, 4)
    m = depth_metrics(gt.copy(), gt, _all_valid(gt.shape))
    for key in ("absrel", "sqrel", "rmse", "rmse_log", "log10", "irmse", "silog"):
        assert m[key] == 0.0, key
    assert (m["delta1"], m["delta2"], m["delta3"]) == (1.0, 1.0, 1.0)


def test_depth_metrics_uniform_scale_2_has_zero_silog_and_absrel_1():
    gt = np.linspace(1.0, 9.0, 12).reshape(3, 4)
    m = depth_metrics(2 * gt, gt, _all_valid(gt.shape))
    assert m["absrel"] == pytest.approx(1.0)
    assert m["log10"] == pytest.approx(math.log10(2))
    assert m["silog"] == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    assert m["delta3"] == 0.0  # ratio 2 > 1.953


def test_depth_metrics_no_valid_pixel_raises():
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), dtype=bool))


def test_depth_metrics_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2), dtype=bool))


@pytest.mark.parametrize("scale, shift", [(3.0, 0.5), (-0.25, 7.0), (1e-3, 2.0)])
def test_align_least_squares_recovers_scale_shift(scale, shift):
    rng = np.random.default_rng(1)
    pred = rng.random((8, 9)).astype(np.float32)
    gt = scale * pred.astype(np.float64) + shift
    valid = rng.random(pred.shape) > 0.2
    gt_with_junk = np.where(valid, gt, 1e6)  # invalid GT must not pull the fit
    aligned, s, t = align_least_squares(pred, gt_with_junk, valid)
    assert s == pytest.approx(scale, rel=1e-9)
    assert t == pytest.approx(shift, rel=1e-9)
    np.testing.assert_allclose(aligned, gt, rtol=1e-9)  # whole array, invalid pixels included
    assert aligned.dtype == np.float64


def test_align_least_squares_noisy_matches_polyfit():
    rng = np.random.default_rng(2)
    pred = rng.random((10, 10))
    gt = 2 * pred + 1 + rng.normal(0, 0.1, pred.shape)
    valid = _all_valid(pred.shape)
    _, s, t = align_least_squares(pred, gt, valid)
    s_ref, t_ref = np.polyfit(pred.ravel(), gt.ravel(), 1)
    assert (s, t) == (pytest.approx(s_ref, rel=1e-10), pytest.approx(t_ref, rel=1e-10))


def test_align_least_squares_constant_prediction_gives_mean_gt():
    gt = np.array([[1.0, 2.0], [3.0, 6.0]])
    aligned, _, _ = align_least_squares(np.full((2, 2), 0.5), gt, _all_valid((2, 2)))
    np.testing.assert_allclose(aligned, 3.0)


def test_align_least_squares_no_valid_pixel_raises():
    with pytest.raises(ValueError, match="no valid"):
        align_least_squares(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2), dtype=bool))


def test_reference_subsample_columns_h4_w10_max4():
    # s = min(4/4, 4/10) = 0.4 -> floor(10 * 0.4) = 4 columns, j_k = floor(k * 2.5) = 0, 2, 5, 7
    np.testing.assert_array_equal(reference_subsample_columns(4, 10, 4), [0, 2, 5, 7])


def test_reference_subsample_columns_eth3d_4032x6048_max1024():
    # s = 1024 / 6048, 1 / s = 5.90625: columns floor(5.90625 k), k < 1024; all 4032 rows are kept
    columns = reference_subsample_columns(4032, 6048, 1024)
    assert columns.shape == (1024,)
    np.testing.assert_array_equal(columns[:8], [0, 5, 11, 17, 23, 29, 35, 41])
    np.testing.assert_array_equal(columns, np.floor(np.arange(1024) * 5.90625).astype(np.int64))
    assert columns[-1] == 6042


def test_reference_subsample_columns_small_image_keeps_all():
    np.testing.assert_array_equal(reference_subsample_columns(3, 5, 1024), np.arange(5))


def test_uniform_subsample_indices_10_of_3():
    np.testing.assert_array_equal(uniform_subsample_indices(10, 3), [0, 3, 6])  # k * 10 // 3
    np.testing.assert_array_equal(uniform_subsample_indices(3, 10), [0, 1, 2])


def _polyfit(p, g):
    return np.polyfit(p.astype(np.float64), g.astype(np.float64), 1)


def test_align_least_squares_reference_subsample_fits_columns_0_2_5_7_all_rows():
    rng = np.random.default_rng(3)
    pred = rng.random((6, 10))
    gt = 2 * pred + 1 + rng.normal(0, 0.2, pred.shape)
    valid = rng.random(pred.shape) > 0.25
    # max 4 on a 6 x 10 image: s = 0.4, columns 0, 2, 5, 7 of all six rows
    _, s, t = align_least_squares(pred, gt, valid, max_samples=4, subsample="reference")
    columns = [0, 2, 5, 7]
    sub_valid = valid[:, columns]
    s_ref, t_ref = _polyfit(pred[:, columns][sub_valid], gt[:, columns][sub_valid])
    assert (s, t) == (pytest.approx(s_ref, rel=1e-10), pytest.approx(t_ref, rel=1e-10))


def test_align_least_squares_uniform_subsample_fits_every_kth_valid_pixel():
    rng = np.random.default_rng(4)
    pred = rng.random((6, 10))
    gt = 2 * pred + 1 + rng.normal(0, 0.2, pred.shape)
    valid = rng.random(pred.shape) > 0.25
    _, s, t = align_least_squares(pred, gt, valid, max_samples=7, subsample="uniform")
    n = int(valid.sum())
    keep = np.arange(7) * n // 7
    s_ref, t_ref = _polyfit(pred[valid][keep], gt[valid][keep])
    assert (s, t) == (pytest.approx(s_ref, rel=1e-10), pytest.approx(t_ref, rel=1e-10))


def test_align_least_squares_bad_subsample_mode_raises():
    with pytest.raises(ValueError, match="subsample"):
        align_least_squares(np.ones((2, 2)), np.ones((2, 2)), _all_valid((2, 2)), 1, subsample="rows")


def test_align_depth_depth_space_recovers_gt():
    rng = np.random.default_rng(5)
    gt = rng.uniform(1.0, 9.0, (7, 5))
    pred = (gt - 0.7) / 4.0
    aligned = align_depth(pred, gt, _all_valid(gt.shape), "depth", 1e-3, 10.0)
    np.testing.assert_allclose(aligned, gt, rtol=1e-9)


def test_align_depth_disparity_space_recovers_gt():
    rng = np.random.default_rng(6)
    gt = rng.uniform(1.0, 9.0, (7, 5))
    valid = rng.random(gt.shape) > 0.2
    gt[~valid] = 0.0  # missing GT: must neither be inverted nor used
    pred = (1.0 / np.where(valid, gt, 1.0) - 0.05) / 3.0  # 1 / gt = 3 * pred + 0.05
    aligned = align_depth(pred, gt, valid, "disparity", 1e-3, 10.0)
    np.testing.assert_allclose(aligned[valid], gt[valid], rtol=1e-9)


def test_align_depth_disparity_clips_negative_disparity_then_max_depth():
    # exact fit 1 / gt = pred; pixel with pred -1 (invalid) -> disparity 1e-3 -> 1000 m -> max 10 m
    gt = np.array([[1.0, 2.0, 4.0, 1.0]])
    valid = np.array([[True, True, True, False]])
    pred = np.array([[1.0, 0.5, 0.25, -1.0]])
    aligned = align_depth(pred, gt, valid, "disparity", 1e-3, 10.0)
    np.testing.assert_allclose(aligned, [[1.0, 2.0, 4.0, 10.0]])


def _closed_form_fit(p, g):
    """Least-squares scale and shift of g ~ s * p + t, from the normal equations written out."""
    n, sp, sg, spp, spg = p.size, p.sum(), g.sum(), (p * p).sum(), (p * g).sum()
    scale = (n * spg - sp * sg) / (n * spp - sp**2)
    return scale, (sg - scale * sp) / n


def test_align_depth_disparity_fits_only_where_prediction_is_positive():
    rng = np.random.default_rng(11)
    gt = rng.uniform(1.0, 9.0, (6, 8))
    valid = rng.random(gt.shape) > 0.2
    pred = 1.0 / gt + rng.normal(0, 0.01, gt.shape)
    pred[0, :5] = 0.0  # a saturated model writes exact zeros
    pred[1, 1] = 0.0
    assert (valid & (pred == 0)).sum() >= 3
    fit = valid & (pred > 0)  # the reference's mask (gt > 0 everywhere here)
    scale, shift = _closed_form_fit(pred[fit], 1.0 / gt[fit])
    expected = np.clip(1.0 / np.maximum(scale * pred + shift, 1e-3), 1e-3, 10.0)
    aligned = align_depth(pred, gt, valid, "disparity", 1e-3, 10.0)
    np.testing.assert_allclose(aligned, expected, rtol=1e-10)
    old_scale, old_shift = _closed_form_fit(pred[valid], 1.0 / gt[valid])  # the zeros pulling the fit
    old = np.clip(1.0 / np.maximum(old_scale * pred + old_shift, 1e-3), 1e-3, 10.0)
    assert np.abs(aligned - old)[valid].max() > 0.1
    # metrics still cover every valid pixel, the zero-prediction ones included
    assert depth_metrics(aligned, gt, valid)["absrel"] == pytest.approx(
        np.mean(np.abs(expected - gt)[valid] / gt[valid]), rel=1e-10
    )


def test_align_depth_disparity_ignores_non_positive_gt_in_the_fit():
    gt = np.array([[1.0, 2.0, 4.0, 0.0]])
    pred = np.array([[1.0, 0.5, 0.25, 7.0]])  # 1 / gt exactly where gt > 0
    aligned = align_depth(pred, gt, np.ones_like(gt, dtype=bool), "disparity", None, None)
    np.testing.assert_allclose(aligned[0, :3], [1.0, 2.0, 4.0], rtol=1e-12)


def test_align_depth_disparity_without_a_positive_prediction_raises():
    with pytest.raises(ValueError, match="no valid pixel has a positive prediction and ground truth"):
        align_depth(np.zeros((2, 2)), np.ones((2, 2)), _all_valid((2, 2)), "disparity", 0.1, 10.0)


def test_align_depth_clip_order_range_then_pred_clip_then_1e6():
    gt = np.array([[0.5, 1.0, 2.0, 400.0]])
    pred = gt.copy()  # identity fit
    valid = np.ones_like(gt, dtype=bool)
    clipped = align_depth(pred, gt, valid, "depth", 0.0, 300.0, pred_clip=(0.6, 350.0))
    np.testing.assert_allclose(clipped, [[0.6, 1.0, 2.0, 300.0]])
    identity = np.array([[-1.0, 1.0]])
    tiny = align_depth(identity, identity, np.ones((1, 2), bool), "depth", None, None)
    np.testing.assert_allclose(tiny, [[1e-6, 1.0]])


def test_align_depth_bad_space_raises():
    with pytest.raises(ValueError, match="space"):
        align_depth(np.ones((2, 2)), np.ones((2, 2)), _all_valid((2, 2)), "inverse", 0.1, 10.0)


def test_align_depth_metric_space_fits_nothing_and_only_clips():
    gt = np.array([[1.0, 2.0, 4.0, 1.0]])
    pred = np.array([[2.0, 4.0, 400.0, -1.0]])  # twice the GT: metric depth keeps the error
    valid = np.array([[True, True, True, False]])
    np.testing.assert_array_equal(align_depth(pred, gt, valid, "metric", 1e-3, 10.0), [[2.0, 4.0, 10.0, 1e-3]])
    diode = align_depth(pred, gt, valid, "metric", None, None, pred_clip=(0.6, 350.0))
    np.testing.assert_array_equal(diode, [[2.0, 4.0, 350.0, 0.6]])
    near = align_depth(pred[:, :2], gt[:, :2], valid[:, :2], "metric")
    assert depth_metrics(near, gt[:, :2], valid[:, :2])["absrel"] == 1.0
