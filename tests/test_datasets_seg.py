"""ADE20K and Cityscapes validation readers (Meta Prompts' segmentation benchmarks) on miniature folders."""

import numpy as np
import pytest
from _archives import ade20k_files, cityscapes_files, write_tree, write_zip

from benchmarks.datasets import get_dataset
from benchmarks.datasets.semseg import cityscapes_train_ids, reduce_zero_label
from genpercept_cli.errors import DataError


def test_reduce_zero_label_maps_other_to_ignore_and_shifts_classes():
    ids = np.array([[0, 1, 2, 150, 255]], np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(ids), [[255, 0, 1, 149, 255]])


def test_cityscapes_label_ids_become_the_19_train_ids():
    label_ids = np.array([[7, 8, 11, 24, 26, 33, 0, 6, 34, 255]], np.uint8)  # road .. bicycle, then unlabelled
    np.testing.assert_array_equal(cityscapes_train_ids(label_ids), [[0, 1, 2, 11, 13, 18, 255, 255, 255, 255]])


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_ade20k_reads_the_public_layout(tmp_path, packed):
    files, annotations = ade20k_files(np.random.default_rng(0), count=3)
    if packed == "folder":
        write_tree(tmp_path / "ADEChallengeData2016", files)
    else:
        write_zip(tmp_path / "ADEChallengeData2016.zip", files, prefix="ADEChallengeData2016/")
    ds = get_dataset("ade20k", tmp_path)
    assert (ds.task, ds.processing_res, ds.num_classes, len(ds)) == ("semseg", 0, 150, 3)
    assert ds.keys() == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_val_00000003.jpg"]
    for sample, ann in zip(ds, annotations, strict=True):
        assert sample.image.shape == (24, 32, 3) and sample.gt.dtype == np.uint8
        np.testing.assert_array_equal(sample.gt, np.where(ann == 0, 255, ann.astype(int) - 1))
        np.testing.assert_array_equal(sample.valid, ann != 0)
        assert sample.gt[0, :3].tolist() == [255, 0, 149]
    assert len(get_dataset("ade20k", tmp_path, limit=2)) == 2


def test_ade20k_missing_names_the_folder_and_source(tmp_path):
    with pytest.raises(DataError, match="ADEChallengeData2016.*ADEChallengeData2016.zip"):
        get_dataset("ade20k", tmp_path)
    (tmp_path / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016" / "images" / "validation" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="No ADE20K validation images"):
        get_dataset("ade20k", tmp_path)


@pytest.mark.parametrize("train_ids", [True, False], ids=["labelTrainIds", "labelIds"])
def test_cityscapes_reads_train_ids_or_maps_label_ids(tmp_path, train_ids):
    files, gts = cityscapes_files(np.random.default_rng(1), train_ids=train_ids)
    write_tree(tmp_path / "cityscapes", files)
    ds = get_dataset("cityscapes", tmp_path)
    assert (ds.task, ds.num_classes) == ("semseg", 19)
    assert ds.keys() == ["frankfurt/frankfurt_000000_000019_leftImg8bit.png",
                         "lindau/lindau_000000_000019_leftImg8bit.png"]
    for sample in ds:
        stored = gts[sample.key]
        expected = stored if train_ids else cityscapes_train_ids(stored)
        np.testing.assert_array_equal(sample.gt, expected)
        np.testing.assert_array_equal(sample.valid, expected != 255)
        assert sample.image.shape == (24, 48, 3)


def test_cityscapes_missing_ground_truth_is_named(tmp_path):
    files, _ = cityscapes_files(np.random.default_rng(2), cities=("lindau",))
    write_tree(tmp_path / "cityscapes", {k: v for k, v in files.items() if "leftImg8bit" in k})
    (tmp_path / "cityscapes" / "gtFine" / "val").mkdir(parents=True)
    ds = get_dataset("cityscapes", tmp_path)
    with pytest.raises(DataError, match="lindau_000000_000019_gtFine_labelTrainIds.png"):
        ds[0]
    with pytest.raises(DataError, match="cityscapes-dataset.com"):
        get_dataset("cityscapes", tmp_path / "nowhere")
