"""Single-file releases fetched by hand (Meta Prompts' `.pth` files on Google Drive): where they live on
this machine and how a registry entry or a file path finds them.

    <home>/<file>        the release as downloaded (e.g. metaprompts_nyu.pth)
    <home>/<name>/       its converted folder (model.safetensors + genpercept.json), written on first load

home = $GENPERCEPT_HOME, default ~/.cache/genpercept. No torch or numpy here, and nothing of ours but
`errors`: `checkpoints` imports this module, passes its registry in and wraps the paths in CheckpointFiles.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .errors import CheckpointError, OfflineError

CONVERTED_FILES = ("model.safetensors", "genpercept.json")


def checkpoint_home() -> Path:
    """Where hand-fetched releases and their converted folders live: $GENPERCEPT_HOME or ~/.cache/genpercept."""
    return Path(os.environ.get("GENPERCEPT_HOME") or Path.home() / ".cache" / "genpercept").expanduser()


def converted_folder(spec) -> Path:
    """The converted folder of registry entry `spec` in the checkpoint home."""
    return checkpoint_home() / spec.name


def is_converted(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CONVERTED_FILES)


def release_paths(spec) -> tuple[Path | None, Path | None]:
    """(converted folder, raw file to convert) of a single-file release (`spec.file`): the converted folder
    alone when it is complete; else the raw file, converted on load into that folder; OfflineError (exit 3)
    naming what to download when neither is here. A spec from `spec_for_file` (an absolute `file`) reads
    that file, with no folder: it is converted on each load (`genpercept convert` keeps the result)."""
    given = Path(spec.file)
    if given.is_absolute():
        if not given.is_file():
            raise CheckpointError(f"{given} does not exist.")
        return None, given
    folder = converted_folder(spec)
    if is_converted(folder):
        return folder, None
    raw = checkpoint_home() / spec.file
    if raw.is_file():
        return folder, raw
    raise OfflineError(
        f"checkpoint {spec.name!r} is not on this machine: download {spec.file} from {spec.url} into "
        f"{checkpoint_home()} (or pass --checkpoint path/to/{spec.file})."
    )


def release_status(spec) -> str:
    """'converted', 'downloaded' or 'not downloaded': what of a single-file release is here."""
    if is_converted(converted_folder(spec)):
        return "converted"
    return "downloaded" if (checkpoint_home() / spec.file).is_file() else "not downloaded"


def spec_for_file(path: Path, registry: dict, task: str | None = None):
    """The entry of `registry` (name -> CheckpointSpec) whose release file is named like `path`, for
    `--checkpoint path/to/FILE`; the returned spec reads that file."""
    path = Path(path)
    matches = [spec for spec in registry.values() if spec.file and spec.file == path.name]
    if not matches:
        names = ", ".join(name for name, spec in registry.items() if spec.file)
        raise CheckpointError(
            f"{path.name} is not the file name of a known release; name it: genpercept convert {path} "
            f"--release NAME --output DIR (NAME one of {names}), then pass --checkpoint DIR."
        )
    spec = matches[0]
    if task is not None and task != spec.task:
        raise CheckpointError(f"{path} is a {spec.task} model, not {task}; pick a {task} checkpoint.")
    return replace(spec, name=str(path), file=str(path.resolve()))
