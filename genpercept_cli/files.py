"""Task-free file handling: atomic writes (SPEC §8), writability probes, the npy and PNG writers,
quantisation to 8/16 bits, and reading arrays back.

Nothing here knows a task, so the tasks (`genpercept_cli.tasks`) and the writers of per-task files
(`genpercept_cli.outputs`) both build on it without an import cycle.
"""

import errno
import os
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import GenPerceptError


class DiskFullError(GenPerceptError):
    """No space left on the device a file was being written to; the run stops there."""


# How a full disk reads when the writer kept only the text: OSError's strerror, safetensors' Rust io::Error.
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")
# Below this many free bytes a write error that lost its errno (torch.save's "[enforce fail at
# inline_container.cc…]", numpy's "N requested and M written") is taken for a full disk.
LOW_SPACE_BYTES = 1 << 20


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """Whether `exc` (or an exception it was raised from) means the disk is full: an OSError with ENOSPC or
    EDQUOT, or its text ("No space left on device", safetensors' "os error 28"); or, with `path` (the file
    or folder being written), a RuntimeError or an OSError without errno while the filesystem holding
    `path` has less than LOW_SPACE_BYTES free. The one test for a full disk: every writer's error goes through it."""
    seen, chain = set(), exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(chain).lower() for text in _DISK_FULL_TEXT):
            return True
        chain = chain.__cause__ or chain.__context__
    lost_errno = isinstance(exc, RuntimeError) or (isinstance(exc, OSError) and exc.errno is None)
    return path is not None and lost_errno and free_bytes(path) < LOW_SPACE_BYTES


def free_bytes(path: Path) -> float:
    """Bytes an unprivileged user may still write on the filesystem holding `path` (or its nearest existing
    parent); infinity when that cannot be read."""
    path = Path(path).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        stat = os.statvfs(existing)
    except (OSError, TypeError, AttributeError):  # no such folder / no statvfs (Windows)
        return float("inf")
    return stat.f_bavail * stat.f_frsize


def disk_full_error(path: Path) -> DiskFullError:
    """The sentence for a full disk while writing `path` (raise it once the partial files are removed;
    test is_disk_full before removing them: the free-space test needs them still there)."""
    return DiskFullError(f"no space left on device while writing {path}; free some space and run again.")


@cache
def normal_file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under umask 022)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is moved into place: ".<name>.tmp-<pid>" beside it (hidden, so
    output globs never match it; `remove_stale_temp_files` removes one a killed process left)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def atomic_write(path: Path, write_fn: Callable[[Path], None]) -> None:
    """Call write_fn(temp_path), then move the temp file onto path; creates parent folders.

    The temp file sits in the same folder as ".<name>.tmp-<pid>", so output globs never match it and
    os.replace is atomic: path holds either its previous content or the complete new file, with the
    umask's normal mode (some writers, e.g. safetensors, create 0600 files). On any exception (Ctrl-C
    included) the temp file is removed and the exception re-raised, as DiskFullError when the disk is
    full (is_disk_full); one left by a killed process is removed by the next run
    (remove_stale_temp_files). No fsync.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_fn(tmp)
        os.chmod(tmp, normal_file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_disk_full(exc, tmp)  # before the unlink frees the space
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path) from None
        raise


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")  # atomic_write's ".<name>.tmp-<pid>"


def remove_stale_temp_files(folder: Path, suffixes: Iterable[str]) -> int:
    """Delete the temp files atomic_write left in `folder` when its process was killed; returns how many.

    Only temp files of names ending with one of `suffixes` are touched (".<name>.tmp-<pid>", e.g.
    ".img_pred.npy.tmp-4242" for "_pred.npy"), and only when that pid is neither this process nor alive
    on this machine, so a concurrent run's files in flight stay. A missing or unlistable folder holds
    nothing to remove.
    """
    suffixes = tuple(suffixes)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not match["name"].endswith(suffixes) or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:  # another run cleaned it first
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # no signal-0 probe: never guess a process dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError) as exc:
        return isinstance(exc, PermissionError)  # another user's live process / not a possible pid
    return True


def check_writable(path: Path, option: str, folder: bool = False) -> Path:
    """Refuse, before any long work starts, a target that cannot be written; returns `path`.

    `path` is a file to be written (`folder=False`: e.g. a results JSON) or a folder to write into.
    Nothing is created: a one-byte probe file is written and removed in the nearest folder that exists on
    the way to the target, so read-only mounts, a file in the way, permissions (even for root on a
    read-only filesystem) and a full disk are all caught. Raises GenPerceptError with one sentence naming
    `option`.
    """
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise GenPerceptError(f"{option} {path} is a file; give a folder.")
    if not folder and path.is_dir():
        raise GenPerceptError(f"{option} {path} is a folder; give a file name.")
    target = path if folder else path.parent
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise GenPerceptError(f"{option} {path} cannot be written: {existing} is a file, not a folder.")
    probe = existing / f".genpercept-write-probe-{os.getpid()}"
    try:
        probe.touch()
        try:
            probe.write_bytes(b"\0")  # a byte, not only a name: a full disk is found here too
        finally:
            probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise GenPerceptError(f"{option} {path} cannot be written ({reason}: {existing}).") from None
    return path


def why_missing(path: Path) -> str:
    """Why a named `path` cannot be opened, to end a sentence: "does not exist", "is a symbolic link loop" or
    "is a broken symbolic link (to TARGET)" (Path.exists() is False for all three)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
    return "does not exist"


def npy_writer(array: np.ndarray) -> Callable[[Path], None]:
    """An atomic_write writer that stores `array` as .npy."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle, so np.save does not append ".npy" to the temp name
            np.save(handle, array)

    return write


def png_writer(array: np.ndarray) -> Callable[[Path], None]:
    """An atomic_write writer for array: uint8 [H, W] / [H, W, 3] / [H, W, 4], or uint16 [H, W] (written as
    16-bit grayscale)."""
    array = np.ascontiguousarray(array)
    expected = {np.dtype(np.uint8): ("L", "RGB", "RGBA"), np.dtype(np.uint16): ("I;16",)}[array.dtype]

    def write(tmp: Path) -> None:
        image = Image.fromarray(array)
        if image.mode not in expected:  # guards against a platform mapping uint16 to another mode
            raise ValueError(f"PIL chose mode {image.mode} for a {array.dtype} array of shape {array.shape}")
        image.save(tmp, format="PNG")

    return write


def exr_writer(array: np.ndarray) -> Callable[[Path], None]:
    """An atomic_write writer for float32 [H, W] (channel "Y") or [H, W, 3] (channels "R", "G", "B"), stored
    as 32-bit float, ZIP-compressed (lossless: the values read back bit for bit, NaN included)."""
    array = np.asarray(array, dtype=np.float32)
    names = ("Y",) if array.ndim == 2 else ("R", "G", "B")
    planes = [array] if array.ndim == 2 else [array[..., i] for i in range(3)]
    channels = {name: np.ascontiguousarray(plane) for name, plane in zip(names, planes, strict=True)}

    def write(tmp: Path) -> None:
        import OpenEXR  # only where EXR files are written

        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        with OpenEXR.File(header, channels) as exr:
            exr.write(str(tmp))

    return write


def bytes_writer(data: bytes) -> Callable[[Path], None]:
    """An atomic_write writer for a file's finished bytes (PLY, GLB, JSON)."""
    return lambda tmp: Path(tmp).write_bytes(data)


def quantize(values: np.ndarray, dtype: type) -> np.ndarray:
    """float in [0, 1] (clipped) -> round(v * max) as uint8 or uint16."""
    top = np.iinfo(dtype).max
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)  # float64: float32 v*65535 can misround
    return np.round(values * top).astype(dtype)


class NotNumericPrediction(ValueError):
    """A `_pred.npy` that holds something other than an array of numbers (objects, a pickle)."""


def read_numeric_npy(path: Path) -> np.ndarray:
    """A .npy of bool, integers or floats; anything else raises NotNumericPrediction, unpickled."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            dtype = read_header(fh)[2]
        except ValueError:  # no .npy header: e.g. a plain pickle
            dtype = None
    if dtype is None or dtype.kind not in "biuf":  # bool, signed and unsigned integers, floats
        held = "no .npy header" if dtype is None else f"dtype {dtype}"
        raise NotNumericPrediction(f"is not a NumPy array of numbers ({Path(path).name} has {held})")
    return np.load(path, allow_pickle=False)


def read_png(path: Path) -> np.ndarray:
    """The pixels of a PNG as PIL decodes them: uint8 for 8-bit, uint16 for 16-bit grayscale."""
    with Image.open(path) as image:
        return np.asarray(image)
