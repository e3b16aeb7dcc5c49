"""ONNX export and the ONNX Runtime / OpenVINO backends (issue 20) on tiny random checkpoints: each family's
one graph against its PyTorch model on several sizes and batches, predict's files against the torch
backend's, the cache, and the one-sentence refusals (corrupt folder, wrong task, missing extra, a graph
that disagrees, a family that does not export)."""

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_families import write_pipeline_repo
from tiny_models import write_checkpoint_root, write_dpt_checkpoint
from typer.testing import CliRunner

from genpercept_cli.backends import BackendError, resolve_backend
from genpercept_cli.backends.export import CHECK_TOLERANCE, export_checkpoint
from genpercept_cli.checkpoints import CheckpointSpec, fetch_checkpoint, resolve_checkpoint
from genpercept_cli.cli import app
from genpercept_cli.models import build_model
from genpercept_cli.models.exported import onnxruntime_runner, openvino_runner

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-5  # max |Δ| on the [0, 1] outputs, fp32 engines against fp32 PyTorch
SHAPES = ((1, 3, 29, 43), (3, 3, 40, 56), (1, 3, 64, 64))  # batch 1 and 3, odd sizes, none the traced one


def _sources(root):
    """Tiny checkpoints of every exportable family (and GenPercept's DPT-head variant)."""
    return {
        "genpercept": write_checkpoint_root(root / "genpercept", tasks=("depth",)),
        "genpercept-dpt": write_dpt_checkpoint(root / "genpercept-dpt"),
        "e2e-ft": write_pipeline_repo(root / "e2e-ft-depth", "e2e-ft", seed=5),
        "lotus-d": write_pipeline_repo(root / "lotus-d-depth", "lotus-d", seed=6),
        "marigold": write_pipeline_repo(root / "marigold-depth", "marigold", seed=7),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{family: (source folder, its ONNX export folder)}, each exported once for the module."""
    root = tmp_path_factory.mktemp("backends")
    out = {}
    for name, source in _sources(root).items():
        folder = root / f"{name}-onnx"
        export_checkpoint(fetch_checkpoint(resolve_checkpoint(str(source))), "onnx", folder)
        out[name] = source, folder
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(4)
    for name, size in (("a", (37, 53)), ("b", (48, 40))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _torch_model(source):
    return build_model(fetch_checkpoint(resolve_checkpoint(str(source)))).eval()


@pytest.mark.parametrize("family", ["genpercept", "genpercept-dpt", "e2e-ft", "lotus-d", "marigold"])
def test_onnx_graph_equals_torch_on_onnxruntime_and_openvino(exported, family):
    source, folder = exported[family]
    model = _torch_model(source)
    engines = {"onnxruntime": onnxruntime_runner(folder / "model.onnx"),
               "openvino": openvino_runner(folder / "model.onnx")}  # OpenVINO reads the ONNX graph too
    gen = torch.Generator().manual_seed(2)
    for shape in SHAPES:
        x = torch.rand(shape, generator=gen) * 2 - 1
        with torch.no_grad():
            expected = model(x).numpy()
        for name, run in engines.items():
            got = run(x.numpy())
            assert got.shape == expected.shape, (name, shape)
            assert np.abs(got - expected).max() <= TOLERANCE, (name, shape)


def test_manifest_says_what_the_export_is(exported):
    source, folder = exported["marigold"]
    manifest = json.loads((folder / "genpercept.json").read_text())
    assert manifest["family"] == "onnx" and manifest["task"] == "depth"
    params = manifest["family_params"]
    assert params["source_family"] == "marigold" and params["file"] == "model.onnx"
    assert params["processing"] == {"channels": 1, "size_rule": "integer", "round_input": False,
                                    "output_antialias": False}
    assert set(params["exporter"]) >= {"torch", "onnx", "genpercept"}
    weights = (source / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert params["files"]["unet/diffusion_pytorch_model.safetensors"] == hashlib.sha256(weights).hexdigest()
    assert params["check_max_abs_diff"] <= TOLERANCE
    assert sorted(p.name for p in folder.iterdir()) == ["genpercept.json", "model.onnx"]


def _reuse_onnx(monkeypatch, folder):
    """Export writes the module's ONNX graph of the same checkpoint instead of tracing it again (seconds)."""
    import genpercept_cli.backends.export as export

    monkeypatch.setattr(export, "write_onnx", lambda model, path: shutil.copy(folder / "model.onnx", path))


def test_exported_files_with_external_weights_get_the_umask_mode(exported, tmp_path, monkeypatch):
    import onnx

    import genpercept_cli.backends.export as export
    from genpercept_cli.files import normal_file_mode

    source, onnx_folder = exported["genpercept"]

    def write_with_external_data(model, path):  # the branch an SD2.1-size graph (> 2 GB) takes
        graph = onnx.load(str(onnx_folder / "model.onnx"))
        onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)

    monkeypatch.setattr(export, "write_onnx", write_with_external_data)
    out = tmp_path / "onnx"
    result = CliRunner().invoke(app, ["export", "-c", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert sorted(modes) == ["genpercept.json", "model.onnx", "model.onnx.data"]
    assert set(modes.values()) == {normal_file_mode()}, modes  # onnx writes the .data file 0600


def test_export_openvino_cli_writes_ir_equal_to_torch(exported, tmp_path, monkeypatch):
    source, onnx_folder = exported["genpercept"]
    _reuse_onnx(monkeypatch, onnx_folder)
    out = tmp_path / "ov"
    result = CliRunner().invoke(app, ["export", "-c", str(source), "--format", "openvino", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["genpercept.json", "model.bin", "model.xml"]
    assert json.loads((out / "genpercept.json").read_text())["family_params"]["exporter"]["openvino"]
    model, run = _torch_model(source), openvino_runner(out / "model.xml")
    x = torch.rand(3, 3, 33, 47, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert np.abs(run(x.numpy()) - model(x).numpy()).max() <= TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["ov"]  # no temp folder left beside it


def _predict(photos, out, *args):
    result = CliRunner().invoke(app, ["predict", str(photos), "-o", str(out), "--formats", "npy",
                                      "--processing-res", "0", *args])
    return result


@pytest.mark.parametrize("family", ["genpercept", "marigold"])
def test_predict_onnxruntime_writes_what_torch_writes(exported, photos, tmp_path, family):
    source, folder = exported[family]
    ran = {}
    for name, args in (("torch", ["-c", str(source)]), ("exported", ["-c", str(folder)]),
                       ("openvino", ["-c", str(folder), "--backend", "openvino"])):
        result = _predict(photos, tmp_path / name, *args)
        assert result.exit_code == 0, result.output
        ran[name] = result.output
    assert "backend=onnxruntime" in ran["exported"] and "backend=openvino" in ran["openvino"]
    for stem in ("a", "b"):
        expected = np.load(tmp_path / "torch" / f"{stem}_pred.npy")
        for name in ("exported", "openvino"):
            got = np.load(tmp_path / name / f"{stem}_pred.npy")
            assert got.shape == expected.shape and np.abs(got - expected).max() <= TOLERANCE


def test_eval_onnxruntime_scores_what_torch_scores(exported, tmp_path):
    from _archives import write_tar
    from test_datasets import NYU_TAR, nyu_files

    source, folder = exported["genpercept"]
    files, _ = nyu_files(np.random.default_rng(0))
    write_tar(tmp_path / "data" / NYU_TAR, files)
    reports, saved = {}, {}
    runs = {"torch": ["-c", str(source)], "onnxruntime": ["-c", str(folder), "--backend", "onnxruntime"]}
    for name, model in runs.items():
        saved[name] = tmp_path / f"saved-{name}"
        result = CliRunner().invoke(app, ["eval", "-d", "nyu", "--data-dir", str(tmp_path / "data"), *model,
                                          "--limit", "2", "--processing-res", "64", "--save-predictions",
                                          str(saved[name]), "-o", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    stems = sorted(p.relative_to(saved["torch"]) for p in saved["torch"].rglob("*_pred.npy"))
    assert len(stems) == 2 and stems == sorted(p.relative_to(saved["onnxruntime"])
                                               for p in saved["onnxruntime"].rglob("*_pred.npy"))
    for stem in stems:
        diff = np.abs(np.load(saved["onnxruntime"] / stem) - np.load(saved["torch"] / stem)).max()
        assert diff <= TOLERANCE
    for key in ("absrel", "delta1", "rmse"):
        assert reports["onnxruntime"]["metrics"][key] == pytest.approx(reports["torch"]["metrics"][key], rel=1e-4)
    assert reports["torch"]["metrics"]["absrel"] > 0  # a random model: the scores are not trivially equal


def test_checkpoint_is_exported_once_into_the_cache(exported, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("GENPERCEPT_HOME", str(tmp_path / "home"))
    source, _ = exported["lotus-d"]
    first = _predict(photos, tmp_path / "one", "-c", str(source), "--backend", "onnxruntime")
    assert first.exit_code == 0, first.output
    assert "exporting" in first.output and "once" in first.output
    cached = list((tmp_path / "home" / "engines").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.onnx").is_file()
    second = _predict(photos, tmp_path / "two", "-c", str(source), "--backend", "onnxruntime")
    assert second.exit_code == 0 and "exporting" not in second.output
    reference = _predict(photos, tmp_path / "ref", "-c", str(source))
    assert reference.exit_code == 0
    for stem in ("a", "b"):
        a, b = np.load(tmp_path / "two" / f"{stem}_pred.npy"), np.load(tmp_path / "ref" / f"{stem}_pred.npy")
        assert np.abs(a - b).max() <= TOLERANCE


def _one_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.output


def test_corrupt_or_incomplete_exported_folder_is_one_sentence(exported, photos, tmp_path):
    folder = shutil.copytree(exported["genpercept"][1], tmp_path / "broken")
    (folder / "model.onnx").write_bytes(b"not a protobuf at all")
    _one_error(_predict(photos, tmp_path / "o1", "-c", str(folder)), "cannot be loaded by ONNX Runtime")
    (folder / "model.onnx").unlink()
    _one_error(_predict(photos, tmp_path / "o2", "-c", str(folder)), "lacks model.onnx")
    (folder / "genpercept.json").write_text('{"family": "onnx", "task": "depth", "family_params": {}}')
    _one_error(_predict(photos, tmp_path / "o3", "-c", str(folder)), "not that of an exported model")


def test_model_exported_for_another_task_is_refused(exported, photos, tmp_path):
    _one_error(_predict(photos, tmp_path / "o", "-c", str(exported["genpercept"][1]), "--task", "normal"),
               "depth model, not normal")


def test_exported_folder_is_not_run_by_torch(exported, photos, tmp_path):
    _one_error(_predict(photos, tmp_path / "o", "-c", str(exported["genpercept"][1]), "--backend", "torch"),
               "exported onnx model", "--backend onnxruntime")


@pytest.mark.parametrize("module,extra,command", [
    ("onnxruntime", "onnx", ["predict", "{photos}", "-c", "{folder}", "-o", "{out}"]),
    ("openvino", "openvino", ["predict", "{photos}", "-c", "{folder}", "-o", "{out}", "--backend", "openvino"]),
    ("openvino", "openvino", ["export", "-c", "{source}", "--format", "openvino", "-o", "{out}"]),
    ("onnx", "onnx", ["export", "-c", "{source}", "-o", "{out}"]),
])
def test_missing_extra_is_one_sentence(exported, photos, tmp_path, monkeypatch, module, extra, command):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError, as when not installed
    source, folder = exported["genpercept"]
    args = [a.format(photos=photos, folder=folder, source=source, out=tmp_path / "out") for a in command]
    _one_error(CliRunner().invoke(app, args), f"pip install 'genpercept[{extra}]'")
    assert not (tmp_path / "out").exists() or command[0] == "predict"


def test_export_that_disagrees_with_torch_is_refused_and_leaves_nothing(exported, tmp_path, monkeypatch):
    import genpercept_cli.backends.export as export

    _reuse_onnx(monkeypatch, exported["genpercept"][1])
    real = export.runner
    monkeypatch.setattr(export, "runner", lambda *a, **k: (lambda x, run=real(*a, **k): run(x) + 1e-3))
    result = CliRunner().invoke(app, ["export", "-c", str(exported["genpercept"][0]), "-o", str(tmp_path / "x")])
    _one_error(result, "differs from PyTorch", "not written")
    assert list(tmp_path.iterdir()) == []


def test_meta_prompts_is_not_exportable_yet(tmp_path):
    from tiny_metaprompts import write_tiny_converted

    source = write_tiny_converted(tmp_path / "mp")
    result = CliRunner().invoke(app, ["export", "-c", str(source), "-o", str(tmp_path / "x")])
    _one_error(result, "cannot be exported yet")
    assert not (tmp_path / "x").exists()


def test_auto_backend_is_the_measured_engine_on_cpu_torch_elsewhere():
    spec = CheckpointSpec(name="depth", task="depth", output="depth")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, spec, "auto") == "onnxruntime"  # measured first, installed here
    assert resolve_backend("auto", cpu, spec, "bf16") == "torch"  # never trades accuracy silently
    assert resolve_backend("auto", cuda, spec, "auto") == "torch"
    assert resolve_backend(None, cpu, spec, "auto") == "torch"
    meta = CheckpointSpec(name="metaprompts-nyu", task="depth", output="depth", family="metaprompts")
    assert resolve_backend("auto", cpu, meta, "auto") == "torch"  # does not export: stays on torch
    with pytest.raises(BackendError, match="runs on the CPU"):
        resolve_backend("onnxruntime", cuda, spec, "auto")
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_backend("tensorrt", cpu, spec, "auto")


def test_bench_speed_times_each_engine_as_a_protocol(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench-speed", "--random-weights", "--model-size", "tiny", "--resolution", "32",
                                      "--device", "cpu", "--dtype", "fp32", "--protocol", "onnxruntime",
                                      "--protocol", "openvino", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    runs = {r["label"]: r for r in json.loads(out.read_text())["runs"]}
    assert list(runs) == ["genpercept", "onnxruntime", "openvino"]
    for engine in ("onnxruntime", "openvino"):
        run = runs[engine]
        assert run["export_s"] > 0 and run["first_call_s"] > 0 and run["peak_memory_mb"] > 0
        # bench-speed's random modules (not the checkpoints above): within the export check's tolerance
        assert run["max_abs_diff_at_resolution"] <= CHECK_TOLERANCE and run["check_max_abs_diff"] <= CHECK_TOLERANCE


def test_bench_engine_protocol_refuses_half_precision_before_work():
    result = CliRunner().invoke(app, ["bench-speed", "--random-weights", "--model-size", "tiny", "--dtype", "bf16",
                                      "--device", "cpu", "--protocol", "openvino"])
    _one_error(result, "fp32 engines on the CPU")
