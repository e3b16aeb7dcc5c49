"""`genpercept eval` end to end on miniature archives: oracle predictions, known perturbations,
missing predictions, the model path and the JSON/CSV it writes."""

import csv
import json

import numpy as np
import pytest
from _archives import npy_bytes, png_bytes, write_tar, write_tree
from test_datasets import NYU_TAR, dis_files, matting_files, nyu_files, rng_image
from typer.testing import CliRunner

from benchmarks.datasets import get_dataset
from benchmarks.evaluate import EvalOptions, evaluate, prediction_stem
from benchmarks.metrics.depth import depth_metrics
from genpercept_cli.cli import app
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.palette import NYU40_PALETTE

runner = CliRunner()


@pytest.fixture()
def nyu_root(tmp_path):
    files, _ = nyu_files(np.random.default_rng(0))
    write_tar(tmp_path / "data" / NYU_TAR, files)
    return tmp_path / "data"


def write_preds(pred_dir, dataset, fn):
    for sample in dataset:
        path = pred_dir / f"{prediction_stem(sample.key)}_pred.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, fn(sample))


def run_eval(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def test_nyu_oracle_scores_zero_error(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    out = tmp_path / "results.json"
    result = run_eval("--dataset", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred",
                      "--limit", 2, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "nyu" and report["n_images"] == 2 and report["checkpoint"] is None
    assert report["metrics"]["absrel"] == pytest.approx(0, abs=1e-12)
    assert report["metrics"]["delta1"] == 1.0
    assert report["protocol"]["space"] == "depth" and report["protocol"]["min_depth"] == 1e-3
    assert report["paper"]["metrics"] == {"absrel": 0.052, "delta1": 0.966}
    rows = list(csv.DictReader(open(tmp_path / "results_per_image.csv")))
    assert [r["key"] for r in rows] == ds.keys() and float(rows[0]["absrel"]) == pytest.approx(0, abs=1e-12)


def test_nyu_affine_prediction_is_aligned_away(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: (0.5 * s.gt + 3.0).astype(np.float32))
    out = tmp_path / "r.json"
    run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 2, "-o", out)
    assert json.loads(out.read_text())["metrics"]["absrel"] < 1e-6


def test_nyu_known_perturbation_scores_the_formula(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: (s.gt**2).astype(np.float32))
    out = tmp_path / "r.json"
    run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 2, "-o", out)
    expected = []
    for s in ds:  # least squares by hand, then the protocol's clips, then SPEC's formulas
        p, g = (s.gt.astype(np.float64) ** 2)[s.valid], s.gt.astype(np.float64)[s.valid]
        a = np.vstack([p, np.ones_like(p)]).T
        scale, shift = np.linalg.solve(a.T @ a, a.T @ g)
        aligned = np.maximum(np.clip(scale * s.gt.astype(np.float32) ** 2 + shift, 1e-3, 10.0), 1e-6)
        ratio = np.maximum(aligned[s.valid] / g, g / aligned[s.valid])
        expected.append((np.mean(np.abs(aligned[s.valid] - g) / g), np.mean(ratio < 1.25)))
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["absrel"] == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-6)
    assert metrics["delta1"] == pytest.approx(np.mean([e[1] for e in expected]), rel=1e-9)
    assert metrics["absrel"] > 0.01


def test_disparity_space_from_the_checkpoint(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: np.where(s.gt > 0, 1.0 / np.maximum(s.gt, 1e-3), 0).astype(np.float32))
    out = tmp_path / "r.json"
    run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 2,
             "-c", "disparity", "-o", out)
    report = json.loads(out.read_text())
    assert report["protocol"]["space"] == "disparity"
    assert report["metrics"]["absrel"] < 1e-5 and report["metrics"]["delta1"] == 1.0


def test_missing_and_bad_predictions_fail_unless_allowed(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    first = tmp_path / "pred" / f"{prediction_stem(ds.keys()[0])}_pred.npy"
    np.save(first, np.full((480, 640), np.nan, np.float32))
    args = ["-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 2]
    result = run_eval(*args)
    assert result.exit_code == 1
    assert "non-finite" in result.output and "--allow-missing" in result.output
    np.save(first, np.zeros((10, 10), np.float32))
    assert "has shape (10, 10)" in run_eval(*args).output
    first.unlink()
    result = run_eval(*args, "--allow-missing", "-o", tmp_path / "r.json")
    assert result.exit_code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_images"] == 1 and len(report["problems"]) == 1 and "is missing" in report["problems"][0]


def test_eval_with_a_checkpoint_and_saved_predictions_round_trip(nyu_root, tmp_path, checkpoint_root):
    saved, out1, out2 = tmp_path / "saved", tmp_path / "model.json", tmp_path / "files.json"
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "-c", checkpoint_root / "unet_depth_v2", "--limit", 2,
                      "--processing-res", 64, "--save-predictions", saved, "-o", out1)
    assert result.exit_code == 0, result.output
    assert len(list(saved.rglob("*_pred.npy"))) == 2
    run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", saved, "--limit", 2, "-o", out2)
    model, files = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert model["protocol"]["processing_res"] == 64 and model["protocol"]["source"] == "model"
    for key in ("absrel", "delta1", "rmse"):
        assert model["metrics"][key] == pytest.approx(files["metrics"][key], rel=1e-9)
    assert model["metrics"]["absrel"] > 0  # a random model is not an oracle


def test_wrong_task_checkpoint_is_refused(nyu_root, checkpoint_root):
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "-c", checkpoint_root / "unet_normal_v2")
    assert result.exit_code == 2 and "predicts normal" in result.output


def test_missing_archive_is_one_sentence(tmp_path):
    result = run_eval("-d", "kitti", "--data-dir", tmp_path, "--predictions", tmp_path)
    assert result.exit_code == 2 and "kitti" in result.output and "Traceback" not in result.output


def test_dis_te_oracle_and_subsets(tmp_path):
    files, _ = dis_files(np.random.default_rng(1))
    write_tree(tmp_path / "data" / "DIS5K", files)
    ds = get_dataset("dis-te", tmp_path / "data")
    write_preds(tmp_path / "pred", ds, lambda s: (s.gt > 128).astype(np.float32))
    out = tmp_path / "r.json"
    result = run_eval("-d", "dis-te", "--data-dir", tmp_path / "data", "--predictions", tmp_path / "pred", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert m["maxf"] == pytest.approx(1.0) and m["mae"] == 0 and m["hce"] == 0
    assert m["sm"] == pytest.approx(1.0)
    assert 0.99 < m["em"] < 120 / 119  # PySOD divides by N - 1: a perfect 10x12 map scores 120/119
    assert sorted(report["subsets"]) == ["DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]
    assert report["paper"]["metrics"]["hce"] == 1364


def test_matting_oracle_and_known_offset(tmp_path):
    files, _ = matting_files(np.random.default_rng(2), "original_image")
    write_tree(tmp_path / "data/P3M-10k/validation/P3M-500-NP", files)
    ds = get_dataset("p3m-500-np", tmp_path / "data")
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    out = tmp_path / "r.json"
    run_eval("-d", "p3m-500-np", "--data-dir", tmp_path / "data", "--predictions", tmp_path / "pred", "-o", out)
    m = json.loads(out.read_text())["metrics"]
    assert m["sad"] == 0 and m["mse"] == 0 and m["grad"] == 0 and m["conn"] == 0
    write_preds(tmp_path / "pred", ds, lambda s: np.clip(s.gt + 0.1, 0, 1))
    run_eval("-d", "p3m-500-np", "--data-dir", tmp_path / "data", "--predictions", tmp_path / "pred", "-o", out)
    m = json.loads(out.read_text())["metrics"]
    expected = np.mean([np.abs(np.clip(s.gt.astype(np.float64) + 0.1, 0, 1) - s.gt).sum() / 1000 for s in ds])
    assert m["sad"] == pytest.approx(expected, rel=1e-5)


def test_seg_oracle_from_colours(tmp_path):
    from test_datasets import hypersim_tree

    hypersim_tree(tmp_path / "data", np.random.default_rng(3))
    ds = get_dataset("hypersim-seg", tmp_path / "data")
    write_preds(tmp_path / "pred", ds, lambda s: NYU40_PALETTE[np.where(s.gt == 255, 0, s.gt)].astype(np.float32) / 255)
    out = tmp_path / "r.json"
    data, pred = tmp_path / "data", tmp_path / "pred"
    result = run_eval("-d", "hypersim-seg", "--data-dir", data, "--predictions", pred, "-o", out)
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())["metrics"]
    assert m["miou"] == 100.0 and m["pixel_acc"] == 100.0
    assert m["per_class_iou"]["wall"] == 100.0 and m["per_class_iou"]["bed"] is None  # absent -> null


def test_normal_oracle_and_flip(tmp_path):
    rng = np.random.default_rng(4)
    raw = rng.integers(1, 256, (6, 8, 3), dtype=np.uint8)
    write_tree(tmp_path / "data/dsine_eval/nyuv2", {
        "test/000000_img.png": png_bytes(rng_image(rng, 6, 8)), "test/000000_normal.png": png_bytes(raw),
        "test/000000_intrins.npy": npy_bytes(np.eye(3, dtype=np.float32))})
    ds = get_dataset("nyu-normal", tmp_path / "data", limit=1)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    out = tmp_path / "r.json"
    args = ["-d", "nyu-normal", "--data-dir", tmp_path / "data", "--predictions", tmp_path / "pred",
            "--limit", 1, "-o", out]
    assert run_eval(*args).exit_code == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["mean"] == pytest.approx(0, abs=1e-3) and m["a5"] == 100.0
    run_eval(*args, "--normal-flip", "x")
    s = ds[0]
    g = s.gt[s.valid] / np.linalg.norm(s.gt[s.valid], axis=-1, keepdims=True)
    flipped = g * np.array([-1, 1, 1])
    expected = np.degrees(np.arccos(np.clip((flipped * g).sum(-1), -1, 1))).mean()
    assert json.loads(out.read_text())["metrics"]["mean"] == pytest.approx(expected, rel=1e-5)
    assert json.loads(out.read_text())["protocol"]["prediction_flip"] == "x"


def test_depth_metrics_formula_on_random_data():
    rng = np.random.default_rng(5)
    g = rng.uniform(0.5, 5, (20, 30))
    p = g * rng.uniform(0.8, 1.25, g.shape)
    valid = rng.random(g.shape) > 0.3
    m = depth_metrics(p, g, valid)
    assert m["absrel"] == pytest.approx(np.mean(np.abs(p - g)[valid] / g[valid]))
    d = np.log(p[valid]) - np.log(g[valid])
    assert m["silog"] == pytest.approx(100 * np.sqrt(np.mean(d**2) - np.mean(d) ** 2))


def test_sample_without_valid_gt_is_a_problem(tmp_path):
    files, _ = nyu_files(np.random.default_rng(6))
    from _archives import png_bytes as png
    from test_datasets import NYU_FIRST

    files[NYU_FIRST[1]] = png(np.zeros((480, 640), np.uint16))  # no valid depth at all
    write_tar(tmp_path / "data" / NYU_TAR, files)
    ds = get_dataset("nyu", tmp_path / "data", limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt + 1)
    out = tmp_path / "r.json"
    args = ["-d", "nyu", "--data-dir", tmp_path / "data", "--predictions", tmp_path / "pred", "--limit", 2, "-o", out]
    result = run_eval(*args)
    assert result.exit_code == 1, result.output
    assert "the ground truth has no valid pixel" in result.output and "--allow-missing" in result.output
    result = run_eval(*args, "--allow-missing")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n_images"] == 1 and "skipped" not in report
    assert report["problems"] == [f"{NYU_FIRST[0]}: the ground truth has no valid pixel, so there is nothing to score"]


def test_disparity_prediction_without_a_positive_value_is_a_problem(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: np.where(s.gt > 0, 1.0 / np.maximum(s.gt, 1e-3), 0).astype(np.float32))
    np.save(tmp_path / "pred" / f"{prediction_stem(ds.keys()[0])}_pred.npy", np.zeros((480, 640), np.float32))
    out = tmp_path / "r.json"
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 2,
                      "--space", "disparity", "--allow-missing", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n_images"] == 1 and report["metrics"]["absrel"] < 1e-5
    assert report["problems"] == [f"{ds.keys()[0]}: prediction cannot be scored (cannot align in disparity space: "
                                  "no valid pixel has a positive prediction and ground truth)"]


def test_diode_archive_spelled_outdoor_is_scored(tmp_path):
    from test_datasets import diode_outdoor_files

    files, truth = diode_outdoor_files(np.random.default_rng(19))
    write_tar(tmp_path / "data/diode/diode_val.tar", files)
    ds = get_dataset("diode-outdoor", tmp_path / "data", limit=2)
    assert ds.keys() == list(truth)
    write_preds(tmp_path / "pred", ds, lambda s: (0.25 * s.gt + 2.0).astype(np.float32))
    result = evaluate(EvalOptions(dataset="diode-outdoor", data_dir=tmp_path / "data", limit=2,
                                  predictions=tmp_path / "pred"))
    assert result.problems == [] and [row["key"] for row in result.rows] == list(truth)
    assert result.n_images == 2 and result.metrics["absrel"] < 1e-6 and result.metrics["delta1"] == 1.0


@pytest.fixture()
def no_evaluation(monkeypatch):
    """Fails the test if `eval` gets as far as reading the dataset or running the model."""
    import benchmarks.evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate ran before the write targets were checked")

    monkeypatch.setattr(benchmarks.evaluate, "evaluate", refuse)
    monkeypatch.setattr(benchmarks.evaluate, "get_dataset", refuse)


@pytest.mark.parametrize("option, target", [
    ("-o", "blocker/results.json"),
    ("--csv", "blocker/per_image.csv"),
    ("--save-predictions", "blocker/preds"),
    ("--save-predictions", "blocker"),
])
def test_unwritable_target_is_refused_before_any_work(tmp_path, no_evaluation, option, target):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    source = [] if option == "--save-predictions" else ["--predictions", tmp_path]  # saving needs the model
    result = run_eval("-d", "nyu", "--data-dir", tmp_path / "no-data", *source, option, tmp_path / target)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:") and "\n" not in message and "Traceback" not in message
    assert str(tmp_path / target) in message
    assert ("is a file; give a folder" if target == "blocker" else f"{blocker} is a file, not a folder") in message


def test_default_csv_beside_the_output_is_checked_too(tmp_path, no_evaluation):
    (tmp_path / "r_per_image.csv").mkdir()
    result = run_eval("-d", "nyu", "--data-dir", tmp_path, "--predictions", tmp_path, "-o", tmp_path / "r.json")
    assert result.exit_code == 2 and "the per-image CSV" in result.output and "is a folder" in result.output


@pytest.mark.parametrize("dataset, space, warning", [
    ("nyu", "auto", "--checkpoint disparity is not run with --predictions; it only says that the files hold "
                    "disparity, so they are aligned in disparity space, and picks the paper row."),
    ("nyu", "depth", "--checkpoint disparity is not run with --predictions; it only picks the paper row (--space "
                     "depth says what the files hold)."),
    ("nyu-normal", "auto", "--checkpoint disparity is not run with --predictions; it only picks the paper row (the "
                           "files are scored as they are)."),
])
def test_checkpoint_with_predictions_warns_it_is_not_run(tmp_path, monkeypatch, dataset, space, warning):
    import benchmarks.evaluate

    seen = {}

    def record_and_stop(opts, progress, dist=None):
        seen["opts"] = opts
        raise GenPerceptError("stopped before scoring")

    monkeypatch.setattr(benchmarks.evaluate, "evaluate", record_and_stop)
    result = run_eval("-d", dataset, "--data-dir", tmp_path, "--predictions", tmp_path, "-c", "disparity",
                      "--space", space)
    assert result.exit_code == 2 and "stopped before scoring" in result.output
    assert f"warning: {warning}" in result.output
    assert seen["opts"].checkpoint is None and seen["opts"].predicted_by == "disparity"  # never loaded: its paper row
    assert seen["opts"].space == ("disparity" if space == "auto" and dataset == "nyu" else space)


def test_warnings_print_names_as_written(tmp_path, checkpoint_root):
    (tmp_path / "my[red]model").symlink_to(checkpoint_root / "unet_normal_v2")
    result = run_eval("-d", "nyu-normal", "--data-dir", tmp_path, "--predictions", tmp_path, "-c",
                      tmp_path / "my[red]model")
    assert f"warning: --checkpoint {tmp_path}/my[red]model is not run with --predictions" in result.output


@pytest.mark.parametrize("checkpoint, label, row", [
    ("disparity", "GenPercept (disparity)", {"absrel": 0.058, "delta1": 0.969}),  # not the benchmark's first row
    ("guangkaixu/genpercept-models/unet_disparity_v2", "GenPercept (disparity)", {"absrel": 0.058, "delta1": 0.969}),
])
def test_predictions_with_a_checkpoint_show_that_releases_paper_row(nyu_root, tmp_path, checkpoint, label, row):
    ds = get_dataset("nyu", nyu_root, limit=1)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 1,
                      "--space", "depth", "-c", checkpoint, "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["paper"] == {"label": label, "metrics": row} and report["checkpoint"] is None


def test_predictions_with_a_checkpoint_that_does_not_resolve_are_refused_before_reading(tmp_path):
    result = run_eval("-d", "nyu-normal", "--data-dir", tmp_path, "--predictions", tmp_path, "-c", "no-such-model")
    assert result.exit_code == 2 and result.output.startswith("error: no checkpoint 'no-such-model'")


def test_normal_flip_on_a_depth_benchmark_warns_it_is_ignored(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=1)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 1,
                      "--normal-flip", "x")
    assert result.exit_code == 0, result.output
    assert "warning: --normal-flip is ignored: nyu is a depth benchmark, not a normal one." in result.output


def test_save_predictions_with_predictions_warns_it_is_ignored(nyu_root, tmp_path):
    ds = get_dataset("nyu", nyu_root, limit=1)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt)
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 1,
                      "--save-predictions", tmp_path / "saved")
    assert result.exit_code == 0, result.output
    assert "warning: --save-predictions is ignored with --predictions" in result.output
    assert not (tmp_path / "saved").exists()


def _save_object_array(path):
    array = np.empty((480, 640), dtype=object)
    array[:] = 1.0
    np.save(path, array, allow_pickle=True)


def _save_pickled_dict(path):
    np.save(path, {"depth": np.ones((480, 640), np.float32)}, allow_pickle=True)


def _save_plain_pickle(path):
    import pickle

    path.write_bytes(pickle.dumps({"depth": np.ones((480, 640), np.float32)}))


def _save_strings(path):
    np.save(path, np.full((480, 640), "1.0"))


@pytest.mark.parametrize("save, held", [
    (_save_object_array, "dtype object"),
    (_save_pickled_dict, "dtype object"),
    (_save_plain_pickle, "no .npy header"),
    (_save_strings, "dtype <U3"),
])
def test_prediction_that_is_not_numbers_is_a_problem(nyu_root, tmp_path, save, held):
    ds = get_dataset("nyu", nyu_root, limit=2)
    write_preds(tmp_path / "pred", ds, lambda s: s.gt.astype(np.float16))  # half floats are numbers
    first = tmp_path / "pred" / f"{prediction_stem(ds.keys()[0])}_pred.npy"
    save(first)
    out = tmp_path / "r.json"
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "pred", "--limit", 2,
                      "--allow-missing", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n_images"] == 1
    assert report["problems"] == [f"{ds.keys()[0]}: prediction is not a NumPy array of numbers "
                                  f"(rgb_0001_pred.npy has {held})"]
    assert "pickle" not in result.output


@pytest.mark.parametrize("args,message", [
    (["-o", "."], "is a folder"),
    (["--normal-flip", "q"], "Invalid normal flip"),
    (["--processing-res", "-5"], "--processing-res"),
    (["--limit", "0"], "--limit"),
])
def test_eval_option_errors_before_any_work(nyu_root, tmp_path, args, message):
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_processing_res_no_image_can_use_is_refused_before_the_model_runs(nyu_root, checkpoint_root, monkeypatch):
    """`eval --processing-res 3` loaded the model and ran every sample before saying so."""
    from genpercept_cli.pipeline import GenPerceptPipeline

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(GenPerceptPipeline, "from_checkpoint", must_not_load)
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "-c", checkpoint_root / "unet_depth_v2",
                      "--processing-res", 3)
    assert result.exit_code == 2, result.output
    assert "error: --processing-res must be 0 (native size) or at least 8 pixels" in result.output


def test_an_incomplete_archive_lists_the_missing_sample_as_a_problem_with_files_as_with_a_model(
        tmp_path, checkpoint_root):
    """With --predictions a member missing from the archive stopped the run (exit 2) after scoring part of it;
    with a model the same gap was a listed problem. Both list it now and exit 1 (0 with --allow-missing)."""
    from test_datasets import NYU_SECOND

    files, _ = nyu_files(np.random.default_rng(0))
    del files[NYU_SECOND[1]]  # the second sample's depth map
    write_tar(tmp_path / "data" / NYU_TAR, files)
    first = get_dataset("nyu", tmp_path / "data", limit=1)
    write_preds(tmp_path / "pred", first, lambda s: s.gt)
    args = ["-d", "nyu", "--data-dir", tmp_path / "data", "--limit", 2]
    missing = f"{NYU_SECOND[1]} is missing from"
    scored = run_eval(*args, "--predictions", tmp_path / "pred")
    assert scored.exit_code == 1, scored.output
    assert missing in scored.output and "1 samples could not be scored; the metrics cover 1 samples" in scored.output
    allowed = run_eval(*args, "--predictions", tmp_path / "pred", "--allow-missing", "-o", tmp_path / "r.json")
    assert allowed.exit_code == 0, allowed.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_images"] == 1 and report["metrics"]["absrel"] == pytest.approx(0, abs=1e-12)
    assert len(report["problems"]) == 1 and missing in report["problems"][0]
    model = run_eval(*args, "-c", checkpoint_root / "unet_depth_v2", "--processing-res", 32)
    assert model.exit_code == 1 and missing in model.output, model.output


def test_predictions_that_are_a_file_or_a_symlink_loop_say_so(nyu_root, tmp_path):
    (tmp_path / "preds.npy").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    as_file = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "preds.npy")
    assert as_file.exit_code == 2
    assert f"--predictions {tmp_path / 'preds.npy'} is a file; give the folder" in as_file.output
    loop = run_eval("-d", "nyu", "--data-dir", nyu_root, "--predictions", tmp_path / "loop")
    assert loop.exit_code == 2 and f"predictions folder {tmp_path / 'loop'} is a symbolic link loop." in loop.output


@pytest.mark.parametrize("ref,label,nyu", [
    ("disparity", "GenPercept (disparity)", {"absrel": 0.058, "delta1": 0.969}),
    ("guangkaixu/genpercept-models/unet_disparity_v2", "GenPercept (disparity)", {"absrel": 0.058, "delta1": 0.969}),
    ("guangkaixu/genpercept-models/unet_disparity_dpt_head_v2", "GenPercept (disparity + DPT head)",
     {"absrel": 0.059, "delta1": 0.967}),
    ("guangkaixu/genpercept-models:unet_depth_v2", "GenPercept (depth)", {"absrel": 0.052, "delta1": 0.966}),
    ("GonzaloMG/marigold-e2e-ft-depth", "Marigold + E2E FT (README)", {"absrel": 0.052}),
    ("metaprompts_nyu.pth", "Meta Prompts (NYUv2)", {"absrel": 0.061, "rmse": 0.223, "delta1": 0.976}),
])
def test_the_paper_row_is_the_released_model_actually_run(ref, label, nyu, tmp_path):
    """A hub id of the disparity or DPT-head model was shown GenPercept's depth row (matched by family)."""
    from benchmarks.evaluate import paper_row
    from genpercept_cli.checkpoints import resolve_checkpoint

    if ref.endswith(".pth"):  # a release file given by path is that release
        (tmp_path / ref).write_bytes(b"")
        ref = str(tmp_path / ref)
    assert paper_row("depth", "nyu", resolve_checkpoint(ref), 768) == (label, nyu, None)


@pytest.mark.parametrize("ref,why", [
    ("someone/finetune/unet_disparity_v2", "someone/finetune/unet_disparity_v2 is not a released model of the "
                                           "registry"),
    ("lotus-d-depth", "the papers report no result of lotus-d-depth on this benchmark"),
])
def test_no_paper_row_for_a_model_without_one_says_why(ref, why):
    from benchmarks.evaluate import paper_row
    from genpercept_cli.checkpoints import resolve_checkpoint

    assert paper_row("depth", "nyu", resolve_checkpoint(ref), 768) == (None, None, why)


def test_a_local_checkpoint_is_shown_no_paper_row(nyu_root, tmp_path, checkpoint_root):
    """A local fine-tune (or any folder) was shown the paper's row as if it were the released model."""
    out = tmp_path / "r.json"
    result = run_eval("-d", "nyu", "--data-dir", nyu_root, "-c", checkpoint_root / "unet_disparity_v2", "--limit", 1,
                      "--processing-res", 32, "-o", out)
    assert result.exit_code == 0, result.output
    assert "no paper row: a local checkpoint, not a released model" in result.output
    assert "GenPercept (" not in result.output
    report = json.loads(out.read_text())
    assert report["paper"] is None and report["paper_note"] == "a local checkpoint, not a released model"


def test_the_meta_prompts_release_gets_its_single_scale_or_multi_scale_flip_row():
    from benchmarks.evaluate import paper_row
    from genpercept_cli.checkpoints import resolve_checkpoint

    spec = resolve_checkpoint("metaprompts-ade20k")
    assert paper_row("semseg", "ade20k", spec, 0) == ("Meta Prompts (ADE20K, single-scale)", {"miou": 55.83}, None)
    assert paper_row("semseg", "ade20k", spec, 0, "ms_flip") == (
        "Meta Prompts (ADE20K, multi-scale + flip)", {"miou": 56.81}, None)
