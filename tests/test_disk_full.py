"""A full disk (issue 19): one test recognises it (`files.is_disk_full`), and every writer stops the run at
the first full write with one sentence naming the path, leaving nothing partial behind."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import genpercept_cli.files as files
from genpercept_cli.cli import app

runner = CliRunner()
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# What torch.save and numpy's tofile raise on a full disk: the errno is lost (measured on a 300 KB tmpfs).
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
NUMPY_FULL = OSError("76800 requested and 73696 written")


@pytest.fixture()
def low_space(monkeypatch):
    """The filesystem reads as full (under the 1 MiB is_disk_full takes for full)."""
    monkeypatch.setattr(files, "free_bytes", lambda path: 4096.0, raising=False)


def test_is_disk_full_by_errno_by_text_and_by_free_space(tmp_path, monkeypatch):
    assert files.is_disk_full(ENOSPC) and files.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    safetensors_error = ValueError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert files.is_disk_full(safetensors_error)
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = ENOSPC
    assert files.is_disk_full(wrapped)
    assert not files.is_disk_full(PermissionError(errno.EACCES, "Permission denied"))
    for exc in (TORCH_FULL, NUMPY_FULL):  # errno lost: only a (nearly) full filesystem makes them disk-full
        assert not files.is_disk_full(exc) and not files.is_disk_full(exc, tmp_path)
        monkeypatch.setattr(files, "free_bytes", lambda path: 4096.0)
        assert files.is_disk_full(exc, tmp_path)
        monkeypatch.undo()
    monkeypatch.setattr(files, "free_bytes", lambda path: 4096.0)
    assert not files.is_disk_full(PermissionError(errno.EACCES, "Permission denied"), tmp_path)  # has its own errno


def test_atomic_write_on_a_full_disk_raises_the_sentence_and_leaves_no_temp_file(tmp_path, low_space):
    target = tmp_path / "out" / "a.npy"

    def numpy_on_a_full_disk(tmp):
        tmp.write_bytes(b"\x93NUMPY")  # the part written before the disk filled
        raise NUMPY_FULL

    with pytest.raises(files.DiskFullError, match=f"^no space left on device while writing {target};"):
        files.atomic_write(target, numpy_on_a_full_disk)
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_write_gives_the_umask_mode_to_a_writer_that_makes_0600_files(tmp_path):
    def private_writer(tmp):  # as safetensors' save_file does
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)

    old = os.umask(0o022)
    try:
        files.normal_file_mode.cache_clear()
        files.atomic_write(tmp_path / "w.safetensors", private_writer)
    finally:
        os.umask(old)
        files.normal_file_mode.cache_clear()
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_predict_stops_at_the_first_image_that_does_not_fit(tmp_path, checkpoint_root, monkeypatch, low_space):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        Image.fromarray(np.full((24, 32, 3), 20 * i, np.uint8)).save(src / f"i{i}.png")
    calls = []

    def save_on_a_full_disk(handle, array):
        calls.append(handle.name)
        handle.write(b"\x93NUMPY")
        raise NUMPY_FULL

    monkeypatch.setattr(files.np, "save", save_on_a_full_disk)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(src), "-c", str(checkpoint_root / "unet_depth_v2"), "-o", str(out),
                                 "--processing-res", "32", "--formats", "png,npy", "--batch-size", "1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text, result.output
    assert re.search(f"no space left on device while writing {re.escape(str(out))}/i[0-7]_pred.npy;", text), text
    assert len(calls) <= 1 + 2 * 2  # the first, and at most the writes already in flight (2 writer threads x 2)
    assert [p.name for p in out.rglob("*") if p.is_file()] == []  # the _pred.png written before is removed too


def probe_on_a_full_disk(path, data, real_write_bytes=Path.write_bytes):
    """Path.write_bytes on a disk that is already full: the file is made, its byte is not written."""
    real_write_bytes(path, b"")
    raise ENOSPC


def test_bench_json_on_a_full_disk_is_refused_before_the_run_and_after_it(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    real_write_bytes = type(out).write_bytes
    args = ["bench-speed", "--random-weights", "--model-size", "tiny", "--resolution", "32", "--warmup", "0",
            "--repeats", "1", "--device", "cpu", "--json", str(out)]
    with monkeypatch.context() as patch:  # the disk is full when the command starts: refused before the run
        patch.setattr(type(out), "write_bytes", probe_on_a_full_disk)
        result = runner.invoke(app, args)
    assert result.exit_code == 2 and "No space left on device" in result.output, result.output
    assert "images/s" not in result.output and list(tmp_path.iterdir()) == []

    def json_on_a_full_disk(path, text, **kwargs):  # the disk fills during the run
        real_write_bytes(path, text[:10].encode())
        raise ENOSPC

    monkeypatch.setattr(type(out), "write_text", json_on_a_full_disk)
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"no space left on device while writing {out}" in text, result.output
    assert list(tmp_path.iterdir()) == []


def test_convert_on_a_full_disk_leaves_no_output_folder(tmp_path, monkeypatch):
    from tiny_metaprompts import write_tiny_release

    release = write_tiny_release(tmp_path / "nyu.pth", "nyu")

    def save_file_on_a_full_disk(tensors, path, metadata=None):
        open(path, "wb").write(b"\0" * 64)
        raise ValueError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", save_file_on_a_full_disk)
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert", str(release), "-r", "metaprompts-nyu", "-o", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and f"no space left on device while writing {out / 'model.safetensors'}" in text, (
        result.output)
    assert not out.exists()


def test_eval_output_on_a_full_disk_is_refused_before_the_run(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    monkeypatch.setattr(type(out), "write_bytes", probe_on_a_full_disk)
    result = runner.invoke(app, ["eval", "--dataset", "nyu", "--data-dir", str(tmp_path / "none"), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"--output {out} cannot be written (No space left on device" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []
