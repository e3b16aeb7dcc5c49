"""Metric depth (Meta Prompts): metres kept through post-processing, millimetre PNGs and per-image colour maps,
the metric evaluation protocol (no alignment, NaN -> min depth, no clip, KITTI Garg crop), and predict / eval
end to end with a tiny Meta Prompts NYUv2 release."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _archives import png_bytes, write_tar
from typer.testing import CliRunner

from benchmarks.datasets import get_dataset
from benchmarks.datasets.base import Sample
from benchmarks.datasets.depth import KITTIDepth
from benchmarks.metrics.depth import depth_metrics, fill_non_finite
from benchmarks.scorers import DepthScorer
from genpercept_cli.colormap import spectral
from genpercept_cli.errors import DataError
from genpercept_cli.files import read_png
from genpercept_cli.outputs import write_prediction
from genpercept_cli.tasks import get_task
from genpercept_cli.tasks.depth import to_millimetres

METRIC = "metric_depth"
NYU_TAR = "nyuv2/nyu_labeled_extracted.tar"
NYU_FIRST = ("test/kitchen_0004/rgb_0001.png", "test/kitchen_0004/depth_0001.png", "test/kitchen_0004/filled_0001.png")
runner = CliRunner()


# -- files ------------------------------------------------------------------------------------------
def test_millimetres_round_clip_and_write_0_for_no_prediction():
    depth = np.array([[0.0004, 0.0006, 1.2344, 1.2346], [65.535, 70.0, np.nan, 0.0]], dtype=np.float32)
    mm = to_millimetres(depth)
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, [[0, 1, 1234, 1235], [65535, 65535, 0, 0]])


def test_metric_depth_files_hold_metres_millimetres_and_a_per_image_colour_range(tmp_path):
    pred = np.array([[1.0, 2.0], [3.0, np.nan]], dtype=np.float32)
    paths = write_prediction(pred, "depth", tmp_path / "img", ("npy", "png16", "color"), kind=METRIC)
    assert [p.name for p in paths] == ["img_pred.npy", "img_pred.png", "img_colored.png"]
    np.testing.assert_array_equal(np.load(paths[0]), pred)  # metres, NaN kept
    np.testing.assert_array_equal(read_png(paths[1]), [[1000, 2000], [3000, 0]])
    colored = read_png(paths[2])
    near, middle, far = spectral(np.array([0.0, 0.5, 1.0]))  # 1 m .. 3 m stretched over 0 .. 1
    np.testing.assert_array_equal(colored, [[near, middle], [far, [0, 0, 0]]])
    assert tuple(near) == (158, 1, 66)  # near = red


def test_affine_depth_files_are_unchanged_by_the_metric_path(tmp_path):
    pred = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    png, color = write_prediction(pred, "depth", tmp_path / "img", ("png16", "color"))
    np.testing.assert_array_equal(read_png(png), np.round(pred * 65535).astype(np.uint16))
    np.testing.assert_array_equal(read_png(color), spectral(pred))


def test_metric_depth_refuses_inf_and_affine_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="contains inf"):
        write_prediction(np.array([[1.0, np.inf]], np.float32), "depth", tmp_path / "a", ("npy",), kind=METRIC)
    with pytest.raises(ValueError, match="NaN or inf"):
        write_prediction(np.array([[1.0, np.nan]], np.float32), "depth", tmp_path / "b", ("npy",))
    assert list(tmp_path.iterdir()) == []


def test_postprocess_keeps_metres_and_nan_for_metric_depth_only():
    p = torch.tensor([[[-0.5, 2.5, float("nan")]]])
    metric = get_task("depth").postprocess(p, METRIC)
    torch.testing.assert_close(metric, torch.tensor([[[0.0, 2.5, float("nan")]]]), equal_nan=True)
    torch.testing.assert_close(get_task("depth").postprocess(p[..., :2]), torch.tensor([[[0.0, 1.0]]]))


def test_saved_metric_depth_may_hold_nan():
    pred = np.array([[1.0, np.nan]], np.float32)
    assert get_task("depth").check_saved(pred, (1, 2), METRIC) is None
    assert get_task("depth").check_saved(pred, (1, 2)) == "contains non-finite values"


# -- the metric protocol ----------------------------------------------------------------------------
def test_fill_non_finite_sets_nan_to_min_and_inf_to_max():
    filled = fill_non_finite(np.array([np.nan, np.inf, -np.inf, 3.5]), 1e-3, 80.0)
    np.testing.assert_array_equal(filled, [1e-3, 80.0, 80.0, 3.5])


def _one_sample():
    gt = np.array([[2.0, 4.0], [5.0, 0.0]], np.float32)
    valid = np.array([[True, True], [True, False]])
    return Sample("a.png", np.zeros((2, 2, 3), np.uint8), gt, valid)


def test_metric_protocol_scores_predictions_as_they_are():
    nyu_metric = SimpleNamespace(min_depth=1e-3, max_depth=10.0, align_max_samples=None, pred_clip=None,
                                 protocol="metric")
    pred = np.array([[2.2, np.nan], [12.0, 7.0]], np.float32)  # 12 m above the cap: not clipped
    row = DepthScorer(nyu_metric, "metric", "reference").update(0, _one_sample(), pred)
    errors = np.array([0.2 / 2, (4 - 1e-3) / 4, 7 / 5])  # |pred - gt| / gt on the three valid pixels
    assert row["absrel"] == pytest.approx(errors.mean(), rel=1e-6)
    assert row["rmse"] == pytest.approx(np.sqrt(np.mean([0.2**2, (4 - 1e-3) ** 2, 49.0])), rel=1e-6)
    assert row["delta1"] == pytest.approx(1 / 3)
    marigold = SimpleNamespace(**{**vars(nyu_metric), "protocol": "marigold"})
    clipped = DepthScorer(marigold, "metric", "reference").update(0, _one_sample(), np.nan_to_num(pred, nan=4.0))
    assert clipped["absrel"] == pytest.approx(np.mean([0.1, 0.0, 1.0]), rel=1e-6)  # 12 m clipped to 10 m


def test_kitti_metric_protocol_uses_the_garg_crop(tmp_path):
    rng = np.random.default_rng(4)
    rgb_rel = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000000.png"
    gt_rel = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000000.png"
    raw = rng.integers(0, 22000, (375, 1242)).astype(np.uint16)
    write_tar(tmp_path / "kitti/kitti_eigen_split_test.tar",
              {rgb_rel: png_bytes(np.zeros((375, 1242, 3), np.uint8)), gt_rel: png_bytes(raw)})
    split = tmp_path / "split.txt"
    split.write_text(f"{rgb_rel} {gt_rel} 721.5377\n")
    crop = raw[23:, 13:13 + 1216]  # the KB crop: bottom 352 rows, centred 1216 columns
    in_range = (crop >= 1) & (crop <= 20479)  # 1e-3 < d < 80 m with d = raw / 256
    for protocol, (rows, cols) in [("metric", (slice(143, 349), slice(43, 1172))),
                                   ("marigold", (slice(117, 321), slice(43, 1172)))]:
        sample = KITTIDepth(tmp_path, split_file=split, protocol=protocol)[0]
        mask = np.zeros((352, 1216), bool)
        mask[rows, cols] = True
        np.testing.assert_array_equal(sample.valid, mask & in_range)


def test_metric_protocol_exists_for_nyu_and_kitti_only(tmp_path):
    write_tar(tmp_path / "eth3d/eth3d.tar", {})
    with pytest.raises(DataError, match="eth3d has no 'metric' protocol"):
        get_dataset("eth3d", tmp_path, protocol="metric")


# -- end to end: predict and eval with a tiny Meta Prompts NYUv2 release -----------------------------
@pytest.fixture(scope="module")
def tiny_nyu(tmp_path_factory):
    from tiny_metaprompts import write_tiny_converted

    return write_tiny_converted(tmp_path_factory.mktemp("mp") / "metaprompts-nyu", "nyu")


def _small_nyu(root, rng):
    """The first NYU split entry as a 48x64 frame (the model sees 64x64 windows: fast on the CPU)."""
    raw = rng.integers(500, 9000, (48, 64)).astype(np.uint16)  # 0.5 .. 9 m
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    write_tar(root / NYU_TAR, {NYU_FIRST[0]: png_bytes(rgb), NYU_FIRST[1]: png_bytes(raw),
                               NYU_FIRST[2]: png_bytes(raw)})
    return rgb, raw


def test_predict_writes_metres_millimetres_and_colours(tiny_nyu, tmp_path):
    from genpercept_cli.cli import app
    from genpercept_cli.pipeline import GenPerceptPipeline

    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "room.png").write_bytes(png_bytes(rgb))
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-c", str(tiny_nyu), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metres = np.load(tmp_path / "out" / "room_pred.npy")
    expected = GenPerceptPipeline.from_checkpoint(str(tiny_nyu))(rgb)
    np.testing.assert_allclose(metres, expected, rtol=1e-5, atol=1e-6)
    assert metres.shape == (48, 64) and 0 < np.nanmin(metres) and np.nanmax(metres) < 10.0  # sigmoid x 10 m
    assert np.nanmax(metres) > 1.0  # metres, not clipped to [0, 1]
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "room_pred.png"), to_millimetres(metres))
    assert read_png(tmp_path / "out" / "room_colored.png").shape == (48, 64, 3)


def test_eval_scores_metric_depth_without_alignment(tiny_nyu, tmp_path):
    from genpercept_cli.cli import app
    from genpercept_cli.pipeline import GenPerceptPipeline

    rgb, raw = _small_nyu(tmp_path / "data", np.random.default_rng(2))
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "-d", "nyu", "--data-dir", str(tmp_path / "data"), "-c", str(tiny_nyu),
                                 "--limit", "1", "--save-predictions", str(tmp_path / "pred"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"]["alignment"] == "none" and report["protocol"]["space"] == "metric"
    assert report["protocol"]["protocol"].startswith("metric")
    assert report["paper"] is None and report["paper_note"] == "a local checkpoint, not a released model"
    # by hand: the model's metres against the raw GT on the Eigen crop (rows 45:471, cols 41:601), no fit
    pred = GenPerceptPipeline.from_checkpoint(str(tiny_nyu))(rgb)
    gt = (raw / 1000.0).astype(np.float32)
    valid = np.zeros(gt.shape, bool)
    valid[45:, 41:] = True
    expected = depth_metrics(pred.astype(np.float64), gt, valid)
    for key in ("absrel", "rmse", "delta1", "sqrel", "log10"):
        assert report["metrics"][key] == pytest.approx(expected[key], rel=1e-4), key
    saved = np.load(tmp_path / "pred" / "test/kitchen_0004/rgb_0001_pred.npy")
    np.testing.assert_allclose(saved, pred, rtol=1e-5, atol=1e-6)
    # the saved metres score the same from disk, with the checkpoint naming what the files hold
    again = runner.invoke(app, ["eval", "-d", "nyu", "--data-dir", str(tmp_path / "data"), "--limit", "1",
                                "--predictions", str(tmp_path / "pred"), "-c", "metaprompts-nyu",
                                "-o", str(tmp_path / "files.json")])
    assert again.exit_code == 0, again.output
    files = json.loads((tmp_path / "files.json").read_text())
    assert files["metrics"]["absrel"] == pytest.approx(report["metrics"]["absrel"], rel=1e-6)
    assert files["protocol"]["protocol"].startswith("metric")
