"""The task registry (genpercept_cli.tasks): the six tasks, a toy task that needs no other code, and
each task reading back what `write_prediction` wrote."""

from pathlib import Path

import numpy as np
import pytest
import torch

from genpercept_cli import outputs
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.outputs import output_paths, parse_formats, remove_stale_temp_files, write_prediction
from genpercept_cli.palette import NYU40_PALETTE
from genpercept_cli.tasks import NPY, TASKS, Format, Task, get_task, register_task
from genpercept_cli.tasks.base import to_uint8

ALPHA = np.array([[0.0, 0.2, 0.5], [0.7, 0.999, 1.0]], dtype=np.float32)
NORMALS = np.array([[(1, 0, 0), (0, -1, 0), (0, 0, 1)], [(0.28, 0.96, 0), (0, 0.6, 0.8), (-1, 0, 0)]], np.float32)
SEG_IDS = np.array([[0, 1, 2], [22, 39, 40]], dtype=np.uint8)
SEG_COLORS = (NYU40_PALETTE[SEG_IDS] / 255).astype(np.float32)
PREDICTIONS = {"depth": ALPHA, "disparity": ALPHA, "normal": NORMALS, "dis": ALPHA, "matting": ALPHA,
               "seg": SEG_COLORS}


# --- the registry --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, channels, formats, defaults, aliases, benchmark, kind", [
    ("depth", 1, ("npy", "png16", "color", "exr", "ply", "glb", "camera"), ("npy", "png16", "color"), {"png": "png16"},
     "depth", "affine_depth"),
    ("disparity", 1, ("npy", "png16", "color", "exr", "ply", "glb", "camera"), ("npy", "png16", "color"),
     {"png": "png16"}, "depth", "affine_disparity"),
    ("normal", 3, ("npy", "rgb", "exr"), ("npy", "rgb"), {"png": "rgb"}, "normal", "normal"),
    ("dis", 1, ("png", "png16", "rgba", "npy"), ("png", "npy"), {}, "dis", "probability"),
    ("matting", 1, ("png", "png16", "rgba", "npy"), ("png", "npy"), {}, "matting", "alpha"),
    ("seg", 3, ("color", "label", "npy"), ("color", "label", "npy"), {"png": "color"}, "seg", "seg_colors"),
])
def test_registry_task(name, channels, formats, defaults, aliases, benchmark, kind):
    task = get_task(name)
    assert (task.name, task.channels, tuple(task.formats), task.default_formats) == (name, channels, formats, defaults)
    assert (dict(task.aliases), task.benchmark, task.output_kind) == (aliases, benchmark, kind)


def test_registry_holds_the_seven_tasks_in_documentation_order():
    assert list(TASKS) == ["depth", "disparity", "normal", "dis", "matting", "seg", "semseg"]


def test_suffixes_of_task_formats():
    suffixes = {name: {f: fmt.suffix for f, fmt in task.formats.items()} for name, task in TASKS.items()}
    assert suffixes["depth"] == {"npy": "_pred.npy", "png16": "_pred.png", "color": "_colored.png", "exr": "_pred.exr",
                                 "ply": "_points.ply", "glb": "_mesh.glb", "camera": "_camera.json"}
    assert suffixes["dis"] == {"png": "_pred.png", "png16": "_pred.png", "rgba": "_rgba.png", "npy": "_pred.npy"}
    assert suffixes["seg"] == {"color": "_pred.png", "label": "_label.png", "npy": "_pred.npy"}


def test_unknown_task_is_refused_naming_the_tasks():
    with pytest.raises(GenPerceptError, match=r"^Unknown task 'flow'; valid tasks are: depth, disparity, normal, "
                                              r"dis, matting, seg, semseg\.$"):
        get_task("flow")


def test_derived_names_are_the_registry():
    from benchmarks.evaluate import CHECKPOINT_TASKS
    from genpercept_cli.checkpoints import TASK_OUTPUT_KIND

    assert outputs.FORMATS == {name: tuple(task.formats) for name, task in TASKS.items()}
    assert outputs.DEFAULT_FORMATS["normal"] == ("npy", "rgb")
    assert outputs.OUTPUT_SUFFIXES == ("_camera.json", "_colored.png", "_label.png", "_mesh.glb", "_points.ply",
                                       "_pred.exr", "_pred.npy", "_pred.png", "_rgba.png")
    assert TASK_OUTPUT_KIND["disparity"] == "affine_disparity"
    assert CHECKPOINT_TASKS == {"depth": ("depth", "disparity"), "normal": ("normal",), "dis": ("dis",),
                                "matting": ("matting",), "seg": ("seg",), "semseg": ("semseg",)}


# --- post-processing -----------------------------------------------------------------------------


def test_normal_postprocess_is_2p_minus_1_renormalised():
    p = torch.tensor([[[1.0, 0.5]], [[0.5, 0.5]], [[1.0, 1.0]]])  # [3, 1, 2]: (1, 0, 1) and (0, 0, 1) as 2p - 1
    n = get_task("normal").postprocess(p)
    expected = torch.tensor([[[2 ** -0.5, 0.0]], [[0.0, 0.0]], [[2 ** -0.5, 1.0]]])
    torch.testing.assert_close(n, expected)


@pytest.mark.parametrize("name", ["depth", "disparity", "dis", "matting", "seg"])
def test_other_tasks_postprocess_clips_to_0_1(name):
    p = torch.tensor([[[-0.5, 0.25], [1.0, 1.5]]])
    torch.testing.assert_close(get_task(name).postprocess(p), torch.tensor([[[0.0, 0.25], [1.0, 1.0]]]))


# --- a toy task: one new Task, no other code -----------------------------------------------------

EDGES = Task(
    "edges", channels=1, output="edge probability in [0,1]", output_kind="probability",
    formats={"npy": NPY, "png": Format("_edges.png", to_uint8)}, default_formats=("npy",), benchmark="dis",
)


@pytest.fixture
def edges():
    register_task(EDGES)
    yield EDGES
    TASKS.pop("edges", None)


def test_toy_task_formats_are_parsed(edges):
    assert parse_formats("edges", None) == ("npy",)
    assert parse_formats("edges", "PNG, npy") == ("png", "npy")
    with pytest.raises(GenPerceptError, match="valid formats are: npy, png"):
        parse_formats("edges", "rgb")


def test_toy_task_writes_its_files(tmp_path, edges):
    stem = tmp_path / "a" / "img"
    paths = write_prediction(ALPHA, "edges", stem, parse_formats("edges", "npy,png"))
    assert paths == output_paths(stem, "edges", ("npy", "png")) == [stem.parent / "img_pred.npy",
                                                                    stem.parent / "img_edges.png"]
    np.testing.assert_array_equal(np.load(paths[0]), ALPHA)
    np.testing.assert_array_equal(edges.read_saved(stem), ALPHA)
    with pytest.raises(ValueError, match=r"edges prediction must be a non-empty \[H, W\] array"):
        write_prediction(NORMALS, "edges", stem, ("npy",))


def test_toy_task_suffixes_count_as_outputs(tmp_path, edges):
    assert "_edges.png" in outputs.OUTPUT_SUFFIXES
    (tmp_path / ".img_edges.png.tmp-999999999").write_bytes(b"half")  # no such process
    assert remove_stale_temp_files(tmp_path) == 1


def test_toy_task_is_gone_once_unregistered(edges):
    del TASKS["edges"]
    with pytest.raises(GenPerceptError, match="Unknown task 'edges'"):
        parse_formats("edges", None)


# --- reading back what write_prediction wrote ----------------------------------------------------


@pytest.mark.parametrize("name", list(PREDICTIONS))
def test_read_saved_npy_is_exact(tmp_path, name):
    write_prediction(PREDICTIONS[name], name, tmp_path / "img", ("npy",))
    data = get_task(name).read_saved(tmp_path / "img")
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, PREDICTIONS[name])


@pytest.mark.parametrize("name", ["dis", "matting"])
def test_read_saved_8bit_png_is_within_half_a_level(tmp_path, name):
    write_prediction(ALPHA, name, tmp_path / "img", ("png",))
    data = get_task(name).read_saved(tmp_path / "img")
    # dis keeps the 8-bit levels the DIS protocol scores; matting reads them as float64 in [0, 1]
    assert data.dtype == (np.uint8 if name == "dis" else np.float64)
    values = data / 255.0 if name == "dis" else data
    np.testing.assert_allclose(values, ALPHA, atol=0.5 / 255 + 1e-7)


def test_read_saved_16bit_png_matting_is_within_half_a_level(tmp_path):
    write_prediction(ALPHA, "matting", tmp_path / "img", ("png16",))
    data = get_task("matting").read_saved(tmp_path / "img")
    np.testing.assert_allclose(data, ALPHA, atol=0.5 / 65535 + 1e-7)


def test_read_saved_npy_wins_over_png(tmp_path):
    write_prediction(ALPHA, "dis", tmp_path / "img", ("png", "npy"))
    assert get_task("dis").read_saved(tmp_path / "img").dtype == np.float32


def test_read_saved_seg_labels_are_exact(tmp_path):
    write_prediction(SEG_COLORS, "seg", tmp_path / "img", ("color", "label"))
    data = get_task("seg").read_saved(tmp_path / "img")
    assert data.dtype == np.int64
    np.testing.assert_array_equal(data, SEG_IDS)


@pytest.mark.parametrize("name, formats", [("depth", ("png16", "color")), ("normal", ("rgb",)), ("seg", ("color",))])
def test_read_saved_without_a_readable_file_names_the_npy(tmp_path, name, formats):
    write_prediction(PREDICTIONS[name], name, tmp_path / "img", formats)
    with pytest.raises(FileNotFoundError, match="img_pred.npy"):
        get_task(name).read_saved(tmp_path / "img")


# --- checking a saved prediction against the ground truth's size ---------------------------------


@pytest.mark.parametrize("name, shape, problem", [
    ("depth", (2, 3), None),
    ("depth", (3, 2), "has shape (3, 2), expected (2, 3)"),
    ("normal", (2, 3), "has shape (2, 3), expected (2, 3, 3)"),
    ("dis", (5, 7), None),  # the DIS protocol resizes predictions to the GT
    ("matting", (5, 7), "has shape (5, 7), expected (2, 3)"),
    ("seg", (2, 3), None),
    ("seg", (2, 3, 3), None),
    ("seg", (2, 4), "has shape (2, 4), expected (2, 3, 3) colours or (2, 3) ids"),
])
def test_check_saved_shape(name, shape, problem):
    assert get_task(name).check_saved(np.zeros(shape, np.float32), (2, 3)) == problem


def test_check_saved_non_finite():
    pred = np.array([[0.0, np.nan, 1.0], [0, 0, 0]], np.float32)
    assert get_task("depth").check_saved(pred, (2, 3)) == "contains non-finite values"
    assert get_task("seg").check_saved(np.zeros((2, 3), np.int64), (2, 3)) is None


def test_read_saved_takes_a_stem_with_dots(tmp_path):
    stem = Path(tmp_path / "scan.v2")
    write_prediction(ALPHA, "depth", stem, ("npy",))
    np.testing.assert_array_equal(get_task("depth").read_saved(stem), ALPHA)
