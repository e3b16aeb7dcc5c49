"""Find and fetch checkpoints: the named registry, Hugging Face hub ids and local folders (SPEC §2).

A GenPercept checkpoint is a U-Net folder (`config.json` + `diffusion_pytorch_model.safetensors`), the
shared `vae/` folder and, for the DPT-head model, a `dpt_head_*` folder. The other one-step families
(E2E-FT, Lotus-D, Marigold) come as diffusers pipeline folders: `model_index.json`, `scheduler/`,
`unet/`, `vae/` (text encoder and tokenizer are not needed: see models.pipeline_configs); which family a
folder is, is read from those configs (`pipeline_family`). This module only locates files and reads
configs; `loading.py` turns them into modules.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from .errors import CheckpointError, OfflineError
from .tasks import TASKS  # re-exported: the task registry, by name

MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
DPT_FILES = ("model.safetensors",)
_HUB_NAME = re.compile(r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?")  # one hub name part; no leading/trailing . or -
# What a model's output means; decides how it is post-processed and scored (depth alignment).
OUTPUT_KINDS = ("affine_depth", "affine_disparity", "metric_depth", "normal", "probability", "alpha",
                "seg_colors", "class_scores")
SPEC_FILE = "genpercept.json"  # beside the weights: what the checkpoint is, read before any name guess
# One-step families published as diffusers pipeline folders; "detect" = read the family from the configs.
PIPELINE_FAMILIES = ("e2e-ft", "lotus-d", "marigold")
DETECT = "detect"
PIPELINE_FILES = ("model_index.json", "scheduler/scheduler_config.json")  # beside unet/ and vae/
RELEASE_SUFFIXES = (".pth", ".pt", ".ckpt")  # single-file releases (models.metaprompts), see releases.py


def __getattr__(name: str):
    if name == "TASK_OUTPUT_KIND":  # task -> its default output kind, read from the registry on each access
        return {task.name: task.output_kind for task in TASKS.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class CheckpointSpec:
    """Where a checkpoint lives and what it predicts.

    Hub checkpoints set `repo` + `subfolder`; local ones set `unet_dir` + `vae_dir` (+ `dpt_dir`).
    """

    name: str
    task: str
    output: str
    processing_res: int = 768
    embedding: str = "v2"  # "v2": 2-token empty prompt; "v1": 77-token padded empty prompt
    repo: str | None = None
    subfolder: str | None = None
    vae: str = "vae"
    dpt_head: str | None = None
    revision: str | None = None
    sha256: dict = field(default_factory=dict)
    unet_dir: Path | None = None
    vae_dir: Path | None = None
    dpt_dir: Path | None = None
    family: str = "genpercept"  # models.FAMILIES key: how the weights become a model
    family_params: dict = field(default_factory=dict)  # e.g. timestep, parametrization (models.one_step)
    output_kind: str | None = None  # None: the task's (tasks.Task.output_kind); e.g. "metric_depth"
    labels: str | None = None  # class-label set of a semantic-segmentation model (e.g. "ade20k"): names, palette
    url: str | None = None  # single-file releases fetched by hand: the page to download `file` from
    file: str | None = None  # that release's file name (e.g. a .pth), looked for in the checkpoint home
    license: str | None = None  # the weights' licence, as their model card states it

    @property
    def kind(self) -> str:
        """What the output means (OUTPUT_KINDS): decides post-processing and how depth is aligned."""
        return self.output_kind or TASKS[self.task].output_kind

    @property
    def is_local(self) -> bool:
        return self.unet_dir is not None

    @property
    def is_pipeline(self) -> bool:
        """A diffusers pipeline folder (model_index.json, scheduler/, unet/, vae/) of a one-step family."""
        return self.family in PIPELINE_FAMILIES or self.family == DETECT

    @property
    def is_release(self) -> bool:
        """A single-file release fetched by hand (releases.py), not a hub repository."""
        return self.file is not None and not self.is_local

    @property
    def has_dpt_head(self) -> bool:
        return self.dpt_head is not None or self.dpt_dir is not None

    def vae_location(self) -> tuple[str, str]:
        """(repo id, folder) of the VAE: "vae" is the checkpoint's own repo, "owner/repo/folder" another."""
        parts = self.vae.split("/")
        if len(parts) >= 3:
            return "/".join(parts[:2]), "/".join(parts[2:])
        return self.repo or "", self.vae


@dataclass(frozen=True)
class CheckpointFiles:
    """Local folders of a fetched checkpoint."""

    spec: CheckpointSpec
    unet_dir: Path  # the U-Net folder; for other families, the checkpoint folder
    vae_dir: Path | None
    dpt_dir: Path | None = None
    weights_file: Path | None = None  # a single-file release (e.g. a .pth) its family converts on load


def _registry_text() -> str:
    packaged = resources.files("genpercept_cli").joinpath("checkpoints.toml")
    if packaged.is_file():  # wheel install: hatch copies the root file into the package
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "checkpoints.toml").read_text(encoding="utf-8")  # source tree


def load_registry() -> dict[str, CheckpointSpec]:
    """Named checkpoints from `checkpoints.toml`, in file order."""
    table = tomllib.loads(_registry_text())
    return {name: CheckpointSpec(name=name, **entry) for name, entry in table.items()}


def _unet_name() -> re.Pattern:
    """unet_<task>[_v<N>], any registered task or disparity_dpt_head; longer names first, so that
    "unet_disparity" is not read as "dis"."""
    names = sorted([*TASKS, "disparity_dpt_head"], key=len, reverse=True)
    return re.compile(rf"unet_(?P<task>{'|'.join(map(re.escape, names))})(?:_(?P<version>v\d+))?")


def _task_from_folder_name(name: str) -> tuple[str | None, str | None, bool]:
    """unet folder name -> (task, embedding version, has DPT head); Nones when the name says nothing."""
    pattern = _unet_name()
    match = pattern.fullmatch(name) or pattern.match(name)
    if not match:
        return None, None, False
    task = match["task"]
    dpt = task == "disparity_dpt_head"
    version = "v1" if match["version"] == "v1" else ("v2" if match["version"] else None)
    return ("disparity" if dpt else task), version, dpt


def _find_dpt_dir(*parents: Path) -> Path | None:
    for parent in parents:
        for candidate in sorted(parent.glob("dpt_head*")):
            if (candidate / "model.safetensors").is_file():
                return candidate
    return None


def _local_spec(folder: Path, task: str | None) -> CheckpointSpec:
    """A local folder: a per-task repo (`unet_*` + `vae/`) or a `unet_*` folder whose parent has `vae/`;
    or any folder whose `genpercept.json` names another family (its builder reads the folder)."""
    _refuse_part_folder(folder)
    if folder.name == "unet" and is_pipeline_folder(folder.parent):  # the pipeline's unet/ stands for it
        folder = folder.parent
    if is_pipeline_folder(folder):
        return _pipeline_spec(folder, task)
    declared = _read_spec_file(folder)
    if declared.get("family", "genpercept") != "genpercept":
        task = _check_task(task, declared.get("task"), str(folder))
        extra = {k: declared[k] for k in ("family", "family_params", "output_kind", "processing_res", "labels")
                 if k in declared}
        return CheckpointSpec(name=str(folder), task=task, output=TASKS[task].output, unet_dir=folder, **extra)
    if (folder / "config.json").is_file() and (folder.parent / "vae").is_dir():
        unet_dir, vae_dir = folder, folder.parent / "vae"
    elif (folder / "vae").is_dir():
        unets = sorted(p for p in folder.glob("unet*") if p.is_dir())
        if len(unets) != 1:
            found = ", ".join(p.name for p in unets) or "none"
            raise CheckpointError(
                f"{folder} must hold exactly one unet_* folder beside vae/ (found: {found}); "
                "pass the unet_* folder itself to choose one."
            )
        unet_dir, vae_dir = unets[0], folder / "vae"
    else:
        raise CheckpointError(
            f"{folder} is not a checkpoint folder: expected a unet_* folder beside vae/ "
            "(like guangkaixu/genpercept-depth) or a unet_* folder whose parent holds vae/."
        )
    declared = _read_spec_file(unet_dir)
    if declared:
        named_task, version, dpt = declared.get("task"), declared.get("embedding"), bool(declared.get("dpt_head"))
    else:
        named_task, version, dpt = _task_from_folder_name(unet_dir.name)
    task = _check_task(task, named_task, str(unet_dir))
    dpt_dir = _find_dpt_dir(unet_dir.parent, unet_dir) if dpt else None
    if dpt and dpt_dir is None:
        raise CheckpointError(
            f"{unet_dir.name} needs its DPT head: put dpt_head_identity/model.safetensors beside {unet_dir}."
        )
    extra = {k: declared[k] for k in ("family", "family_params", "output_kind", "processing_res") if k in declared}
    return CheckpointSpec(
        name=str(folder), task=task, output=TASKS[task].output, embedding=version or "v2",
        unet_dir=unet_dir, vae_dir=vae_dir, dpt_dir=dpt_dir, **extra,
    )


def read_json(path: Path) -> dict:
    """The JSON object in `path`; a missing, unreadable or non-object file is one sentence."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; copy it from the released checkpoint.") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return data


def is_pipeline_folder(folder: Path) -> bool:
    """A diffusers pipeline folder: model_index.json beside unet/ (E2E-FT, Lotus, Marigold releases)."""
    return (folder / "model_index.json").is_file() and (folder / "unet").is_dir()


SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")  # same schedule and parametrisations: one DDIM step applies
PREDICTION_TYPES = {"v_prediction": "v", "epsilon": "eps", "sample": "x0"}  # scheduler config -> models.sd


def pipeline_family(root: Path) -> str:
    """The one-step family of a diffusers pipeline folder, read from its own configs.

    lotus-d   unet in_channels 4 and class_embed_type "projection" with 4 inputs (the task switcher)
    marigold  model_index.json's _class_name starts with "Marigold"; unet in_channels 8
    e2e-ft    any other pipeline class (E2E-FT publishes "StableDiffusionPipeline"); in_channels 8 or 4
    Raises CheckpointError naming what was found when no family matches.
    """
    pipeline = read_json(root / "model_index.json").get("_class_name")
    unet_path = root / "unet" / "config.json"
    unet = read_json(unet_path)
    channels, embed = unet.get("in_channels", 4), unet.get("class_embed_type")
    found = f"{unet_path} has in_channels {channels} and class_embed_type {embed!r} (pipeline {pipeline!r})"
    if embed == "projection" and unet.get("projection_class_embeddings_input_dim") == 4 and channels == 4:
        return "lotus-d"
    if embed == "projection" and channels == 8:
        raise CheckpointError(f"{found}: a generative Lotus-G model, which is not one-step; use a Lotus-D "
                              "checkpoint such as jingheya/lotus-depth-d-v1-0.")
    marigold = str(pipeline).startswith("Marigold")
    if embed is not None or channels not in ((8,) if marigold else (4, 8)):
        raise CheckpointError(f"{found}, which matches no one-step family: E2E-FT has 4 or 8 input channels, "
                              "Marigold 8, Lotus-D 4 with a 4-input projection class embedding.")
    family = "marigold" if marigold else "e2e-ft"
    _check_scheduler(root / "scheduler" / "scheduler_config.json", family)
    return family


def _check_scheduler(path: Path, family: str) -> None:
    """The scheduler whose one DDIM step the family's maths is: DDIM/DDPM, a known prediction type."""
    config = read_json(path)
    name, kind = config.get("_class_name"), config.get("prediction_type", "epsilon")
    if name not in SCHEDULERS:
        raise CheckpointError(f"{path} is a {name}, not the DDIM scheduler whose one step {family} runs.")
    if kind not in PREDICTION_TYPES:
        raise CheckpointError(f"{path} has prediction_type {kind!r}; known: {', '.join(PREDICTION_TYPES)}.")


def _pipeline_task(root: Path, name: str) -> str | None:
    """Marigold's pipeline class or prediction_type says the task; other releases say it in their name."""
    index = read_json(root / "model_index.json")
    by_class = {"MarigoldDepthPipeline": "depth", "MarigoldNormalsPipeline": "normal"}
    by_kind = {"depth": "depth", "normals": "normal"}
    return by_class.get(index.get("_class_name")) or by_kind.get(index.get("prediction_type")) or (
        _task_from_repo_name(name))


def _task_from_repo_name(name: str) -> str | None:
    """"lotus-normal-d-v1-1" -> normal, "...-disparity" -> disparity, "...-depth" -> depth, else None."""
    lowered = name.lower()
    return next((task for word, task in (("normal", "normal"), ("disparity", "disparity"), ("depth", "depth"))
                 if word in lowered), None)


def _pipeline_spec(folder: Path, task: str | None) -> CheckpointSpec:
    """A local copy of a hub pipeline repo: family from its configs, task from its configs or name (or a
    genpercept.json beside model_index.json), processing resolution from model_index.json when it says."""
    family = pipeline_family(folder)
    declared = _read_spec_file(folder)
    task = _check_task(task, declared.get("task") or _pipeline_task(folder, folder.name), str(folder))
    extra = {k: declared[k] for k in ("family_params", "output_kind", "processing_res", "embedding") if k in declared}
    default_res = read_json(folder / "model_index.json").get("default_processing_resolution")
    if isinstance(default_res, int) and "processing_res" not in extra:
        extra["processing_res"] = default_res
    return CheckpointSpec(name=str(folder), task=task, output=TASKS[task].output, unet_dir=folder / "unet",
                          vae_dir=folder / "vae", family=family, **extra)


_SPEC_FILE_KEYS = {"task": str, "family": str, "family_params": dict, "output_kind": str, "embedding": str,
                   "processing_res": int, "dpt_head": bool, "labels": str,
                   "release": str}  # release: the registry entry a converted folder was converted from


def _read_spec_file(unet_dir: Path) -> dict:
    """`genpercept.json` beside the weights ({} when absent): what the checkpoint is, stated by the tool
    that wrote it, so no folder-name guess is needed. Keys: see _SPEC_FILE_KEYS."""
    path = unet_dir / SPEC_FILE
    if not path.is_file():
        return {}
    try:
        declared = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(declared, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    for key, value in declared.items():
        wanted = _SPEC_FILE_KEYS.get(key)
        if wanted is None:
            raise CheckpointError(f"{path} has an unknown key {key!r}; known: {', '.join(_SPEC_FILE_KEYS)}.")
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: {key!r} must be a {wanted.__name__}, not {value!r}.")
    if declared.get("output_kind", OUTPUT_KINDS[0]) not in OUTPUT_KINDS:
        raise CheckpointError(f"{path}: output_kind must be one of {', '.join(OUTPUT_KINDS)}.")
    return declared


def _refuse_part_folder(folder: Path) -> None:
    """A VAE or DPT-head folder passed where the checkpoint belongs gets its own sentence."""
    config = folder / "config.json"
    is_vae = False
    if config.is_file():
        try:
            fields = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            fields = {}
        is_vae = isinstance(fields, dict) and (
            fields.get("_class_name") == "AutoencoderKL"
            or ("latent_channels" in fields and "cross_attention_dim" not in fields)
        )
    if is_vae:
        raise CheckpointError(
            f"{folder} is a VAE folder; pass the unet_* folder beside it, or the folder that holds both."
        )
    if folder.name.startswith("dpt_head") and not config.exists():
        raise CheckpointError(
            f"{folder} is a DPT head folder; pass the unet_disparity_dpt_head_* folder beside it."
        )


def _check_task(requested: str | None, found: str | None, where: str) -> str:
    if requested is not None and requested not in TASKS:
        raise CheckpointError(f"unknown task {requested!r}; choose one of {', '.join(TASKS)}.")
    if requested and found and requested != found:
        raise CheckpointError(f"{where} is a {found} model, not {requested}; pick a {requested} checkpoint.")
    task = requested or found
    if task is None:
        raise CheckpointError(f"cannot tell the task of {where} from its name; pass --task.")
    if task not in TASKS:
        raise CheckpointError(f"{where} says its task is {task!r}, which is none of {', '.join(TASKS)}.")
    return task


def _hub_spec(ref: str, task: str | None, registry: dict[str, CheckpointSpec]) -> CheckpointSpec:
    """`owner/repo/subfolder` or `owner/repo:subfolder` (or `owner/repo` of a registry entry)."""
    repo, subfolder = _split_hub_ref(ref)
    known = [s for s in registry.values()
             if s.repo == repo and not s.is_release and (not subfolder or s.subfolder == subfolder)]
    if task:
        known = [s for s in known if s.task == task] or known
    if subfolder == "" and not known:  # a pipeline repo (E2E-FT, Lotus, Marigold): family read after download
        task = _check_task(task, _task_from_repo_name(repo), ref)
        return CheckpointSpec(name=ref, task=task, output=TASKS[task].output, repo=repo, subfolder="unet",
                              family=DETECT)
    if subfolder == "" and len(known) != 1:
        raise CheckpointError(
            f"{ref} needs a U-Net folder: pass it as {repo}/unet_<task>_v2 (e.g. {repo}/unet_depth_v2)."
        )
    if known:
        spec = known[0]
        _check_task(task, spec.task, ref)
        return replace(spec, name=ref)
    named_task, version, dpt = _task_from_folder_name(subfolder.rsplit("/", 1)[-1])
    task = _check_task(task, named_task, ref)
    return CheckpointSpec(
        name=ref, task=task, output=TASKS[task].output, embedding=version or "v2", repo=repo,
        subfolder=subfolder, dpt_head="dpt_head_identity" if dpt else None,
    )


def _split_hub_ref(ref: str) -> tuple[str, str]:
    """"owner/repo/sub/folder" or "owner/repo:sub/folder" -> ("owner/repo", "sub/folder")."""
    head, sep, tail = ref.partition(":")
    parts = head.split("/")
    return "/".join(parts[:2]), (tail if sep else "/".join(parts[2:]))


def resolve_checkpoint(ref: str, task: str | None = None) -> CheckpointSpec:
    """A registry name, a local folder, or a hub reference -> CheckpointSpec (no download).

    A local path wins over a hub id of the same spelling; anything spelled as a path that does not
    exist is refused as a missing folder (never sent to the hub); a wrong `task` is refused.
    """
    if not ref.strip():  # Path("") is the current folder
        raise CheckpointError("--checkpoint is empty (an unset shell variable?); give a registry name, a hub id or "
                              "a folder.")
    registry = load_registry()
    if ref in registry:
        spec = registry[ref]
        _check_task(task, spec.task, f"checkpoint {ref!r}")
        return spec
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() in RELEASE_SUFFIXES:  # a single-file release
            from .releases import spec_for_file

            return spec_for_file(path.resolve(), registry, task)
        if not path.is_dir():
            raise CheckpointError(f"{ref} is a file; --checkpoint takes a folder, a registry name or a hub id.")
        return _local_spec(path.resolve(), task)
    if _looks_like_path(ref):
        raise CheckpointError(f"folder {ref} does not exist{_first_missing(path)}.")
    if _is_hub_ref(ref):
        return _hub_spec(ref, task, registry)
    names = ", ".join(registry)
    raise CheckpointError(f"no checkpoint {ref!r}: not a registry name ({names}), a folder or a hub id.")


def _is_hub_ref(ref: str) -> bool:
    """`owner/repo`, `owner/repo/sub/folder` or `owner/repo:sub/folder` with names the hub accepts."""
    repo, subfolder = _split_hub_ref(ref)
    owner_name = repo.split("/")
    name_ok = all(
        _HUB_NAME.fullmatch(part) and "--" not in part and ".." not in part for part in owner_name
    )
    folders_ok = all(_HUB_NAME.fullmatch(part) for part in subfolder.split("/")) if subfolder else True
    return len(owner_name) == 2 and bool(name_ok) and folders_ok and len(repo) <= 96


def _looks_like_path(ref: str) -> bool:
    """Spelled as a local path: ./ ../ ~ / or a backslash, a first component that is an existing folder
    here, or a separator in something that is not a valid hub id."""
    if ref.startswith((".", "~", "/")) or "\\" in ref:
        return True
    if "/" not in ref:
        return False
    return Path(ref.split("/", 1)[0]).expanduser().is_dir() or not _is_hub_ref(ref)


def _first_missing(path: Path) -> str:
    """' (X is missing)' for the first missing folder above `path`, when that is not `path` itself."""
    missing = path
    for parent in path.parents:
        if parent.exists():
            break
        missing = parent
    return f" ({missing} is missing)" if missing != path else ""


def released_as(spec: CheckpointSpec) -> str | None:
    """The registry name of the released model `spec` loads, or None: identity by where the weights come
    from (hub repo, subfolder, heads and VAE; a single-file release by its file name), not by task or
    family, so a hub id of a registry entry is that entry and a local folder is no released model, unless
    its genpercept.json names the release it was converted from (`genpercept convert --release NAME`)."""
    registry = load_registry()
    if spec.is_local:
        declared = _read_spec_file(spec.unet_dir).get("release")
        entry = registry.get(declared) if isinstance(declared, str) else None
        return declared if entry is not None and (entry.family, entry.task) == (spec.family, spec.task) else None
    given_file = Path(spec.file).name if spec.file else None
    for name, entry in registry.items():
        file = spec.file if entry.file is not None and entry.file == given_file else entry.file
        if replace(entry, name=spec.name, file=file) == spec:
            return name
    return None


def default_checkpoint(task: str) -> str:
    """Registry name of the default checkpoint for a task (the v2 model)."""
    for name, spec in load_registry().items():
        if spec.task == task and spec.family == "genpercept" and spec.embedding == "v2" and not spec.has_dpt_head:
            return name
    raise CheckpointError(f"no default checkpoint for task {task!r}.")


def required_files(spec: CheckpointSpec) -> list[tuple[str, str]]:
    """(repo id, path in repo) of every file a hub checkpoint needs."""
    vae_repo, vae_dir = spec.vae_location()
    files = [(spec.repo, f) for f in PIPELINE_FILES] if spec.is_pipeline else []
    files += [(spec.repo, f"{spec.subfolder}/{f}") for f in MODEL_FILES]
    files += [(vae_repo, f"{vae_dir}/{f}") for f in MODEL_FILES]
    if spec.dpt_head:
        files += [(spec.repo, f"{spec.dpt_head}/{f}") for f in DPT_FILES]
    return files


def _offline_message(spec: CheckpointSpec, missing: list[tuple[str, str]], reason: str) -> str:
    listed = ", ".join(f"{repo}/{path}" for repo, path in missing)
    if spec.is_pipeline:  # the repo's own paths under one folder, which is what --checkpoint takes
        layout, target = "FOLDER/ keeping their paths in the repository", "FOLDER"
    else:
        folders = [f"FOLDER/{spec.subfolder}/", f"FOLDER/{spec.vae_location()[1]}/"]
        if spec.dpt_head:
            folders.append(f"FOLDER/{spec.dpt_head}/")
        layout = ", ".join(folders[:-1]) + f" and {folders[-1]} (the hub layout)"
        target = f"FOLDER/{spec.subfolder}"
    retry = "unset HF_HUB_OFFLINE to download them" if _offline_mode() else "connect to huggingface.co and retry"
    return (
        f"cannot fetch checkpoint {spec.name!r} ({reason}): download {listed} "
        f"into {layout} and pass --checkpoint {target}, or {retry}."
    )


def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_status(spec: CheckpointSpec, cache_dir: str | Path | None = None) -> str:
    """'local', 'cached', 'partial' or 'not cached' — what is already on this machine."""
    if spec.is_local:
        return "local"
    if spec.is_release:
        from .releases import release_status

        return release_status(spec)
    from huggingface_hub import try_to_load_from_cache

    hits = [
        isinstance(try_to_load_from_cache(repo, path, cache_dir=cache_dir, revision=spec.revision), str)
        for repo, path in required_files(spec)
    ]
    return "cached" if all(hits) else ("partial" if any(hits) else "not cached")


def _verify_sha256(spec: CheckpointSpec, repo_path: str, local: Path) -> None:
    expected = spec.sha256.get(repo_path)
    if not expected:
        return
    blob = Path(os.path.realpath(local))
    if blob.name == expected:  # hub LFS blobs are named by their sha256: no need to re-hash 3 GB
        return
    import hashlib

    digest = hashlib.sha256()
    with open(blob, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{repo_path} of {spec.name!r} does not match its sha256; delete it and retry.")


def fetch_checkpoint(
    spec: CheckpointSpec, cache_dir: str | Path | None = None, local_files_only: bool | None = None
) -> CheckpointFiles:
    """Local folders for a checkpoint, downloading only the needed files into the hub cache.

    `local_files_only` defaults to the HF_HUB_OFFLINE environment setting. Raises CheckpointError
    with one sentence naming the files and where to put them when they cannot be had.
    """
    if spec.is_release:  # converted folder and/or the raw file to convert on load (releases.py)
        from .releases import release_paths

        folder, raw = release_paths(spec)
        return CheckpointFiles(spec, unet_dir=folder, vae_dir=None, weights_file=raw)
    if spec.is_local:
        for folder in (spec.unet_dir, spec.vae_dir) if spec.family == "genpercept" or spec.is_pipeline else ():
            missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
            if missing:
                raise CheckpointError(f"{folder} lacks {', '.join(missing)}; copy them from the released checkpoint.")
        return CheckpointFiles(spec, spec.unet_dir, spec.vae_dir, spec.dpt_dir)

    if local_files_only is None:
        local_files_only = _offline_mode()
    files = required_files(spec)
    # Cache first: released weights do not change, and a cached checkpoint must work offline.
    paths = _download(spec, files, cache_dir, local_only=True)
    if paths is None:
        if local_files_only:
            missing = _missing(spec, files, cache_dir)
            raise OfflineError(_offline_message(spec, missing, "offline mode: HF_HUB_OFFLINE is set"))
        if not _hub_reachable():
            raise OfflineError(_offline_message(spec, _missing(spec, files, cache_dir), "offline or unreachable"))
        paths = _download(spec, files, cache_dir, local_only=False)
    vae_dir = paths[f"{spec.vae_location()[1]}/{MODEL_FILES[1]}"]
    dpt_dir = paths.get(f"{spec.dpt_head}/{DPT_FILES[0]}") if spec.dpt_head else None
    unet_dir = paths[f"{spec.subfolder}/{MODEL_FILES[1]}"]
    if spec.is_pipeline:
        spec = replace(spec, family=_confirm_family(spec, unet_dir.parent))
    return CheckpointFiles(spec, unet_dir, vae_dir, dpt_dir)


def _confirm_family(spec: CheckpointSpec, root: Path) -> str:
    """The family the downloaded configs read as; a registry entry that says otherwise is refused."""
    family = pipeline_family(root)
    if spec.family not in (DETECT, family):
        raise CheckpointError(f"checkpoint {spec.name!r} is registered as {spec.family}, but its configs in "
                              f"{root} read as {family}; fix the registry entry.")
    return family


def _download(spec, files, cache_dir, local_only: bool) -> dict[str, Path] | None:
    """{repo path: local folder} for every file; None when `local_only` and something is not cached."""
    from huggingface_hub import hf_hub_download

    paths: dict[str, Path] = {}
    for i, (repo, repo_path) in enumerate(files):
        try:
            local = hf_hub_download(
                repo, repo_path, revision=spec.revision, cache_dir=cache_dir, local_files_only=local_only
            )
        except Exception as exc:  # offline, DNS, 404, gated, invalid id: each ends in one sentence
            if local_only:
                return None
            kind = type(exc).__name__
            if kind in ("RepositoryNotFoundError", "GatedRepoError", "EntryNotFoundError", "RevisionNotFoundError",
                        "RemoteEntryNotFoundError", "HFValidationError"):
                raise CheckpointError(
                    f"the hub has no {repo}/{repo_path} for checkpoint {spec.name!r} ({kind}); check the name, "
                    "or log in with `hf auth login` if the repository is private or gated."
                ) from None
            if _looks_offline(exc):
                raise OfflineError(_offline_message(spec, files[i:], "offline or unreachable")) from None
            raise CheckpointError(_offline_message(spec, files[i:], kind)) from None
        _verify_sha256(spec, repo_path, Path(local))
        paths[repo_path] = Path(local).parent
    return paths


def _missing(spec, files, cache_dir) -> list[tuple[str, str]]:
    from huggingface_hub import try_to_load_from_cache

    return [(repo, path) for repo, path in files
            if not isinstance(try_to_load_from_cache(repo, path, cache_dir=cache_dir, revision=spec.revision), str)]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub endpoint within `timeout`: fails fast instead of five retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _looks_offline(exc: Exception) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    offline = {"LocalEntryNotFoundError", "ConnectError", "ConnectionError", "ConnectTimeout", "OfflineModeIsEnabled"}
    return bool(names & offline) or "offline" in str(exc).lower() or "connect" in str(exc).lower()
