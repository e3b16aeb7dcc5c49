"""Writers for the per-image prediction files (SPEC §4), each written atomically (SPEC §8).

For an input ``a/b/img.jpg`` the caller passes ``out_stem = <out_dir>/a/b/img``; files are named by the
task's formats (`genpercept_cli.tasks`): ``img_pred.npy``, ``img_pred.png``, ``img_colored.png``,
``img_rgba.png``, ``img_label.png``, ``img_pred.exr``, or the 3D files ``img_points.ply``, ``img_mesh.glb``
and ``img_camera.json`` (`geometry`); each format names its writer. When several models run in one pass the
caller passes ``<out_dir>/a/b/img_<model>`` (`predict.model_labels`): ``img_depth_pred.npy``, ...

Predictions arrive as float32 at the input image's size:

- depth: [H, W] in [0, 1], 0 = near, 1 = far; disparity: [H, W] in [0, 1], 1 = near
- dis: [H, W] foreground probability in [0, 1]; matting: [H, W] alpha in [0, 1]
- normal: [H, W, 3] unit vectors in the GenPercept/Marigold camera frame: x right, y up, z toward the
  camera. ``normal_flip`` negates axes before writing, e.g. "yz" gives the OpenCV frame (x right,
  y down, z forward, i.e. away from the camera); "x" gives DSINE's stored frame (x left).
- seg: [H, W, 3] regressed NYU40 colour map in [0, 1]
- semseg: [H, W] class ids of the checkpoint's label set (``labels``: "ade20k", "cityscapes")

How a task's files encode a prediction may depend on the checkpoint's output kind (``kind``): affine
depth and the [0, 1] tasks clip to [0, 1] before quantising; metric depth ([H, W] metres, NaN = no
prediction) is written in millimetres (`tasks.depth`). ``.npy`` files keep the float32 values as they are
(semseg: uint8 ids). A prediction holding NaN or inf is refused with ValueError before any file is
written, except NaN in metric depth.

FORMATS, ALIASES, DEFAULT_FORMATS and OUTPUT_SUFFIXES are read from the task registry on each access,
so a task registered later is included.
"""

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import files
from .errors import GenPerceptError
from .files import atomic_write, check_writable  # noqa: F401  (re-exported)
from .tasks import TASKS, Task, get_task, output_suffixes  # TASKS re-exported: the task registry
from .tasks.normal import parse_normal_flip

_DERIVED = {
    "FORMATS": lambda: {name: tuple(task.formats) for name, task in TASKS.items()},  # task -> format names
    "ALIASES": lambda: {name: dict(task.aliases) for name, task in TASKS.items() if task.aliases},
    "DEFAULT_FORMATS": lambda: {name: task.default_formats for name, task in TASKS.items()},
    # every file name write_prediction can produce ends with one of these (used to skip earlier outputs)
    "OUTPUT_SUFFIXES": output_suffixes,
}


def __getattr__(name: str):
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_formats(task: Task, formats: Iterable[str]) -> tuple[str, ...]:
    """Validate format names for a task; returns them de-duplicated in the given order."""
    aliases = task.aliases
    for name in formats:
        if name not in task.formats and name not in aliases:
            alias_of = {target: alias for alias, target in aliases.items()}
            valid = [f"{n} (or {alias_of[n]})" if n in alias_of else n for n in task.formats]
            able = [other.name for other in TASKS.values() if name in other.formats or name in other.aliases]
            if able:  # a real format, of other tasks: say so, so it does not read as a typo
                raise GenPerceptError(
                    f"Task {task.name} cannot write {name!r} (only {', '.join(able)} can); valid formats are: "
                    f"{', '.join(valid)}."
                )
            raise GenPerceptError(
                f"Unknown output format {name!r} for task {task.name}; valid formats are: {', '.join(valid)}."
            )
    chosen = tuple(dict.fromkeys(aliases.get(name, name) for name in formats))  # "png,png16" -> png16 once
    if "camera" in task.formats and {"ply", "glb"} & set(chosen) and "camera" not in chosen:
        chosen += ("camera",)  # a 3D file's coordinates mean little without the camera that made them
    first_of_suffix: dict[str, str] = {}
    for name in (n for n in task.formats if n in chosen):  # declaration order: the message reads as documented
        first = first_of_suffix.setdefault(task.formats[name].suffix, name)
        if first != name:  # dis/matting: png and png16 both write <stem>_pred.png
            raise GenPerceptError(
                f"Output formats {first!r} and {name!r} both write <stem>{task.formats[name].suffix} "
                f"for task {task.name}; choose one."
            )
    return chosen


def parse_formats(task: str, spec: str | None) -> tuple[str, ...]:
    """Parse a comma-separated format list such as "npy,png16" (case and spaces ignored).

    "png" is every task's main PNG: an alias of png16 (depth, disparity), rgb (normal) and color (seg),
    and the 8-bit alpha for dis/matting. Aliases are resolved and duplicates dropped, so "png,png16"
    gives ("png16",) for depth. None or an empty string gives the task's default formats. An unknown
    name, or two formats writing the same file (dis/matting "png" with "png16", both <stem>_pred.png),
    raises GenPerceptError naming the valid formats for the task.
    """
    found = get_task(task)
    names = [part.strip().lower() for part in (spec or "").split(",") if part.strip()]
    if not names:
        return found.default_formats
    return _check_formats(found, names)


def output_paths(out_stem: Path, task: str, formats: Iterable[str]) -> list[Path]:
    """The files write_prediction would write for these formats, in format order.

    out_stem: <out_dir>/<relative dir>/<image stem>; the stem may contain dots ("a.b" -> "a.b_pred.npy").
    """
    out_stem = Path(out_stem)
    found = get_task(task)
    return [
        out_stem.parent / (out_stem.name + found.formats[name].suffix)
        for name in _check_formats(found, formats)
    ]


def remove_stale_temp_files(folder: Path) -> int:
    """Delete the temp files atomic_write left in `folder` when its process was killed; returns how many.

    Only our own names are touched (".<stem><output suffix>.tmp-<pid>", e.g. ".img_pred.npy.tmp-4242"),
    and only when that pid is neither this process nor alive on this machine, so a concurrent run's
    files in flight stay. A missing or unlistable folder holds nothing to remove.
    """
    return files.remove_stale_temp_files(folder, output_suffixes())


def _check_prediction(pred: np.ndarray, task: Task, kind: str | None) -> np.ndarray:
    pred = np.asarray(pred)
    channels = task.channels
    ok_shape = pred.ndim == 2 if channels == 1 else (pred.ndim == 3 and pred.shape[-1] == channels)
    if not ok_shape or pred.size == 0:
        wanted = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
        raise ValueError(f"{task.name} prediction must be a non-empty {wanted} array, got shape {pred.shape}")
    if not np.issubdtype(pred.dtype, np.floating):
        raise ValueError(f"{task.name} prediction must be a float array, got {pred.dtype}")
    problem = task.value_problem(pred, kind)
    if problem:
        raise ValueError(f"{task.name} prediction {problem}; nothing was written")
    return pred.astype(np.float32, copy=False)


def _check_image(pred: np.ndarray, image: np.ndarray | None, name: str) -> np.ndarray:
    """The input image a format needs, checked: uint8 [H, W, 3] at the prediction's [H, W]."""
    if image is None:
        raise ValueError(f"the {name!r} format needs the input image")
    image = np.asarray(image)
    size = pred.shape[:2]
    if image.dtype != np.uint8 or image.shape != (*size, 3):
        raise ValueError(
            f"the {name!r} format needs a uint8 [H, W, 3] image of shape {(*size, 3)}, "
            f"got {image.dtype} {image.shape}"
        )
    return image


# PNG encodings are computed this many pixels at a time: their float64 temporaries stay small on huge images.
ENCODE_PIXELS = 1 << 22


def _encode(pred: np.ndarray, task: Task, name: str, image: np.ndarray | None, kind: str | None = None,
            labels: str | None = None, scene=None, whole: np.ndarray | None = None):
    """What one format's writer stores: the float32 prediction for npy/exr, uint8/uint16 for PNGs, a file's
    bytes for the 3D formats.

    Per-pixel encodings (image-wide values such as a colour range are fixed by `Task.encoder` first, from
    `whole`: by default `pred`; a clip passes values spanning all its frames) are computed in stripes of rows
    with the same result; the others (`Format.per_pixel` False) at once."""
    fmt = task.formats[name]
    encode = task.encoder(name, pred if whole is None else whole, kind, labels, scene)
    if encode is None:
        return pred
    if fmt.needs_image:
        image = _check_image(pred, image, name)  # checked whole, before the stripes
    if not fmt.per_pixel:
        return encode(pred, image)
    rows = max(1, ENCODE_PIXELS // max(1, pred.shape[1]))
    out = None
    for top in range(0, len(pred), rows):
        part = encode(pred[top : top + rows], None if image is None else image[top : top + rows])
        if out is None:
            out = np.empty((len(pred), *part.shape[1:]), part.dtype)
        out[top : top + rows] = part
    return out


def write_prediction(
    pred: np.ndarray,
    task: str,
    out_stem: Path,
    formats: Iterable[str],
    image: np.ndarray | None = None,
    normal_flip: str = "",
    kind: str | None = None,
    labels: str | None = None,
    scene=None,
) -> list[Path]:
    """Write one image's prediction in the chosen formats; returns the paths written, in format order.

    pred: float32 at the input size, per task as in the module docstring. image: uint8 [H, W, 3], only
    needed for the dis/matting "rgba" cut-out. normal_flip: axes to negate for task "normal" (e.g. "yz"
    converts x right / y up / z toward camera into OpenCV's x right / y down / z forward).
    kind: the checkpoint's output kind (`checkpoints.OUTPUT_KINDS`; None = the task's), e.g.
    "metric_depth"; labels: its label set (semseg colours). Both come from the pipeline's spec.
    scene: the camera and 3D options of this image (`geometry.SceneOptions`; None = the defaults) for the
    ply/glb/camera formats, which also need `image`.
    Everything is encoded before the first file is written, so a bad prediction writes nothing;
    each file is written atomically. Raises ValueError for a malformed or non-finite prediction, and
    `files.DiskFullError` on a full disk (the files this call wrote removed).
    """
    found = get_task(task)
    formats = _check_formats(found, formats)
    pred = _check_prediction(pred, found, kind)
    flip = parse_normal_flip(normal_flip)
    if flip:
        pred = found.flip(pred, flip)
    paths = output_paths(out_stem, task, formats)
    encoded = [_encode(pred, found, name, image, kind, labels, scene) for name in formats]
    written = []
    try:
        for path, name, value in zip(paths, formats, encoded, strict=True):
            atomic_write(path, found.formats[name].writer(value))
            written.append(path)
    except files.DiskFullError:  # the image counts as not done (--skip-existing redoes it): none of its files stay
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return paths
