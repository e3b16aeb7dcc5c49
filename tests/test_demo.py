"""`genpercept demo` without a browser: the upload checks, the model list and cache, batched requests and the
command's refusals (tests/test_demo_browser.py drives the page itself)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genpercept_cli.cli import app
from genpercept_cli.demo import Demo, DemoLimits, DemoModels, ModelCache, check_upload, preview_format
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.pipeline import GenPerceptPipeline
from genpercept_cli.predict import InputImage, PredictOptions, run_predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(path: Path, size=(24, 32), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _refusal(upload, root: Path, limits=DemoLimits(), video=False) -> str:
    with pytest.raises(GenPerceptError) as caught:
        check_upload(upload, root, limits, video=video)
    return str(caught.value)


def test_check_upload_refuses_with_one_sentence_naming_the_file(tmp_path):
    root = tmp_path / "page"
    good = _photo(root / "up" / "photo.png")
    assert check_upload(str(good), root, DemoLimits()) == good
    (root / "up" / "notes.txt").write_text("not an image")
    assert _refusal(root / "up" / "notes.txt", root) == "notes.txt: not an image file PIL can read."
    assert _refusal(None, root) == "choose an image first."
    outside = _photo(tmp_path / "elsewhere" / "secret.png")  # the page never makes the server read this
    assert _refusal(outside, root) == "secret.png is not a file uploaded to this page."
    sneaky = root / "up" / ".." / ".." / "elsewhere" / "secret.png"
    assert _refusal(sneaky, root) == "secret.png is not a file uploaded to this page."
    assert _refusal(good, root, DemoLimits(max_megapixels=0.0005)) == (
        "photo.png is 32x24 = 0.0 megapixels; this page takes images up to 0.0005 megapixels.")
    assert _refusal(good, root, DemoLimits(max_upload_mb=1e-4)).startswith("photo.png is 0.0 MB; this page takes files")
    (root / "up" / "clip.mp4").write_bytes(b"\0" * 16)
    assert _refusal(root / "up" / "clip.mp4", root) == "clip.mp4 is a video; use the Video tab."
    assert _refusal(good, root, video=True).startswith("photo.png is not a video (.mp4")


def test_models_are_the_command_line_then_the_registry_and_nothing_else(checkpoint_root):
    folder = str(checkpoint_root / "unet_depth_v2")
    models = DemoModels([folder])
    assert models.default == folder and models.names[0] == folder
    assert "depth" in models.names and "lotus-d-depth" in models.names
    assert models.spec(folder).task == "depth"
    with pytest.raises(GenPerceptError, match="not a model this page offers"):
        models.spec("/etc")
    with pytest.raises(GenPerceptError, match="does not exist"):
        DemoModels(["./no/such/folder"])
    assert DemoModels().default == "depth"


def test_model_cache_loads_once_per_key_and_drops_the_least_recently_used():
    loads = []

    def load(spec, device, dtype):
        loads.append((spec, device, dtype))
        return object()

    cache = ModelCache(load, size=2)
    a, took = cache.get("a", "spec-a", "cpu", "fp32")
    assert took >= 0 and cache.get("a", "spec-a", "cpu", "fp32") == (a, 0.0)  # kept: not loaded again
    cache.get("a", "spec-a", "cpu", "bf16")  # another precision is another model
    assert len(loads) == 2
    cache.get("a", "spec-a", "cpu", "fp32")  # used last: the bf16 one is now the oldest
    cache.get("b", "spec-b", "cpu", "fp32")
    assert ("a", "cpu", "fp32") in cache and ("a", "cpu", "bf16") not in cache and ("b", "cpu", "fp32") in cache
    assert len(loads) == 3


def test_preview_is_the_tasks_8_bit_picture_unless_it_clashes():
    assert preview_format("depth", ("npy",)) == "color"
    assert preview_format("normal", ()) == "rgb"
    assert preview_format("dis", ("npy",)) == "png"
    assert preview_format("dis", ("png16",)) is None  # png16 writes <stem>_pred.png too


@pytest.fixture(scope="module")
def depth_pipe(checkpoint_root):
    return GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"))


def test_concurrent_requests_run_as_one_model_call_with_predicts_files(tmp_path, checkpoint_root, depth_pipe,
                                                                      monkeypatch):
    folder = str(checkpoint_root / "unet_depth_v2")
    root = tmp_path / "page"
    demo = Demo(DemoModels([folder]), root, device="cpu", dtype="fp32",
                cache=ModelCache(lambda spec, device, dtype: depth_pipe))
    calls = []
    real = depth_pipe.predict_batch
    monkeypatch.setattr(depth_pipe, "predict_batch", lambda rgb: calls.append(rgb.shape[0]) or real(rgb))
    uploads = [_photo(root / "up" / f"{name}.png", seed=i) for i, name in enumerate(("a", "b"))]
    uploads.append(_photo(root / "up" / "wide.png", size=(24, 64), seed=3))
    (root / "up" / "cut.png").write_bytes(uploads[0].read_bytes()[:200])  # a truncated PNG: its header reads
    uploads.append(root / "up" / "cut.png")
    n = len(uploads)
    results = demo.predict_images(uploads, [folder] * n, [64] * n, [("npy", "png16")] * n)

    assert sorted(calls) == [1, 2]  # a and b (one processed size) in one call, wide.png in another
    assert results[0].message.startswith("a.png: depth by") and "4 images in one run" in results[0].message
    assert results[3].message.startswith("cut.png: the file is truncated") and not results[3].files
    assert [p.name for p in results[1].files] == ["b_pred.npy", "b_pred.png"]
    assert results[1].picture.name == "b_colored.png" and results[1].picture.is_file()
    # the files are predict's: the same values as a run_predict of that image alone
    run_predict(depth_pipe, [InputImage(uploads[1], Path("b"))], tmp_path / "alone",
                PredictOptions(processing_res=64, formats="npy"))
    np.testing.assert_allclose(np.load(results[1].files[0]), np.load(tmp_path / "alone" / "b_pred.npy"), atol=1e-6)


def test_a_bad_request_in_a_batch_leaves_the_others_running(tmp_path, checkpoint_root, depth_pipe):
    folder = str(checkpoint_root / "unet_depth_v2")
    root = tmp_path / "page"
    demo = Demo(DemoModels([folder]), root, device="cpu", dtype="fp32",
                cache=ModelCache(lambda spec, device, dtype: depth_pipe))
    photo = _photo(root / "up" / "a.png")
    results = demo.predict_images([photo] * 4, [folder, "nope", folder, folder], [64, 64, -1, 64.5], [()] * 4)
    assert results[0].files and results[0].message.startswith("a.png: depth by")
    assert results[1].message == "'nope' is not a model this page offers; choose one from the list."
    assert results[2].message.startswith("--processing-res must be") and not results[2].files
    assert results[3].message == "the processing resolution must be a whole number of pixels."


def test_compare_names_each_models_time(tmp_path, checkpoint_root):
    folder = str(checkpoint_root / "unet_depth_v2")
    root = tmp_path / "page"
    demo = Demo(DemoModels([folder]), root, device="cpu", dtype="fp32")  # the real loader: 'depth' is not cached
    photo = _photo(root / "up" / "a.png")
    shown, message = demo.compare(photo, [folder, "depth"], 64)  # "depth" is not cached: offline
    assert len(shown) == 1 and shown[0][1].startswith(f"{folder}: ") and shown[0][1].endswith(" s")
    assert message.startswith("depth: ") and "cannot fetch checkpoint 'depth'" in message
    assert demo.compare(photo, ["a", "b", "c", "d"], 64) == ([], "choose at most 3 models to compare.")
    (root / "up" / "notes.txt").write_text("x")
    assert demo.compare(root / "up" / "notes.txt", [folder], 64) == ([], "notes.txt: not an image file PIL can read.")


runner = CliRunner()


def test_command_without_gradio_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 2
    assert 'pip install "genpercept[demo]"' in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--port", "0"], "--port must be between 1 and 65535."),
    (["--max-megapixels", "0"], "--max-megapixels must be positive."),
    (["-c", "./missing-folder"], "folder ./missing-folder does not exist"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_command_refuses_bad_options_before_serving(args, message):
    result = runner.invoke(app, ["demo", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_video_tab_writes_predicts_clip_files_and_the_image_tab_the_glb(tmp_path, checkpoint_root, depth_pipe):
    from test_video import write_clip

    folder = str(checkpoint_root / "unet_depth_v2")
    root = tmp_path / "page"
    demo = Demo(DemoModels([folder]), root, DemoLimits(max_frames=3), device="cpu", dtype="fp32",
                cache=ModelCache(lambda spec, device, dtype: depth_pipe))
    (root / "up").mkdir(parents=True)
    write_clip(root / "up" / "clip.mp4", frames=5)
    result = demo.predict_video(root / "up" / "clip.mp4", folder, 64)
    assert result.message.startswith("clip.mp4: depth by"), result.message
    assert [p.name for p in result.files] == ["clip_pred.npy", "clip_colored.mp4"]
    assert result.video == result.files[1] and np.load(result.files[0]).shape == (3, 32, 48)  # --max-frames 3
    assert demo.predict_video(_photo(root / "up" / "a.png"), folder, 64).message.startswith("a.png is not a video")

    image = demo.predict_images([root / "up" / "a.png"], [folder], [64], [("npy", "glb")])[0]
    assert [p.name for p in image.files] == ["a_pred.npy", "a_mesh.glb", "a_camera.json"]  # camera comes with glb
    assert image.mesh == image.files[1] and image.mesh.read_bytes()[:4] == b"glTF"


def test_request_folders_older_than_an_hour_are_removed(tmp_path):
    import os
    import time

    from genpercept_cli.demo import KEEP_SECONDS

    root = tmp_path / "page"
    demo = Demo(DemoModels(), root, device="cpu", dtype="fp32")
    old, recent = demo._folder(), demo._folder()
    (old / "a_pred.npy").write_bytes(b"x")
    stale = time.time() - KEEP_SECONDS - 10
    os.utime(old, (stale, stale))
    new = demo._folder()
    assert not old.exists() and recent.is_dir() and new.is_dir()


def test_a_bug_shows_one_sentence_on_the_page_and_its_traceback_on_the_console(tmp_path, checkpoint_root):
    def broken(spec, device, dtype):
        raise RuntimeError("boom")

    folder = str(checkpoint_root / "unet_depth_v2")
    root = tmp_path / "page"
    demo = Demo(DemoModels([folder]), root, device="cpu", dtype="fp32", cache=ModelCache(broken))
    logged = []
    demo.log = logged.append
    result = demo.predict_images([_photo(root / "up" / "a.png")], [folder], [64], [()])[0]
    assert result.message == "the model failed (RuntimeError); the server's console has the details."
    assert "Traceback" in logged[0] and "boom" in logged[0] and not result.files
