"""Writers for the per-image prediction files (SPEC §4), each written atomically (SPEC §8).

For an input ``a/b/img.jpg`` the caller passes ``out_stem = <out_dir>/a/b/img``; files are named
``img_pred.npy``, ``img_pred.png``, ``img_colored.png``, ``img_rgba.png`` or ``img_label.png``.

Predictions arrive as float32 at the input image's size:

- depth: [H, W] in [0, 1], 0 = near, 1 = far; disparity: [H, W] in [0, 1], 1 = near
- dis: [H, W] foreground probability in [0, 1]; matting: [H, W] alpha in [0, 1]
- normal: [H, W, 3] unit vectors in the GenPercept/Marigold camera frame: x right, y up, z toward the
  camera. ``normal_flip`` negates axes before writing, e.g. "yz" gives the OpenCV frame (x right,
  y down, z forward, i.e. away from the camera); "x" gives DSINE's stored frame (x left).
- seg: [H, W, 3] regressed NYU40 colour map in [0, 1]

Image files clip values to [0, 1] before quantising; ``.npy`` files keep the float32 values as they are.
A prediction holding NaN or inf is refused with ValueError before any file is written.
"""

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoints import TASKS  # re-exported: one list of tasks
from .colormap import colorize_depth
from .errors import GenPerceptError
from .palette import colors_to_labels, labels_to_colors

# Per task: format name -> file-name suffix appended to the image stem. Order = documentation order.
_SUFFIXES: dict[str, dict[str, str]] = {
    "depth": {"npy": "_pred.npy", "png16": "_pred.png", "color": "_colored.png"},
    "disparity": {"npy": "_pred.npy", "png16": "_pred.png", "color": "_colored.png"},
    "normal": {"npy": "_pred.npy", "rgb": "_pred.png"},
    "dis": {"png": "_pred.png", "png16": "_pred.png", "rgba": "_rgba.png", "npy": "_pred.npy"},
    "matting": {"png": "_pred.png", "png16": "_pred.png", "rgba": "_rgba.png", "npy": "_pred.npy"},
    "seg": {"color": "_pred.png", "label": "_label.png", "npy": "_pred.npy"},
}

FORMATS: dict[str, tuple[str, ...]] = {task: tuple(suffixes) for task, suffixes in _SUFFIXES.items()}

# "png" names each task's main PNG (<stem>_pred.png); for dis/matting it is the 8-bit alpha format itself.
ALIASES: dict[str, dict[str, str]] = {
    "depth": {"png": "png16"},
    "disparity": {"png": "png16"},
    "normal": {"png": "rgb"},
    "seg": {"png": "color"},
}

# Every file name write_prediction can produce ends with one of these (used to skip earlier outputs).
OUTPUT_SUFFIXES: tuple[str, ...] = tuple(sorted({s for suffixes in _SUFFIXES.values() for s in suffixes.values()}))

# npy is on by default for dis/matting because `genpercept eval --predictions` reads <stem>_pred.npy.
DEFAULT_FORMATS: dict[str, tuple[str, ...]] = {
    "depth": ("npy", "png16", "color"),
    "disparity": ("npy", "png16", "color"),
    "normal": ("npy", "rgb"),
    "dis": ("png", "npy"),
    "matting": ("png", "npy"),
    "seg": ("color", "label", "npy"),
}

_CHANNELS = {"depth": 1, "disparity": 1, "normal": 3, "dis": 1, "matting": 1, "seg": 3}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise GenPerceptError(f"Unknown task {task!r}; valid tasks are: {', '.join(TASKS)}.")


def _check_formats(task: str, formats: Iterable[str]) -> tuple[str, ...]:
    """Validate format names for a task; returns them de-duplicated in the given order."""
    _check_task(task)
    aliases = ALIASES.get(task, {})
    for name in formats:
        if name not in _SUFFIXES[task] and name not in aliases:
            alias_of = {target: alias for alias, target in aliases.items()}
            valid = [f"{n} (or {alias_of[n]})" if n in alias_of else n for n in FORMATS[task]]
            raise GenPerceptError(
                f"Unknown output format {name!r} for task {task}; valid formats are: {', '.join(valid)}."
            )
    chosen = tuple(dict.fromkeys(aliases.get(name, name) for name in formats))  # "png,png16" -> png16 once
    if "png" in chosen and "png16" in chosen:
        raise GenPerceptError(
            f"Output formats 'png' and 'png16' both write <stem>_pred.png for task {task}; choose one."
        )
    return chosen


def parse_formats(task: str, spec: str | None) -> tuple[str, ...]:
    """Parse a comma-separated format list such as "npy,png16" (case and spaces ignored).

    "png" is every task's main PNG: an alias of png16 (depth, disparity), rgb (normal) and color (seg),
    and the 8-bit alpha for dis/matting. Aliases are resolved and duplicates dropped, so "png,png16"
    gives ("png16",) for depth. None or an empty string gives DEFAULT_FORMATS[task]. An unknown name,
    or dis/matting "png" with "png16" (both <stem>_pred.png), raises GenPerceptError naming the valid
    formats for the task.
    """
    _check_task(task)
    names = [part.strip().lower() for part in (spec or "").split(",") if part.strip()]
    if not names:
        return DEFAULT_FORMATS[task]
    return _check_formats(task, names)


def parse_normal_flip(flip: str) -> str:
    """Validate an axis-flip string: any of "x", "y", "z" at most once each (e.g. "yz"); "" = none.

    Returns the axes in x, y, z order. Raises GenPerceptError otherwise.
    """
    axes = (flip or "").strip().lower()
    if any(axis not in "xyz" for axis in axes) or len(set(axes)) != len(axes):
        raise GenPerceptError(
            f"Invalid normal flip {flip!r}; use a combination of the axes x, y and z such as 'yz'."
        )
    return "".join(axis for axis in "xyz" if axis in axes)


def output_paths(out_stem: Path, task: str, formats: Iterable[str]) -> list[Path]:
    """The files write_prediction would write for these formats, in format order.

    out_stem: <out_dir>/<relative dir>/<image stem>; the stem may contain dots ("a.b" -> "a.b_pred.npy").
    """
    out_stem = Path(out_stem)
    return [
        out_stem.parent / (out_stem.name + _SUFFIXES[task][name])
        for name in _check_formats(task, formats)
    ]


def atomic_write(path: Path, write_fn: Callable[[Path], None]) -> None:
    """Call write_fn(temp_path), then move the temp file onto path; creates parent folders.

    The temp file sits in the same folder as ".<name>.tmp-<pid>", so output globs never match it and
    os.replace is atomic: path holds either its previous content or the complete new file. On any
    exception (Ctrl-C included) the temp file is removed and the exception re-raised; one left by a
    killed process is removed by the next run (remove_stale_temp_files). No fsync.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")  # atomic_write's ".<name>.tmp-<pid>"


def remove_stale_temp_files(folder: Path) -> int:
    """Delete the temp files atomic_write left in `folder` when its process was killed; returns how many.

    Only our own names are touched (".<stem><output suffix>.tmp-<pid>", e.g. ".img_pred.npy.tmp-4242"),
    and only when that pid is neither this process nor alive on this machine, so a concurrent run's
    files in flight stay. A missing or unlistable folder holds nothing to remove.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not match["name"].endswith(OUTPUT_SUFFIXES) or not entry.is_file(follow_symlinks=False):
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
    Nothing is created: a probe file is made and removed in the nearest folder that exists on the way
    to the target, so read-only mounts, a file in the way and permissions (even for root on a
    read-only filesystem) are all caught. Raises GenPerceptError with one sentence naming `option`.
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
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise GenPerceptError(f"{option} {path} cannot be written ({reason}: {existing}).") from None
    return path


def _npy_writer(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle, so np.save does not append ".npy" to the temp name
            np.save(handle, array)

    return write


def _png_writer(array: np.ndarray) -> Callable[[Path], None]:
    """array: uint8 [H, W] / [H, W, 3] / [H, W, 4], or uint16 [H, W] (written as 16-bit grayscale)."""
    array = np.ascontiguousarray(array)
    expected = {np.dtype(np.uint8): ("L", "RGB", "RGBA"), np.dtype(np.uint16): ("I;16",)}[array.dtype]

    def write(tmp: Path) -> None:
        image = Image.fromarray(array)
        if image.mode not in expected:  # guards against a platform mapping uint16 to another mode
            raise ValueError(f"PIL chose mode {image.mode} for a {array.dtype} array of shape {array.shape}")
        image.save(tmp, format="PNG")

    return write


def _quantize(values: np.ndarray, dtype: type) -> np.ndarray:
    """float in [0, 1] (clipped) -> round(v * max) as uint8 or uint16."""
    top = np.iinfo(dtype).max
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)  # float64: float32 v*65535 can misround
    return np.round(values * top).astype(dtype)


def _check_prediction(pred: np.ndarray, task: str) -> np.ndarray:
    pred = np.asarray(pred)
    channels = _CHANNELS[task]
    ok_shape = pred.ndim == 2 if channels == 1 else (pred.ndim == 3 and pred.shape[-1] == channels)
    if not ok_shape or pred.size == 0:
        wanted = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
        raise ValueError(f"{task} prediction must be a non-empty {wanted} array, got shape {pred.shape}")
    if not np.issubdtype(pred.dtype, np.floating):
        raise ValueError(f"{task} prediction must be a float array, got {pred.dtype}")
    if not np.isfinite(pred).all():
        raise ValueError(f"{task} prediction contains NaN or inf; nothing was written")
    return pred.astype(np.float32, copy=False)


def _cutout_image(alpha: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """The input image for the "rgba" cut-out, checked: uint8 [H, W, 3] at alpha's [H, W]."""
    if image is None:
        raise ValueError("the 'rgba' format needs the input image")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (*alpha.shape, 3):
        raise ValueError(
            f"the 'rgba' format needs a uint8 [H, W, 3] image of shape {(*alpha.shape, 3)}, "
            f"got {image.dtype} {image.shape}"
        )
    return image


def _rgba_cutout(alpha: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """uint8 [H, W, 4]: the input RGB with round(alpha * 255) as the A channel."""
    image = _cutout_image(alpha, image)
    return np.concatenate([image, _quantize(alpha, np.uint8)[..., None]], axis=-1)


# PNG encodings are computed this many pixels at a time: their float64 temporaries stay small on huge images.
ENCODE_PIXELS = 1 << 22


def _encode(pred: np.ndarray, task: str, name: str, image: np.ndarray | None) -> np.ndarray:
    """The array stored for one format: float32 for npy, uint8/uint16 for PNGs.

    Every PNG encoding is per pixel, so it is computed in stripes of rows with the same result."""
    if name == "npy":
        return pred
    if name == "rgba":
        image = _cutout_image(pred, image)  # checked whole, before the stripes
    rows = max(1, ENCODE_PIXELS // max(1, pred.shape[1]))
    out = None
    for top in range(0, len(pred), rows):
        part = _encode_pixels(pred[top : top + rows], task, name, None if image is None else image[top : top + rows])
        if out is None:
            out = np.empty((len(pred), *part.shape[1:]), part.dtype)
        out[top : top + rows] = part
    return out


def _encode_pixels(pred: np.ndarray, task: str, name: str, image: np.ndarray | None) -> np.ndarray:
    """`_encode` of some rows (not npy)."""
    if task in ("depth", "disparity"):
        return _quantize(pred, np.uint16) if name == "png16" else colorize_depth(pred, task)
    if task == "normal":  # rgb: [-1, 1] -> round((n + 1) / 2 * 255)
        return _quantize((pred.astype(np.float64) + 1.0) / 2.0, np.uint8)
    if task in ("dis", "matting"):
        if name == "rgba":
            return _rgba_cutout(pred, image)
        return _quantize(pred, np.uint16 if name == "png16" else np.uint8)
    labels = colors_to_labels(pred)  # seg: uint8 [H, W], 0 = unlabeled
    return labels if name == "label" else labels_to_colors(labels)


def write_prediction(
    pred: np.ndarray,
    task: str,
    out_stem: Path,
    formats: Iterable[str],
    image: np.ndarray | None = None,
    normal_flip: str = "",
) -> list[Path]:
    """Write one image's prediction in the chosen formats; returns the paths written, in format order.

    pred: float32 at the input size, per task as in the module docstring. image: uint8 [H, W, 3], only
    needed for the dis/matting "rgba" cut-out. normal_flip: axes to negate for task "normal" (e.g. "yz"
    converts x right / y up / z toward camera into OpenCV's x right / y down / z forward).
    Everything is encoded before the first file is written, so a bad prediction writes nothing;
    each file is written atomically. Raises ValueError for a malformed or non-finite prediction.
    """
    formats = _check_formats(task, formats)
    pred = _check_prediction(pred, task)
    flip = parse_normal_flip(normal_flip)
    if flip and task != "normal":
        raise GenPerceptError(f"A normal flip only applies to the normal task, not to {task}.")
    if flip:
        signs = np.array([-1.0 if axis in flip else 1.0 for axis in "xyz"], dtype=np.float32)
        pred = pred * signs
    paths = output_paths(out_stem, task, formats)
    encoded = [_encode(pred, task, name, image) for name in formats]
    for path, array in zip(paths, encoded, strict=True):
        atomic_write(path, _npy_writer(array) if path.suffix == ".npy" else _png_writer(array))
    return paths
