"""`genpercept predict` end to end through the Typer CLI, asserting on the files it writes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genpercept_cli.cli import app
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.images import read_rgb
from genpercept_cli.pipeline import GenPerceptPipeline

runner = CliRunner()


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def photos(tmp_path):
    """A nested folder of good images in odd modes plus bad files."""
    src = tmp_path / "photos"
    (src / "a" / "b").mkdir(parents=True)
    Image.fromarray(_rgb(40, 56, 0)).save(src / "top.jpg")
    Image.fromarray(_rgb(30, 50, 1)).save(src / "a" / "rgb.png")
    Image.fromarray(_rgb(50, 30, 2)[..., 0]).save(src / "a" / "gray.png")
    Image.fromarray(np.dstack([_rgb(33, 47, 3), np.full((33, 47), 7, np.uint8)])).save(src / "a" / "b" / "rgba.png")
    Image.fromarray(_rgb(36, 36, 4)).convert("P").save(src / "a" / "b" / "palette.png")
    Image.fromarray(_rgb(36, 48, 5)).convert("CMYK").save(src / "a" / "b" / "cmyk.jpg")
    Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50).save(src / "a" / "deep16.png")
    (src / "a" / "empty.jpg").write_bytes(b"")
    (src / "a" / "b" / "notes.png").write_text("not an image")
    good = src / "top.jpg"
    (src / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (src / "README.txt").write_text("ignored")
    return src


GOOD = ["top", "a/rgb", "a/gray", "a/b/rgba", "a/b/palette", "a/b/cmyk", "a/deep16"]
BAD = ["empty.jpg", "notes.png", "truncated.jpg"]


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)])


def test_predict_folder_mirrors_tree_and_reports_bad_files(photos, tmp_path, checkpoint_root):
    out = tmp_path / "out"
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32")
    assert result.exit_code == 1, result.output  # some inputs failed
    for stem in GOOD:
        for suffix in ("_pred.npy", "_pred.png", "_colored.png"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    for name in BAD:
        assert name in result.output
    assert "wrote 7 of 10 images" in result.output and "3 failed" in result.output
    assert "1 non-image files ignored" in result.output
    assert not list(out.rglob(".*"))  # no temp files left behind
    assert not (out / "truncated_pred.npy").exists() and not (out / "a" / "empty_pred.npy").exists()


def test_predict_outputs_equal_the_python_api(photos, tmp_path, checkpoint_root):
    out = tmp_path / "out"
    _predict(photos / "a" / "b" / "rgba.png", "-c", checkpoint_root / "unet_depth_v2", "-o", out,
             "--processing-res", "32")
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    expected = pipe(read_rgb(photos / "a" / "b" / "rgba.png"), processing_res=32)
    depth = np.load(out / "rgba_pred.npy")
    np.testing.assert_array_equal(depth, expected)
    png16 = np.asarray(Image.open(out / "rgba_pred.png"))
    np.testing.assert_array_equal(png16, np.round(expected.astype(np.float64) * 65535).astype(np.uint16))


def test_skip_existing_resumes_without_rewriting(photos, tmp_path, checkpoint_root):
    out = tmp_path / "out"
    args = [photos / "a", "-c", checkpoint_root / "unet_dis_v2", "-o", out, "--processing-res", "32"]
    _predict(*args)
    first = out / "rgb_pred.png"
    stamp = first.stat().st_mtime_ns
    first.with_name("gray_pred.png").unlink()  # as if interrupted before this one
    result = _predict(*args, "--skip-existing")
    assert first.stat().st_mtime_ns == stamp
    assert (out / "gray_pred.png").is_file()
    assert "wrote 1 of" in result.output and "already done" in result.output


@pytest.mark.parametrize("task,formats,files", [
    ("normal", None, ["_pred.npy", "_pred.png"]),
    ("seg", None, ["_pred.png", "_label.png", "_pred.npy"]),
    ("matting", "png,rgba", ["_pred.png", "_rgba.png"]),
    ("disparity", "color", ["_colored.png"]),
])
def test_predict_task_formats(photos, tmp_path, checkpoint_root, task, formats, files):
    out = tmp_path / "out"
    args = [photos / "top.jpg", "-c", checkpoint_root / f"unet_{task}_v2", "-o", out, "--processing-res", "32"]
    result = _predict(*args, *(["--formats", formats] if formats else []))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"top{s}" for s in files)
    if task == "normal":
        n = np.load(out / "top_pred.npy")
        assert n.shape == (40, 56, 3)
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
    if task == "seg":
        labels = np.asarray(Image.open(out / "top_label.png"))
        assert labels.shape == (40, 56) and labels.max() <= 40


def test_predict_glob_and_batches(photos, tmp_path, checkpoint_root):
    out = tmp_path / "out"
    result = _predict(str(photos / "**" / "*.png"), "-c", checkpoint_root / "unet_matting_v2", "-o", out,
                      "--processing-res", "32", "--batch-size", "3")
    assert result.exit_code == 1  # notes.png is not an image
    assert (out / "a" / "b" / "palette_pred.png").is_file() and (out / "a" / "rgb_pred.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--formats", "jpeg"], "valid"),
    (["--processing-res", "-5"], "--processing-res"),
    (["--dtype", "fp8"], "unknown dtype"),
    (["--task", "normal"], "is a depth model, not normal"),
])
def test_usage_errors_exit_2_with_one_line(photos, tmp_path, checkpoint_root, args, message):
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "o", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_output_that_is_a_file_is_refused(photos, tmp_path, checkpoint_root):
    (tmp_path / "out.txt").write_text("keep me")
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out.txt")
    assert result.exit_code == 2 and "is a file" in result.output
    assert (tmp_path / "out.txt").read_text() == "keep me"


def test_missing_source_is_a_user_error(tmp_path):
    result = _predict(tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_offline_registry_checkpoint_stops_with_the_files_to_fetch(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = _predict(photos, "--task", "depth", "-o", tmp_path / "o")
    assert result.exit_code == 3  # offline has its own exit code; 2 is a usage error
    assert "unet_depth_v2/diffusion_pytorch_model.safetensors" in result.output
    assert "Traceback" not in result.output


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "predict" in result.output and "checkpoints" in result.output


def test_out_of_memory_halves_the_batch_then_reports(tmp_path, checkpoint_root, monkeypatch):
    import torch

    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        Image.fromarray(_rgb(40, 56, k)).save(src / f"same_{k}.png")  # one 22x32 bucket
    Image.fromarray(_rgb(64, 64, 9)).save(src / "big.png")  # 32x32
    real = GenPerceptPipeline.predict_batch
    calls = []

    def limited(self, rgb):  # as if one 22x32 image fit on the device, and no 32x32 one
        calls.append(tuple(rgb.shape))
        if rgb.shape[0] > 1 or rgb.shape[-1] * rgb.shape[-2] > 800:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, rgb)

    monkeypatch.setattr(GenPerceptPipeline, "predict_batch", limited)
    out = tmp_path / "out"
    result = _predict(src, "-c", checkpoint_root / "unet_dis_v2", "-o", out, "--processing-res", "32",
                      "--batch-size", "4")
    assert (3, 3, 22, 32) in calls and calls.count((1, 3, 22, 32)) == 3  # 3 -> 1 + 2 -> 1 + 1
    assert all((out / f"same_{k}_pred.png").is_file() for k in range(3))
    assert not (out / "big_pred.png").exists()
    assert result.exit_code == 1 and "big.png: out of memory at 32x32" in result.output


def test_tile_above_switches_to_tiled_decode(tmp_path, checkpoint_root, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_rgb(96, 128, 0)).save(src / "wide.png")
    calls = []
    from genpercept_cli.models import OneStepModel

    real = OneStepModel.decode_tiled

    def small_tiles(self, z, *args, **kwargs):  # 4-latent-px tiles so a tiny image has several
        calls.append(tuple(z.shape))
        return real(self, z, 4, 2)

    monkeypatch.setattr(OneStepModel, "decode_tiled", small_tiles)
    args = [src, "-c", checkpoint_root / "unet_depth_v2", "--processing-res", "0"]
    assert _predict(*args, "-o", tmp_path / "a", "--tile-above", "0.01").exit_code == 0  # 12288 px > 10000
    assert calls == [(1, 4, 12, 16)]
    assert _predict(*args, "-o", tmp_path / "b").exit_code == 0  # default 16 MP: whole-image decode
    assert len(calls) == 1
    tiled, whole = np.load(tmp_path / "a" / "wide_pred.npy"), np.load(tmp_path / "b" / "wide_pred.npy")
    assert 0 < np.abs(tiled - whole).max() < 0.1  # per-tile GroupNorm statistics: close, not exact


def test_thin_image_is_skipped_and_the_rest_written(tmp_path, checkpoint_root):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_rgb(1, 300, 0)).save(src / "line.png")  # 1x300 -> 0x32 at res 32
    Image.fromarray(_rgb(40, 56, 1)).save(src / "ok.png")
    result = _predict(src, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", "--processing-res", "32")
    assert result.exit_code == 1 and "line.png: the image is too thin" in result.output
    assert (tmp_path / "out" / "ok_pred.npy").is_file() and not (tmp_path / "out" / "line_pred.npy").exists()


def test_output_inside_the_source_is_not_read_back(photos, checkpoint_root, monkeypatch):
    monkeypatch.chdir(photos)
    args = [".", "-c", checkpoint_root / "unet_dis_v2", "--processing-res", "32"]
    first = _predict(*args)
    second = _predict(*args)
    assert "wrote 7 of 10 images" in first.output and "wrote 7 of 10 images" in second.output
    assert not (photos / "genpercept_output" / "genpercept_output").exists()


@pytest.mark.parametrize("args,message", [
    (["--normal-flip", "x"], "--normal-flip applies to normal models"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--device", "mps"], "not supported"),
    (["--device", "gpu7"], "unknown device"),
    (["--tile-above", "-1"], "--tile-above"),
])
def test_option_errors_before_any_work(photos, tmp_path, checkpoint_root, args, message):
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "o", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_bad_normal_flip_for_a_normal_model(photos, tmp_path, checkpoint_root):
    result = _predict(photos, "-c", checkpoint_root / "unet_normal_v2", "-o", tmp_path / "o", "--normal-flip", "q")
    assert result.exit_code == 2 and "Invalid normal flip" in result.output


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,mode", [("depth", "I;16"), ("disparity", "I;16"), ("normal", "RGB"),
                                       ("dis", "L"), ("matting", "L"), ("seg", "RGB")])
def test_formats_png_writes_the_tasks_main_png(photos, tmp_path, checkpoint_root, task, mode):
    out = tmp_path / "out"
    result = _predict(photos / "top.jpg", "-c", checkpoint_root / f"unet_{task}_v2", "-o", out,
                      "--processing-res", "32", "--formats", "png")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["top_pred.png"]
    with Image.open(out / "top_pred.png") as png:
        assert png.mode == mode and png.size == (56, 40)


# --- what a source folder holds ------------------------------------------------------------------


def test_second_run_into_the_source_folder_skips_earlier_outputs(photos, checkpoint_root):
    args = [photos, "-c", checkpoint_root / "unet_depth_v2", "-o", photos, "--processing-res", "32"]
    first = _predict(*args)
    assert "wrote 7 of 10 images" in first.output, first.output
    assert (photos / "a" / "b" / "rgba_pred.npy").is_file() and (photos / "top_colored.png").is_file()
    second = _predict(*args)
    assert "wrote 7 of 10 images" in second.output and "21 earlier outputs skipped" in second.output
    assert not list(photos.rglob("*_pred_pred*")) and not list(photos.rglob("*_colored_pred*"))


def test_output_above_the_source_folder(photos, tmp_path, checkpoint_root):
    result = _predict(photos / "a", "-c", checkpoint_root / "unet_dis_v2", "-o", tmp_path, "--processing-res", "32")
    assert "holds no images" not in result.output
    assert (tmp_path / "rgb_pred.png").is_file() and (tmp_path / "b" / "palette_pred.png").is_file()
    again = _predict(tmp_path / "b", "-c", checkpoint_root / "unet_dis_v2", "-o", tmp_path / "again")
    assert again.exit_code == 2
    assert "holds no images" in again.output and "6 earlier outputs of genpercept were skipped" in again.output


def test_file_name_with_glob_characters_is_read_as_a_file(tmp_path, checkpoint_root):
    Image.fromarray(_rgb(40, 56, 0)).save(tmp_path / "shot[1].png")
    out = tmp_path / "out"
    result = _predict(tmp_path / "shot[1].png", "-c", checkpoint_root / "unet_dis_v2", "-o", out,
                      "--processing-res", "32")
    assert result.exit_code == 0, result.output
    assert (out / "shot[1]_pred.png").is_file()


def test_symlinked_folders_are_followed_once(tmp_path, checkpoint_root):
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / "real").mkdir(parents=True)
    elsewhere.mkdir()
    Image.fromarray(_rgb(40, 56, 0)).save(src / "real" / "a.png")
    Image.fromarray(_rgb(40, 56, 1)).save(elsewhere / "b.png")
    (src / "ext").symlink_to(elsewhere)  # a folder outside the tree: read through the link
    (src / "again").symlink_to(src / "real")  # a second way to the same folder: read once, by its real path
    (src / "real" / "loop").symlink_to(src)  # a loop
    for source in (src, str(src / "**" / "*.png")):
        out = tmp_path / "out"
        result = _predict(source, "-c", checkpoint_root / "unet_dis_v2", "-o", out, "--processing-res", "32")
        assert result.exit_code == 0, result.output
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*_pred.png")) == ["ext/b_pred.png",
                                                                                     "real/a_pred.png"]
        assert "wrote 2 of 2 images" in result.output
        shutil.rmtree(out)


def test_hidden_and_special_files_are_counted_not_read(photos, tmp_path, checkpoint_root):
    Image.fromarray(_rgb(40, 56, 0)).save(photos / ".hidden.png")
    (photos / ".cache").mkdir()
    Image.fromarray(_rgb(40, 56, 0)).save(photos / ".cache" / "thumb.png")
    os.mkfifo(photos / "a" / "pipe.png")  # opening it would block until a writer comes
    result = _predict(photos, "-c", checkpoint_root / "unet_dis_v2", "-o", tmp_path / "out", "--processing-res", "32")
    assert "wrote 7 of 10 images" in result.output
    assert "2 hidden, 1 special file not read" in result.output
    assert not (tmp_path / "out" / "a" / "pipe_pred.png").exists()
    alone = _predict(photos / "a" / "pipe.png", "-c", checkpoint_root / "unet_dis_v2", "-o", tmp_path / "o2")
    assert alone.exit_code == 2 and "not a regular file" in alone.output


def test_unreadable_file_is_reported_as_failed(photos, tmp_path, checkpoint_root, monkeypatch):
    import genpercept_cli.predict as predict

    real_access = os.access  # tests may run as root, who reads anything: deny one file here instead

    def access(path, mode):
        return Path(path).name != "rgb.png" and real_access(path, mode)

    monkeypatch.setattr(predict.os, "access", access)
    out = tmp_path / "out"
    result = _predict(photos / "a", "-c", checkpoint_root / "unet_dis_v2", "-o", out, "--processing-res", "32")
    assert result.exit_code == 1
    assert "rgb.png: the file cannot be read (permission denied)." in result.output
    assert "wrote 5 of 8 images" in result.output and "3 failed" in result.output  # + empty.jpg, notes.png
    assert not (out / "rgb_pred.png").exists() and (out / "gray_pred.png").exists()


def test_stale_temp_files_of_a_killed_run_are_removed(photos, tmp_path, checkpoint_root):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now free: the "killed run"
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    stale = [out / f".top_pred.npy.tmp-{child.pid}", out / "a" / f".rgb_colored.png.tmp-{child.pid}"]
    for path in stale:
        path.write_bytes(b"half")
    foreign = out / f".notes.tmp-{child.pid}"
    foreign.write_bytes(b"not ours")
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32")
    assert not any(p.exists() for p in stale) and foreign.exists()
    assert "2 temporary files of an interrupted run removed" in result.output


# --- interrupts and memory -----------------------------------------------------------------------


def _same_size_images(folder, n):
    folder.mkdir()
    for k in range(n):
        Image.fromarray(_rgb(40, 56, k)).save(folder / f"im_{k}.png")


def test_interrupt_cancels_queued_reads_and_leaves_no_partial_file(tmp_path, checkpoint_root, monkeypatch):
    import genpercept_cli.predict as predict

    _same_size_images(tmp_path / "src", 8)
    calls = []
    real_read = predict.read_rgb

    def read_then_interrupt(path):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_read(path)

    monkeypatch.setattr(predict, "read_rgb", read_then_interrupt)
    out = tmp_path / "out"
    result = _predict(tmp_path / "src", "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32",
                      "--batch-size", "2", "--workers", "1")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert len(calls) <= 4  # batch + workers decoded ahead, +1 handed out; the queued rest is cancelled
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_interrupt_in_a_writer_leaves_only_complete_files(tmp_path, checkpoint_root, monkeypatch):
    import genpercept_cli.outputs as outputs

    _same_size_images(tmp_path / "src", 4)
    real_atomic_write, count = outputs.atomic_write, []

    def half_then_interrupt(path, writer):  # each format names its writer: wrap them where they are called
        def write(tmp):
            count.append(tmp)
            if len(count) == 2:
                tmp.write_bytes(b"\x93NUMPY half")
                raise KeyboardInterrupt
            writer(tmp)

        real_atomic_write(path, write)

    monkeypatch.setattr(outputs, "atomic_write", half_then_interrupt)
    out = tmp_path / "out"
    result = _predict(tmp_path / "src", "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32",
                      "--formats", "npy")
    assert result.exit_code == 130
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp-" in p.name]
    assert 1 <= len(files) <= 3 and all(np.load(p).shape == (40, 56) for p in files)


def test_full_resolution_images_are_not_kept_ahead(tmp_path, checkpoint_root, monkeypatch):
    import gc
    import weakref

    import genpercept_cli.predict as predict

    class Tracked(np.ndarray):
        pass

    _same_size_images(tmp_path / "src", 6)
    decoded, alive_at_batch = [], []
    real_read, real_batch = predict.read_rgb, GenPerceptPipeline.predict_batch

    def tracked_read(path):
        image = real_read(path).view(Tracked)
        decoded.append(weakref.ref(image))
        return image

    def counting_batch(self, rgb):
        gc.collect()
        alive_at_batch.append(sum(ref() is not None for ref in decoded))
        return real_batch(self, rgb)

    monkeypatch.setattr(predict, "read_rgb", tracked_read)
    monkeypatch.setattr(GenPerceptPipeline, "predict_batch", counting_batch)
    args = [tmp_path / "src", "-c", checkpoint_root / "unet_matting_v2", "--processing-res", "32",
            "--batch-size", "2", "--workers", "1"]
    assert _predict(*args, "-o", tmp_path / "a", "--formats", "npy").exit_code == 0
    assert len(alive_at_batch) == 3 and max(alive_at_batch) <= 1  # at most the one the single reader decodes
    alive_at_batch.clear()
    assert _predict(*args, "-o", tmp_path / "b", "--formats", "png,rgba").exit_code == 0
    assert 2 <= alive_at_batch[0] <= 2 + 2  # the cut-out needs the pixels: the batch's, and up to 2 ahead


@pytest.mark.parametrize("shape", [(40, 56), (333, 1000), (1000, 333), (97, 64), (17, 23)])
def test_model_input_resizes_channel_by_channel_exactly(shape):
    import torch

    from genpercept_cli.pipeline import image_to_tensor, processed_size, resize_uint8
    from genpercept_cli.resize import model_input

    image = _rgb(*shape, seed=sum(shape))
    for res in (0, 8, 32, 768):
        size = processed_size(*shape, res) if min(shape) * res >= 8 * max(shape) or res == 0 else None
        if size is not None:
            assert torch.equal(model_input(image, size), resize_uint8(image_to_tensor(image), size))


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", ["1", "7"])
def test_processing_res_below_the_model_minimum_is_refused_up_front(photos, tmp_path, checkpoint_root, res):
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "o", "--processing-res", res)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--processing-res must be 0 (native size) or at least 8 pixels, the model's smallest side; got {res}." \
        in result.output
    assert not (tmp_path / "o").exists()


def test_thin_image_message_gives_width_x_height(tmp_path, checkpoint_root):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_rgb(1, 300, 0)).save(src / "line.png")  # 300 wide, 1 high
    Image.fromarray(_rgb(300, 5, 0)).save(src / "post.png")  # 5 wide, 300 high
    result = _predict(src, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", "--processing-res", "32")
    assert "line.png: the image is too thin: 300x1 becomes 32x0 at processing resolution 32" in result.output
    assert "post.png: the image is too thin: 5x300 becomes 0x32 at processing resolution 32" in result.output


def test_the_header_comes_before_the_model_loads_and_compile_says_it_may_take_minutes(photos, tmp_path,
                                                                                      checkpoint_root, monkeypatch):
    """The first line waited for torch, diffusers and the weights (~7 s); --compile ran 419 s in silence."""

    def refuse(*args, **kwargs):
        raise GenPerceptError("stopped at the model load")

    monkeypatch.setattr(GenPerceptPipeline, "from_checkpoint", refuse)
    result = _predict(photos, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", "--compile")
    assert result.exit_code == 2
    header, note, error = result.output.splitlines()[:3]
    assert header.startswith(f"{len(GOOD) + len(BAD)} images -> ") and "task=depth res=768" in header
    assert note.startswith("--compile: torch.compile compiles on the first batch") and "may take minutes" in note
    assert error == "error: stopped at the model load"


def test_header_and_summary_count_the_same_inputs_and_a_folder_finds_gifs(tmp_path, checkpoint_root):
    """The header counted 17 images where the summary said 20 (unreadable inputs), and an animated GIF in a
    folder was a "non-image file" although it is read when given directly."""
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_rgb(24, 32, 0)).save(src / "still.png")
    frames = [Image.fromarray(_rgb(24, 32, seed)) for seed in (1, 2)]
    frames[0].save(src / "moving.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: one failed input
    result = _predict(src, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", "--processing-res", "16")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("3 images -> ") and "wrote 2 of 3 images" in result.output
    assert "non-image" not in result.output and "gone.png: a broken symbolic link" in result.output
    direct = _predict(src / "moving.gif", "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "one",
                      "--processing-res", "16")
    assert direct.exit_code == 0, direct.output
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "moving_pred.npy"),
                                  np.load(tmp_path / "one" / "moving_pred.npy"))


def test_a_symlink_loop_or_broken_link_given_as_the_source_says_so(tmp_path, checkpoint_root):
    """A symlink loop given directly said "does not exist"."""
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    loop = _predict(tmp_path / "loop.png", "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out")
    assert loop.exit_code == 2 and f"error: {tmp_path / 'loop.png'} is a symbolic link loop." in loop.output
    gone = _predict(tmp_path / "gone.png", "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out")
    assert gone.exit_code == 2
    assert f"error: {tmp_path / 'gone.png'} is a broken symbolic link (to {tmp_path / 'nowhere.png'})." in gone.output
    assert not (tmp_path / "out").exists()
