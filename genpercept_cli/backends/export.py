"""Export a checkpoint's whole model as one graph (ONNX, or OpenVINO IR), check it, and keep exports in a cache.

    DIR/model.onnx (+ model.onnx.data when the weights pass protobuf's 2 GB) | DIR/model.xml + model.bin
    DIR/genpercept.json   {"family": "onnx" | "openvino", "task", "output_kind", "processing_res",
                           "family_params": {file, source_family, checkpoint, files (sha256), exporter,
                                             processing (what the runner needs), check_max_abs_diff}}

The graph is `DenseModel.forward` traced by torch.onnx's TorchScript exporter (the dynamo exporter took
188 s on the tiny test model against 14 s, and gives the same graph here) with dynamic batch, height
and width: the prompt embedding, timestep and class labels are constants in it. The trace runs at an odd
size, so the size-dependent branches recorded are the general ones (padding, explicit upsampling sizes);
the check after export runs other sizes and batches against the PyTorch model and refuses a graph that
disagrees. A folder appears whole or not at all: it is written as a hidden temp folder and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoints import SPEC_FILE
from ..errors import CheckpointError
from ..files import normal_file_mode
from ..models.exported import ENGINE_OF, ENGINES, BackendError, EngineModel, available, load_exported, require, runner

FORMATS = ("onnx", "openvino")
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
EXPORT_VERSION = 1  # bump when the graph or the manifest changes: cached exports are keyed by it
OPSET = 17
TRACE_SHAPE = (2, 3, 45, 61)  # odd sizes: the general branches are traced; batch 2, so batch stays dynamic
CHECK_SHAPES = ((1, 3, 45, 61), (3, 3, 37, 50), (1, 3, 64, 80))
CHECK_TOLERANCE = 1e-4  # max |Δ| on the [0, 1] output (fp32 engines agree to ~1e-6 on the tiny models)
# CPU, fp32: the engines in the order bench-speed measured them on this class of machine (2-core AMD EPYC, no
# AMX; benchmarks/results/engines_cpu_*_fp32.json): against diffusers' Marigold one step ONNX Runtime 1.18x at
# 256² and 1.05x at 512², OpenVINO 0.97x and 1.09x. `--backend auto` takes the first one installed.
MEASURED_CPU_ORDER = ("onnxruntime", "openvino")


def is_exported(spec) -> bool:
    """Whether a checkpoint spec is an exported folder (family onnx or openvino)."""
    return spec.family in FORMATS


def resolve_backend(backend: str | None, device: torch.device, spec, dtype) -> str:
    """torch, onnxruntime or openvino for a run: None is torch, or the engine an exported folder was
    written for; auto is torch on CUDA, else the measured fastest engine that is installed (fp32 only)."""
    from ..models.exported import BACKENDS

    if backend not in (None, *BACKENDS):
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend is None:
        backend = ENGINE_OF[spec.family] if is_exported(spec) else "torch"
    elif backend == "auto" and is_exported(spec):
        backend = ENGINE_OF[spec.family]
    elif backend == "auto":  # an engine only where it is measured faster at the same accuracy, and exports
        from ..models import family_of

        fp32 = dtype in (None, "auto", "fp32", "float32", torch.float32)
        engine = next((b for b in MEASURED_CPU_ORDER if available(b)), "torch")
        backend = engine if fp32 and device.type == "cpu" and family_of(spec).sd_one_step else "torch"
    if backend == "torch" and is_exported(spec):
        raise BackendError(f"{spec.name} is an exported {spec.family} model; run it with --backend "
                           f"{ENGINE_OF[spec.family]} (or openvino).")
    if backend != "torch" and device.type != "cpu":
        raise BackendError(f"the {backend} backend runs on the CPU; use --device cpu, or --backend torch on {device}.")
    return backend


# -- export ----------------------------------------------------------------------------------------
def exportable(model, spec) -> None:
    """Refuse, with one sentence, a model whose graph cannot be exported with dynamic sizes."""
    from ..models.one_step import OneStepModel

    if not isinstance(model, OneStepModel):
        raise BackendError(f"checkpoint {spec.name!r} ({spec.family}) cannot be exported yet: only the one-step "
                           "families (GenPercept, E2E-FT, Lotus-D, Marigold) export as one graph.")
    if model.params.sample == "noise":
        raise BackendError(f"checkpoint {spec.name!r} starts from seeded noise, which cannot be exported for "
                           "every image size; export it with sample 'zeros'.")


def checkpoint_hashes(files) -> dict[str, str]:
    """{file: sha256} of everything a fetched checkpoint is built from (weights, configs, scheduler).

    Hub-cache files are links to blobs named by their sha256, which is taken as is (no re-read of GBs)."""
    folders = [p for p in (files.unet_dir, files.vae_dir, files.dpt_dir) if p is not None]
    paths = [p for folder in folders for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if files.spec.is_pipeline:
        root = files.unet_dir.parent
        paths += [p for p in (root / "model_index.json", root / "scheduler" / "scheduler_config.json") if p.is_file()]
    if files.weights_file is not None:
        paths.append(files.weights_file)
    hashes = {}
    for path in paths:
        target = Path(os.path.realpath(path))
        if path.is_symlink() and len(target.name) == 64 and all(c in "0123456789abcdef" for c in target.name):
            hashes[f"{path.parent.name}/{path.name}"] = target.name
        else:
            hashes[f"{path.parent.name}/{path.name}"] = _sha256(path)
    return hashes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def exporter_versions(fmt: str) -> dict[str, str]:
    """Versions of what writes and checks an export (a missing extra raises BackendError naming it)."""
    require(ENGINE_OF[fmt])  # the check after export runs the graph on its engine
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("genpercept")  # not `genpercept_cli.__version__`: the package imports the pipeline, us
    except PackageNotFoundError:
        ours = "unknown"
    versions = {"genpercept": ours, "export_version": str(EXPORT_VERSION), "torch": torch.__version__,
                "onnx": require("onnx").__version__}
    if fmt == "openvino":
        versions["openvino"] = require("openvino").__version__
    return versions


def export_checkpoint(files, fmt: str, out: Path, log: Callable[[str], None] = lambda message: None) -> dict:
    """Export a fetched checkpoint (`checkpoints.CheckpointFiles`) into the new folder `out`; returns
    its genpercept.json. Refuses (BackendError, nothing left behind) a model the check finds different."""
    from ..models import build_model

    exporter_versions(fmt)  # a missing extra is found before the model loads
    log(f"loading {files.spec.name}")
    model = build_model(files, torch.float32).eval()
    exportable(model, files.spec)
    return export_model(model, files.spec, fmt, out, checkpoint_hashes(files), log)


def export_model(model, spec, fmt: str, out: Path, hashes: dict | None = None,
                 log: Callable[[str], None] = lambda message: None) -> dict:
    """Export an fp32 `DenseModel` of checkpoint `spec` into the new folder `out` (see export_checkpoint)."""
    if fmt not in FORMATS:
        raise BackendError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    versions = exporter_versions(fmt)
    if out.exists() and any(out.iterdir()):
        raise BackendError(f"{out} already exists and is not empty; choose another --output or delete it.")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        log("exporting the model to ONNX (one graph: encoder, U-Net, decoder, head)")
        write_onnx(model, tmp / MODEL_FILES["onnx"])
        if fmt == "openvino":
            log("converting the ONNX graph to OpenVINO IR")
            write_openvino(tmp / MODEL_FILES["onnx"], tmp / MODEL_FILES["openvino"])
        log("checking the exported model against PyTorch")
        diff = check_export(model, tmp / MODEL_FILES[fmt], ENGINE_OF[fmt])
        manifest = _manifest(spec, model, fmt, hashes or {}, versions, diff)
        (tmp / SPEC_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():  # onnx writes its external data file 0600: readable as every other file
            os.chmod(path, normal_file_mode())
        if out.exists():
            out.rmdir()  # empty (checked above): rename onto it
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def write_onnx(model, path: Path, example: torch.Tensor | None = None) -> None:
    """Trace `model.forward` on `example` (default: an image of TRACE_SHAPE in [-1, 1]) into one ONNX graph at
    `path`, dynamic batch/height/width; weights over 2 GB go to one external file beside it (model.onnx.data)."""
    raw = path.parent / "raw"
    raw.mkdir()
    x = torch.rand(TRACE_SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1 if example is None else example
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the size branches the trace fixes (see above)
        torch.onnx.export(model, (x,), str(raw / path.name), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["prediction"],
                          dynamic_axes={"image": axes, "prediction": axes})
    if len(list(raw.iterdir())) == 1:  # weights inside the graph
        os.replace(raw / path.name, path)
    else:  # the exporter wrote one file per weight: gather them into one
        onnx = require("onnx")
        graph = onnx.load(str(raw / path.name))
        onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    shutil.rmtree(raw)


def write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """ONNX -> OpenVINO IR (model.xml + model.bin) with fp32 weights; the ONNX files are removed."""
    ov = require("openvino")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # its default would halve the weights
    del model
    for path in onnx_path.parent.glob(onnx_path.name + "*"):
        path.unlink()


@torch.no_grad()
def check_export(model, path: Path, backend: str) -> float:
    """max |Δ| between the engine and the PyTorch model on CHECK_SHAPES; BackendError above CHECK_TOLERANCE."""
    run = runner(path, backend)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for shape in CHECK_SHAPES:
        x = torch.rand(shape, generator=gen) * 2 - 1
        expected = model(x).float().numpy()
        got = run(x.numpy())
        if got.shape != expected.shape:
            raise BackendError(f"the exported model gives shape {tuple(got.shape)} for input {shape}, PyTorch "
                               f"{tuple(expected.shape)}; it was not written.")
        worst = max(worst, float(abs(got - expected).max()))
    if not worst <= CHECK_TOLERANCE:
        raise BackendError(f"the exported model differs from PyTorch by up to {worst:.2g} (more than "
                           f"{CHECK_TOLERANCE:g}); it was not written.")
    return worst


def _manifest(spec, model, fmt: str, hashes: dict, versions: dict, diff: float) -> dict:
    manifest = {"family": fmt, "task": spec.task, "output_kind": spec.kind, "processing_res": spec.processing_res,
                "family_params": {
                    "file": MODEL_FILES[fmt], "source_family": spec.family, "checkpoint": spec.name,
                    "files": hashes, "exporter": versions, "check_max_abs_diff": diff,
                    "processing": {"channels": model.channels, "size_rule": model.size_rule,
                                   "round_input": model.rounds_input, "output_antialias": model.output_antialias}}}
    if spec.labels:
        manifest["labels"] = spec.labels
    return manifest


# -- the cache: a checkpoint exported once, then reused ----------------------------------------------
def engine_cache() -> Path:
    from ..releases import checkpoint_home

    return checkpoint_home() / "engines"


def cached_export(files, fmt: str, log: Callable[[str], None] = lambda message: None) -> Path:
    """The exported folder of a fetched checkpoint in the cache, exported on first use; keyed by the
    checkpoint's file hashes and the exporter's versions."""
    key = json.dumps({"files": checkpoint_hashes(files), "exporter": exporter_versions(fmt),
                      "task": files.spec.task, "kind": files.spec.kind, "params": files.spec.family_params},
                     sort_keys=True, default=str)
    folder = engine_cache() / f"{fmt}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (folder / SPEC_FILE).is_file():
        log(f"exporting {files.spec.name} to {fmt} once (kept in {folder})")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder (no genpercept.json) is redone
        export_checkpoint(files, fmt, folder, log)
    return folder


def engine_model(spec, backend: str, dtype: torch.dtype = torch.float32, cache_dir=None,
                 log: Callable[[str], None] = lambda message: None) -> EngineModel:
    """The EngineModel for a checkpoint spec on `backend` (onnxruntime or openvino): an exported folder
    directly, any other checkpoint through its cached export."""
    from ..checkpoints import fetch_checkpoint

    if backend not in ENGINES:
        raise BackendError(f"{backend} is not an engine backend; choose one of {', '.join(ENGINES)}.")
    require(backend)
    if is_exported(spec):
        return load_exported(spec.unet_dir, spec, backend, dtype)
    fmt = "openvino" if backend == "openvino" else "onnx"
    folder = cached_export(fetch_checkpoint(spec, cache_dir=cache_dir), fmt, log)
    declared = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    exported = replace(spec, family=fmt, family_params=declared["family_params"])
    return load_exported(folder, exported, backend, dtype)


def check_source(spec) -> None:
    """Refuse an exported folder as the source of another export (one sentence)."""
    if is_exported(spec):
        raise CheckpointError(f"{spec.name} is already an exported model; export from the checkpoint it came from.")
