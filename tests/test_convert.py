"""Single-file releases: `genpercept convert`, the checkpoint home (`releases`), and `predict` straight
from a tiny Meta Prompts `.pth` (metric depth files in metres)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_metaprompts import tiny_config, write_tiny_release
from typer.testing import CliRunner

from genpercept_cli.checkpoints import fetch_checkpoint, load_registry, resolve_checkpoint
from genpercept_cli.cli import app
from genpercept_cli.errors import EXIT_OFFLINE, EXIT_USAGE, CheckpointError, OfflineError
from genpercept_cli.models.metaprompts import build_metaprompts
from genpercept_cli.models.metaprompts.convert import load_release_file
from genpercept_cli.releases import checkpoint_home, release_paths, spec_for_file

runner = CliRunner()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    monkeypatch.setenv("GENPERCEPT_HOME", str(folder))
    return folder


@pytest.fixture(scope="module")
def nyu_release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("release") / "metaprompts_nyu.pth", "nyu")


def test_convert_writes_safetensors_and_spec_into_the_home(home, nyu_release):
    result = runner.invoke(app, ["convert", str(nyu_release), "--release", "metaprompts-nyu"])
    assert result.exit_code == 0, result.output
    folder = home / "metaprompts-nyu"
    declared = json.loads((folder / "genpercept.json").read_text())
    assert declared["family"] == "metaprompts" and declared["task"] == "depth"
    assert declared["output_kind"] == "metric_depth" and declared["processing_res"] == 0
    params = declared["family_params"]
    assert params["max_depth"] == 10.0 and params["unet_channels"] == [32, 32, 64, 64]
    weights = load_file(str(folder / "model.safetensors"))
    expected = load_release_file(nyu_release, tiny_config("nyu")).state
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert "8 alias keys" in result.output and "--checkpoint metaprompts-nyu" in result.output
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o666 & ~umask}  # as predict's outputs, not 0600
    # the registry name now loads the converted folder
    files = fetch_checkpoint(resolve_checkpoint("metaprompts-nyu"))
    assert files.unet_dir == folder and files.weights_file is None


def test_convert_refuses_unknown_release_missing_file_and_wrong_kind(tmp_path, home, nyu_release):
    result = runner.invoke(app, ["convert", str(nyu_release), "--release", "nyu"])
    assert result.exit_code == EXIT_USAGE and "metaprompts-kitti" in result.output
    result = runner.invoke(app, ["convert", str(tmp_path / "none.pth"), "--release", "metaprompts-nyu"])
    assert result.exit_code == EXIT_USAGE and "does not exist" in result.output
    result = runner.invoke(app, ["convert", str(nyu_release), "-r", "metaprompts-ade20k", "-o", str(tmp_path / "o")])
    assert result.exit_code == EXIT_USAGE and "depth release, not seg" in result.output
    assert not (tmp_path / "o" / "genpercept.json").exists()


class _CallsAFunction:
    """A pickled object whose unpickling would call os.getcwd (harmless; weights_only refuses it)."""

    def __reduce__(self):
        return os.getcwd, ()


@pytest.mark.parametrize("layout", ["zip", "legacy pickle"])
def test_convert_refuses_a_file_with_non_tensor_objects_in_one_sentence_without_warnings(tmp_path, layout, recwarn):
    import pickle

    path = tmp_path / "evil.pth"
    content = {"model": {"a": torch.zeros(2), "b": _CallsAFunction()}}
    if layout == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=4))
    result = runner.invoke(app, ["convert", str(path), "-r", "metaprompts-nyu", "-o", str(tmp_path / "o")])
    assert result.exit_code == EXIT_USAGE, result.output
    text = " ".join(result.output.split())
    assert f"{path} holds non-tensor objects" in text and "refused for safety" in text
    assert "weights_only" not in text and "Traceback" not in text
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []
    assert not (tmp_path / "o").exists()


def test_a_release_is_found_converted_then_raw_else_offline(home, nyu_release):
    spec = load_registry()["metaprompts-kitti"]
    with pytest.raises(OfflineError) as info:
        release_paths(spec)
    message = str(info.value)
    assert info.value.exit_code == EXIT_OFFLINE
    assert spec.url in message and "metaprompts_kitti.pth" in message and str(home) in message
    home.mkdir()
    (home / "metaprompts_kitti.pth").write_bytes(b"x")
    assert release_paths(spec) == (home / "metaprompts-kitti", home / "metaprompts_kitti.pth")
    (home / "metaprompts-kitti").mkdir()
    for name in ("model.safetensors", "genpercept.json"):
        (home / "metaprompts-kitti" / name).write_text("{}")
    assert release_paths(spec) == (home / "metaprompts-kitti", None)
    assert checkpoint_home() == home


def test_a_release_file_is_named_by_its_file_name(tmp_path, nyu_release):
    spec = resolve_checkpoint(str(nyu_release))  # by the registry entry whose `file` it is
    assert spec.family == "metaprompts" and spec.family_params["shift_size"] == 2
    assert release_paths(spec) == (None, nyu_release)  # converted on each load, nothing cached
    with pytest.raises(CheckpointError, match="genpercept convert .* --release NAME"):
        spec_for_file(tmp_path / "renamed.pth", load_registry())
    with pytest.raises(CheckpointError, match="is a depth model, not semseg"):
        spec_for_file(nyu_release, load_registry(), task="semseg")


def test_loading_the_raw_release_caches_the_converted_folder(home, nyu_release):
    home.mkdir()
    (home / "metaprompts_nyu.pth").write_bytes(nyu_release.read_bytes())
    files = fetch_checkpoint(resolve_checkpoint("metaprompts-nyu"))
    assert files.weights_file == home / "metaprompts_nyu.pth"
    model = build_metaprompts(files)
    assert (home / "metaprompts-nyu" / "genpercept.json").is_file()
    files = fetch_checkpoint(resolve_checkpoint("metaprompts-nyu"))
    assert files.weights_file is None and files.unet_dir == home / "metaprompts-nyu"
    again = build_metaprompts(files)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_a_full_disk_while_caching_the_converted_folder_warns_and_still_loads(home, nyu_release, monkeypatch):
    home.mkdir()
    (home / "metaprompts_nyu.pth").write_bytes(nyu_release.read_bytes())

    def save_file_on_a_full_disk(tensors, path, metadata=None):
        raise ValueError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", save_file_on_a_full_disk)
    with pytest.warns(UserWarning, match="could not write the converted checkpoint .*no space left on device"):
        model = build_metaprompts(fetch_checkpoint(resolve_checkpoint("metaprompts-nyu")))
    assert model is not None and not (home / "metaprompts-nyu").exists()  # the cache only; nothing half-made


def test_predict_from_a_release_file_writes_metric_depth(tmp_path, nyu_release):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "room.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tmp_path / "room.png"), "--checkpoint", str(nyu_release),
                                 "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    depth = np.load(out / "room_pred.npy")
    # the model's own output for this image, in metres (no [0, 1] clip, no alignment)
    model = build_metaprompts(fetch_checkpoint(resolve_checkpoint(str(nyu_release))))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.inference_mode():
        expected = model(x)[0, 0].numpy()
    assert depth.shape == (32, 32)
    np.testing.assert_allclose(depth, expected, rtol=1e-4, atol=1e-4)
    assert depth.max() > 1.0  # metres, not [0, 1]
    png = np.asarray(Image.open(out / "room_pred.png"))
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16))


def test_a_folder_converted_from_a_release_keeps_its_identity_and_paper_row(tmp_path, home, nyu_release):
    """`convert --release NAME -o DIR` writes the release into genpercept.json: `eval -c DIR` gets its paper
    row; a folder without it (a fine-tune, a hand-made conversion) is a local checkpoint with none."""
    from benchmarks.evaluate import paper_row
    from genpercept_cli.checkpoints import released_as

    result = runner.invoke(app, ["convert", str(nyu_release), "-r", "metaprompts-nyu", "-o", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "mine" / "genpercept.json").read_text())["release"] == "metaprompts-nyu"
    spec = resolve_checkpoint(str(tmp_path / "mine"))
    assert released_as(spec) == "metaprompts-nyu"
    assert paper_row("depth", "nyu", spec, 0)[0] == "Meta Prompts (NYUv2)"
    declared = json.loads((tmp_path / "mine" / "genpercept.json").read_text())
    del declared["release"]
    (tmp_path / "mine" / "genpercept.json").write_text(json.dumps(declared))
    assert paper_row("depth", "nyu", resolve_checkpoint(str(tmp_path / "mine")), 0) == (
        None, None, "a local checkpoint, not a released model")
