"""Prediction writers (SPEC §4) and their no-half-written-file guarantee (SPEC §8).

Every test reads the written files back and compares them with hand-computed arrays.
"""

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genpercept_cli.colormap import SPECTRAL_LUT, colorize_depth, spectral
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.outputs import (
    DEFAULT_FORMATS,
    FORMATS,
    TASKS,
    atomic_write,
    output_paths,
    parse_formats,
    parse_normal_flip,
    remove_stale_temp_files,
    write_prediction,
)
from genpercept_cli.palette import NYU40_PALETTE

RED_END = (158, 1, 66)  # #9e0142
BLUE_END = (94, 79, 162)  # #5e4fa2
MIDPOINT = (254, 254, 190)  # LUT entry 128, between #ffffbf and #e6f598

# 3x4 ramp k/11 and round(k/11 * 65535), computed by hand from k * 5957.727...
RAMP_3X4 = (np.arange(12, dtype=np.float32) / np.float32(11)).reshape(3, 4)
RAMP_3X4_UINT16 = np.array(
    [[0, 5958, 11915, 17873], [23831, 29789, 35746, 41704], [47662, 53620, 59577, 65535]], dtype=np.uint16
)


def read_png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.array(image)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def normals_row(rows: list[tuple[float, float, float]]) -> np.ndarray:
    """[1, N, 3] float32 normals from explicit vectors."""
    return np.array([rows], dtype=np.float32)


# --- parse_formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("spec", [None, "", " , "])
def test_parse_formats_empty_spec_gives_defaults(task, spec):
    assert parse_formats(task, spec) == DEFAULT_FORMATS[task]


@pytest.mark.parametrize(
    "task, spec, expected",
    [
        ("depth", "npy,png16", ("npy", "png16")),
        ("disparity", " Color , npy ", ("color", "npy")),
        ("normal", "rgb,rgb,npy", ("rgb", "npy")),
        ("dis", "png16,rgba", ("png16", "rgba")),
        ("matting", "rgba", ("rgba",)),
        ("seg", "label", ("label",)),
    ],
)
def test_parse_formats_spec_to_tuple(task, spec, expected):
    assert parse_formats(task, spec) == expected


@pytest.mark.parametrize(
    "task, spec, bad",
    [("depth", "npy,rgb", "rgb"), ("normal", "png16", "png16"), ("seg", "color,rgba", "rgba"),
     ("dis", "color", "color")],
)
def test_parse_formats_unknown_name_lists_valid_formats(task, spec, bad):
    with pytest.raises(GenPerceptError) as info:
        parse_formats(task, spec)
    message = str(info.value)
    assert repr(bad) in message and "\n" not in message
    assert all(name in message for name in FORMATS[task])


@pytest.mark.parametrize("task", ["dis", "matting"])
def test_parse_formats_png_with_png16_is_refused_for_task(task):
    with pytest.raises(GenPerceptError, match="png16"):
        parse_formats(task, "png,png16")


@pytest.mark.parametrize(
    "task, spec, expected",
    [
        ("depth", "png", ("png16",)),
        ("disparity", "npy,png", ("npy", "png16")),
        ("normal", "png", ("rgb",)),
        ("seg", "png,label", ("color", "label")),
        ("dis", "png", ("png",)),
        ("matting", "png,npy", ("png", "npy")),
        ("depth", "png,png16,npy", ("png16", "npy")),  # an alias beside its format: one file, no error
        ("normal", "rgb,PNG", ("rgb",)),
        ("seg", "color,png", ("color",)),
    ],
)
def test_parse_formats_png_is_the_tasks_main_png(task, spec, expected):
    assert parse_formats(task, spec) == expected


@pytest.mark.parametrize("task, valid", [("depth", "png16 (or png)"), ("normal", "rgb (or png)"),
                                         ("seg", "color (or png)")])
def test_parse_formats_unknown_name_names_the_png_alias(task, valid):
    with pytest.raises(GenPerceptError, match="valid formats are: .*" + re.escape(valid)):
        parse_formats(task, "jpeg")


@pytest.mark.parametrize("task, alias_of", [("depth", "png16"), ("disparity", "png16"), ("normal", "rgb"),
                                            ("seg", "color")])
def test_png_alias_writes_the_same_file_as_its_format(tmp_path, task, alias_of):
    pred = {"normal": normals_row([(0.0, 0.6, 0.8), (1.0, 0.0, 0.0)]), "seg": seg_prediction_with_noise()}.get(
        task, RAMP_3X4)
    (alias,) = write_prediction(pred, task, tmp_path / "a" / "img", parse_formats(task, "png"))
    (direct,) = write_prediction(pred, task, tmp_path / "b" / "img", (alias_of,))
    assert alias.name == direct.name == "img_pred.png"
    assert alias.read_bytes() == direct.read_bytes()


def test_parse_formats_unknown_task_is_refused():
    with pytest.raises(GenPerceptError, match="depth"):
        parse_formats("optical_flow", None)


@pytest.mark.parametrize("task", TASKS)
def test_defaults_are_valid_formats_for_task(task):
    assert set(DEFAULT_FORMATS[task]) <= set(FORMATS[task])


# --- output_paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, formats, names",
    [
        ("depth", ("npy", "png16", "color"), ["img_pred.npy", "img_pred.png", "img_colored.png"]),
        ("disparity", ("color",), ["img_colored.png"]),
        ("normal", ("npy", "rgb"), ["img_pred.npy", "img_pred.png"]),
        ("dis", ("png", "rgba", "npy"), ["img_pred.png", "img_rgba.png", "img_pred.npy"]),
        ("matting", ("png16",), ["img_pred.png"]),
        ("seg", ("color", "label", "npy"), ["img_pred.png", "img_label.png", "img_pred.npy"]),
    ],
)
def test_output_paths_names_for_task_formats(tmp_path, task, formats, names):
    stem = tmp_path / "a" / "b" / "img"
    assert output_paths(stem, task, formats) == [tmp_path / "a" / "b" / n for n in names]


def test_output_paths_keeps_dots_in_stem(tmp_path):
    assert output_paths(tmp_path / "scan.v2", "depth", ("npy",)) == [tmp_path / "scan.v2_pred.npy"]


# --- depth / disparity ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["depth", "disparity"])
def test_depth_png16_ramp_3x4_exact_uint16(tmp_path, task):
    (path,) = write_prediction(RAMP_3X4, task, tmp_path / "img", ("png16",))
    mode, data = read_png(path)
    assert path.name == "img_pred.png" and mode == "I;16" and data.dtype == np.uint16
    np.testing.assert_array_equal(data, RAMP_3X4_UINT16)


def test_depth_png16_clips_out_of_range_to_0_and_65535(tmp_path):
    pred = np.array([[-0.25, 1.5]], dtype=np.float32)
    (path,) = write_prediction(pred, "depth", tmp_path / "img", ("png16",))
    np.testing.assert_array_equal(read_png(path)[1], [[0, 65535]])


@pytest.mark.parametrize("task", ["depth", "disparity"])
def test_depth_npy_float32_roundtrip_exact(tmp_path, task):
    (path,) = write_prediction(RAMP_3X4, task, tmp_path / "img", ("npy",))
    data = np.load(path)
    assert path.name == "img_pred.npy" and data.dtype == np.float32
    np.testing.assert_array_equal(data, RAMP_3X4)


@pytest.mark.parametrize(
    "task, values", [("depth", (0.0, 0.5, 1.0)), ("disparity", (1.0, 0.5, 0.0))]
)
def test_colored_png_near_is_red_for_task(tmp_path, task, values):
    pred = np.array([values], dtype=np.float32)  # [1, 3]: near, middle, far
    (path,) = write_prediction(pred, task, tmp_path / "img", ("color",))
    mode, data = read_png(path)
    assert path.name == "img_colored.png" and mode == "RGB"
    np.testing.assert_array_equal(data, [[RED_END, MIDPOINT, BLUE_END]])


# --- colour map ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, rgb",
    [
        (0.0, RED_END),
        (0.5, MIDPOINT),
        (1.0, BLUE_END),
        # matplotlib.colormaps["Spectral"](v, bytes=True)[:3], recorded once
        (0.1, (211, 60, 78)),
        (0.25, (248, 142, 82)),
        (0.75, (134, 206, 164)),
        (0.9, (50, 134, 188)),
        (1 / 256, (160, 3, 66)),  # first value of LUT entry 1
        (1 / 256 - 1e-9, RED_END),  # still LUT entry 0
        (-0.5, RED_END),
        (1.5, BLUE_END),
    ],
)
def test_spectral_value_to_rgb(value, rgb):
    assert tuple(spectral(np.array(value))) == rgb


def test_spectral_lut_256_entries_from_red_to_blue():
    assert SPECTRAL_LUT.shape == (256, 3) and SPECTRAL_LUT.dtype == np.uint8
    assert tuple(SPECTRAL_LUT[0]) == RED_END and tuple(SPECTRAL_LUT[-1]) == BLUE_END


def test_spectral_nan_is_refused():
    with pytest.raises(ValueError):
        spectral(np.array([0.5, np.nan]))


def test_colorize_depth_disparity_is_depth_of_one_minus_value():
    pred = RAMP_3X4
    np.testing.assert_array_equal(colorize_depth(pred, "disparity"), colorize_depth(1.0 - pred, "depth"))


# --- normal --------------------------------------------------------------------------------------

NORMALS = normals_row([(1, 0, 0), (0, -1, 0), (0, 0, 1), (0.28, 0.96, 0)])
# round((n + 1) / 2 * 255); 127.5 rounds to 128, 0.64*255 = 163.2, 0.98*255 = 249.9
NORMALS_RGB = [[(255, 128, 128), (128, 0, 128), (128, 128, 255), (163, 250, 128)]]


def test_normal_rgb_explicit_vectors(tmp_path):
    (path,) = write_prediction(NORMALS, "normal", tmp_path / "img", ("rgb",))
    mode, data = read_png(path)
    assert path.name == "img_pred.png" and mode == "RGB"
    np.testing.assert_array_equal(data, NORMALS_RGB)


def test_normal_npy_unit_vectors_roundtrip(tmp_path):
    (path,) = write_prediction(NORMALS, "normal", tmp_path / "img", ("npy",))
    data = np.load(path)
    assert data.dtype == np.float32 and data.shape == (1, 4, 3)
    np.testing.assert_array_equal(data, NORMALS)


@pytest.mark.parametrize(
    "flip, signs", [("x", (-1, 1, 1)), ("yz", (1, -1, -1)), ("ZY", (1, -1, -1)), ("xyz", (-1, -1, -1))]
)
def test_normal_flip_negates_axes_in_npy_and_rgb(tmp_path, flip, signs):
    paths = write_prediction(NORMALS, "normal", tmp_path / "img", ("npy", "rgb"), normal_flip=flip)
    flipped = NORMALS * np.array(signs, dtype=np.float32)
    np.testing.assert_array_equal(np.load(paths[0]), flipped)
    expected_rgb = np.round((flipped.astype(np.float64) + 1) / 2 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_png(paths[1])[1], expected_rgb)


def test_normal_flip_yz_gives_opencv_pixel_values(tmp_path):
    paths = write_prediction(NORMALS[:, 3:], "normal", tmp_path / "img", ("rgb",), normal_flip="yz")
    # (0.28, -0.96, -0): 0.64*255 = 163.2, 0.02*255 = 5.1, 0.5*255 = 127.5
    np.testing.assert_array_equal(read_png(paths[0])[1], [[(163, 5, 128)]])


@pytest.mark.parametrize("flip", ["w", "xx", "x,y"])
def test_parse_normal_flip_invalid_is_refused(flip):
    with pytest.raises(GenPerceptError):
        parse_normal_flip(flip)


def test_normal_flip_on_depth_task_is_refused(tmp_path):
    with pytest.raises(GenPerceptError):
        write_prediction(RAMP_3X4, "depth", tmp_path / "img", ("npy",), normal_flip="y")
    assert files_in(tmp_path) == []


# --- dis / matting -------------------------------------------------------------------------------

ALPHA = np.array([[0.0, 0.2, 0.5], [0.7, 0.999, 1.0]], dtype=np.float32)
ALPHA_UINT8 = np.array([[0, 51, 128], [178, 255, 255]], dtype=np.uint8)  # float32 0.7 = 0.69999999 → 178
IMAGE = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10


@pytest.mark.parametrize("task", ["dis", "matting"])
def test_alpha_png_uint8_round_v_255(tmp_path, task):
    (path,) = write_prediction(ALPHA, task, tmp_path / "img", ("png",))
    mode, data = read_png(path)
    assert path.name == "img_pred.png" and mode == "L"
    np.testing.assert_array_equal(data, np.round(ALPHA.astype(np.float64) * 255).astype(np.uint8))
    np.testing.assert_array_equal(data[0], ALPHA_UINT8[0])


@pytest.mark.parametrize("task", ["dis", "matting"])
def test_alpha_png16_ramp_3x4_exact_uint16(tmp_path, task):
    (path,) = write_prediction(RAMP_3X4, task, tmp_path / "img", ("png16",))
    mode, data = read_png(path)
    assert mode == "I;16"
    np.testing.assert_array_equal(data, RAMP_3X4_UINT16)


@pytest.mark.parametrize("task", ["dis", "matting"])
def test_alpha_rgba_cutout_rgb_is_image_a_is_alpha(tmp_path, task):
    (path,) = write_prediction(ALPHA, task, tmp_path / "img", ("rgba",), image=IMAGE)
    mode, data = read_png(path)
    assert path.name == "img_rgba.png" and mode == "RGBA"
    np.testing.assert_array_equal(data[..., :3], IMAGE)
    np.testing.assert_array_equal(data[..., 3], np.round(ALPHA.astype(np.float64) * 255))


@pytest.mark.parametrize("task", ["dis", "matting"])
def test_alpha_defaults_write_png_and_npy(tmp_path, task):
    paths = write_prediction(ALPHA, task, tmp_path / "img", DEFAULT_FORMATS[task])
    assert [p.name for p in paths] == ["img_pred.png", "img_pred.npy"]
    np.testing.assert_array_equal(np.load(paths[1]), ALPHA)
    assert files_in(tmp_path) == ["img_pred.npy", "img_pred.png"]


@pytest.mark.parametrize(
    "image", [None, np.zeros((3, 2, 3), np.uint8), np.zeros((2, 3, 3), np.float32)],
    ids=["missing", "wrong-shape", "wrong-dtype"],
)
def test_alpha_rgba_bad_image_writes_nothing(tmp_path, image):
    with pytest.raises(ValueError):
        write_prediction(ALPHA, "dis", tmp_path / "img", ("npy", "rgba"), image=image)
    assert files_in(tmp_path) == []


# --- seg -----------------------------------------------------------------------------------------

SEG_IDS = np.array([[0, 1, 2, 3], [22, 33, 39, 40]], dtype=np.uint8)


def seg_prediction_with_noise() -> np.ndarray:
    """Palette colours of SEG_IDS in [0, 1] plus ±6/255 noise (far below half the palette spacing)."""
    noise = np.random.default_rng(0).uniform(-6, 6, size=(*SEG_IDS.shape, 3))
    colors = NYU40_PALETTE[SEG_IDS].astype(np.float64) + noise
    return (np.clip(colors, 0, 255) / 255).astype(np.float32)


def test_seg_label_png_class_ids_from_noisy_palette(tmp_path):
    (path,) = write_prediction(seg_prediction_with_noise(), "seg", tmp_path / "img", ("label",))
    mode, data = read_png(path)
    assert path.name == "img_label.png" and mode == "L"
    np.testing.assert_array_equal(data, SEG_IDS)


def test_seg_color_png_is_snapped_palette(tmp_path):
    (path,) = write_prediction(seg_prediction_with_noise(), "seg", tmp_path / "img", ("color",))
    mode, data = read_png(path)
    assert path.name == "img_pred.png" and mode == "RGB"
    np.testing.assert_array_equal(data, NYU40_PALETTE[SEG_IDS])
    assert tuple(data[0, 1]) == (174, 199, 232)  # wall


def test_seg_npy_raw_colours(tmp_path):
    pred = seg_prediction_with_noise()
    (path,) = write_prediction(pred, "seg", tmp_path / "img", ("npy",))
    data = np.load(path)
    assert data.dtype == np.float32 and data.shape == (2, 4, 3)
    np.testing.assert_array_equal(data, pred)


# --- whole writes --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_write_prediction_defaults_write_exactly_output_paths(tmp_path, task):
    pred = NORMALS if task == "normal" else seg_prediction_with_noise() if task == "seg" else ALPHA
    stem = tmp_path / "sub" / "dir" / "img"
    paths = write_prediction(pred, task, stem, DEFAULT_FORMATS[task])
    assert paths == output_paths(stem, task, DEFAULT_FORMATS[task])
    assert files_in(tmp_path) == sorted(p.name for p in paths)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "neg-inf"])
def test_non_finite_prediction_writes_no_file(tmp_path, task, bad):
    pred = np.full((2, 3, 3) if task in ("normal", "seg") else (2, 3), 0.5, dtype=np.float32)
    pred[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        write_prediction(pred, task, tmp_path / "img", FORMATS[task][:1] + DEFAULT_FORMATS[task], IMAGE)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "task, shape", [("depth", (2, 3, 1)), ("normal", (2, 3)), ("seg", (2, 3, 4)), ("dis", (0, 3))]
)
def test_wrong_shape_prediction_writes_no_file(tmp_path, task, shape):
    with pytest.raises(ValueError):
        write_prediction(np.zeros(shape, np.float32), task, tmp_path / "img", DEFAULT_FORMATS[task])
    assert files_in(tmp_path) == []


# --- atomic_write --------------------------------------------------------------------------------


def test_atomic_write_temp_is_hidden_and_replaced(tmp_path):
    seen = []

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"new")
        # while the temp exists, output globs (pathlib and glob module) must not see it
        glob_hits = glob.glob(str(tmp_path / "**" / "*_pred*"), recursive=True)
        seen.append((tmp, list(tmp_path.rglob("*.png")), glob_hits))

    target = tmp_path / "deep" / "er" / "img_pred.png"
    atomic_write(target, writer)
    assert target.read_bytes() == b"new"
    ((tmp, pathlib_hits, glob_hits),) = seen
    assert tmp.parent == target.parent and tmp.name.startswith(".img_pred.png.tmp-")
    assert pathlib_hits == [] and glob_hits == []
    assert files_in(tmp_path) == ["img_pred.png"]


@pytest.mark.parametrize("error", [OSError, ValueError, KeyboardInterrupt])
def test_atomic_write_failure_leaves_no_temp_and_no_file(tmp_path, error):
    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error("disk full")

    with pytest.raises(error):
        atomic_write(tmp_path / "img_pred.npy", writer)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_atomic_write_failure_keeps_old_file_intact(tmp_path, error):
    target = tmp_path / "img_pred.npy"
    target.write_bytes(b"old complete file")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error("interrupted")

    with pytest.raises(error):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old complete file"
    assert files_in(tmp_path) == ["img_pred.npy"]


def test_atomic_write_failure_before_temp_exists(tmp_path):
    def writer(tmp: Path) -> None:
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "img_pred.png", writer)
    assert files_in(tmp_path) == []


def test_write_prediction_overwrites_existing_outputs(tmp_path):
    stem = tmp_path / "img"
    write_prediction(np.zeros((3, 4), np.float32), "depth", stem, ("npy", "png16"))
    paths = write_prediction(RAMP_3X4, "depth", stem, ("npy", "png16"))
    np.testing.assert_array_equal(np.load(paths[0]), RAMP_3X4)
    np.testing.assert_array_equal(read_png(paths[1])[1], RAMP_3X4_UINT16)
    assert files_in(tmp_path) == ["img_pred.npy", "img_pred.png"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_remove_stale_temp_files_only_ours_and_only_of_dead_processes(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = [f".img_pred.npy.tmp-{dead}", f".a.b_colored.png.tmp-{dead}", f".img_label.png.tmp-{dead}"]
    kept = [f".img_pred.png.tmp-{os.getpid()}",  # this process: a write in flight
            f".img_rgba.png.tmp-{alive}",  # a live process: maybe a concurrent run
            f".notes.txt.tmp-{dead}",  # not one of our output names
            f"img_pred.npy.tmp-{dead}",  # not our hidden temp pattern
            "img_pred.npy"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half")
    assert remove_stale_temp_files(tmp_path) == 3
    assert files_in(tmp_path) == sorted(kept)
    assert remove_stale_temp_files(tmp_path / "missing") == 0


@pytest.mark.parametrize("task, formats", [
    ("depth", ("png16", "color")), ("disparity", ("color",)), ("normal", ("rgb",)), ("dis", ("png",)),
    ("matting", ("png16",)), ("seg", ("color", "label")),
])
def test_png_encoding_in_stripes_equals_whole_image(tmp_path, monkeypatch, task, formats):
    rng = np.random.default_rng(1)
    pred = rng.uniform(-0.1, 1.1, (7, 5)).astype(np.float32)
    if task == "normal":
        v = rng.normal(size=(7, 5, 3))
        pred = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    if task == "seg":
        pred = rng.uniform(0, 1, (7, 5, 3)).astype(np.float32)
    import genpercept_cli.outputs as outputs

    whole = [read_png(p) for p in write_prediction(pred, task, tmp_path / "whole" / "img", formats)]
    monkeypatch.setattr(outputs, "ENCODE_PIXELS", 10)  # stripes of 2 rows, the last one of 1
    striped = [read_png(p) for p in write_prediction(pred, task, tmp_path / "striped" / "img", formats)]
    for (mode_a, a), (mode_b, b) in zip(whole, striped, strict=True):
        assert mode_a == mode_b
        np.testing.assert_array_equal(a, b)


def test_rgba_cutout_in_stripes_checks_the_whole_image(tmp_path, monkeypatch):
    import genpercept_cli.outputs as outputs

    monkeypatch.setattr(outputs, "ENCODE_PIXELS", 3)  # one row per stripe
    (path,) = write_prediction(ALPHA, "matting", tmp_path / "img", ("rgba",), image=IMAGE)
    np.testing.assert_array_equal(read_png(path)[1][..., :3], IMAGE)
    taller = np.zeros((5, 3, 3), np.uint8)  # the first rows would fit stripe by stripe
    with pytest.raises(ValueError, match="shape"):
        write_prediction(ALPHA, "matting", tmp_path / "bad", ("rgba",), image=taller)
