"""Normal angular error, metrics, accumulation modes and frame conventions (SPEC §6.2)."""

import math

import numpy as np
import pytest

from benchmarks.metrics.normal import (
    NORMAL_METRIC_KEYS,
    NORMAL_MODES,
    NormalAccumulator,
    angular_error_deg,
    apply_axis_flips,
    dsine_to_genpercept,
    normal_metrics,
)


def _image(*vectors):
    """[1, N, 3] float image from 3-vectors."""
    return np.array(vectors, dtype=np.float64)[None]


def test_dsine_to_genpercept_negates_x_explicit_vector():
    # DSINE: x left. A surface facing the camera and tilted to the camera's left, (0.6, 0, 0.8) in
    # DSINE axes, points to negative x in ours (x right); y up and z toward the camera are shared.
    np.testing.assert_array_equal(dsine_to_genpercept(np.array([0.6, 0.0, 0.8])), [-0.6, 0.0, 0.8])
    np.testing.assert_array_equal(dsine_to_genpercept(np.array([0.0, 1.0, 0.0])), [0.0, 1.0, 0.0])


def test_dsine_to_genpercept_round_trip_is_identity_and_does_not_mutate():
    normals = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    before = normals.copy()
    back = dsine_to_genpercept(dsine_to_genpercept(normals))
    np.testing.assert_array_equal(back, normals)
    np.testing.assert_array_equal(normals, before)
    assert back.dtype == np.float32


@pytest.mark.parametrize(
    "flips, expected",
    [("", [1.0, 2.0, 3.0]), ("x", [-1.0, 2.0, 3.0]), ("xy", [-1.0, -2.0, 3.0]), ("zyx", [-1.0, -2.0, -3.0])],
)
def test_apply_axis_flips(flips, expected):
    np.testing.assert_array_equal(apply_axis_flips(np.array([[1.0, 2.0, 3.0]]), flips), [expected])


@pytest.mark.parametrize("flips", ["w", "xx", "X"])
def test_apply_axis_flips_bad_spec_raises(flips):
    with pytest.raises(ValueError, match="axis flips"):
        apply_axis_flips(np.zeros((1, 3)), flips)


def test_wrong_frame_shows_as_large_error():
    # a prediction in our frame scored against unconverted DSINE GT is off by the x mirror
    ours = _image([0.6, 0.0, 0.8])
    dsine_gt = _image([-0.6, 0.0, 0.8])
    valid = np.ones((1, 1), dtype=bool)
    assert angular_error_deg(ours, dsine_to_genpercept(dsine_gt), valid)[0] == pytest.approx(0.0, abs=1e-6)
    assert angular_error_deg(ours, dsine_gt, valid)[0] == pytest.approx(math.degrees(math.acos(0.64 - 0.36)))


def test_angular_error_known_angles():
    pred = _image([1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 5], [0, 0, 0])
    gt = _image([1, 0, 0], [0, 1, 0], [-1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1])
    errors = angular_error_deg(pred, gt, np.ones((1, 6), dtype=bool))
    # same, perpendicular, opposite, 45 degrees, unnormalised same direction, zero vector (90 by design)
    np.testing.assert_allclose(errors, [0, 90, 180, 45, 0, 90], atol=1e-6)
    assert errors.dtype == np.float64


def test_angular_error_only_valid_pixels_in_raster_order():
    pred = _image([1, 0, 0], [0, 1, 0], [0, 0, 1])
    gt = _image([0, 1, 0], [0, 1, 0], [0, 1, 0])
    errors = angular_error_deg(pred, gt, np.array([[True, False, True]]))
    np.testing.assert_allclose(errors, [90, 90])


def test_angular_error_identical_unit_vectors_no_nan():
    n = np.random.default_rng(1).normal(size=(32, 32, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    errors = angular_error_deg(n, n.copy(), np.ones((32, 32), dtype=bool))
    assert np.all(np.isfinite(errors)) and errors.max() < 1e-5  # cos clamped at 1


def test_angular_error_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        angular_error_deg(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), np.ones((2, 3), dtype=bool))


def test_normal_metrics_hand_computed_five_errors():
    m = normal_metrics(np.array([1.0, 6.0, 10.0, 20.0, 40.0]))
    assert list(m) == list(NORMAL_METRIC_KEYS)
    assert m["mean"] == pytest.approx(77 / 5)
    assert m["median"] == 10.0
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 36 + 100 + 400 + 1600) / 5))
    assert (m["a5"], m["a7_5"], m["a11_25"], m["a22_5"], m["a30"]) == (20.0, 40.0, 60.0, 80.0, 80.0)


def test_normal_metrics_thresholds_strict_at_5_and_30():
    m = normal_metrics(np.array([5.0, 30.0]))
    assert (m["a5"], m["a7_5"], m["a22_5"], m["a30"]) == (0.0, 50.0, 50.0, 50.0)


def test_normal_metrics_empty_raises():
    with pytest.raises(ValueError, match="no valid"):
        normal_metrics(np.array([]))


def test_pooled_vs_per_image_one_pixel_at_10_three_pixels_at_20():
    pooled, per_image = NormalAccumulator("pooled"), NormalAccumulator("per_image")
    for acc in (pooled, per_image):
        acc.update(np.array([10.0]))
        acc.update(np.array([20.0, 20.0, 20.0]))
        acc.update(np.array([]))  # an image with no valid pixel adds nothing
    p, q = pooled.compute(), per_image.compute()
    # pooled over {10, 20, 20, 20}
    assert p["mean"] == pytest.approx(17.5)
    assert p["median"] == pytest.approx(20.0)
    assert p["rmse"] == pytest.approx(math.sqrt((100 + 3 * 400) / 4))
    assert p["a11_25"] == pytest.approx(25.0)
    # per image: image 1 -> 10 / 100 %, image 2 -> 20 / 0 %, then the mean of the two
    assert q["mean"] == pytest.approx(15.0)
    assert q["median"] == pytest.approx(15.0)
    assert q["rmse"] == pytest.approx(15.0)
    assert q["a11_25"] == pytest.approx(50.0)
    assert pooled.num_images == per_image.num_images == 2


def test_pooled_accumulator_matches_concatenated_float64_reference():
    rng = np.random.default_rng(2)
    chunks = [rng.uniform(0, 60, size) for size in (100, 37, 501)]
    acc = NormalAccumulator()
    for chunk in chunks:
        acc.update(chunk)
    got, expected = acc.compute(), normal_metrics(np.concatenate(chunks))
    for key in NORMAL_METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key  # median from float32 storage


def test_accumulator_default_is_pooled_and_empty_compute_raises():
    acc = NormalAccumulator()
    assert acc.mode == "pooled"
    with pytest.raises(ValueError, match="no image"):
        acc.compute()
    with pytest.raises(ValueError, match="mode"):
        NormalAccumulator("mean")


@pytest.mark.parametrize("mode", NORMAL_MODES)
def test_accumulator_reduces_in_index_order_and_merges_exactly(mode):
    rng = np.random.default_rng(3)
    chunks = [rng.uniform(0, 60, size) for size in (100, 37, 501, 64)]
    in_order = NormalAccumulator(mode)
    for chunk in chunks:
        in_order.update(chunk)
    shuffled = NormalAccumulator(mode)
    for index in (2, 0, 3, 1):
        shuffled.update(chunks[index], index=index)
    assert shuffled.compute() == in_order.compute()
    parts = [NormalAccumulator(mode), NormalAccumulator(mode)]
    for index, chunk in enumerate(chunks):
        parts[index % 2].update(chunk, index=index)
    merged = NormalAccumulator(mode)
    merged.merge([part.state() for part in parts])
    assert merged.compute() == in_order.compute() and merged.num_images == 4
    with pytest.raises(ValueError, match="image 1 was already added"):
        merged.update(chunks[1], index=1)
    with pytest.raises(ValueError, match="cannot merge"):
        NormalAccumulator("pooled" if mode == "per_image" else "per_image").merge([merged.state()])
