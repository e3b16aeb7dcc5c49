"""`genpercept predict`: a folder, file or glob of images -> prediction files (SPEC §4, §8).

Headers are read first (cheap) to bucket images by processed size; pixels are decoded and resized
in background threads ahead of the model, and outputs are written atomically by another thread, so
the device only waits on itself.
"""

from __future__ import annotations

import glob
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GenPerceptError
from .images import IMAGE_SUFFIXES, ImageReadError, read_rgb, read_size


@dataclass(frozen=True)
class InputImage:
    path: Path
    rel_stem: Path  # output location relative to the output root, without suffix: a/b/img


@dataclass
class PredictReport:
    written: int = 0
    skipped_existing: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def discover_images(source: str, exclude: Path | None = None) -> tuple[list[InputImage], int]:
    """Images of a file, a folder (recursive) or a glob, with their output stems; plus the count of
    non-image files passed over in folders. Files under `exclude` (the output folder, when it lies
    inside the source) are left out. Raises GenPerceptError when nothing matches."""
    if _is_glob(source):
        base = _glob_base(source)
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True)
                       if Path(p).is_file() and not _is_under(Path(p), exclude))
        if not paths:
            raise GenPerceptError(f"no file matches {source!r}.")
        ignored = 0
    else:
        root = Path(source).expanduser()
        if root.is_file():
            return [InputImage(root, Path(root.stem))], 0
        if not root.is_dir():
            raise GenPerceptError(f"{source} does not exist.")
        base = root
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and not _is_under(p, exclude))
        paths = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored = len(files) - len(paths)
        if not paths:
            raise GenPerceptError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return _with_stems(paths, base), ignored


def _is_under(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: outputs mirror the tree below it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _with_stems(paths: list[Path], base: Path) -> list[InputImage]:
    """Output stems mirroring the input tree; `a.jpg` and `a.png` side by side get `a` and `a_png`."""
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
    return images


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
    """Predict every image and write its files under `output`; failures are reported, not raised."""
    from .outputs import output_paths, write_prediction
    from .pipeline import image_to_tensor, processed_size, resize_uint8

    report = PredictReport()
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

    def load(item: InputImage, size):
        image = read_rgb(item.path)
        return image, resize_uint8(image_to_tensor(image), size)

    def write(item: InputImage, pred, image):
        write_prediction(pred, pipe.task, output / item.rel_stem, formats, image=image, normal_flip=normal_flip)


    with ThreadPoolExecutor(workers) as readers, ThreadPoolExecutor(2) as writers:
        # Keep two batches of decodes in flight ahead of the model.
        pending = [[readers.submit(load, it, size) for it in items] for size, items in batches[:2]]
        writes: list[tuple[InputImage, Future]] = []
        for b, (_size, items) in enumerate(batches):
            futures = pending.pop(0)
            if b + 2 < len(batches):
                nsize, nitems = batches[b + 2]
                pending.append([readers.submit(load, it, nsize) for it in nitems])
            loaded = []
            for item, fut in zip(items, futures):
                try:
                    loaded.append((item, *fut.result()))
                except ImageReadError as exc:
                    report.failed.append((item.path, str(exc)))
                    _advance(progress, task_id)
            if not loaded:
                continue
            for (item, image, _), pred in zip(loaded, _predict_or_split(pipe, loaded, report)):
                if pred is None:
                    _advance(progress, task_id)
                    continue
                arr = pipe.postprocess(pred, image.shape[:2])
                writes.append((item, writers.submit(write, item, arr, image)))
                _advance(progress, task_id)
            writes = _collect(writes, report, wait=False)
        _collect(writes, report, wait=True)
    return report


def _predict_or_split(pipe, loaded, report: PredictReport) -> list:
    """Predictions for one batch; on out-of-memory the batch is halved until single images fail.

    Failed images get None and a line in the report."""
    import torch

    try:
        return list(pipe.predict_batch(torch.cat([t for _, _, t in loaded])))
    except torch.OutOfMemoryError:
        if len(loaded) > 1:
            half = len(loaded) // 2
            return _predict_or_split(pipe, loaded[:half], report) + _predict_or_split(pipe, loaded[half:], report)
        item, _, tensor = loaded[0]
        size = "x".join(map(str, tensor.shape[-2:]))
        report.failed.append((item.path, f"{item.path}: out of memory at {size}; lower --processing-res."))
    except GenPerceptError as exc:
        report.failed.extend((item.path, f"{item.path}: {exc}") for item, _, _ in loaded)
    except RuntimeError as exc:  # e.g. the CPU allocator out of memory: fail these images, keep going
        reason = str(exc).splitlines()[0][:200]
        report.failed.extend((item.path, f"{item.path}: the model failed ({reason}).") for item, _, _ in loaded)
    return [None] * len(loaded)


def _advance(progress, task_id) -> None:
    if progress is not None:
        progress.advance(task_id)


def _collect(writes, report: PredictReport, wait: bool):
    """Account finished writes; return those still running."""
    still = []
    for item, fut in writes:
        if not wait and not fut.done():
            still.append((item, fut))
            continue
        try:
            fut.result()
            report.written += 1
        except (OSError, ValueError, GenPerceptError) as exc:
            report.failed.append((item.path, f"{item.path}: could not write outputs ({exc})."))
    return still


