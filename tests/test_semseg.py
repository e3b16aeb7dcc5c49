"""Semantic segmentation into a label set (Meta Prompts ADE20K / Cityscapes): post-processing, files, label
sets, mmseg's mIoU / aAcc / mAcc on hand-computed confusion matrices, and predict / eval end to end with a
tiny Meta Prompts ADE20K release."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _archives import ade20k_files, cityscapes_files, png_bytes, write_tree
from typer.testing import CliRunner

from benchmarks.datasets.base import Sample
from benchmarks.metrics.seg import SegAccumulator, accuracy_per_class, confusion_matrix, iou_per_class
from benchmarks.scorers import SemsegScorer
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.files import read_png
from genpercept_cli.outputs import write_prediction
from genpercept_cli.palette import ADE20K_PALETTE, CITYSCAPES_PALETTE, LABEL_SETS, get_label_set
from genpercept_cli.tasks import get_task

runner = CliRunner()


# -- label sets, post-processing, files ---------------------------------------------------------------
def test_label_sets_are_the_public_lists():
    ade, cs = LABEL_SETS["ade20k"], LABEL_SETS["cityscapes"]
    assert (ade.num_classes, ade.palette.shape, ade.palette.dtype) == (150, (150, 3), np.uint8)
    assert (ade.classes[0], ade.classes[12], ade.classes[149]) == ("wall", "person", "flag")
    assert tuple(ade.palette[0]) == (120, 120, 120) and tuple(ade.palette[149]) == (92, 0, 255)
    assert (cs.num_classes, cs.classes[0], cs.classes[18]) == (19, "road", "bicycle")
    assert tuple(cs.palette[0]) == (128, 64, 128) and tuple(cs.palette[13]) == (0, 0, 142)  # road, car
    with pytest.raises(GenPerceptError, match="ade20k, cityscapes"):
        get_label_set("coco")


def test_postprocess_takes_the_argmax_first_on_ties():
    scores = torch.tensor([[[0.2, 0.5]], [[0.7, 0.5]], [[0.1, 0.0]]])  # [K=3, 1, 2]; pixel 2 ties 0 and 1
    ids = get_task("semseg").postprocess(scores, "class_scores")
    assert ids.dtype == torch.float32
    torch.testing.assert_close(ids, torch.tensor([[[1.0, 0.0]]]))


@pytest.mark.parametrize("labels, palette", [("ade20k", ADE20K_PALETTE), ("cityscapes", CITYSCAPES_PALETTE)])
def test_files_hold_ids_and_palette_colours(tmp_path, labels, palette):
    pred = np.array([[0, 5], [18, 3]], np.float32)
    npy, png, colored = write_prediction(pred, "semseg", tmp_path / "img", ("npy", "png", "color"), labels=labels)
    assert [p.name for p in (npy, png, colored)] == ["img_pred.npy", "img_pred.png", "img_colored.png"]
    ids = np.load(npy)
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, pred)
    np.testing.assert_array_equal(read_png(png), pred.astype(np.uint8))
    np.testing.assert_array_equal(read_png(colored), palette[pred.astype(int)])
    assert get_task("semseg").read_saved(tmp_path / "img").tolist() == [[0, 5], [18, 3]]
    npy.unlink()  # the PNG of ids is read when the .npy is gone
    assert get_task("semseg").read_saved(tmp_path / "img").tolist() == [[0, 5], [18, 3]]


def test_unknown_ids_are_black_and_bad_ids_are_refused(tmp_path):
    np.testing.assert_array_equal(LABEL_SETS["cityscapes"].colors(np.array([[19, 255]])), np.zeros((1, 2, 3)))
    for bad, message in [(255.0, "outside 0..254"), (-1.0, "outside 0..254"), (np.nan, "NaN or inf")]:
        with pytest.raises(ValueError, match=message):
            write_prediction(np.array([[1.0, bad]], np.float32), "semseg", tmp_path / "x", ("npy",))
    assert list(tmp_path.iterdir()) == []
    assert get_task("semseg").check_saved(np.array([[1, 255]], np.uint8), (1, 2)) == "holds ids outside 0..254"
    assert get_task("semseg").check_saved(np.array([[1, 2]], np.uint8), (1, 2)) is None


# -- mIoU as mmseg computes it ------------------------------------------------------------------------
GT = np.array([[0, 0, 1, 1, 2, 255]])
PRED = np.array([[0, 1, 1, 1, 0, 3]])  # the 3 lies on an ignored pixel
# rows GT, columns prediction, 4 classes, no "unlabeled" class
HAND = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_confusion_matrix_of_a_label_set_counts_class_0_and_skips_255():
    np.testing.assert_array_equal(confusion_matrix(PRED, GT, 4, unlabeled_id=None), HAND)


def test_miou_aacc_macc_by_hand():
    iou = iou_per_class(HAND, "mmseg", None)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])  # TP / (GT + pred - TP)
    assert math.isnan(iou[3])  # neither in GT nor predicted on a scored pixel: out of the mean
    np.testing.assert_allclose(accuracy_per_class(HAND)[:3], [0.5, 1.0, 0.0])
    acc = SegAccumulator(4, unlabeled_id=None, class_names=("a", "b", "c", "d"))
    acc.update(PRED, GT)
    result = acc.compute()
    assert result["miou"] == pytest.approx(100 / 3) and result["pixel_acc"] == pytest.approx(60.0)
    assert result["macc"] == pytest.approx(50.0)
    assert list(result["per_class_iou"]) == ["a", "b", "c", "d"] and math.isnan(result["per_class_iou"]["d"])


def test_a_class_predicted_but_absent_from_gt_scores_0():
    acc = SegAccumulator(4, unlabeled_id=None)
    acc.update(np.array([[0, 3]]), np.array([[0, 0]]))
    # class 0: 1 / (2 + 1 - 1); class 3: 0 / 1; classes 1, 2: NaN
    assert acc.compute()["miou"] == pytest.approx(100 * (0.5 + 0.0) / 2)


def test_merging_two_halves_equals_the_whole():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (6, 7)) for _ in range(4)]
    preds = [rng.integers(0, 5, (6, 7)) for _ in range(4)]
    for gt in gts:
        gt[rng.random(gt.shape) < 0.2] = 255
    ds = SimpleNamespace(labels="cityscapes")
    samples = [Sample(f"{i}.png", np.zeros((6, 7, 3), np.uint8), g.astype(np.uint8), g != 255)
               for i, g in enumerate(gts)]
    whole, first, second = SemsegScorer(ds, "mmseg"), SemsegScorer(ds, "mmseg"), SemsegScorer(ds, "mmseg")
    for i, (sample, pred) in enumerate(zip(samples, preds, strict=True)):
        whole.update(i, sample, pred.astype(np.float32))
        (first if i < 2 else second).update(i, sample, pred.astype(np.float32))
    first.merge([first.state(), second.state()])
    merged, single = first.compute(), whole.compute()
    assert merged.pop("per_class_iou") == pytest.approx(single.pop("per_class_iou"), nan_ok=True)
    assert merged == single
    expected = sum(confusion_matrix(p, g, 19, unlabeled_id=None) for p, g in zip(preds, gts, strict=True))
    np.testing.assert_array_equal(first.acc.matrix, expected)


# -- end to end: predict and eval with a tiny Meta Prompts ADE20K release ------------------------------
@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory):
    from tiny_metaprompts import write_tiny_converted

    # the released 2048x512 keep-ratio scale and 512 crops, scaled down for a 24x32 image
    return write_tiny_converted(tmp_path_factory.mktemp("mp") / "metaprompts-ade20k", "ade20k",
                                img_scale=(64, 32), crop=32, stride=24)


@pytest.fixture(scope="module")
def tiny_ade_pipe(tiny_ade):
    from genpercept_cli.pipeline import GenPerceptPipeline

    return GenPerceptPipeline.from_checkpoint(str(tiny_ade))


def test_predict_writes_ids_and_ade20k_colours(tiny_ade, tiny_ade_pipe, tmp_path):
    from genpercept_cli.cli import app

    rgb = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "street.png").write_bytes(png_bytes(rgb))
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-c", str(tiny_ade), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    ids = np.load(tmp_path / "out" / "street_pred.npy")
    assert ids.dtype == np.uint8 and ids.shape == (24, 32) and ids.max() < 150
    np.testing.assert_array_equal(ids, tiny_ade_pipe(rgb))
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "street_pred.png"), ids)
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "street_colored.png"), ADE20K_PALETTE[ids])


def _hand_miou(preds, gts, num_classes):
    """mmseg's mIoU from per-class pixel counts, written out with loops."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, gt in zip(preds, gts, strict=True):
        for c in range(num_classes):
            scored = gt != 255
            inter[c] += np.sum((pred == c) & (gt == c) & scored)
            union[c] += np.sum(((pred == c) | (gt == c)) & scored)
    present = union > 0
    return 100.0 * float(np.mean(inter[present] / union[present]))


def test_eval_scores_miou_single_scale_and_multi_scale_flip(tiny_ade, tiny_ade_pipe, tmp_path):
    from benchmarks.datasets import get_dataset
    from genpercept_cli.cli import app

    files, _ = ade20k_files(np.random.default_rng(4), count=2, size=(16, 24))
    write_tree(tmp_path / "ADEChallengeData2016", files)
    base = ["eval", "-d", "ade20k", "--data-dir", str(tmp_path), "-c", str(tiny_ade), "--limit", "1"]
    result = runner.invoke(app, [*base, "--save-predictions", str(tmp_path / "pred"), "-o", str(tmp_path / "ss.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ss.json").read_text())
    result = runner.invoke(app, [*base[:5], "--limit", "1", "--predictions", str(tmp_path / "pred"),
                                 "-o", str(tmp_path / "files.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "files.json").read_text())["metrics"]["miou"] == report["metrics"]["miou"]
    samples = list(get_dataset("ade20k", tmp_path, limit=1))
    preds = [tiny_ade_pipe(s.image) for s in samples]
    assert report["metrics"]["miou"] == pytest.approx(_hand_miou(preds, [s.gt for s in samples], 150), rel=1e-9)
    assert report["protocol"]["inference"] == "single-scale" and report["protocol"]["classes"] == 150
    assert report["paper"] is None and report["paper_note"] == "a local checkpoint, not a released model"

    result = runner.invoke(app, [*base, "--multi-scale-flip", "-o", str(tmp_path / "ms.json")])
    assert result.exit_code == 0, result.output
    ms = json.loads((tmp_path / "ms.json").read_text())
    assert ms["protocol"]["inference"] == "multi-scale x1.0/1.125/1.25/1.375/1.5 + flip"
    assert ms["paper"] is None  # a local folder: no paper row (the release's rows: test_eval.py)


def test_multi_scale_flip_is_refused_where_it_cannot_apply(tmp_path, checkpoint_root):
    from genpercept_cli.cli import app

    result = runner.invoke(app, ["eval", "-d", "nyu", "--data-dir", str(tmp_path), "--multi-scale-flip"])
    assert result.exit_code != 0
    assert "--multi-scale-flip applies to a model run on ade20k or cityscapes" in result.output


def test_eval_cityscapes_with_a_one_step_refinement_release_from_label_ids(tmp_path):
    """The Mapillary-pretrained layout (refine_step 1, 19 classes) on Cityscapes GT stored as labelIds:
    mIoU as mmseg computes it over the mapped train ids."""
    from tiny_metaprompts import write_tiny_converted

    from benchmarks.datasets import get_dataset
    from genpercept_cli.cli import app
    from genpercept_cli.pipeline import GenPerceptPipeline

    folder = write_tiny_converted(tmp_path / "mp", "cityscapes-mapillary", img_scale=(64, 32), crop=32, stride=24)
    files, _ = cityscapes_files(np.random.default_rng(5), cities=("lindau",), size=(16, 32), train_ids=False)
    write_tree(tmp_path / "cityscapes", files)
    result = runner.invoke(app, ["eval", "-d", "cityscapes", "--data-dir", str(tmp_path), "-c", str(folder),
                                 "-o", str(tmp_path / "cs.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cs.json").read_text())
    pipe = GenPerceptPipeline.from_checkpoint(str(folder))
    assert pipe.model.config.refine_step == 1 and pipe.model.channels == 19
    samples = list(get_dataset("cityscapes", tmp_path))
    preds = [pipe(s.image) for s in samples]
    assert report["n_images"] == 1 and report["protocol"]["classes"] == 19
    assert report["metrics"]["miou"] == pytest.approx(_hand_miou(preds, [s.gt for s in samples], 19), rel=1e-9)
