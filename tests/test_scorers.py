"""Task scorers: rows carry index and key, and the merged states of scorers that each saw a disjoint part
of a dataset compute exactly what one scorer that saw everything computes (the seam for data-parallel eval)."""

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.datasets.base import Sample
from benchmarks.evaluate import EvalOptions
from benchmarks.metrics.depth import depth_metrics
from benchmarks.metrics.normal import normal_metrics
from benchmarks.scorers import (
    DepthScorer,
    DISScorer,
    MattingScorer,
    NormalScorer,
    SegScorer,
    make_scorer,
)
from genpercept_cli.palette import NYU40_PALETTE

N_SAMPLES = 6
H, W = 12, 16

NYU_LIKE = SimpleNamespace(min_depth=1e-3, max_depth=10.0, align_max_samples=None, pred_clip=None)
DIODE_LIKE = SimpleNamespace(min_depth=None, max_depth=None, align_max_samples=None, pred_clip=(0.6, 350.0))
ETH3D_LIKE = SimpleNamespace(min_depth=1e-5, max_depth=None, align_max_samples=8, pred_clip=None)


# -- synthetic samples: (sample, prediction) pairs ---------------------------------------------------------
def _key(i):
    return f"scene_{i % 2}/rgb_{i:04d}.png"


def depth_samples(space):
    rng = np.random.default_rng(10)
    out = []
    for i in range(N_SAMPLES):
        gt = rng.uniform(0.7, 9.0, (H, W)).astype(np.float32)
        valid = rng.random((H, W)) > 0.25
        gt[~valid] = 0.0
        noise = rng.uniform(0.85, 1.15, (H, W))
        if space == "disparity":
            pred = 0.3 * noise / np.maximum(gt, 0.5) + 0.02
        elif space == "metric":
            pred = gt * noise * 1.1
        else:
            pred = 0.4 * gt * noise - 0.2
        out.append((Sample(_key(i), np.zeros((H, W, 3), np.uint8), gt, valid), pred.astype(np.float32)))
    return out


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def normal_samples():
    rng = np.random.default_rng(11)
    out = []
    for i in range(N_SAMPLES):
        gt = _unit(rng.normal(size=(H, W, 3)) + [0, 0, 2]).astype(np.float32)
        valid = rng.random((H, W)) > 0.2 if i != 3 else np.zeros((H, W), bool)  # sample 3: no valid pixel
        pred = _unit(gt + rng.normal(0, 0.3, gt.shape)).astype(np.float32)
        out.append((Sample(_key(i), np.zeros((H, W, 3), np.uint8), gt, valid), pred))
    return out


def dis_samples(subsets):
    rng = np.random.default_rng(12)
    out = []
    for i in range(N_SAMPLES):
        gt = np.zeros((H, W), np.uint8)
        top, left = rng.integers(1, 5), rng.integers(1, 7)
        gt[top : top + 6, left : left + 7] = 255
        pred = np.clip(gt * 0.8 + rng.normal(0, 40, gt.shape), 0, 255).astype(np.uint8)
        extra = {"subset": subsets[i % len(subsets)]} if subsets else {}
        out.append((Sample(_key(i), np.zeros((H, W, 3), np.uint8), gt, np.ones((H, W), bool), extra), pred))
    return out


def matting_samples():
    rng = np.random.default_rng(13)
    out = []
    for i in range(N_SAMPLES):
        alpha = np.clip(rng.normal(0.5, 0.4, (H, W)), 0, 1)
        trimap = np.where(alpha > 0.9, 255, np.where(alpha < 0.1, 0, 128)).astype(np.uint8)
        pred = np.clip(alpha + rng.normal(0, 0.1, alpha.shape), 0, 1).astype(np.float32)
        extra = {"trimap": trimap}
        out.append((Sample(_key(i), np.zeros((H, W, 3), np.uint8), alpha, np.ones((H, W), bool), extra), pred))
    return out


def seg_samples():
    rng = np.random.default_rng(14)
    out = []
    for i in range(N_SAMPLES):
        gt = rng.integers(1, 8, (H, W)).astype(np.uint8)  # a few classes: some absent from every image
        gt[rng.random((H, W)) < 0.1] = 255
        gt[0, :3] = 0  # unlabeled
        ids = np.where(rng.random((H, W)) < 0.7, gt, rng.integers(0, 10, (H, W)))
        ids = np.where(ids == 255, 0, ids)
        if i % 2:  # colour map, slightly off the palette, decoded by nearest colour
            pred = np.clip(NYU40_PALETTE[ids] + rng.integers(-3, 4, (H, W, 3)), 0, 255).astype(np.uint8)
        else:  # label ids as written by predict's label PNG
            pred = ids.astype(np.int64)
        out.append((Sample(_key(i), np.zeros((H, W, 3), np.uint8), gt, np.ones((H, W), bool)), pred))
    return out


# name -> (factory of a fresh scorer, samples)
CASES = {
    "depth-depth": (lambda: DepthScorer(NYU_LIKE, "depth", "reference"), lambda: depth_samples("depth")),
    "depth-disparity": (lambda: DepthScorer(NYU_LIKE, "disparity", "reference"), lambda: depth_samples("disparity")),
    "depth-metric": (lambda: DepthScorer(DIODE_LIKE, "metric", "reference"), lambda: depth_samples("metric")),
    "depth-eth3d-uniform": (lambda: DepthScorer(ETH3D_LIKE, "depth", "uniform"), lambda: depth_samples("depth")),
    "normal-pooled": (lambda: NormalScorer("pooled", ""), normal_samples),
    "normal-per_image-flip_x": (lambda: NormalScorer("per_image", "x"), normal_samples),
    "dis-hce": (lambda: DISScorer(True, "line"), lambda: dis_samples(None)),
    "dis-no_hce": (lambda: DISScorer(False, "line"), lambda: dis_samples(None)),
    "dis-two_subsets": (lambda: DISScorer(True, "line"), lambda: dis_samples(["DIS-TE2", "DIS-TE1", "DIS-TE1"])),
    "matting": (MattingScorer, matting_samples),
    "seg-mmseg": (lambda: SegScorer("mmseg", "l1"), seg_samples),
    "seg-detectron2": (lambda: SegScorer("detectron2", "l2"), seg_samples),
}


def assert_identical(a, b, path="result"):
    """Equal structure and bit-identical numbers (NaN equals NaN)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: NaN != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def score_all(make, samples, indices):
    scorer = make()
    for i in indices:
        scorer.update(i, *samples[i])
    return scorer


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("parts", [2, 3])
def test_merged_parts_compute_exactly_what_one_scorer_computes(case, parts):
    make, build = CASES[case]
    samples = build()
    whole = score_all(make, samples, range(N_SAMPLES))
    # interleaved like a distributed sampler: worker r gets indices r, r + parts, ...
    states = [score_all(make, samples, range(r, N_SAMPLES, parts)).state() for r in range(parts)]
    states = [pickle.loads(pickle.dumps(s)) for s in states]  # what all_gather_object sends
    merged = make()
    merged.merge(states[::-1])  # the order of the gathered states does not matter
    assert_identical(merged.compute(), whole.compute())
    assert_identical(merged.rows(), whole.rows())
    assert [r["index"] for r in merged.rows()] == list(range(N_SAMPLES))
    assert [r["key"] for r in merged.rows()] == [s.key for s, _ in samples]
    if isinstance(whole, DISScorer):
        assert_identical(merged.subsets(), whole.subsets())
    assert_identical(pickle.loads(pickle.dumps(merged.state()))["rows"], whole.state()["rows"])


def test_merge_replaces_rather_than_adds():
    make, build = CASES["normal-pooled"]
    samples = build()
    whole = score_all(make, samples, range(N_SAMPLES))
    first, second = score_all(make, samples, range(0, 3)), score_all(make, samples, range(3, 6))
    gathered = [first.state(), second.state()]
    first.merge(gathered)  # a worker merges every gathered state, its own included
    assert_identical(first.compute(), whole.compute())
    first.merge(gathered)  # and merging again gives the same, not twice the images
    assert_identical(first.compute(), whole.compute())


def test_two_subsets_are_reported_in_the_order_of_their_first_image():
    make, build = CASES["dis-two_subsets"]
    samples = build()
    merged = make()
    merged.merge([score_all(make, samples, [i]).state() for i in reversed(range(N_SAMPLES))])
    assert list(merged.subsets()) == ["DIS-TE2", "DIS-TE1"]
    te2 = [i for i in range(N_SAMPLES) if samples[i][0].extra["subset"] == "DIS-TE2"]
    assert merged.subsets()["DIS-TE2"] == score_all(make, samples, te2).compute()
    overall, per_subset = merged.compute(), merged.subsets()
    assert overall["mae"] == np.mean([per_subset["DIS-TE2"]["mae"], per_subset["DIS-TE1"]["mae"]])


def test_depth_oracle_row_carries_index_and_key():
    sample, _ = depth_samples("depth")[0]
    scorer = DepthScorer(NYU_LIKE, "depth", "reference")
    row = scorer.update(7, sample, 2.0 * sample.gt + 1.0)
    assert row["index"] == 7 and row["key"] == sample.key == "scene_0/rgb_0000.png"
    assert row["absrel"] == pytest.approx(0, abs=1e-6) and row["delta1"] == 1.0  # float32 rounding only
    assert scorer.rows() == [row] and scorer.compute()["absrel"] == row["absrel"]


@pytest.mark.parametrize("case", list(CASES))
def test_every_task_row_carries_index_and_key(case):
    make, build = CASES[case]
    sample, pred = build()[2]
    row = make().update(2, sample, pred)
    assert (row["index"], row["key"]) == (2, sample.key)
    assert len(row) > 2  # and the image's metrics


def test_depth_metric_space_scores_the_prediction_as_metres():
    sample, pred = depth_samples("metric")[1]
    row = DepthScorer(DIODE_LIKE, "metric", "reference").update(1, sample, pred)
    expected = depth_metrics(np.clip(pred.astype(np.float64), 0.6, 350.0), sample.gt, sample.valid)
    assert row == {"index": 1, "key": sample.key, **expected}
    biased = (1.1 * sample.gt.astype(np.float64)).astype(np.float32)  # 10 % too far everywhere
    row = DepthScorer(DIODE_LIKE, "metric", "reference").update(1, sample, biased)
    assert row["absrel"] == pytest.approx(0.1, rel=1e-6)  # not aligned away, as depth space would
    assert DepthScorer(DIODE_LIKE, "depth", "reference").update(1, sample, biased)["absrel"] < 1e-6


def test_normal_rows_are_the_per_image_metrics_and_empty_images_add_nothing():
    samples = normal_samples()
    scorer = score_all(CASES["normal-pooled"][0], samples, range(N_SAMPLES))
    rows = scorer.rows()
    assert rows[3] == {"index": 3, "key": samples[3][0].key}  # no valid pixel
    s, pred = samples[0]
    g, p = s.gt[s.valid].astype(np.float64), pred[s.valid].astype(np.float64)
    errors = np.degrees(np.arccos(np.clip((_unit(g) * _unit(p)).sum(-1), -1, 1)))
    assert rows[0]["mean"] == pytest.approx(normal_metrics(errors)["mean"], rel=1e-12)
    assert scorer.acc.num_images == N_SAMPLES - 1


def test_overlapping_parts_are_refused():
    make, build = CASES["seg-mmseg"]
    samples = build()
    a, b = score_all(make, samples, [0, 1, 2]), score_all(make, samples, [2, 3])
    with pytest.raises(ValueError, match="image 2 is in more than one"):
        make().merge([a.state(), b.state()])
    with pytest.raises(ValueError, match="image 1 was already added"):
        a.update(1, *samples[1])


@pytest.mark.parametrize("first, second, message", [
    (lambda: NormalScorer("pooled", ""), lambda: NormalScorer("per_image", ""), "cannot merge"),
    (lambda: SegScorer("mmseg", "l1"), lambda: SegScorer("detectron2", "l1"), "cannot merge"),
    (lambda: DepthScorer(NYU_LIKE, "depth", "reference"), lambda: DepthScorer(NYU_LIKE, "disparity", "reference"),
     "cannot merge"),
    (MattingScorer, lambda: DISScorer(True, "line"), "cannot merge a matting scorer state into a dis scorer"),
])
def test_states_made_with_other_settings_are_refused(first, second, message):
    with pytest.raises(ValueError, match=message):
        second().merge([first().state()])


def test_a_failed_update_records_nothing():
    sample, pred = depth_samples("disparity")[0]
    scorer = DepthScorer(NYU_LIKE, "disparity", "reference")
    with pytest.raises(ValueError, match="disparity space"):
        scorer.update(0, sample, np.zeros_like(pred))
    assert scorer.rows() == [] and scorer.state()["rows"] == {}
    dis = DISScorer(True, "line")
    dis_sample, dis_pred = dis_samples(["DIS-TE1"])[0]
    with pytest.raises(ValueError, match="uint8"):
        dis.update(0, dis_sample, dis_pred.astype(np.int32))
    assert dis.accs == {}  # an empty subset would make compute() fail


@pytest.mark.parametrize("dataset, task, expected", [
    (SimpleNamespace(task="depth", **vars(NYU_LIKE)), "depth", DepthScorer),
    (SimpleNamespace(task="normal"), "normal", NormalScorer),
    (SimpleNamespace(task="dis"), "dis", DISScorer),
    (SimpleNamespace(task="matting"), "matting", MattingScorer),
    (SimpleNamespace(task="seg"), "seg", SegScorer),
])
def test_make_scorer_picks_the_task_and_its_options(dataset, task, expected):
    opts = EvalOptions(dataset="x", normal_mode="per_image", seg_convention="detectron2", with_hce=False)
    scorer = make_scorer(dataset, opts, "disparity")
    assert type(scorer) is expected and scorer.task == task
    assert {"depth": {"space": "disparity"}, "normal": {"mode": "per_image"}, "dis": {"with_hce": False},
            "matting": {}, "seg": {"convention": "detectron2"}}[task].items() <= scorer.settings.items()
