"""DIS metrics: hand-computed cases, naive reference formulas, and approxPolyDP against OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from benchmarks.metrics import dis
from benchmarks.metrics.hce import _CROSS, approx_poly_dp, gt_skeleton, hce, relax_hce

EPS = np.spacing(1)
# The installed OpenCV's approxPolyDP distance: "line" up to 4.12, "segment" from 4.13 on.
CV2_VARIANT = "line" if tuple(int(v) for v in cv2.__version__.split(".")[:2]) <= (4, 12) else "segment"


def _random_case(rng: np.random.Generator, h: int = 24, w: int = 31, empty: bool = False):
    """A smooth random uint8 prediction and a blobby 0/255 GT."""
    field = ndimage.gaussian_filter(rng.random((h, w)), 2.0)
    gt = np.zeros((h, w), np.uint8) if empty else ((field > np.median(field)) * 255).astype(np.uint8)
    noise = ndimage.gaussian_filter(rng.random((h, w)), 1.0)
    pred = np.clip((field - field.min()) / np.ptp(field) * 200 + (noise - 0.5) * 300, 0, 255)
    return pred.astype(np.uint8), gt


# --------------------------------------------------------------------------------------------------------
# prepare_dis
# --------------------------------------------------------------------------------------------------------


def test_prepare_dis_constant_pred_stays_v_over_255():
    pred, gt = dis.prepare_dis(np.full((3, 3), 77, np.uint8), np.zeros((3, 3), np.uint8))
    np.testing.assert_array_equal(pred, np.full((3, 3), 77 / 255))
    assert pred.dtype == np.float64 and not gt.any()


def test_prepare_dis_min_max_and_gt_threshold_strictly_above_128():
    pred_u8 = np.array([[10, 105], [200, 10]], np.uint8)
    pred, gt = dis.prepare_dis(pred_u8, np.array([[128, 129], [255, 0]], np.uint8))
    # (v - 10) / (200 - 10): 105 -> 95/190 = 0.5
    np.testing.assert_allclose(pred, [[0.0, 0.5], [1.0, 0.0]], atol=1e-15)
    np.testing.assert_array_equal(gt, [[False, True], [True, False]])


def test_prepare_dis_resizes_uint8_bilinear_to_gt_size():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    out, gt = dis.prepare_dis(pred, np.zeros((14, 20), np.uint8))
    expected = cv2.resize(pred, (20, 14), interpolation=cv2.INTER_LINEAR) / 255.0
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert out.shape == gt.shape == (14, 20)
    np.testing.assert_array_equal(out, expected)


def test_prepare_dis_float_pred_is_rounded_to_uint8_levels():
    # 0.5 * 255 = 127.5 -> 128 (np.round, half to even); 0.2 * 255 = 51; constant-free so min-max applies.
    pred, _ = dis.prepare_dis(np.array([[0.0, 0.5], [0.2, 1.0]]), np.zeros((2, 2), np.uint8))
    np.testing.assert_allclose(pred, [[0.0, 128 / 255], [51 / 255, 1.0]], atol=1e-15)


def test_quantize_truncates_min10_max200_gives_0_1_2_4_5_6():
    pred_norm, _ = dis.prepare_dis(np.arange(10, 201, dtype=np.uint8)[None, :], np.zeros((1, 191), np.uint8))
    # (v - 10) / 190 * 255 for v = 10..15: 0, 1.34, 2.68, 4.03, 5.37, 6.71 -> truncated vs rounded
    assert dis.quantize_truncate(pred_norm)[0, :6].tolist() == [0, 1, 2, 4, 5, 6]
    assert np.round(pred_norm * 255)[0, :6].astype(int).tolist() == [0, 1, 3, 4, 5, 7]


# --------------------------------------------------------------------------------------------------------
# F-measure, MAE
# --------------------------------------------------------------------------------------------------------


def test_fmeasure_curve_2x2_hand_computed_at_thresholds_255_127_63_0():
    # p8 = [[255, 127], [63, 0]] (0.5 * 255 = 127.5 and 0.25 * 255 = 63.75 truncate); gt = left column.
    pred = np.array([[1.0, 0.5], [0.25, 0.0]])
    gt = np.array([[True, False], [True, False]])
    curve = dis.fmeasure_curve(pred, gt)
    assert curve.shape == (256,) and curve.dtype == np.float64
    # index i <-> p8 >= 255 - i
    # >= 255: TP 1, FP 0 -> P 1, R 1/2 -> 1.3 * 0.5 / (0.3 + 0.5) = 0.8125
    assert curve[0] == pytest.approx(0.8125)
    # >= 127 (i = 128): TP 1, FP 1 -> P 1/2, R 1/2 -> 1.3 * 0.25 / (0.15 + 0.5) = 0.5
    assert curve[128] == pytest.approx(0.5)
    # >= 63 (i = 192): TP 2, FP 1 -> P 2/3, R 1 -> 1.3 * 2/3 / (0.2 + 1) = 13/18
    assert curve[192] == pytest.approx(13 / 18)
    # >= 0 (i = 255): TP 2, FP 2 -> P 1/2, R 1 -> 0.65 / 1.15
    assert curve[255] == pytest.approx(0.65 / 1.15)
    # >= 128 (i = 127) selects only the 255 pixel again
    assert curve[127] == pytest.approx(0.8125)


def test_fmeasure_curve_empty_gt_is_zero():
    assert not dis.fmeasure_curve(np.array([[1.0, 0.3]]), np.zeros((1, 2), bool)).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fmeasure_curve_matches_explicit_threshold_loop_seed(seed):
    rng = np.random.default_rng(seed)
    pred_norm, gt = dis.prepare_dis(*_random_case(rng))
    p8 = (pred_norm * 255).astype(np.uint8)
    expected = []
    for t in range(255, -1, -1):
        fg = p8 >= t
        tp = np.sum(fg & gt)
        precision = tp / fg.sum() if fg.any() else 0.0
        recall = tp / gt.sum()
        denom = 0.3 * precision + recall
        expected.append(1.3 * precision * recall / denom if tp else 0.0)
    np.testing.assert_allclose(dis.fmeasure_curve(pred_norm, gt), expected, rtol=1e-12, atol=0)


def test_mae_3x3_hand_computed():
    pred = np.array([[0.0, 0.5, 1.0], [0.2, 0.2, 0.2], [1.0, 1.0, 0.0]])
    gt = np.array([[0, 1, 1], [0, 0, 1], [1, 0, 0]], bool)
    # |diff| = [0, .5, 0], [.2, .2, .8], [0, 1, 0] -> 2.7 / 9 = 0.3
    assert dis.mae(pred, gt) == pytest.approx(0.3)


# --------------------------------------------------------------------------------------------------------
# E-measure
# --------------------------------------------------------------------------------------------------------


def _emeasure_direct(fg: np.ndarray, gt: np.ndarray) -> float:
    """Fan et al. 2018 per pixel: xi = 2 phi_g phi_p / (phi_g^2 + phi_p^2), E = sum((xi+1)^2/4) / (N-1)."""
    fg, gtf = fg.astype(np.float64), gt.astype(np.float64)
    if gtf.sum() == 0:
        enhanced = 1.0 - fg  # only the predicted background aligns with an empty GT
    elif gtf.sum() == gtf.size:
        enhanced = fg
    else:
        phi_p, phi_g = fg - fg.mean(), gtf - gtf.mean()
        align = 2 * phi_g * phi_p / (phi_g**2 + phi_p**2 + EPS)
        enhanced = (align + 1) ** 2 / 4
    return enhanced.sum() / (gtf.size - 1 + EPS)


@pytest.mark.parametrize("seed,empty", [(0, False), (1, False), (2, True)])
def test_emeasure_closed_form_matches_direct_formula_seed_empty(seed, empty):
    rng = np.random.default_rng(seed)
    pred_norm, gt = dis.prepare_dis(*_random_case(rng, empty=empty))
    p8 = (pred_norm * 255).astype(np.uint8)
    expected = [_emeasure_direct(p8 >= t, gt) for t in range(255, -1, -1)]
    np.testing.assert_allclose(dis.emeasure_curve(pred_norm, gt), expected, rtol=1e-10, atol=1e-12)


def test_emeasure_empty_gt_counts_predicted_background():
    # p8 = [255, 127, 63, 0]; >= 255: 3 background pixels -> 3 / (4 - 1) = 1; >= 0: none -> 0
    curve = dis.emeasure_curve(np.array([[1.0, 0.5], [0.25, 0.0]]), np.zeros((2, 2), bool))
    assert curve[0] == pytest.approx(1.0) and curve[255] == 0.0
    assert curve[128] == pytest.approx(2 / 3)  # >= 127: two predicted background pixels


def test_emeasure_full_gt_counts_predicted_foreground():
    curve = dis.emeasure_curve(np.array([[1.0, 0.5], [0.25, 0.0]]), np.ones((2, 2), bool))
    assert curve[0] == pytest.approx(1 / 3) and curve[255] == pytest.approx(4 / 3)


# --------------------------------------------------------------------------------------------------------
# Weighted F-measure
# --------------------------------------------------------------------------------------------------------


def test_weighted_fmeasure_empty_gt_is_zero():
    assert dis.weighted_fmeasure(np.full((5, 5), 0.3), np.zeros((5, 5), bool)) == 0.0


def test_weighted_fmeasure_perfect_binary_prediction_is_one():
    gt = np.zeros((9, 9), bool)
    gt[2:6, 3:7] = True
    assert dis.weighted_fmeasure(gt.astype(np.float64), gt) == pytest.approx(1.0, abs=1e-12)


def test_matlab_gaussian_7x7_sigma5_is_separable_and_normalised():
    g1 = np.exp(-(np.arange(-3, 4) ** 2) / 50.0)
    kernel = dis._matlab_gaussian(7, 5.0)
    np.testing.assert_allclose(kernel, np.outer(g1, g1) / g1.sum() ** 2, rtol=1e-14)
    assert kernel[3, 3] == pytest.approx(0.0238357788, rel=1e-8)  # fspecial('gaussian', 7, 5) centre


def _weighted_fmeasure_naive(pred: np.ndarray, gt: np.ndarray) -> float:
    """Margolin et al. with brute-force nearest foreground and a zero-padded loop convolution."""
    h, w = gt.shape
    fg = np.argwhere(gt)
    err = np.abs(pred - gt)
    err_t, dist = err.copy(), np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            if not gt[r, c]:
                d = np.hypot(*(fg - (r, c)).T)
                dist[r, c] = d.min()
                err_t[r, c] = err[tuple(fg[np.argmin(d)])]
    kernel = dis._matlab_gaussian(7, 5.0)
    padded = np.pad(err_t, 3)
    err_a = np.array([[np.sum(padded[r : r + 7, c : c + 7] * kernel) for c in range(w)] for r in range(h)])
    min_err = np.where(gt & (err_a < err), err_a, err)
    err_w = min_err * np.where(gt, 1.0, 2 - np.exp(np.log(0.5) / 5 * dist))
    tp_w, fp_w = gt.sum() - err_w[gt].sum(), err_w[~gt].sum()
    recall, precision = 1 - err_w[gt].mean(), tp_w / (tp_w + fp_w + EPS)
    return 2 * recall * precision / (recall + precision + EPS)


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_fmeasure_matches_naive_loops_seed(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((12, 15))
    gt = rng.random((12, 15)) > 0.8
    pred[gt] = 0.7  # equal errors on the foreground make the nearest-pixel tie-break irrelevant
    assert dis.weighted_fmeasure(pred, gt) == pytest.approx(_weighted_fmeasure_naive(pred, gt), rel=1e-12)


# --------------------------------------------------------------------------------------------------------
# S-measure
# --------------------------------------------------------------------------------------------------------


def test_s_measure_perfect_prediction_is_one():
    gt = np.zeros((10, 12), bool)
    gt[3:7, 2:9] = True
    assert dis.s_measure(gt.astype(np.float64), gt) == pytest.approx(1.0, abs=1e-12)


def test_s_measure_empty_and_full_gt():
    pred = np.array([[0.2, 0.4], [0.6, 0.0]])  # mean 0.3
    assert dis.s_measure(pred, np.zeros((2, 2), bool)) == pytest.approx(0.7)
    assert dis.s_measure(pred, np.ones((2, 2), bool)) == pytest.approx(0.3)


def test_s_measure_2x2_hand_computed_rounds_centroid_half_to_even():
    pred = np.array([[1.0, 0.5], [0.0, 0.0]])
    gt = np.array([[True, True], [False, False]])
    # object: fg [1, .5]: mean .75, std (ddof 1) = sqrt(2 * .25^2) -> 1.5 / (.5625 + 1 + std);
    #         bg 1 - pred = [1, 1] -> 2 / 2 = 1; O = .5 * fg + .5 * 1
    std = np.sqrt(2 * 0.25**2)
    obj = 0.5 * 1.5 / (0.5625 + 1 + std) + 0.5
    # region: centroid (row 0, col 0.5) -> np.round(0.5) = 0 -> split after row 1, col 1: four single pixels,
    # each with zero variance and covariance -> SSIM 1, so R = 1. (MATLAB rounding would split at col 2.)
    assert dis.s_measure(pred, gt) == pytest.approx(0.5 * obj + 0.5 * 1.0, rel=1e-12)


# --------------------------------------------------------------------------------------------------------
# approxPolyDP port
# --------------------------------------------------------------------------------------------------------


def _random_walks(rng: np.random.Generator, count: int):
    for k in range(count):
        n = int(rng.integers(1, 200 if k % 10 == 0 else 40))
        step = 1 if k % 2 else 3
        points = np.cumsum(rng.integers(-step, step + 1, size=(n, 2)), axis=0) + 100
        if k % 5 == 0 and n > 1:
            points[-1] = points[0]  # open curves ending at their start are handled as closed
        yield points.astype(np.int32).reshape(-1, 1, 2), float(rng.choice([0.0, 0.5, 1.0, 2.0, 3.0]))


def test_approx_poly_dp_matches_installed_opencv_on_3000_random_walks():
    rng = np.random.default_rng(0)
    mismatches = []
    for points, eps in _random_walks(rng, 1500):
        for closed in (False, True):
            expected = cv2.approxPolyDP(points, eps, closed)
            got = approx_poly_dp(points, eps, closed, variant=CV2_VARIANT)
            if got.dtype != np.int32 or not np.array_equal(got, expected):
                mismatches.append((points.reshape(-1, 2).tolist(), eps, closed))
    assert mismatches == []


def test_approx_poly_dp_line_vs_segment_differ_on_backtracking_curve():
    # Chord (0,0)-(3,0); the interior point (10,0) is on its line (distance 0) but 7 px beyond the segment.
    curve = np.array([[0, 0], [10, 0], [3, 0]])
    assert approx_poly_dp(curve, 2.0, False, "line").reshape(-1, 2).tolist() == [[0, 0], [3, 0]]
    assert approx_poly_dp(curve, 2.0, False, "segment").reshape(-1, 2).tolist() == [[0, 0], [10, 0], [3, 0]]


def test_approx_poly_dp_straight_line_keeps_end_points_and_accepts_n_1_2_shape():
    curve = np.stack([np.arange(30), np.full(30, 4)], axis=1)
    out = approx_poly_dp(curve[:, None, :], 2.0, False)
    assert out.shape == (2, 1, 2) and out.reshape(-1, 2).tolist() == [[0, 4], [29, 4]]
    assert approx_poly_dp(np.empty((0, 2), int), 2.0, False).shape == (0, 1, 2)


def test_approx_poly_dp_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        approx_poly_dp(np.zeros((3, 2), int), 2.0, False, variant="chord")


# --------------------------------------------------------------------------------------------------------
# HCE
# --------------------------------------------------------------------------------------------------------


def _gt_square(h: int = 80, w: int = 100) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    gt[10:40, 10:40] = 255
    return gt


def test_hce_identical_prediction_is_zero():
    gt = _gt_square()
    gt[25, 40:70] = 255  # a thin structure too
    assert hce(gt.copy(), gt) == 0


@pytest.mark.parametrize("size,expected", [(10, 0), (11, 1), (20, 1)])
def test_hce_isolated_fp_blob_size_counts_one_region_after_relaxation(size, expected):
    # The blob is far from the GT, so no boundary point touches the correct region: no polygon points,
    # one independent region -- unless 5 erosions by the 3x3 cross (s x s -> (s-10) x (s-10)) erase it.
    gt = _gt_square()
    pred = gt.copy()
    pred[50 : 50 + size, 60 : 60 + size] = 255
    assert relax_hce(gt > 128, pred > 128, gt_skeleton(gt)) == (0, expected, 0, 0)
    assert hce(pred, gt) == expected


def test_hce_fp_blob_in_image_corner_survives_erosion_border_never_erodes():
    # 6x6 blob at the corner: with OpenCV's default border only the inner sides erode, leaving pixel (0, 0).
    gt = _gt_square()
    pred = gt.copy()
    pred[:6, :6] = 255
    assert hce(pred, gt) == 1


def test_hce_missed_thin_line_counts_its_two_end_points():
    # A 1-px GT line is missed: relaxation removes it, the skeleton brings it back as one straight
    # boundary run (traced out and back; the way back is already visited), which Douglas-Peucker reduces to
    # its two end points. The run touches the background, so the region is not independent.
    gt = _gt_square()
    gt[25, 40:70] = 255
    pred = _gt_square()
    assert relax_hce(gt > 128, pred > 128, gt_skeleton(gt)) == (0, 0, 2, 0)


def test_hce_accepts_cached_skeleton_uint8():
    gt = _gt_square()
    gt[25, 40:70] = 255
    pred = _gt_square()
    ske = gt_skeleton(gt).astype(np.uint8) * 255
    assert hce(pred, gt, skeleton=ske) == hce(pred, gt) == 2


def _relax_hce_naive(gt, pred, ske):
    """The HCE relaxation with per-point contour walking and cv2.approxPolyDP (notes section 1.7)."""

    def dilate(m):
        return cv2.dilate(m.astype(np.uint8), _CROSS).astype(bool)

    def runs_and_indep(mask, cond):
        cond = dilate(cond)
        labels = ndimage.label(mask, structure=np.ones((3, 3)))[0]
        indep = np.ones(labels.max() + 1)
        indep[0] = 0
        visited = np.zeros(mask.shape, bool)
        out = []
        for contour in cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)[0]:
            runs, cur = [], []
            for x, y in contour.reshape(-1, 2):
                if not cond[y, x] or visited[y, x]:
                    if cur:
                        runs.append(cur)
                    cur = []
                    continue
                cur.append([x, y])
                visited[y, x] = True
                indep[labels[y, x]] = 0
            if cur:
                runs.append(cur)
            (fx, fy), (lx, ly) = (runs[0][0], runs[-1][-1]) if runs else ((0, 0), (0, 0))
            if len(runs) > 1 and max(abs(fx - lx), abs(fy - ly)) == 1:
                runs[-1].extend(runs[0][::-1])
                del runs[0]
            out += [np.array(r, np.int32).reshape(-1, 1, 2) for r in runs]
        return sum(len(cv2.approxPolyDP(r, 2.0, False)) for r in out), int(indep.sum())

    tp, fp, fn = gt & pred, pred & ~gt, gt & ~pred
    union_eroded = cv2.erode((gt | pred).astype(np.uint8), _CROSS, iterations=5).astype(bool)
    fp_, fn_ = fp & union_eroded, fn & union_eroded
    for _ in range(5):
        fp_ = dilate(fp_) & ~(tp | fn)
    for _ in range(5):
        fn_ = dilate(fn_) & ~(tp | fp)
    fp_, fn_ = fp & fp_, (fn & fn_) | (ske ^ (tp & ske))
    return (*runs_and_indep(fp_, tp | fn_), *runs_and_indep(fn_, ~(tp | fp_ | fn_)))


@pytest.mark.parametrize("seed", range(6))
def test_relax_hce_matches_naive_contour_walk_seed(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(40, 120, 2))
    field = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(2, 5))
    gt = field > np.median(field)
    noise = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(1, 3))
    noise = (noise - noise.mean()) * field.std() / noise.std()
    pred = field + rng.uniform(0.2, 1.0) * noise > np.median(field)
    ske = gt_skeleton(gt)
    assert relax_hce(gt, pred, ske, variant=CV2_VARIANT) == _relax_hce_naive(gt, pred, ske)


# --------------------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------------------


def test_dis_accumulator_averages_curves_before_max():
    gt = np.array([[255, 0], [255, 0]], np.uint8)  # left column
    # a: F = 1 only at high thresholds (both GT pixels at 255, a weak FP at 10)
    # b: F = 1 only at low thresholds (one GT pixel at 255, the other at 10)
    preds = {"a": np.array([[255, 10], [255, 0]], np.uint8), "b": np.array([[255, 0], [10, 0]], np.uint8)}
    acc = dis.DISAccumulator()
    for name, pred in preds.items():
        acc.update(pred, gt, name=name)
    scores = acc.compute()
    assert list(scores) == ["maxf", "meanf", "wf", "mae", "sm", "em", "hce"]
    rows = acc.per_image_rows()
    assert [r["name"] for r in rows] == ["a", "b"] and [r["maxf"] for r in rows] == [1.0, 1.0]
    mean_curve = np.mean([dis.fmeasure_curve(*dis.prepare_dis(p, gt)) for p in preds.values()], axis=0)
    # >= 255: a 1, b 0.8125 (P 1, R 1/2) -> max of the mean curve (1 + 0.8125) / 2 < mean of maxima 1
    assert scores["maxf"] == pytest.approx(mean_curve.max()) == pytest.approx(0.90625)
    assert scores["meanf"] == pytest.approx(mean_curve.mean())
    for key in ("wf", "mae", "sm", "em", "hce"):
        assert scores[key] == pytest.approx(np.mean([r[key] for r in rows]))


def test_dis_accumulator_without_hce_reports_none_and_hce_uses_raw_uint8():
    rng = np.random.default_rng(3)
    pred, gt = _random_case(rng, 40, 50)
    assert dis.DISAccumulator(with_hce=False).update(pred, gt)["hce"] is None
    # a faint prediction (max 100) is stretched to [0, 1] for F/E/S but stays empty for HCE (raw > 128)
    faint = (pred.astype(np.float64) * 100 / 255).astype(np.uint8)
    acc = dis.DISAccumulator()
    row = acc.update(faint, gt)
    assert row["hce"] == hce(np.zeros_like(gt), gt)
    assert acc.compute()["hce"] == row["hce"]


def test_dis_accumulator_resizes_prediction_to_gt():
    gt = np.zeros((20, 30), np.uint8)
    gt[5:15, 10:20] = 255
    small = cv2.resize(gt, (15, 10), interpolation=cv2.INTER_NEAREST)
    row = dis.DISAccumulator().update(small, gt)
    assert row["mae"] < 0.05 and row["hce"] >= 0


def test_dis_accumulator_empty_raises():
    with pytest.raises(ValueError, match="no images"):
        dis.DISAccumulator().compute()


def test_prepare_dis_refuses_16_bit_prediction():
    with pytest.raises(ValueError, match="uint8"):
        dis.prepare_dis(np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.uint8))
