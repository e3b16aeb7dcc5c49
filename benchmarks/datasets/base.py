"""Shared pieces of the benchmark readers: the sample record, the dataset base class, archive access.

Readers take the public evaluation archives as published (SPEC §6): a tar or zip is read in place
through a member index built once, an already-extracted folder at the same path works the same way.
Everything a user can get wrong (missing archive, missing member, undecodable file) raises
`DataError` with one sentence naming the expected path and where the public data comes from.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genpercept_cli.errors import DataError, GenPerceptError
from genpercept_cli.images import IMAGE_SUFFIXES, ImageReadError, open_image, to_rgb_array  # noqa: F401


@dataclass
class Sample:
    """One evaluation sample.

    key: path of the RGB image relative to the dataset folder; predictions live at
        `<pred_dir>/<key without suffix>_pred.npy`.
    image: uint8 [H, W, 3] RGB, already protocol-cropped.
    gt: depth float32 [H, W] metres (invalid may be 0); normal float32 [H, W, 3] (x right, y up,
        z toward camera, 0 where invalid); dis uint8 [H, W] raw 0..255; matting float64 [H, W] alpha
        in [0, 1]; seg uint8 [H, W] NYU40 ids, 255 = ignore.
    valid: bool [H, W]: valid GT range AND protocol mask (all True for dis / matting).
    extra: per-task extras, e.g. {"trimap": uint8 [H, W]} (matting), {"subset": "DIS-TE1"} (DIS).
    """

    key: str
    image: np.ndarray
    gt: np.ndarray
    valid: np.ndarray
    extra: dict = field(default_factory=dict)


class EvalDataset:
    """A benchmark split: a list of sample entries, each decoded lazily by `__getitem__`.

    Subclasses set the class attributes and fill `self._entries` (one record per sample, in split
    order) and `self._keys` in `__init__`, then implement `_load(entry) -> Sample`.
    """

    name: str = ""
    task: str = ""
    processing_res: int = 768  # long side fed to the model; 0 = native size
    min_depth: float | None = None  # valid GT range (strict) and post-alignment clip range
    max_depth: float | None = None
    pred_clip: tuple[float, float] | None = None  # extra clip of aligned predictions (DIODE)
    align_max_samples: int | None = None  # subsample the alignment fit (ETH3D)
    source: str = ""  # where the public archive comes from, for error messages
    protocol: str = "marigold"  # how predictions are scored (depth: "marigold" or "metric", datasets/depth.py)
    protocols: tuple[str, ...] = ("marigold",)

    def __init__(self, data_dir: str | Path, limit: int | None = None):
        self.data_dir = Path(data_dir)
        self.limit = limit
        self._entries: list = []
        self._keys: list[str] = []

    def _apply_limit(self) -> None:
        """Keep the first `limit` entries (call at the end of a subclass `__init__`)."""
        if self.limit is not None:
            self._entries = self._entries[: self.limit]
            self._keys = self._keys[: self.limit]

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._keys)

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            i += len(self._entries)
        if not 0 <= i < len(self._entries):
            raise IndexError(f"sample index {i} out of range for {len(self._entries)} samples")
        return self._load(self._entries[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _load(self, entry) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, data_dir={str(self.data_dir)!r})"
        )


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GenPerceptError(f"The sample limit must be a positive integer, got {limit!r}.")
    return limit


# ---------------------------------------------------------------------------------------------
# Split lists shipped inside the package


def read_split(relpath: str, split_file: str | Path | None = None) -> list[list[str]]:
    """Whitespace-split lines of a split list (blank lines and '#' comments skipped).

    relpath: path under benchmarks/splits, e.g. "depth/nyu_test.txt"; split_file overrides it.
    """
    if split_file is not None:
        try:
            text = Path(split_file).read_text(encoding="utf-8")
        except OSError:
            raise DataError(f"Split file {split_file} cannot be read.") from None
    else:
        text = resources.files("benchmarks").joinpath("splits", *relpath.split("/")).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split())
    return rows


# ---------------------------------------------------------------------------------------------
# Archives: a tar, a zip or a folder, addressed by member paths relative to the archive root


def _normalise(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _single_top_folder(names: list[str]) -> str | None:
    """The one top-level folder holding every file, if there is exactly one (e.g. 'DIS5K')."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop()
    return None


class Archive:
    """Read-only access to files by relative path. `path` is what error messages name."""

    path: Path

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def list_dir(self, folder: str) -> list[str]:
        """Names of the files directly inside `folder` (sorted); [] when there is no such folder."""
        raise NotImplementedError

    def missing(self, rel: str) -> DataError:
        return DataError(f"{rel} is missing from {self.path}; the archive looks incomplete.")


class _IndexedArchive(Archive):
    """Common lookup for tar and zip: exact member name first, then under a single top folder."""

    def __init__(self, path: Path):
        self.path = path
        self._index: dict[str, object] | None = None
        self._prefix: str | None = None

    def _members(self) -> dict[str, object]:
        if self._index is None:
            index = self._build_index()
            self._prefix = _single_top_folder(list(index))
            self._index = index
        return self._index

    def _lookup(self, rel: str):
        index = self._members()
        rel = _normalise(rel)
        member = index.get(rel)
        if member is None and self._prefix is not None:
            member = index.get(f"{self._prefix}/{rel}")
        return member

    def exists(self, rel: str) -> bool:
        return self._lookup(rel) is not None

    def list_dir(self, folder: str) -> list[str]:
        index = self._members()
        folder = _normalise(folder).rstrip("/")
        candidates = [folder] + ([f"{self._prefix}/{folder}"] if self._prefix else [])
        for base in candidates:
            names = sorted(
                n[len(base) + 1 :]
                for n in index
                if n.startswith(base + "/") and "/" not in n[len(base) + 1 :]
            )
            if names:
                return names
        return []

    def read(self, rel: str) -> bytes:
        member = self._lookup(rel)
        if member is None:
            raise self.missing(rel)
        return self._read_member(member)

    def _build_index(self) -> dict[str, object]:
        raise NotImplementedError

    def _read_member(self, member) -> bytes:
        raise NotImplementedError


class TarArchive(_IndexedArchive):
    """A tar read in place; the handle is reopened in a forked worker process."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._tar: tarfile.TarFile | None = None
        self._pid: int | None = None

    def _handle(self) -> tarfile.TarFile:
        if self._tar is None or self._pid != os.getpid():
            try:
                self._tar = tarfile.open(self.path, "r:*")
            except (tarfile.TarError, OSError) as exc:
                raise DataError(f"{self.path} cannot be read as a tar archive ({exc}).") from None
            self._pid = os.getpid()
        return self._tar

    def _build_index(self) -> dict[str, object]:
        try:
            members = self._handle().getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{self.path} is truncated or not a tar archive ({exc}).") from None
        return {_normalise(m.name): m for m in members if m.isfile()}

    def _read_member(self, member) -> bytes:
        try:
            handle = self._handle().extractfile(member)
            return handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{member.name} in {self.path} cannot be read ({exc}).") from None


class ZipArchive(_IndexedArchive):
    def __init__(self, path: Path):
        super().__init__(path)
        self._zip: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def _handle(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.path} cannot be read as a zip archive ({exc}).") from None
            self._pid = os.getpid()
        return self._zip

    def _build_index(self) -> dict[str, object]:
        return {_normalise(info.filename): info for info in self._handle().infolist() if not info.is_dir()}

    def _read_member(self, member) -> bytes:
        try:
            return self._handle().read(member)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{member.filename} in {self.path} cannot be read ({exc}).") from None


class DirArchive(Archive):
    """An extracted folder; tolerates one extra wrapping folder (e.g. AIM-500/AIM-500) like the archives."""

    def __init__(self, path: Path):
        self.path = path
        self._prefix: str | None | bool = False  # False = not computed yet

    def _wrapper(self) -> str | None:
        if self._prefix is False:
            entries = [e for e in os.listdir(self.path) if not e.startswith(".")]
            single = len(entries) == 1 and (self.path / entries[0]).is_dir()
            self._prefix = entries[0] if single else None
        return self._prefix

    def _resolve(self, rel: str) -> Path | None:
        rel = _normalise(rel)
        direct = self.path / rel
        if direct.exists():
            return direct
        wrapper = self._wrapper()
        if wrapper is not None and (self.path / wrapper / rel).exists():
            return self.path / wrapper / rel
        return None

    def file_path(self, rel: str) -> Path:
        path = self._resolve(rel)
        if path is None or not path.is_file():
            raise self.missing(rel)
        return path

    def missing(self, rel: str) -> DataError:
        return DataError(f"{self.path / _normalise(rel)} is missing.")

    def exists(self, rel: str) -> bool:
        path = self._resolve(rel)
        return path is not None and path.is_file()

    def list_dir(self, folder: str) -> list[str]:
        path = self._resolve(folder)
        if path is None or not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if p.is_file())

    def read(self, rel: str) -> bytes:
        path = self.file_path(rel)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path} cannot be read ({exc}).") from None


def open_archive(
    path: Path, what: str, source: str, probe: str | tuple[str, ...] | None = None, expected: Path | None = None
) -> Archive:
    """The archive at `path` (a .tar/.zip file or a folder), or its extracted/zipped twin.

    Tries, in order: `path` itself; for `x.tar` / `x.zip` the folder `x`; for a folder path `x`
    the files `x.zip` and `x.tar`; with `probe` (a member path, or several spellings of one), the
    parent folder of `path` when it directly holds `probe` (an archive extracted in place). Raises
    DataError naming `expected` (default `path`): what was looked for and where the public data comes
    from.
    """
    candidates = [path]
    if path.suffix in (".tar", ".zip"):
        candidates.append(path.with_suffix(""))
    else:
        candidates += [path.with_name(path.name + ".zip"), path.with_name(path.name + ".tar")]
    for candidate in candidates:
        if candidate.is_dir():
            return DirArchive(candidate)
        if candidate.is_file():
            if candidate.suffix == ".zip" or zipfile.is_zipfile(candidate):
                return ZipArchive(candidate)
            return TarArchive(candidate)
    probes = (probe,) if isinstance(probe, str) else probe or ()
    if any((path.parent / p).is_file() for p in probes):
        return DirArchive(path.parent)
    raise DataError(f"{what} was not found: expected {expected or path}; get it from {source}.")


# ---------------------------------------------------------------------------------------------
# Decoders


def _open_image(data: bytes, name: str) -> Image.Image:
    try:
        return open_image(io.BytesIO(data), name)
    except ImageReadError as exc:
        raise DataError(str(exc)) from None


def decode_rgb(data: bytes, name: str, match_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Image bytes -> uint8 [H, W, 3] RGB with EXIF orientation applied.

    match_hw: the GT's (H, W). When EXIF rotation would break the pixel alignment with a GT that
    matches the stored orientation, the stored orientation wins (benchmark GT is drawn on the pixels
    as stored).
    """
    img = _open_image(data, name)
    rotated = ImageOps.exif_transpose(img) or img
    if match_hw is not None and rotated.size != img.size and (img.height, img.width) == tuple(match_hw):
        rotated = img
    return to_rgb_array(rotated)


_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_gray(data: bytes, name: str) -> np.ndarray:
    """Single-channel image bytes -> integer array [H, W] (uint8 or uint16, values as stored).

    Multi-channel images give their first channel (trimaps / masks saved as RGB).
    """
    return _gray_array(_open_image(data, name), name)


def _gray_array(img: Image.Image, name: str) -> np.ndarray:
    if img.mode in _MODES_16BIT[:-1]:
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":
        arr = np.asarray(img)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise DataError(f"{name} holds values outside 0..65535.")
        return arr.astype(np.uint16)
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("RGB", "RGBA", "LA"):
        return np.asarray(img, dtype=np.uint8)[..., 0].copy()
    return np.asarray(img.convert("L"), dtype=np.uint8).copy()


def decode_png16(data: bytes, name: str) -> np.ndarray:
    """A 16-bit single-channel PNG -> uint16 [H, W] (refuses 8-bit or colour files)."""
    img = _open_image(data, name)
    if img.mode not in _MODES_16BIT:
        raise DataError(f"{name} is not a 16-bit single-channel PNG (PIL mode {img.mode}).")
    return _gray_array(img, name)


def decode_npy(data: bytes, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{name} is not a readable .npy file ({exc}).") from None
