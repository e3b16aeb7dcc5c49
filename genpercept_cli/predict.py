"""`genpercept predict`: a folder, file or glob of images -> prediction files (SPEC §4, §8).

Headers are read first (cheap) to bucket images by processed size; pixels are decoded and resized
in background threads ahead of the model, and outputs are written atomically by another thread, so
the device only waits on itself.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GenPerceptError
from .images import IMAGE_SUFFIXES, ImageReadError, read_rgb, read_size

if TYPE_CHECKING:  # annotations only: torch loads inside the functions that use it, so `--help` stays instant
    import numpy as np
    import torch


@dataclass(frozen=True)
class InputImage:
    path: Path
    rel_stem: Path  # output location relative to the output root, without suffix: a/b/img


@dataclass
class PredictReport:
    written: int = 0
    skipped_existing: int = 0
    stale_removed: int = 0  # temp files of an earlier, killed run, deleted from the output folders
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class SourceScan:
    """What `discover_images` found: the images to predict, and what it passed over, by kind."""

    images: list[InputImage]
    earlier_outputs: int = 0  # this tool's own files (<stem>_pred.png, ...): a second run skips them
    non_images: int = 0  # files without an image suffix (folders only; a glob takes what it matches)
    hidden: int = 0  # names starting with "." (files and folders): not read
    special: int = 0  # fifos, sockets, devices: never opened, so a fifo cannot hang the run
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, one-line reason): failures

    def notes(self) -> list[str]:
        """Summary clauses, e.g. ["3 earlier outputs skipped", "2 hidden, 1 special file not read"]."""
        notes = []
        if self.earlier_outputs:
            notes.append(f"{self.earlier_outputs} earlier outputs skipped")
        if self.non_images:
            notes.append(f"{self.non_images} non-image files ignored")
        not_read = [f"{self.hidden} hidden"] if self.hidden else []
        if self.special:
            not_read.append(f"{self.special} special file{'s' if self.special > 1 else ''}")
        if not_read:
            notes.append(", ".join(not_read) + " not read")
        return notes


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def discover_images(source: str) -> SourceScan:
    """Images of a file, a folder (recursive) or a glob, with their output stems.

    Folders and globs skip this tool's own outputs (so the output folder may be the source folder, or
    lie inside or above it), hidden names (folders: counted), fifos, sockets and devices (counted,
    never opened), and list unreadable files and folders as failures. Symlinked sub-folders are
    followed once, after the real tree: a loop or a second link to a folder adds nothing. Raises
    GenPerceptError when nothing matches.
    """
    root = Path(source).expanduser()
    if root.is_file():  # before the glob test: "photo[1].jpg" may be a file's real name
        return _with_stems([root], root.parent, SourceScan([]))
    scan = SourceScan([])
    if _is_glob(source):
        root = _glob_base(source)
        paths = _walk(root, scan, pattern=Path(source).parts[len(root.parts) :]) if root.is_dir() else []
        nothing = f"no file matches {source!r}"
    elif root.is_dir():
        paths = _walk(root, scan)
        nothing = f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})"
    elif root.exists():
        raise GenPerceptError(f"{source} is not a regular file (a fifo, socket or device); give an image file.")
    else:
        raise GenPerceptError(f"{source} does not exist.")
    if not paths:
        if scan.earlier_outputs:
            nothing += f"; {scan.earlier_outputs} earlier outputs of genpercept were skipped"
        if scan.unreadable:
            nothing += f"; {len(scan.unreadable)} could not be read, e.g. {scan.unreadable[0][1].rstrip('.')}"
        raise GenPerceptError(nothing + ".")
    return _with_stems(paths, root, scan)


def _walk(root: Path, scan: SourceScan, pattern: tuple[str, ...] | None = None) -> list[Path]:
    """Files to read below `root`, sorted; counts what is passed over into `scan`.

    Each folder is listed once (by device and inode): symlinked folders wait until the real tree is
    done, so files keep their real path when both lead to them. `pattern`: glob components below
    `root` ("**" = any depth); a glob matches no hidden name (nor counts one) and keeps files of any
    suffix, as `glob` does.
    """
    from .outputs import OUTPUT_SUFFIXES

    depth = None if pattern is None or "**" in pattern else len(pattern)
    seen: set[tuple[int, int]] = set()
    real: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    linked: list[tuple[Path, tuple[str, ...]]] = []
    files = []
    while real or linked:
        folder, rel = real.pop() if real else linked.pop(0)
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            scan.unreadable.append((folder, f"{folder}: the folder cannot be read ({exc.strerror or exc})."))
            continue
        for entry in entries:
            parts, path = (*rel, entry.name), Path(entry.path)
            if entry.name.startswith("."):
                scan.hidden += pattern is None
            elif _is_folder(entry):
                if depth is None or len(parts) < depth:
                    (linked if entry.is_symlink() else real).append((path, parts))
            elif pattern is not None and not _glob_match(parts, pattern):
                continue
            elif entry.name.endswith(OUTPUT_SUFFIXES):
                scan.earlier_outputs += 1
            elif pattern is None and path.suffix.lower() not in IMAGE_SUFFIXES:
                scan.non_images += 1
            else:
                _take_file(entry, path, scan, files)
    return sorted(files)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _take_file(entry: os.DirEntry, path: Path, scan: SourceScan, files: list[Path]) -> None:
    """Append a readable regular file to `files`; count or list anything else."""
    try:
        mode = entry.stat().st_mode  # follows symlinks
    except FileNotFoundError:
        scan.unreadable.append((path, f"{path}: a broken symbolic link."))
        return
    except OSError as exc:
        scan.unreadable.append((path, f"{path}: the file cannot be read ({exc.strerror or exc})."))
        return
    if not stat.S_ISREG(mode):
        scan.special += 1
    elif not os.access(path, os.R_OK):
        scan.unreadable.append((path, f"{path}: the file cannot be read (permission denied)."))
    else:
        files.append(path)


def _glob_match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path components match glob components, "**" standing for zero or more of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: outputs mirror the tree below it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _with_stems(paths: list[Path], base: Path, scan: SourceScan) -> SourceScan:
    """`scan` with its images: output stems mirror the input tree; `a.jpg` and `a.png` side by side get
    `a` and `a_png`."""
    images, taken = [], set()
    for path in paths:
        try:
            rel = path.relative_to(base)
        except ValueError:
            rel = Path(path.name)
        stem = rel.with_suffix("")
        if stem in taken:
            stem = rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower()}"
        taken.add(stem)
        images.append(InputImage(path, stem))
    scan.images = images
    return scan


def auto_batch_size(device, processing_res: int) -> int:
    """1 on CPU (no gain from batching there); on CUDA, what fits in ~70% of free memory."""
    if getattr(device, "type", str(device)) != "cuda":
        return 1
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    side = processing_res or 768
    per_image = 1.6e9 * (side * side) / (768 * 768)  # measured order of magnitude for fp16 at 768²
    return int(max(1, min(32, 0.7 * free // per_image)))


def run_predict(
    pipe,
    images: list[InputImage],
    output: Path,
    formats: tuple[str, ...],
    processing_res: int,
    batch_size: int,
    skip_existing: bool = False,
    workers: int = 4,
    normal_flip: str = "",
    progress=None,
) -> PredictReport:
    """Predict every image and write its files under `output`; failures are reported, not raised.

    Memory: a full-resolution image lives only while a reader thread decodes and resizes it (at most
    `workers` at once), unless the "rgba" cut-out needs it; at most `batch_size + workers` model inputs
    wait decoded, and at most `2 * _WRITERS` predictions wait to be written. Ctrl-C (or SIGTERM, turned
    into KeyboardInterrupt by the CLI) cancels queued reads and writes; writes already running finish,
    and each is atomic, so no partial file remains.
    """
    from .outputs import output_paths, remove_stale_temp_files, write_prediction
    from .pipeline import processed_size

    report = PredictReport()
    for folder in sorted({(output / item.rel_stem).parent for item in images}):
        report.stale_removed += remove_stale_temp_files(folder)
    todo: list[tuple[InputImage, tuple[int, int]]] = []
    for item in images:
        stem = output / item.rel_stem
        if skip_existing and all(p.exists() for p in output_paths(stem, pipe.task, formats)):
            report.skipped_existing += 1
            continue
        try:
            todo.append((item, processed_size(*read_size(item.path), processing_res)))
        except ImageReadError as exc:
            report.failed.append((item.path, str(exc)))
        except GenPerceptError as exc:  # too thin for the model
            report.failed.append((item.path, f"{item.path}: {exc}"))
    task_id = progress.add_task("predict", total=len(todo)) if progress else None

    buckets: dict[tuple[int, int], list[InputImage]] = {}
    for item, size in todo:
        buckets.setdefault(size, []).append(item)
    batches = [(size, items[i : i + batch_size]) for size, items in buckets.items()
               for i in range(0, len(items), batch_size)]
    keep_image = "rgba" in formats  # the cut-out is the only output that needs the full-res pixels

    def load(item: InputImage, size):
        image = read_rgb(item.path)
        return (image if keep_image else None), image.shape[:2], model_input(image, size)

    def write(item: InputImage, pred, image):
        write_prediction(pred, pipe.task, output / item.rel_stem, formats, image=image, normal_flip=normal_flip)

    readers = ThreadPoolExecutor(workers, thread_name_prefix="genpercept-read")
    writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix="genpercept-write")
    try:
        jobs = [(item, size) for size, items in batches for item in items]
        decoded = _in_order(readers, load, jobs, ahead=batch_size + workers)
        writes: list[tuple[InputImage, Future]] = []
        for _size, items in batches:
            loaded = []
            for item in items:
                try:
                    loaded.append((item, *next(decoded).result()))
                except ImageReadError as exc:
                    report.failed.append((item.path, str(exc)))
                    _advance(progress, task_id)
            if not loaded:
                continue
            for (item, image, shape, _), pred in zip(loaded, _predict_or_split(pipe, loaded, report)):
                if pred is not None:
                    writes.append((item, writers.submit(write, item, pipe.postprocess(pred, shape), image)))
                    writes = _collect(writes, report, keep=2 * _WRITERS)
                _advance(progress, task_id)
        _collect(writes, report, keep=0)
    finally:  # on Ctrl-C/SIGTERM or an unexpected error: drop queued work, let running writes finish
        for pool in (readers, writers):
            pool.shutdown(wait=True, cancel_futures=True)
    return report


_WRITERS = 2  # writer threads (PNG encoding releases the GIL)


def model_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] -> the model's uint8 [1, 3, h, w]: `resize_uint8` one channel at a time.

    The resize works on each channel alone, so the result is the same as resizing all three at once,
    while the float32 working copy is one channel (H*W*4 bytes) instead of three.
    """
    import torch

    from .pipeline import image_to_tensor, resize_uint8

    return torch.cat([resize_uint8(image_to_tensor(image[..., c : c + 1]), size) for c in range(3)], dim=1)


def _in_order(pool: ThreadPoolExecutor, fn, jobs: list[tuple], ahead: int) -> Iterator[Future]:
    """Futures of fn(*job) in job order, with at most `ahead` submitted and not yet handed out."""
    queue: deque[Future] = deque(pool.submit(fn, *job) for job in jobs[:ahead])
    for job in jobs[ahead:]:
        yield queue.popleft()
        queue.append(pool.submit(fn, *job))
    while queue:
        yield queue.popleft()


def _predict_or_split(pipe, loaded, report: PredictReport) -> list:
    """Predictions for one batch; on out-of-memory the batch is halved until single images fail.

    `loaded`: (item, image or None, (H, W), uint8 [1, 3, h, w]) per image. Failed images get None and
    a line in the report."""
    import torch

    try:
        return list(pipe.predict_batch(torch.cat([t for *_, t in loaded])))
    except torch.OutOfMemoryError:
        if len(loaded) > 1:
            half = len(loaded) // 2
            return _predict_or_split(pipe, loaded[:half], report) + _predict_or_split(pipe, loaded[half:], report)
        item, *_, tensor = loaded[0]
        size = f"{tensor.shape[-1]}x{tensor.shape[-2]}"  # width x height, as image sizes are written
        report.failed.append((item.path, f"{item.path}: out of memory at {size}; lower --processing-res."))
    except GenPerceptError as exc:
        report.failed.extend((item.path, f"{item.path}: {exc}") for item, *_ in loaded)
    except RuntimeError as exc:  # e.g. the CPU allocator out of memory: fail these images, keep going
        reason = str(exc).splitlines()[0][:200]
        report.failed.extend((item.path, f"{item.path}: the model failed ({reason}).") for item, *_ in loaded)
    return [None] * len(loaded)


def _advance(progress, task_id) -> None:
    if progress is not None:
        progress.advance(task_id)


def _collect(writes, report: PredictReport, keep: int):
    """Account finished writes, waiting on the oldest until at most `keep` run; return those running."""
    still = []
    for k, (item, fut) in enumerate(writes):
        if fut.done() or len(writes) - k > keep:
            try:
                fut.result()
                report.written += 1
            except (OSError, ValueError, GenPerceptError) as exc:
                report.failed.append((item.path, f"{item.path}: could not write outputs ({exc})."))
        else:
            still.append((item, fut))
    return still
