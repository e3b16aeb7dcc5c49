"""The EXR, PLY and GLB outputs (`--formats exr,ply,glb`) and which formats each task accepts: files read
back with independent readers (openexr, plyfile, trimesh) and checked against the .npy and the camera."""

import json
import math

import numpy as np
import plyfile
import pytest
import trimesh
from PIL import Image
from typer.testing import CliRunner

from benchmarks.evaluate import load_prediction
from genpercept_cli.cli import app
from genpercept_cli.cli.predict import FORMATS_HELP
from genpercept_cli.geometry import DEFAULT_FOV, EDGE_RTOL, SceneOptions
from genpercept_cli.images import read_exr_channels, read_rgb
from genpercept_cli.outputs import write_prediction
from genpercept_cli.tasks import TASKS, formats_summary

runner = CliRunner()
H, W = 24, 40


def _photo(folder, name="cam.jpg", focal_35mm=None, seed=0):
    """A random H x W photo; focal_35mm: recorded as EXIF FocalLengthIn35mmFilm. PNG keeps the colours exact."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8))
    exif = Image.Exif()
    if focal_35mm:
        exif[0x8769] = {0xA405: focal_35mm}  # the Exif IFD as a dict: Pillow 10.3 does not write get_ifd()'s edits
    image.save(folder / name, exif=exif)
    return folder / name


def _predict(*args):
    result = runner.invoke(app, ["predict", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _exr(path, channels):
    found = read_exr_channels(path)
    return found["Y"] if channels == 1 else np.stack([found[c] for c in "RGB"], axis=-1)


# -- EXR --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, channels", [("depth", 1), ("disparity", 1), ("normal", 3)])
def test_exr_equals_the_npy_bit_for_bit_and_eval_reads_it(tmp_path, checkpoint_root, task, channels):
    photo = _photo(tmp_path / "in", "img.png")
    out = tmp_path / "out"
    _predict(photo, "-c", checkpoint_root / f"unet_{task}_v2", "-o", out, "--processing-res", "32",
             "--formats", "npy,exr")
    npy = np.load(out / "img_pred.npy")
    exr = _exr(out / "img_pred.exr", channels)
    assert exr.dtype == np.float32 and exr.shape == npy.shape
    np.testing.assert_array_equal(exr.view(np.uint32), npy.view(np.uint32))
    (out / "img_pred.npy").unlink()  # eval --predictions falls back to the EXR
    saved = load_prediction(out, "img.png", TASKS[task].benchmark)
    np.testing.assert_array_equal(saved.view(np.uint32), npy.view(np.uint32))


def test_an_unreadable_exr_is_a_prediction_that_cannot_be_read(tmp_path):
    (tmp_path / "img_pred.exr").write_bytes(b"v/1\x01 not an exr")
    with pytest.raises(ValueError, match="is not a readable OpenEXR file"):
        load_prediction(tmp_path, "img.png", "depth")
    write_prediction(np.zeros((H, W), np.float32), "depth", tmp_path / "img", ["exr"])
    with pytest.raises(ValueError, match="has the channels Y, not R, G, B"):
        load_prediction(tmp_path, "img.png", "normal")


def test_exr_of_metric_depth_keeps_metres_and_nan_bit_for_bit(tmp_path):
    metres = np.random.default_rng(3).uniform(0.5, 80.0, (H, W)).astype(np.float32)
    metres[0, :5] = np.nan  # no prediction
    write_prediction(metres, "depth", tmp_path / "img", ["npy", "exr"], kind="metric_depth")
    np.testing.assert_array_equal(_exr(tmp_path / "img_pred.exr", 1).view(np.uint32),
                                  np.load(tmp_path / "img_pred.npy").view(np.uint32))


# -- PLY --------------------------------------------------------------------------------------------
def _camera(out, stem="img"):
    return json.loads((out / f"{stem}_camera.json").read_text())


def _project(vertex, cam):
    """Points -> (column, row, depth) through the recorded intrinsics (x right, y up, z toward the camera)."""
    d = -vertex["z"].astype(np.float64)
    return cam["cx"] + cam["fx"] * vertex["x"] / d, cam["cy"] - cam["fy"] * vertex["y"] / d, d


@pytest.mark.parametrize("task, stride", [("depth", 1), ("disparity", 3)])
def test_ply_points_project_back_onto_their_pixels_with_the_mapped_depth(tmp_path, checkpoint_root, task, stride):
    photo = _photo(tmp_path / "in", "img.png")
    out = tmp_path / "out"
    _predict(photo, "-c", checkpoint_root / f"unet_{task}_v2", "-o", out, "--processing-res", "32",
             "--formats", "npy,ply", "--fov", "60", "--depth-range", "2,50", "--points-stride", stride)
    assert sorted(p.name for p in out.iterdir()) == ["img_camera.json", "img_points.ply", "img_pred.npy"]
    pred = np.load(out / "img_pred.npy").astype(np.float64)[::stride, ::stride]
    rows, cols = np.mgrid[0:H:stride, 0:W:stride]
    vertex = plyfile.PlyData.read(out / "img_points.ply")["vertex"].data
    assert len(vertex) == pred.size  # affine outputs: every pixel has a depth
    colours = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=-1)
    np.testing.assert_array_equal(colours, read_rgb(photo)[::stride, ::stride].reshape(-1, 3))
    cam = _camera(out)
    assert cam["fov_source"] == "--fov" and cam["hfov_deg"] == pytest.approx(60.0)
    assert (cam["width"], cam["height"]) == (W, H)
    u, v, d = _project(vertex, cam)
    np.testing.assert_allclose(u, cols.reshape(-1), atol=1e-3)
    np.testing.assert_allclose(v, rows.reshape(-1), atol=1e-3)
    near, far = 2.0, 50.0
    if task == "depth":
        expected = near + pred * (far - near)
    else:  # disparity is linear in inverse depth: 1 = NEAR, 0 = FAR
        expected = 1.0 / (1.0 / far + pred * (1.0 / near - 1.0 / far))
    np.testing.assert_allclose(d, expected.reshape(-1), rtol=2e-6)  # float32 precision


def test_ply_of_metric_depth_is_in_metres_and_drops_pixels_without_depth(tmp_path):
    metres = np.random.default_rng(4).uniform(0.5, 9.0, (H, W)).astype(np.float32)
    metres[3, 4], metres[5, :] = np.nan, 0.0
    image = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    write_prediction(metres, "depth", tmp_path / "img", ["ply"], image=image, kind="metric_depth",
                     scene=SceneOptions(depth_range=(3.0, 4.0)))  # the range is for affine outputs only
    vertex = plyfile.PlyData.read(tmp_path / "img_points.ply")["vertex"].data
    valid = np.isfinite(metres) & (metres > 0)
    assert len(vertex) == valid.sum() == H * W - W - 1
    u, v, d = _project(vertex, _camera(tmp_path))
    np.testing.assert_allclose(d, metres[valid], rtol=2e-6)
    np.testing.assert_allclose(v, np.nonzero(valid)[0], atol=1e-3)
    assert _camera(tmp_path)["units"] == "metres"


def test_camera_from_exif_focal_length_else_the_default_fov(tmp_path, checkpoint_root):
    _photo(tmp_path / "in", "exif.jpg", focal_35mm=28)
    _photo(tmp_path / "in", "plain.jpg")
    out = tmp_path / "out"
    _predict(tmp_path / "in", "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32",
             "--formats", "ply")
    exif, plain = _camera(out, "exif"), _camera(out, "plain")
    assert exif["fov_source"] == "exif"
    assert exif["fx"] == pytest.approx(28 / math.hypot(36, 24) * math.hypot(W, H))  # 35 mm equivalent: diagonal
    assert plain["fov_source"] == "default" and plain["hfov_deg"] == pytest.approx(DEFAULT_FOV)
    _predict(tmp_path / "in" / "exif.jpg", "-c", checkpoint_root / "unet_depth_v2", "-o", out,
             "--processing-res", "32", "--formats", "ply", "--fov", "70")
    assert _camera(out, "exif")["fov_source"] == "--fov" and _camera(out, "exif")["hfov_deg"] == pytest.approx(70)


def _exif_chunk_after_the_pixels(png):
    """`png` with its eXIf chunk (length, type, data, CRC) moved from before IDAT to just before IEND."""
    data = png.read_bytes()
    at = data.index(b"eXIf") - 4
    chunk = data[at : at + 12 + int.from_bytes(data[at : at + 4], "big")]
    data = data.replace(chunk, b"")
    end = data.index(b"IEND") - 4
    png.write_bytes(data[:end] + chunk + data[end:])
    assert png.read_bytes().index(b"eXIf") > png.read_bytes().index(b"IDAT")
    return png


def test_camera_from_a_png_exif_chunk_after_the_pixels(tmp_path, checkpoint_root):
    png = _exif_chunk_after_the_pixels(_photo(tmp_path / "in", "exif.png", focal_35mm=28))  # Pillow writes it before
    out = tmp_path / "out"
    _predict(png, "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32", "--formats", "camera")
    camera = _camera(out, "exif")
    assert camera["fov_source"] == "exif"
    assert camera["fx"] == pytest.approx(28 / math.hypot(36, 24) * math.hypot(W, H))


# -- GLB --------------------------------------------------------------------------------------------
def test_glb_loads_with_at_most_mesh_res_vertices_on_the_long_side(tmp_path, checkpoint_root):
    photo = _photo(tmp_path / "in", "img.png")
    out = tmp_path / "out"
    _predict(photo, "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32",
             "--formats", "glb", "--mesh-res", "9")
    mesh = trimesh.load(out / "img_mesh.glb", force="mesh")
    cam = _camera(out)
    u, v, _ = _project({"x": mesh.vertices[:, 0], "y": mesh.vertices[:, 1], "z": mesh.vertices[:, 2]}, cam)
    columns, rows = np.unique(np.rint(u)), np.unique(np.rint(v))
    assert 0 < len(columns) <= 9 and len(rows) <= math.ceil(9 * H / W)  # decimated: 5-pixel steps
    assert len(mesh.vertices) <= len(columns) * len(rows)
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.uv.shape == (len(mesh.vertices), 2)


def test_glb_has_no_triangle_across_a_depth_step(tmp_path):
    depth = np.full((H, W), 0.2, np.float32)
    depth[:, W // 2 :] = 0.8  # a step edge: 2.6 vs 4.4 in the default range 1..10
    depth[:, : W // 4] = np.linspace(0.2, 0.19, W // 4)  # a gentle slope stays one surface
    image = np.zeros((H, W, 3), np.uint8)
    write_prediction(depth, "depth", tmp_path / "img", ["glb"], image=image, scene=SceneOptions(mesh_res=W))
    mesh = trimesh.load(tmp_path / "img_mesh.glb", force="mesh")
    z = -mesh.vertices[mesh.faces][..., 2]  # [F, 3] depths of each triangle's corners
    assert (z.max(axis=1) <= (1 + EDGE_RTOL) * z.min(axis=1) + 1e-6).all()
    near, far = z.min(axis=1) < 3.5, z.min(axis=1) > 3.5
    assert near.any() and far.any()
    # every grid cell off the step column is meshed: (W/2 - 1) + (W/2 - 1) columns of cells, two triangles each
    assert len(mesh.faces) == 2 * (H - 1) * (W - 2)


# -- which formats a task accepts ---------------------------------------------------------------------
def test_a_format_the_task_cannot_write_is_one_sentence_before_any_work(tmp_path, checkpoint_root):
    photo = _photo(tmp_path / "in", "img.png")
    result = runner.invoke(app, ["predict", str(photo), "-c", str(checkpoint_root / "unet_dis_v2"),
                                 "-o", str(tmp_path / "o"), "--formats", "png,ply"])
    assert result.exit_code == 2
    assert "Task dis cannot write 'ply' (only depth, disparity can)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--fov", "180"], "--fov must be between 0 and 180"),
    (["--depth-range", "5,1"], "--depth-range needs 0 < NEAR < FAR"),
    (["--depth-range", "near"], "--depth-range must be NEAR,FAR"),
    (["--points-stride", "0"], "--points-stride must be at least 1"),
    (["--mesh-res", "1"], "--mesh-res must be at least 2"),
])
def test_bad_3d_options_exit_2_before_any_work(tmp_path, checkpoint_root, args, message):
    photo = _photo(tmp_path / "in", "img.png")
    result = runner.invoke(app, ["predict", str(photo), "-c", str(checkpoint_root / "unet_depth_v2"),
                                 "-o", str(tmp_path / "o"), "--formats", "ply,glb", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("formats, args, message", [
    ("npy,color", ["--fov", "60"], "--fov applies to the ply, glb and camera formats only; add one to --formats or "
                                   "leave --fov out."),
    ("npy", ["--depth-range", "2,50"], "--depth-range applies to the ply, glb and camera formats only;"),
    ("glb,camera", ["--points-stride", "2"], "--points-stride applies to the ply format only; add it to --formats or "
                                             "leave --points-stride out."),
    ("ply", ["--mesh-res", "9"], "--mesh-res applies to the glb format only;"),
])
def test_3d_options_without_a_format_that_reads_them_exit_2_before_any_work(tmp_path, checkpoint_root, formats, args,
                                                                             message):
    photo = _photo(tmp_path / "in", "img.png")
    result = runner.invoke(app, ["predict", str(photo), "-c", str(checkpoint_root / "unet_depth_v2"),
                                 "-o", str(tmp_path / "o"), "--formats", formats, *args])
    assert result.exit_code == 2 and result.output.startswith(f"error: {message}"), result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_help_and_checkpoints_list_each_tasks_formats():
    assert FORMATS_HELP == formats_summary()
    assert formats_summary().startswith("depth, disparity: npy png16 color exr ply glb camera; normal: npy rgb exr;")
    result = runner.invoke(app, ["checkpoints"])
    assert result.exit_code == 0
    assert f"Formats (predict --formats) per task: {formats_summary()}." in result.output.replace("\n", " ")
