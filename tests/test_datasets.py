"""Benchmark readers against miniature archives built in the public layouts (SPEC §6)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _archives import exr_bytes, jpg_bytes, npy_bytes, png_bytes, write_tar, write_tree, write_zip
from PIL import Image

from benchmarks.datasets import DATASET_NAMES, DATASETS, get_dataset
from benchmarks.datasets.base import decode_rgb, read_split
from benchmarks.datasets.depth import ETH3DDepth, KITTIDepth
from benchmarks.datasets.normal import decode_normal_map
from benchmarks.datasets.seg import HypersimSeg
from genpercept_cli.errors import DataError, GenPerceptError
from genpercept_cli.palette import NYU40_PALETTE

NYU_TAR = "nyuv2/nyu_labeled_extracted.tar"
NYU_FIRST = (
    "test/kitchen_0004/rgb_0001.png",
    "test/kitchen_0004/depth_0001.png",
    "test/kitchen_0004/filled_0001.png",
)
NYU_SECOND = (
    "test/kitchen_0004/rgb_0002.png",
    "test/kitchen_0004/depth_0002.png",
    "test/kitchen_0004/filled_0002.png",
)


def rng_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_image(height: int, width: int) -> np.ndarray:
    """A gradient that survives JPEG within a few grey levels."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 200 // height, cols * 200 // width, np.full_like(rows, 90)], -1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Registry, data root, split lists


def test_registry_names():
    expected = {
        "nyu", "kitti", "eth3d", "scannet", "diode", "diode-indoor", "diode-outdoor",
        "nyu-normal", "scannet-normal", "sintel-normal", "ibims-normal", "vkitti-normal",
        "dis-vd", "dis-te1", "dis-te2", "dis-te3", "dis-te4", "dis-te",
        "p3m-500-np", "aim-500", "hypersim-seg", "ade20k", "cityscapes",
    }  # fmt: skip
    assert set(DATASET_NAMES) == expected
    assert all(DATASETS[name].name == name for name in DATASET_NAMES)


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as info:
        get_dataset("nyu2", tmp_path)
    assert "nyu2" in str(info.value) and "kitti" in str(info.value) and "hypersim-seg" in str(info.value)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_tar(tmp_path / NYU_TAR, {})
    monkeypatch.setenv("GENPERCEPT_DATA", str(tmp_path))
    assert len(get_dataset("nyu", None)) == 654
    monkeypatch.delenv("GENPERCEPT_DATA")
    with pytest.raises(DataError, match="GENPERCEPT_DATA"):
        get_dataset("nyu", None)


def test_missing_archive_names_path_and_source(tmp_path):
    with pytest.raises(DataError) as info:
        get_dataset("nyu", tmp_path)
    message = str(info.value)
    assert str(tmp_path / NYU_TAR) in message
    assert "share.phys.ethz.ch" in message and "\n" not in message


@pytest.mark.parametrize(
    "name, archive, count",
    [
        ("nyu", NYU_TAR, 654),
        ("kitti", "kitti/kitti_eigen_split_test.tar", 652),
        ("eth3d", "eth3d/eth3d.tar", 454),
        ("scannet", "scannet/scannet_val_sampled_800_1.tar", 800),
        ("diode", "diode/diode_val.tar", 771),
        ("diode-indoor", "diode/diode_val.tar", 325),
        ("diode-outdoor", "diode/diode_val.tar", 446),
    ],
)
def test_depth_split_sizes_with_lazy_archive(tmp_path, name, archive, count):
    write_tar(tmp_path / archive, {})  # empty: nothing is read until a sample is asked for
    dataset = get_dataset(name, tmp_path)
    assert len(dataset) == count == len(dataset.keys())
    assert len(get_dataset(name, tmp_path, limit=3)) == 3


def test_normal_split_sizes():
    sizes = {f: len(read_split(f"normal/{f}.txt")) for f in ("nyuv2", "scannet", "ibims", "sintel", "vkitti")}
    assert sizes == {"nyuv2": 654, "scannet": 300, "ibims": 100, "sintel": 1064, "vkitti": 1000}


@pytest.mark.parametrize(
    "name, task, res, depth_range, clip, samples",
    [
        ("nyu", "depth", 0, (1e-3, 10.0), None, None),
        ("kitti", "depth", 0, (1e-5, 80.0), None, None),
        ("eth3d", "depth", 756, (1e-5, float("inf")), None, 1024),
        ("scannet", "depth", 0, (1e-3, 10.0), None, None),
        ("diode", "depth", 640, (0.6, 350.0), (0.6, 350.0), None),
        ("nyu-normal", "normal", 768, (None, None), None, None),
        ("dis-te", "dis", 768, (None, None), None, None),
        ("p3m-500-np", "matting", 768, (None, None), None, None),
        ("hypersim-seg", "seg", 768, (None, None), None, None),
    ],
)
def test_protocol_attributes(name, task, res, depth_range, clip, samples):
    cls = DATASETS[name]
    assert (cls.task, cls.processing_res, (cls.min_depth, cls.max_depth)) == (task, res, depth_range)
    assert (cls.pred_clip, cls.align_max_samples) == (clip, samples)
    assert cls.source


def test_limit_must_be_positive(tmp_path):
    write_tar(tmp_path / NYU_TAR, {})
    with pytest.raises(GenPerceptError):
        get_dataset("nyu", tmp_path, limit=0)


# ---------------------------------------------------------------------------------------------
# Depth


def test_uint16_png_roundtrip_is_exact():
    values = np.array([[0, 1, 2, 255], [256, 9999, 10000, 65535]], dtype=np.uint16)
    decoded = Image.open(io.BytesIO(png_bytes(values)))
    assert decoded.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(decoded), values)


def nyu_files(rng: np.random.Generator) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Two NYU samples; sample 1 has boundary depths inside and outside the Eigen crop."""
    raw = rng.integers(2, 9999, (480, 640)).astype(np.uint16)
    raw[100, 100:105] = [0, 1, 2, 9999, 10000]  # 0 / 0.001 / 0.002 / 9.999 / 10.0 m
    raw[10, 10] = 5000  # valid range, outside the Eigen crop (rows 45:471, cols 41:601)
    rgb = rng_image(rng, 480, 640)
    filled = np.full((480, 640), 4321, dtype=np.uint16)
    files = {
        NYU_FIRST[0]: png_bytes(rgb), NYU_FIRST[1]: png_bytes(raw), NYU_FIRST[2]: png_bytes(filled),
        NYU_SECOND[0]: png_bytes(rgb[::-1].copy()), NYU_SECOND[1]: png_bytes(raw[::-1].copy()),
        NYU_SECOND[2]: png_bytes(filled),
    }  # fmt: skip
    return files, {"rgb": rgb, "raw": raw}


def expected_nyu_valid(raw: np.ndarray) -> np.ndarray:
    eigen = np.zeros(raw.shape, dtype=bool)
    eigen[45:471, 41:601] = True
    return eigen & (raw >= 2) & (raw <= 9999)  # 1e-3 < raw/1000 < 10, strictly


def check_nyu_first(sample, arrays) -> None:
    assert sample.key == NYU_FIRST[0]
    np.testing.assert_array_equal(sample.image, arrays["rgb"])
    assert sample.gt.dtype == np.float32 and sample.gt.shape == (480, 640)
    np.testing.assert_array_equal(sample.gt, (arrays["raw"] / 1000.0).astype(np.float32))  # raw, not filled
    np.testing.assert_array_equal(sample.valid, expected_nyu_valid(arrays["raw"]))
    assert sample.valid[100, 100:105].tolist() == [False, False, True, True, False]
    assert not sample.valid[10, 10]


def test_nyu_from_tar_with_dot_slash_members(tmp_path):
    files, arrays = nyu_files(np.random.default_rng(0))
    write_tar(tmp_path / NYU_TAR, files, prefix="./")
    dataset = get_dataset("nyu", tmp_path, limit=2)
    assert dataset.keys() == [NYU_FIRST[0], NYU_SECOND[0]]
    check_nyu_first(dataset[0], arrays)
    np.testing.assert_array_equal(dataset[1].gt, (arrays["raw"][::-1] / 1000.0).astype(np.float32))
    assert dataset[-1].key == NYU_SECOND[0]
    with pytest.raises(IndexError):
        dataset[2]


def test_nyu_tar_with_single_top_folder(tmp_path):
    files, arrays = nyu_files(np.random.default_rng(1))
    write_tar(tmp_path / NYU_TAR, files, prefix="nyu_labeled_extracted/")
    check_nyu_first(get_dataset("nyu", tmp_path, limit=1)[0], arrays)


@pytest.mark.parametrize("folder", ["nyuv2/nyu_labeled_extracted", "nyuv2"])
def test_nyu_extracted_folder(tmp_path, folder):
    files, arrays = nyu_files(np.random.default_rng(2))
    write_tree(tmp_path / folder, files)
    check_nyu_first(get_dataset("nyu", tmp_path, limit=1)[0], arrays)


def test_missing_member_names_it(tmp_path):
    files, _ = nyu_files(np.random.default_rng(3))
    del files[NYU_SECOND[1]]
    write_tar(tmp_path / NYU_TAR, files)
    dataset = get_dataset("nyu", tmp_path, limit=2)
    with pytest.raises(DataError, match=NYU_SECOND[1]):
        dataset[1]


def test_kitti_skips_none_and_applies_kb_crop_and_eigen_mask(tmp_path):
    rng = np.random.default_rng(4)
    lines, files, arrays = [], {}, []
    for i, (height, width) in enumerate([(375, 1242), (370, 1224)]):
        rgb_rel = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/000000000{i}.png"
        gt_rel = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/000000000{i}.png"
        raw = rng.integers(0, 20000, (height, width)).astype(np.uint16)
        top, left = height - 352, (width - 1216) // 2
        raw[top + 200, left + 500 : left + 504] = [0, 1, 20479, 20480]  # 0 / 0.0039 / 79.996 / 80.0 m
        rgb = rng_image(rng, height, width)
        files |= {rgb_rel: png_bytes(rgb), gt_rel: png_bytes(raw)}
        lines.append(f"{rgb_rel} {gt_rel} 721.5377")
        arrays.append((rgb_rel, rgb, raw, top, left))
        if i == 0:
            lines.append("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000075.png None 721.5377")
    split = tmp_path / "split.txt"
    split.write_text("\n".join(lines) + "\n")
    write_tar(tmp_path / "kitti/kitti_eigen_split_test.tar", files)
    dataset = KITTIDepth(tmp_path, split_file=split)
    assert len(dataset) == 2 and "None" not in " ".join(dataset.keys())
    for sample, (rgb_rel, rgb, raw, top, left) in zip(dataset, arrays, strict=True):
        assert sample.key == rgb_rel
        assert sample.image.shape == (352, 1216, 3) and sample.gt.shape == (352, 1216)
        np.testing.assert_array_equal(sample.image, rgb[top:, left : left + 1216])
        crop = raw[top:, left : left + 1216]
        np.testing.assert_array_equal(sample.gt, (crop / 256.0).astype(np.float32))
        eigen = np.zeros((352, 1216), dtype=bool)
        eigen[117:321, 43:1172] = True
        np.testing.assert_array_equal(sample.valid, eigen & (crop >= 1) & (crop <= 20479))
        assert sample.valid[200, 500:504].tolist() == [False, True, True, False]
    assert (arrays[0][3], arrays[0][4], arrays[1][3], arrays[1][4]) == (23, 13, 18, 4)


def test_eth3d_raw_float_buffer(tmp_path, monkeypatch):
    assert ETH3DDepth.depth_shape == (4032, 6048)
    monkeypatch.setattr(ETH3DDepth, "depth_shape", (6, 8))
    rng = np.random.default_rng(5)
    depth = rng.uniform(0.5, 30.0, (6, 8)).astype(np.float32)
    depth[0, :4] = [np.inf, 1e-5, 2e-5, 0.0]
    rgb_rel, depth_rel = read_split("depth/eth3d.txt")[0]
    rgb = rng_image(rng, 6, 8)
    files = {rgb_rel: png_bytes(rgb), depth_rel: depth.astype("<f4").tobytes()}  # PNG bytes under a .JPG name
    write_tar(tmp_path / "eth3d/eth3d.tar", files)
    sample = get_dataset("eth3d", tmp_path, limit=1)[0]
    expected = depth.copy()
    expected[0, 0] = 0.0
    np.testing.assert_array_equal(sample.gt, expected)
    np.testing.assert_array_equal(sample.image, rgb)
    assert sample.valid[0, :4].tolist() == [False, False, True, False]
    assert sample.valid[1:].all()


def test_eth3d_wrong_buffer_size(tmp_path, monkeypatch):
    monkeypatch.setattr(ETH3DDepth, "depth_shape", (6, 8))
    rgb_rel, depth_rel = read_split("depth/eth3d.txt")[0]
    files = {rgb_rel: png_bytes(np.zeros((6, 8, 3), np.uint8)), depth_rel: np.zeros(47, "<f4").tobytes()}
    write_tar(tmp_path / "eth3d/eth3d.tar", files)
    with pytest.raises(DataError, match="6x8 float32"):
        get_dataset("eth3d", tmp_path, limit=1)[0]


def test_scannet_from_extracted_folder(tmp_path):
    rng = np.random.default_rng(6)
    rgb_rel, depth_rel = read_split("depth/scannet_val_800.txt")[0]
    raw = rng.integers(0, 12000, (48, 64)).astype(np.uint16)
    raw[0, :4] = [1, 2, 9999, 10000]
    rgb = smooth_image(48, 64)
    write_tree(
        tmp_path / "scannet/scannet_val_sampled_800_1", {rgb_rel: jpg_bytes(rgb), depth_rel: png_bytes(raw)}
    )
    sample = get_dataset("scannet", tmp_path, limit=1)[0]
    assert sample.key == rgb_rel and sample.image.shape == (48, 64, 3)
    assert np.abs(sample.image.astype(int) - rgb).max() <= 8  # JPEG
    np.testing.assert_array_equal(sample.gt, (raw / 1000.0).astype(np.float32))
    np.testing.assert_array_equal(sample.valid, (raw >= 2) & (raw <= 9999))


def test_diode_npy_depth_and_mask(tmp_path):
    rng = np.random.default_rng(7)
    rows = read_split("depth/diode_val_all.txt")
    indoor = rows[0]
    outdoor = next(r for r in rows if r[0].startswith("outdoors/"))
    files, truth = {}, {}
    for rgb_rel, depth_rel, mask_rel in (indoor, outdoor):
        depth = rng.uniform(0.1, 400.0, (12, 16, 1)).astype(np.float32)
        mask = (rng.random((12, 16)) > 0.3).astype(np.float32)
        rgb = rng_image(rng, 12, 16)
        files |= {rgb_rel: png_bytes(rgb), depth_rel: npy_bytes(depth), mask_rel: npy_bytes(mask)}
        truth[rgb_rel] = (rgb, depth[..., 0], mask.astype(bool))
    write_tar(tmp_path / "diode/diode_val.tar", files)
    for name, row in (("diode", indoor), ("diode-indoor", indoor), ("diode-outdoor", outdoor)):
        dataset = get_dataset(name, tmp_path, limit=1)
        sample = dataset[0]
        rgb, depth, mask = truth[row[0]]
        assert sample.key == row[0]
        np.testing.assert_array_equal(sample.image, rgb)
        np.testing.assert_array_equal(sample.gt, depth)
        np.testing.assert_array_equal(sample.valid, mask)  # the mask file alone, no range test
        assert dataset.pred_clip == (0.6, 350.0)


def diode_outdoor_files(rng: np.random.Generator, count: int = 2) -> tuple[dict[str, bytes], dict]:
    """The first `count` outdoor DIODE samples as the public archive names them (`outdoor/...`, while
    our split list says `outdoors/...`); truth is keyed by the split list's RGB path."""
    rows = [r for r in read_split("depth/diode_val_all.txt") if r[0].startswith("outdoors/")][:count]
    files, truth = {}, {}
    for rgb_rel, depth_rel, mask_rel in rows:
        depth = rng.uniform(1.0, 300.0, (12, 16, 1)).astype(np.float32)
        mask = rng.random((12, 16)) > 0.3
        rgb = rng_image(rng, 12, 16)
        archive_name = {rel: "outdoor/" + rel.removeprefix("outdoors/") for rel in (rgb_rel, depth_rel, mask_rel)}
        files |= {
            archive_name[rgb_rel]: png_bytes(rgb),
            archive_name[depth_rel]: npy_bytes(depth),
            archive_name[mask_rel]: npy_bytes(mask),
        }
        truth[rgb_rel] = (rgb, depth[..., 0], mask)
    return files, truth


@pytest.mark.parametrize("layout", ["tar", "folder", "extracted_in_place"])
def test_diode_accepts_the_archive_spelling_outdoor(tmp_path, layout):
    files, truth = diode_outdoor_files(np.random.default_rng(17))
    if layout == "tar":
        write_tar(tmp_path / "diode/diode_val.tar", files)
    else:
        write_tree(tmp_path / ("diode/diode_val" if layout == "folder" else "diode"), files)
    dataset = get_dataset("diode-outdoor", tmp_path, limit=2)
    assert dataset.keys() == list(truth)  # keys as our split list spells them: outdoors/...
    for sample in dataset:
        rgb, depth, mask = truth[sample.key]
        assert sample.key.startswith("outdoors/")
        np.testing.assert_array_equal(sample.image, rgb)
        np.testing.assert_array_equal(sample.gt, depth)
        np.testing.assert_array_equal(sample.valid, mask)


def test_diode_split_file_spelled_outdoor_still_selects_outdoor(tmp_path):
    rows = read_split("depth/diode_val_all.txt")
    split = tmp_path / "split.txt"
    split.write_text("\n".join(" ".join(r).replace("outdoors/", "outdoor/") for r in rows[320:330]) + "\n")
    write_tar(tmp_path / "diode/diode_val.tar", {})
    outdoor = DATASETS["diode-outdoor"](tmp_path, split_file=split)
    indoor = DATASETS["diode-indoor"](tmp_path, split_file=split)
    assert len(outdoor) == 5 and all(k.startswith("outdoor/") for k in outdoor.keys())
    assert len(indoor) == 5 and all(k.startswith("indoors/") for k in indoor.keys())


def test_diode_missing_member_is_named_as_the_split_list_spells_it(tmp_path):
    files, _ = diode_outdoor_files(np.random.default_rng(18), count=1)
    write_tar(tmp_path / "diode/diode_val.tar", {k: v for k, v in files.items() if not k.endswith("_mask.npy")})
    with pytest.raises(DataError, match=r"outdoors/scene_\d+/scan_\d+/\S+_depth_mask\.npy is missing"):
        get_dataset("diode-outdoor", tmp_path, limit=1)[0]


# ---------------------------------------------------------------------------------------------
# Normals (DSINE)


def test_nyu_normal_png_decoding_and_x_negation(tmp_path):
    rng = np.random.default_rng(8)
    raw = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    raw[0, 0] = (0, 0, 0)  # no GT
    raw[0, 1] = (0, 128, 255)  # DSINE n = (-1, 0.0039, 1): x left means "facing right" for us
    line = read_split("normal/nyuv2.txt")[0][0]
    assert line == "test/000000_img.png"
    rgb = rng_image(rng, 6, 8)
    intrins = np.array([[518.8, 0, 320], [0, 518.8, 240], [0, 0, 1]], dtype=np.float32)
    write_tree(
        tmp_path / "dsine_eval/nyuv2",
        {
            line: png_bytes(rgb),
            "test/000000_normal.png": png_bytes(raw),
            "test/000000_intrins.npy": npy_bytes(intrins),
        },
    )
    sample = get_dataset("nyu-normal", tmp_path, limit=1)[0]
    assert sample.key == line
    np.testing.assert_array_equal(sample.image, rgb)
    expected_valid = raw.astype(int).sum(-1) > 0
    np.testing.assert_array_equal(sample.valid, expected_valid)
    expected = raw.astype(np.float32) / np.float32(255) * 2 - 1
    expected[..., 0] *= -1
    expected[~expected_valid] = 0
    np.testing.assert_array_equal(sample.gt, expected)
    assert sample.gt[0, 1, 0] == 1.0 and sample.gt[0, 1, 2] == 1.0
    assert sample.gt[0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(sample.extra["intrins"], intrins)


def test_ibims_split_lines_include_the_dataset_folder(tmp_path):
    line = read_split("normal/ibims.txt")[0][0]
    assert line == "ibims/corridor_01_img.png"
    normal = np.full((4, 5, 3), 128, dtype=np.uint8)
    normal[..., 2] = 255
    write_tree(
        tmp_path / "dsine_eval/ibims",
        {line: png_bytes(np.zeros((4, 5, 3), np.uint8)), "ibims/corridor_01_normal.png": png_bytes(normal)},
    )
    sample = get_dataset("ibims-normal", tmp_path, limit=1)[0]  # EXR-free variant: PNG twin
    assert sample.key == line and sample.valid.all()
    np.testing.assert_allclose(
        sample.gt[0, 0], [-(128 / 255 * 2 - 1), 128 / 255 * 2 - 1, 1.0], rtol=0, atol=1e-7
    )


def test_vkitti_normal_uint16(tmp_path):
    cv2 = pytest.importorskip("cv2")
    raw = np.zeros((4, 5, 3), dtype=np.uint16)
    raw[1:] = (65535, 32768, 0)  # DSINE n = (1, ~0, -1)
    line = read_split("normal/vkitti.txt")[0][0]
    assert line == "Scene01/000000_img.jpg"
    folder = tmp_path / "dsine_eval/vkitti"
    write_tree(folder, {line: jpg_bytes(np.zeros((4, 5, 3), np.uint8))})
    assert cv2.imwrite(str(folder / "Scene01/000000_normal.png"), raw[..., ::-1])  # OpenCV writes BGR
    sample = get_dataset("vkitti-normal", tmp_path, limit=1)[0]
    assert sample.valid.tolist() == [[False] * 5] + [[True] * 5] * 3
    np.testing.assert_allclose(sample.gt[1, 0], [-1.0, 32768 / 65535 * 2 - 1, -1.0], rtol=0, atol=1e-6)


def exr_normals() -> np.ndarray:
    """A 4x5 DSINE-frame normal map: z = 1 except one short (invalid) and one tilted normal."""
    normal = np.zeros((4, 5, 3), dtype=np.float32)
    normal[..., 2] = 1.0
    normal[0, 0] = (0.3, 0.0, 0.3)  # norm 0.42 <= 0.5: invalid
    normal[0, 1] = (0.6, 0.0, 0.8)
    normal[3, 4] = (0.1, -0.2, 0.45)  # norm 0.5024 > 0.5: valid, as stored (not renormalised)
    return normal


def test_sintel_normal_exr(tmp_path):
    normal = exr_normals()
    line = read_split("normal/sintel.txt")[0][0]
    write_tree(
        tmp_path / "dsine_eval/sintel",
        {line: png_bytes(np.zeros((4, 5, 3), np.uint8)), "alley_1/frame_0001_normal.exr": exr_bytes(normal)},
    )
    sample = get_dataset("sintel-normal", tmp_path, limit=1)[0]
    expected_valid = np.ones((4, 5), dtype=bool)
    expected_valid[0, 0] = False
    np.testing.assert_array_equal(sample.valid, expected_valid)
    expected = normal * np.array([-1, 1, 1], dtype=np.float32)  # R, G, B = DSINE x, y, z; x negated
    expected[0, 0] = 0.0
    np.testing.assert_array_equal(sample.gt, expected)
    assert sample.gt.dtype == np.float32 and sample.gt[0, 1].tolist() == pytest.approx([-0.6, 0.0, 0.8])


def test_ibims_normal_half_float_exr_in_zip_wins_over_png(tmp_path):
    normal = exr_normals().astype(np.float16)
    line = read_split("normal/ibims.txt")[0][0]
    twin = np.full((4, 5, 3), 255, np.uint8)  # a PNG twin that must not be read: EXR comes first
    write_zip(
        tmp_path / "dsine_eval.zip",
        {
            f"ibims/{line}": png_bytes(np.zeros((4, 5, 3), np.uint8)),
            "ibims/ibims/corridor_01_normal.exr": exr_bytes(normal),
            "ibims/ibims/corridor_01_normal.png": png_bytes(twin),
        },
    )
    sample = get_dataset("ibims-normal", tmp_path, limit=1)[0]
    assert sample.valid.sum() == 19 and not sample.valid[0, 0]
    expected = normal.astype(np.float32) * np.array([-1, 1, 1], dtype=np.float32)
    expected[0, 0] = 0.0
    np.testing.assert_array_equal(sample.gt, expected)


def test_decode_normal_map_reads_exr_channels_by_name():
    rgb = np.stack([np.full((2, 3), v, np.float32) for v in (0.25, -0.5, 0.75)], axis=-1)
    normals, valid = decode_normal_map(exr_bytes(rgb), "n.exr")
    assert normals.dtype == np.float32 and normals.shape == (2, 3, 3)
    np.testing.assert_array_equal(normals[1, 2], [0.25, -0.5, 0.75])
    assert valid.all()  # norm 0.935


@pytest.mark.parametrize("data", [b"", b"not an exr file at all", "truncated"])
def test_corrupt_exr_is_one_sentence(tmp_path, data):
    if data == "truncated":
        data = exr_bytes(exr_normals())[:60]
    line = read_split("normal/sintel.txt")[0][0]
    write_tree(
        tmp_path / "dsine_eval/sintel",
        {line: png_bytes(np.zeros((4, 5, 3), np.uint8)), "alley_1/frame_0001_normal.exr": data},
    )
    with pytest.raises(DataError) as info:
        get_dataset("sintel-normal", tmp_path, limit=1)[0]
    message = str(info.value)
    assert message.endswith("frame_0001_normal.exr is not a readable OpenEXR file.")
    assert "\n" not in message and "OPENCV" not in message


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n truncated"])
def test_corrupt_png_normal_map_is_one_sentence(data):
    with pytest.raises(DataError) as info:
        decode_normal_map(data, "scannet/scene0000_00_000000_normal.png")
    assert str(info.value) == "scannet/scene0000_00_000000_normal.png is not a readable PNG normal map."


def test_missing_normal_map_is_named(tmp_path):
    line = read_split("normal/scannet.txt")[0][0]
    write_tree(tmp_path / "dsine_eval/scannet", {line: png_bytes(np.zeros((4, 5, 3), np.uint8))})
    dataset = get_dataset("scannet-normal", tmp_path, limit=1)
    with pytest.raises(DataError, match="000000_normal.png"):
        dataset[0]


def test_missing_normal_folder_names_expected_file(tmp_path):
    (tmp_path / "dsine_eval").mkdir()
    with pytest.raises(DataError, match="sintel/alley_1/frame_0001_img.png"):
        get_dataset("sintel-normal", tmp_path)


# ---------------------------------------------------------------------------------------------
# DIS5K


def dis_files(rng: np.random.Generator) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    files, gts = {}, {}
    for subset, stems in (
        ("DIS-VD", ["v1"]),
        ("DIS-TE1", ["b", "a"]),
        ("DIS-TE2", ["c"]),
        ("DIS-TE3", ["d"]),
        ("DIS-TE4", ["e"]),
    ):
        for stem in stems:
            gt = rng.choice(np.array([0, 127, 128, 129, 255], dtype=np.uint8), (10, 12))
            files[f"{subset}/im/{stem}.jpg"] = jpg_bytes(rng_image(rng, 10, 12))
            files[f"{subset}/gt/{stem}.png"] = png_bytes(gt)
            gts[f"{subset}/im/{stem}.jpg"] = gt
    return files, gts


def test_dis_te_chains_subsets_sorted_by_stem(tmp_path):
    files, gts = dis_files(np.random.default_rng(9))
    write_tree(tmp_path / "DIS5K", files)
    dataset = get_dataset("dis-te", tmp_path)
    assert dataset.keys() == [
        "DIS-TE1/im/a.jpg",
        "DIS-TE1/im/b.jpg",
        "DIS-TE2/im/c.jpg",
        "DIS-TE3/im/d.jpg",
        "DIS-TE4/im/e.jpg",
    ]
    samples = list(dataset)
    assert [s.extra["subset"] for s in samples] == ["DIS-TE1", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]
    for sample in samples:
        assert sample.gt.dtype == np.uint8 and sample.image.shape == (10, 12, 3)
        np.testing.assert_array_equal(sample.gt, gts[sample.key])
        assert sample.valid.all()
    assert get_dataset("dis-te3", tmp_path).keys() == ["DIS-TE3/im/d.jpg"]
    assert get_dataset("dis-te", tmp_path, limit=1).keys() == ["DIS-TE1/im/a.jpg"]


def test_dis_from_zip(tmp_path):
    files, gts = dis_files(np.random.default_rng(10))
    write_zip(tmp_path / "DIS5K.zip", files, prefix="DIS5K/")
    sample = get_dataset("dis-vd", tmp_path)[0]
    assert sample.key == "DIS-VD/im/v1.jpg" and sample.extra == {"subset": "DIS-VD"}
    np.testing.assert_array_equal(sample.gt, gts["DIS-VD/im/v1.jpg"])


def test_dis_missing_subset_and_gt(tmp_path):
    files, _ = dis_files(np.random.default_rng(11))
    del files["DIS-TE2/gt/c.png"]
    write_tree(tmp_path / "DIS5K", {k: v for k, v in files.items() if not k.startswith("DIS-TE4")})
    with pytest.raises(DataError, match="DIS-TE4"):
        get_dataset("dis-te", tmp_path)
    with pytest.raises(DataError, match="DIS-TE2/gt/c.png"):
        get_dataset("dis-te2", tmp_path)[0]


# ---------------------------------------------------------------------------------------------
# Matting


def matting_files(rng: np.random.Generator, image_folder: str) -> tuple[dict[str, bytes], dict]:
    files, truth = {}, {}
    for stem in ("p_b", "p_a"):
        alpha = rng.integers(0, 256, (9, 11), dtype=np.uint8)
        trimap = np.stack(
            [
                rng.choice(np.array([0, 128, 255], np.uint8), (9, 11)),
                np.full((9, 11), 7, np.uint8),
                np.zeros((9, 11), np.uint8),
            ],
            -1,
        )
        files[f"{image_folder}/{stem}.jpg"] = jpg_bytes(rng_image(rng, 9, 11))
        files[f"mask/{stem}.png"] = png_bytes(alpha)
        files[f"trimap/{stem}.png"] = png_bytes(trimap)  # 3-channel: the first channel counts
        truth[stem] = (alpha, trimap[..., 0])
    return files, truth


def test_p3m_500_np(tmp_path):
    files, truth = matting_files(np.random.default_rng(12), "original_image")
    write_tree(tmp_path / "P3M-10k/validation/P3M-500-NP", files)
    dataset = get_dataset("p3m-500-np", tmp_path)
    assert dataset.keys() == ["original_image/p_a.jpg", "original_image/p_b.jpg"]
    sample = dataset[0]
    alpha, trimap = truth["p_a"]
    assert sample.gt.dtype == np.float64 and sample.valid.all() and sample.image.shape == (9, 11, 3)
    np.testing.assert_array_equal(sample.gt, alpha.astype(np.float64) / 255.0)
    np.testing.assert_array_equal(sample.extra["trimap"], trimap)


def test_aim_500_nested_folder_and_missing_trimap(tmp_path):
    files, truth = matting_files(np.random.default_rng(13), "original")
    del files["trimap/p_b.png"]
    write_tree(tmp_path / "AIM-500/AIM-500", files)  # the zip unpacks with a wrapping folder
    dataset = get_dataset("aim-500", tmp_path)
    assert dataset.keys() == ["original/p_a.jpg", "original/p_b.jpg"]
    np.testing.assert_array_equal(dataset[0].extra["trimap"], truth["p_a"][1])
    with pytest.raises(DataError, match="trimap/p_b.png"):
        dataset[1]


# ---------------------------------------------------------------------------------------------
# Hypersim semantic segmentation


def hypersim_tree(root, rng) -> None:
    h5py = pytest.importorskip("h5py")
    ids = np.array([[-1, 0, 1, 40], [5, 5, 22, 41]], dtype=np.int16)
    scene = root / "hypersim/ai_001_001/images"
    write_tree(
        scene,
        {
            "scene_cam_00_final_preview/frame.0000.color.jpg": jpg_bytes(rng_image(rng, 2, 4)),
            "scene_cam_00_final_preview/frame.0000.tonemap.jpg": jpg_bytes(rng_image(rng, 2, 4)),
            "scene_cam_00_final_preview/frame.0001.color.jpg": jpg_bytes(rng_image(rng, 2, 4)),
            "scene_cam_00_geometry_preview/frame.0001.semantic.png": png_bytes(
                np.array(
                    [[NYU40_PALETTE[0], NYU40_PALETTE[1], NYU40_PALETTE[40], (1, 2, 3)]], dtype=np.uint8
                ).repeat(2, 0)
            ),
        },
    )
    (scene / "scene_cam_00_geometry_hdf5").mkdir()
    with h5py.File(scene / "scene_cam_00_geometry_hdf5/frame.0000.semantic.hdf5", "w") as handle:
        handle.create_dataset("dataset", data=ids)
    other = root / "hypersim/ai_001_002/images"
    write_tree(other, {"scene_cam_01_final_preview/frame.0003.tonemap.jpg": jpg_bytes(rng_image(rng, 2, 4))})
    (other / "scene_cam_01_geometry_hdf5").mkdir()
    with h5py.File(other / "scene_cam_01_geometry_hdf5/frame.0003.semantic.hdf5", "w") as handle:
        handle.create_dataset("dataset", data=np.full((2, 4), 3, np.int16))


def test_hypersim_discovers_frames_and_maps_ids(tmp_path):
    hypersim_tree(tmp_path, np.random.default_rng(14))
    dataset = get_dataset("hypersim-seg", tmp_path)
    assert dataset.keys() == [
        "ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap.jpg",
        "ai_001_001/images/scene_cam_00_final_preview/frame.0001.color.jpg",
        "ai_001_002/images/scene_cam_01_final_preview/frame.0003.tonemap.jpg",
    ]
    first, second, third = dataset
    assert first.gt.dtype == np.uint8 and first.image.shape == (2, 4, 3)
    assert first.gt.tolist() == [[255, 255, 1, 40], [5, 5, 22, 255]]
    np.testing.assert_array_equal(first.valid, first.gt != 255)
    assert second.gt.tolist() == [[255, 1, 40, 255]] * 2  # exact colour lookup: black and unknown -> 255
    assert (third.gt == 3).all()


def test_hypersim_split_file(tmp_path):
    hypersim_tree(tmp_path, np.random.default_rng(15))
    key = "ai_001_002/images/scene_cam_01_final_preview/frame.0003.tonemap.jpg"
    (tmp_path / "hypersim/split.txt").write_text(f"{key}\n")
    dataset = get_dataset("hypersim-seg", tmp_path)
    assert dataset.keys() == [key]
    assert isinstance(dataset, HypersimSeg) and (dataset[0].gt == 3).all()


# ---------------------------------------------------------------------------------------------
# Image decoding


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_decode_rgb_converts_modes(mode):
    image = Image.new(mode, (5, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    array = decode_rgb(buffer.getvalue(), "x")
    assert array.shape == (3, 5, 3) and array.dtype == np.uint8


def test_decode_rgb_exif_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = jpg_bytes(np.zeros((3, 5, 3), np.uint8), exif=exif.tobytes())
    assert decode_rgb(data, "x").shape == (5, 3, 3)
    assert decode_rgb(data, "x", match_hw=(3, 5)).shape == (3, 5, 3)  # GT drawn on the stored pixels


def test_decode_rgb_rejects_garbage():
    with pytest.raises(DataError, match="broken.png"):
        decode_rgb(b"not an image", "broken.png")
