"""Several models in one pass (`genpercept predict -c depth -c normal`, issue 22 item 4): each input decoded once,
every model's files beside each other, named by model, equal to separate runs; ply/glb carry the normals."""

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData
from typer.testing import CliRunner

from genpercept_cli import predict as predict_module
from genpercept_cli.cli import app
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.geometry import SceneOptions, camera_for, unproject
from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.predict import PredictOptions, discover_images, run_predict
from genpercept_cli.tasks.depth import distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def source(tmp_path):
    """Three photos of two sizes in a tree (a/b.png, a.png, c.jpg)."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(src / "a" / "b.png")
    Image.fromarray(rng.integers(0, 256, (48, 36, 3), dtype=np.uint8)).save(src / "c.png")
    return src


@pytest.fixture(scope="module")
def pipes(checkpoint_root):
    return {task: GenPerceptPipeline.from_checkpoint(str(checkpoint_root / f"unet_{task}_v2"))
            for task in ("depth", "normal", "dis")}


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _renamed(files, label):
    """A single model's files as a several-model run names them: a/img_pred.npy -> a/img_<label>_pred.npy,
    clip_pred/000000_pred.png -> clip_<label>_pred/000000_pred.png (the first name with an "_": the test
    inputs' names and folders have none)."""
    out = {}
    for name, data in files.items():
        parts = name.split("/")
        at = next(i for i, part in enumerate(parts) if "_" in part)
        stem, _, suffix = parts[at].partition("_")
        parts[at] = f"{stem}_{label}_{suffix}"
        out["/".join(parts)] = data
    return out


def _count_decodes(monkeypatch) -> dict:
    counts: dict = {}
    real = predict_module.read_rgb

    def counting(path):
        counts[path.name] = counts.get(path.name, 0) + 1
        return real(path)

    monkeypatch.setattr(predict_module, "read_rgb", counting)
    return counts


def test_two_models_in_one_pass_equal_two_runs_and_decode_each_image_once(source, tmp_path, pipes, monkeypatch):
    images = discover_images(str(source)).images
    options = PredictOptions(processing_res=32, formats="npy,png,exr", batch_size=2, workers=2)
    separate = {}
    for task in ("depth", "normal"):
        run_predict(pipes[task], images, tmp_path / task, options)
        separate.update(_renamed(_files(tmp_path / task), f"unet_{task}_v2"))
    counts = _count_decodes(monkeypatch)
    report = run_predict([pipes["depth"], pipes["normal"]], images, tmp_path / "both", options)
    assert (report.written, report.failed) == (3, [])
    together = _files(tmp_path / "both")
    assert sorted(together) == sorted(separate) and "a/b_unet_normal_v2_pred.exr" in together
    assert together == separate  # byte-equal, file by file
    assert counts == {"a.png": 1, "b.png": 1, "c.png": 1}


def test_one_model_keeps_its_file_names(source, tmp_path, pipes):
    run_predict([pipes["depth"]], discover_images(str(source)).images, tmp_path / "o",
                PredictOptions(processing_res=32, formats="npy"))
    assert sorted(_files(tmp_path / "o")) == ["a/b_pred.npy", "a_pred.npy", "c_pred.npy"]


def test_each_model_keeps_its_own_processing_resolution(source, tmp_path, pipes):
    """No --processing-res: each model its checkpoint's; the outputs equal each model run alone at it."""
    from dataclasses import replace

    images = [i for i in discover_images(str(source)).images if i.path.name == "a.png"]
    depth = GenPerceptPipeline(pipes["depth"].model, replace(pipes["depth"].spec, processing_res=32))
    normal = GenPerceptPipeline(pipes["normal"].model, replace(pipes["normal"].spec, processing_res=24))
    run_predict([depth, normal], images, tmp_path / "both", PredictOptions(formats="npy", batch_size=1))
    image = np.asarray(Image.open(images[0].path))
    np.testing.assert_array_equal(np.load(tmp_path / "both" / "a_unet_normal_v2_pred.npy"), normal(image))
    np.testing.assert_array_equal(np.load(tmp_path / "both" / "a_unet_depth_v2_pred.npy"), depth(image))
    assert not np.array_equal(normal(image), normal(image, processing_res=32))  # the resolutions matter


def test_skip_existing_reruns_an_image_when_one_models_files_are_missing(source, tmp_path, pipes, monkeypatch):
    images = discover_images(str(source)).images
    options = PredictOptions(processing_res=32, formats="npy", skip_existing=True)
    out = tmp_path / "o"
    run_predict([pipes["depth"], pipes["normal"]], images, out, options)
    before = _files(out)
    (out / "a" / "b_unet_normal_v2_pred.npy").unlink()
    counts = _count_decodes(monkeypatch)
    report = run_predict([pipes["depth"], pipes["normal"]], images, out, options)
    assert (report.written, report.skipped_existing) == (1, 2)
    assert counts == {"b.png": 1}  # the image whose normal file was missing: both its models ran again
    assert _files(out) == before


def test_ply_with_depth_and_normals_carries_the_normal_models_prediction(source, tmp_path, pipes):
    images = discover_images(str(source)).images
    item = next(i for i in images if i.path.name == "c.png")
    options = PredictOptions(processing_res=32, formats="npy,ply", points_stride=2, normal_flip="yz")
    run_predict([pipes["depth"], pipes["normal"]], [item], tmp_path / "o", options)
    out = tmp_path / "o"
    assert sorted(_files(out)) == ["c_unet_depth_v2_camera.json", "c_unet_depth_v2_points.ply",
                                   "c_unet_depth_v2_pred.npy", "c_unet_normal_v2_pred.npy"]
    normals = pipes["normal"](np.asarray(Image.open(item.path)), processing_res=32)  # our frame, not flipped
    np.testing.assert_array_equal(np.load(out / "c_unet_normal_v2_pred.npy"), normals * [1, -1, -1])
    vertex = PlyData.read(str(out / "c_unet_depth_v2_points.ply"))["vertex"].data
    assert vertex.dtype.names == ("x", "y", "z", "nx", "ny", "nz", "red", "green", "blue")
    expected = normals[::2, ::2].reshape(-1, 3)
    np.testing.assert_array_equal(np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], -1), expected)
    depth = distance(np.load(out / "c_unet_depth_v2_pred.npy"), "affine_depth", SceneOptions().depth_range)
    rows, cols = np.arange(0, 48, 2), np.arange(0, 36, 2)
    xyz = unproject(depth[::2, ::2], rows, cols, camera_for(48, 36, SceneOptions()))
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], -1), xyz.reshape(-1, 3))


def test_glb_with_depth_and_normals_has_vertex_normals(source, tmp_path, pipes):
    import trimesh

    item = next(i for i in discover_images(str(source)).images if i.path.name == "c.png")
    run_predict([pipes["depth"], pipes["normal"]], [item], tmp_path / "o",
                PredictOptions(processing_res=32, formats="glb", mesh_res=12))
    scene = trimesh.load(tmp_path / "o" / "c_unet_depth_v2_mesh.glb", process=False)
    (mesh,) = scene.geometry.values()
    assert "vertex_normals" in mesh._cache.cache  # read from the file's NORMAL attribute, not recomputed
    normals = pipes["normal"](np.asarray(Image.open(item.path)), processing_res=32)
    # each vertex sits on a pixel of the decimated grid: its normal is that pixel's predicted normal
    camera = camera_for(48, 36, SceneOptions())
    u = np.rint(-mesh.vertices[:, 0] / mesh.vertices[:, 2] * camera.fx + camera.cx).astype(int)
    v = np.rint(mesh.vertices[:, 1] / mesh.vertices[:, 2] * camera.fy + camera.cy).astype(int)
    assert len(np.unique(v)) > 1 and len(np.unique(u)) > 1
    np.testing.assert_allclose(mesh.vertex_normals, normals[v, u], atol=1e-6)
    assert not (tmp_path / "o" / "c_unet_normal_v2_pred.npy").exists()  # ply/glb only: the normals feed the mesh


def test_two_models_under_torchrun_write_what_one_process_writes(source, tmp_path, checkpoint_root):
    """Two ranks (torchrun, as tests/test_distributed.py runs them) share the images and every clip's frames."""
    from test_distributed import finish, torchrun
    from test_video import write_clip

    write_clip(source / "clip.mp4", frames=5, h=24, w=32)
    args = ["-c", str(checkpoint_root / "unet_depth_v2"), "-c", str(checkpoint_root / "unet_normal_v2"),
            "--processing-res", "32", "--formats", "npy,png", "--batch-size", "1", "--device", "cpu"]
    single = CliRunner().invoke(app, ["predict", str(source), "-o", str(tmp_path / "one"), *args])
    assert single.exit_code == 0, single.output
    code, out = finish(torchrun("-m", "genpercept_cli", "predict", str(source), "-o", "two", *args, cwd=tmp_path))
    assert code == 0, out
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 3 * 4 + 2 + 5 + 1 and one == two  # images: 2 models x 2 files; clip: npy x 2, frames, mp4
    assert "ranks=2" in out and out.count("wrote 3 of 3 images and 1 of 1 clip (5 frames)") == 1


@pytest.mark.parametrize("options,message", [
    ({"formats": "label"}, "No selected model can write 'label' (formats per task: depth: npy, png16, color, "),
    ({"formats": "ply"}, "--formats ply gives "),
    ({"normal_flip": "yz"}, "--normal-flip applies to normal models; "),
])
def test_bad_options_for_several_models_are_one_sentence(source, tmp_path, pipes, options, message):
    with pytest.raises(GenPerceptError) as err:
        run_predict([pipes["depth"], pipes["dis"]], discover_images(str(source)).images, tmp_path / "o",
                    PredictOptions(**options))
    assert str(err.value).startswith(message)
    assert not (tmp_path / "o").exists()


def test_formats_apply_to_each_model_that_can_write_them(source, tmp_path, pipes):
    item = discover_images(str(source)).images[:1]
    run_predict([pipes["depth"], pipes["dis"]], item, tmp_path / "o", PredictOptions(processing_res=32,
                                                                                      formats="color,png16"))
    assert sorted(_files(tmp_path / "o")) == ["a/b_unet_depth_v2_colored.png", "a/b_unet_depth_v2_pred.png",
                                              "a/b_unet_dis_v2_pred.png"]


@pytest.mark.parametrize("flags,message", [
    (["--task", "depth,normal,dis"], "--task lists 3 tasks for 2 checkpoints; give one task for all of them or one "
                                     "per checkpoint, in the same order."),
    (["--formats", "label"], "No selected model can write 'label'"),
])
def test_cli_refuses_before_loading(source, tmp_path, checkpoint_root, flags, message):
    result = CliRunner().invoke(app, ["predict", str(source), "-c", str(checkpoint_root / "unet_depth_v2"),
                                      "-c", str(checkpoint_root / "unet_normal_v2"), "-o", str(tmp_path / "o"), *flags])
    assert result.exit_code == 2 and result.output.startswith(f"error: {message}")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_checkpoint_given_twice(source, tmp_path, checkpoint_root):
    model = str(checkpoint_root / "unet_depth_v2")
    result = CliRunner().invoke(app, ["predict", str(source), "-c", model, "-c", model, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.strip() == f"error: Checkpoint {model!r} is given twice; give " \
                                                              "each model once."


def test_cli_runs_two_models_and_writes_both(source, tmp_path, checkpoint_root):
    result = CliRunner().invoke(app, ["predict", str(source / "c.png"), "-c", str(checkpoint_root / "unet_depth_v2"),
                                      "-c", str(checkpoint_root / "unet_normal_v2"), "--processing-res", "32",
                                      "--formats", "npy", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "2 models loaded in" in result.output and "wrote 1 of 1 images" in result.output
    assert sorted(_files(tmp_path / "o")) == ["c_unet_depth_v2_pred.npy", "c_unet_normal_v2_pred.npy"]


def test_video_with_two_models_decodes_each_frame_once_and_equals_two_runs(tmp_path, pipes, monkeypatch):
    from test_video import write_clip

    from genpercept_cli import video

    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "clip.mp4", frames=5, h=24, w=32)
    images = discover_images(str(src)).images
    options = PredictOptions(processing_res=32, formats="npy,png", batch_size=2, temporal="none")
    decoded = []
    real = video.upright
    monkeypatch.setattr(video, "upright", lambda frame: decoded.append(1) or real(frame))
    separate = {}
    for task in ("depth", "normal"):
        decoded.clear()
        report = run_predict(pipes[task], images, tmp_path / task, options)
        assert (report.written, report.failed) == (1, [])
        separate.update(_renamed(_files(tmp_path / task), f"unet_{task}_v2"))
    alone = len(decoded)
    decoded.clear()
    report = run_predict([pipes["depth"], pipes["normal"]], images, tmp_path / "both", options)
    assert (report.written, report.failed) == (1, [])
    assert len(decoded) == alone == 1 + 5  # the probe's first frame, then each frame once for both models
    together = _files(tmp_path / "both")
    assert sorted(together) == sorted(separate) and "clip_unet_normal_v2_pred.mp4" in together
    assert together == separate


def test_launched_batches_of_two_models_equal_the_serial_ones(source, tmp_path, pipes, monkeypatch):
    """queue depth 2 (CUDA's launch/finish path, forced here on the CPU) gives the serial path's files."""
    images = discover_images(str(source)).images
    options = PredictOptions(processing_res=32, formats="npy", batch_size=2)
    run_predict([pipes["depth"], pipes["normal"]], images, tmp_path / "serial", options)
    launched = []
    real = GenPerceptPipeline.launch
    monkeypatch.setattr(GenPerceptPipeline, "queue_depth", property(lambda self: 2))
    monkeypatch.setattr(GenPerceptPipeline, "launch", lambda self, rgb: launched.append(1) or real(self, rgb))
    run_predict([pipes["depth"], pipes["normal"]], images, tmp_path / "queued", options)
    assert len(launched) == 2 * 2  # two batches (sizes 40x56 twice, 48x36 once), each model launched for each
    assert _files(tmp_path / "queued") == _files(tmp_path / "serial")


def test_one_progress_count_per_image_not_per_model(source, tmp_path, pipes):
    class Progress:
        def __init__(self):
            self.totals, self.advanced = [], 0

        def add_task(self, name, total):
            self.totals.append((name, total))

        def advance(self, task_id):
            self.advanced += 1

    progress = Progress()
    run_predict([pipes["depth"], pipes["normal"]], discover_images(str(source)).images, tmp_path / "o",
                PredictOptions(processing_res=32, formats="npy"), progress=progress)
    assert (progress.totals, progress.advanced) == ([("predict", 3)], 3)


def test_models_whose_files_would_collide_are_refused(checkpoint_root, tmp_path):
    from dataclasses import replace

    from genpercept_cli.checkpoints import resolve_checkpoint
    from genpercept_cli.predict import model_labels

    spec = resolve_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    specs = [spec, replace(spec, name=str(tmp_path / "other" / "unet_depth_v2"))]  # two folders of one name
    assert model_labels(specs[:1]) == [None]
    assert model_labels([spec, replace(spec, name="org/model", unet_dir=None)]) == ["unet_depth_v2", "org-model"]
    with pytest.raises(GenPerceptError, match="would both write <stem>_unet_depth_v2_\\*"):
        model_labels(specs)


def test_the_3d_options_reach_the_depth_model_whatever_the_order(source, tmp_path, pipes):
    import json

    item = next(i for i in discover_images(str(source)).images if i.path.name == "c.png")
    run_predict([pipes["normal"], pipes["depth"]], [item], tmp_path / "o",
                PredictOptions(processing_res=32, formats="rgb,ply", fov=40.0, depth_range="2,5"))
    camera = json.loads((tmp_path / "o" / "c_unet_depth_v2_camera.json").read_text())
    assert (round(camera["hfov_deg"], 6), camera["fov_source"]) == (40.0, "--fov")
    assert "--depth-range 2,5" in camera["units"]
    vertex = PlyData.read(str(tmp_path / "o" / "c_unet_depth_v2_points.ply"))["vertex"].data
    assert "nx" in vertex.dtype.names and (tmp_path / "o" / "c_unet_normal_v2_pred.png").exists()
