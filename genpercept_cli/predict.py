"""`genpercept predict`: a folder, file or glob of images -> prediction files (SPEC §4, §8).

Headers are read first (cheap) to bucket images by processed size; pixels are decoded and resized
in background threads ahead of the model, and outputs are written atomically by another thread, so
the device only waits on itself.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .checkpoints import CheckpointSpec
from .errors import GenPerceptError
from .files import why_missing
from .geometry import DEFAULT_MESH_RES, SceneOptions, parse_depth_range
from .images import IMAGE_SUFFIXES, ImageReadError, read_focal_35mm, read_rgb, read_size
from .video import VIDEO_SUFFIXES, is_video


@dataclass(frozen=True)
class InputImage:
    path: Path
    rel_stem: Path  # output location relative to the output root, without suffix: a/b/img


@dataclass(frozen=True)
class PredictOptions:
    """How `run_predict` runs, one field per `genpercept predict` flag; `validate` checks them.

    processing_res: long side the model sees, in pixels; 0 = native size, None = the checkpoint's.
    formats: comma-separated string ("npy,png16") or names (outputs.FORMATS); None = the task's default.
    batch_size: images per batch; 0 = automatic (`auto_batch_size`).
    workers: background threads decoding images, at least 1.
    tile_above: decode processed images above this many megapixels tile by tile (bounded memory, not
        bit-exact); 0 = never, None = leave the pipeline's setting as it is.
    normal_flip: normal axes to negate before writing, e.g. "yz" (normal models only).
    skip_existing: skip images whose outputs all exist (resume).
    frame_stride, max_frames, start, end: which frames of a video are predicted (`video.FrameRange`).
    temporal: "align" (affine depth/disparity in videos aligned over time, `temporal`) or "none".
    fov, depth_range, points_stride, mesh_res: the camera and 3D options of the ply/glb formats
        (`geometry.SceneOptions`); depth_range as "NEAR,FAR" or a pair, None = the default.
    """

    processing_res: int | None = None
    formats: str | tuple[str, ...] | None = None
    batch_size: int = 0
    workers: int = 4
    tile_above: float | None = 16.0
    normal_flip: str = ""
    skip_existing: bool = False
    frame_stride: int = 1
    max_frames: int = 0
    start: float = 0.0
    end: float | None = None
    temporal: str = "align"
    fov: float | None = None
    depth_range: str | tuple[float, float] | None = None
    points_stride: int = 1
    mesh_res: int = DEFAULT_MESH_RES

    @property
    def frame_range(self):
        from .video import FrameRange

        return FrameRange(self.frame_stride, self.max_frames, self.start, self.end)

    @property
    def scene(self) -> SceneOptions:
        """The 3D options of every image (its EXIF focal length is added per image)."""
        return SceneOptions(self.fov, parse_depth_range(self.depth_range), self.points_stride, self.mesh_res)

    def validate(self, spec: CheckpointSpec) -> PredictOptions:
        """Raise GenPerceptError naming the first bad option, in the words of `genpercept predict`;
        return the options resolved for `spec`: formats a tuple of format names, processing_res an
        int, normal_flip its axes in x, y, z order. Reads nothing from disk and creates nothing."""
        from .outputs import parse_formats, parse_normal_flip
        from .sizes import check_processing_res
        from .video import TEMPORAL_MODES

        names = self.formats if self.formats is None or isinstance(self.formats, str) else ",".join(self.formats)
        formats = parse_formats(spec.task, names)
        res = spec.processing_res if self.processing_res is None else self.processing_res
        res = check_processing_res(res, "--processing-res")
        if self.batch_size < 0:
            raise GenPerceptError("--batch-size must be 0 (automatic) or positive.")
        if self.workers < 1:
            raise GenPerceptError("--workers must be at least 1.")
        if self.tile_above is not None and self.tile_above < 0:
            raise GenPerceptError("--tile-above must be 0 (never) or a number of megapixels.")
        if self.normal_flip and spec.task != "normal":
            raise GenPerceptError(f"--normal-flip applies to normal models; {spec.name!r} predicts {spec.task}.")
        self.frame_range.validate()
        if self.temporal not in TEMPORAL_MODES:
            raise GenPerceptError(f"--temporal must be one of {', '.join(TEMPORAL_MODES)}.")
        scene = self.scene.validate()
        self._check_scene_options_used(formats)
        return replace(self, formats=formats, processing_res=res, normal_flip=parse_normal_flip(self.normal_flip),
                       depth_range=None if self.depth_range is None else scene.depth_range)

    def _check_scene_options_used(self, formats: tuple[str, ...]) -> None:
        """A 3D option given without a format that reads it would be silently ignored: refuse it."""
        used_by = (("--fov", self.fov is not None, ("ply", "glb", "camera")),
                   ("--depth-range", self.depth_range is not None, ("ply", "glb", "camera")),
                   ("--points-stride", self.points_stride != 1, ("ply",)),
                   ("--mesh-res", self.mesh_res != DEFAULT_MESH_RES, ("glb",)))
        for option, given, names in used_by:
            if given and not set(names) & set(formats):
                which = (f"the {names[0]} format" if len(names) == 1
                         else f"the {', '.join(names[:-1])} and {names[-1]} formats")
                add = "it" if len(names) == 1 else "one"
                raise GenPerceptError(f"{option} applies to {which} only; add {add} to --formats or leave "
                                      f"{option} out.")

    def validate_each(self, specs: list[CheckpointSpec]) -> list[PredictOptions]:
        """The options resolved for each model of a run (`validate`); one model: [validate(spec)].

        Several models (`genpercept predict -c depth -c normal`): each its own processing resolution unless
        one is given; `formats` (None: each task's defaults) applies to every model whose task can write a
        name ("png" is each task's main PNG), and a name no model's task can write is refused; a model left
        with nothing to write is refused, unless it is a normal model and a depth model writes ply/glb (its
        normals become their vertex normals); `normal_flip` applies to the normal models; the 3D options
        (fov, depth_range, ...) to the depth models. Raises GenPerceptError, one sentence."""
        from .outputs import get_task

        if len(specs) == 1:
            return [self.validate(specs[0])]
        names = self.formats if self.formats is None or isinstance(self.formats, str) else ",".join(self.formats)
        asked = [part.strip().lower() for part in (names or "").split(",") if part.strip()]
        tasks = [get_task(spec.task) for spec in specs]
        writable = [[n for n in asked if n in task.formats or n in task.aliases] for task in tasks]
        for name in asked:
            if not any(name in chosen for chosen in writable):
                per_task = {task.name: task for task in tasks}
                able = "; ".join(f"{task_name}: {', '.join(task.formats)}" for task_name, task in per_task.items())
                raise GenPerceptError(f"No selected model can write {name!r} (formats per task: {able}).")
        has_normals = any(spec.task == "normal" for spec in specs)
        has_3d = any("camera" in task.formats for task in tasks)
        resolved = []
        for spec, task, chosen in zip(specs, tasks, writable, strict=True):
            flip = self.normal_flip if spec.task == "normal" or not has_normals else ""
            one = replace(self, formats=",".join(chosen) if chosen else None, normal_flip=flip)
            if has_3d and "camera" not in task.formats:  # the 3D options are the depth models' alone
                one = replace(one, fov=None, depth_range=None, points_stride=1, mesh_res=DEFAULT_MESH_RES)
            one = one.validate(spec)
            if asked and not chosen:
                one = replace(one, formats=())
            resolved.append(one)
        feeds_3d = any(geometry_formats(one.formats) for one in resolved)
        for spec, task, one in zip(specs, tasks, resolved, strict=True):
            if not one.formats and not (spec.task == "normal" and feeds_3d):
                raise GenPerceptError(f"--formats {names} gives {spec.name!r} ({spec.task}) nothing to write; add one "
                                      f"of its formats: {', '.join(task.formats)}.")
        return resolved


def geometry_formats(formats) -> bool:
    """Whether resolved formats include a 3D file that can carry vertex normals (ply, glb)."""
    return bool({"ply", "glb"} & set(formats or ()))


@dataclass
class PredictReport:
    written: int = 0  # inputs written: images and clips
    clips_written: int = 0  # of which clips (each with at least one frame written)
    frames_written: int = 0  # the frames of those clips
    skipped_existing: int = 0
    stale_removed: int = 0  # temp files of an earlier, killed run, deleted from the output folders
    failed: list[tuple[Path, str]] = field(default_factory=list)
    recoveries: int = 0  # batches re-run in fp32 after a non-finite half-precision result

    @property
    def ok(self) -> bool:
        return not self.failed

    @classmethod
    def combined(cls, reports: list[PredictReport]) -> PredictReport:
        """The report of a data-parallel run: counts added, failures of every rank sorted by path."""
        return cls(
            written=sum(r.written for r in reports), skipped_existing=sum(r.skipped_existing for r in reports),
            clips_written=sum(r.clips_written for r in reports), frames_written=sum(r.frames_written for r in reports),
            stale_removed=sum(r.stale_removed for r in reports), recoveries=sum(r.recoveries for r in reports),
            failed=sorted((f for r in reports for f in r.failed), key=lambda failure: str(failure[0])),
        )


@dataclass
class SourceScan:
    """What `discover_images` found: the images to predict, and what it passed over, by kind."""

    images: list[InputImage]
    earlier_outputs: int = 0  # this tool's own files (<stem>_pred.png, ...): a second run skips them
    non_images: int = 0  # files without an image suffix (folders only; a glob takes what it matches)
    hidden: int = 0  # names starting with "." (files and folders): not read
    special: int = 0  # fifos, sockets, devices: never opened, so a fifo cannot hang the run
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, one-line reason): failures

    @property
    def inputs(self) -> int:
        """The inputs of the run, as the header and the summary count them: images, and unreadable files and
        folders (each one failed input)."""
        return len(self.images) + len(self.unreadable)

    @property
    def clips(self) -> int:
        """How many of `inputs` are videos (by suffix, unreadable ones included)."""
        return sum(map(is_video, [image.path for image in self.images] + [path for path, _ in self.unreadable]))

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


def count_inputs(images: int, clips: int, written: tuple[int, int] | None = None, frames: int | None = None) -> str:
    """How the header and the summary count a run's inputs: "5 images", "2 clips", "1 image and 2 clips";
    written (images, clips) done: "3 of 3 images and 2 of 2 clips"; frames (the clips'): " (240 frames)" after
    the clips. Images alone read as they always have ("1 images")."""
    done_images, done_clips = written if written is not None else (None, None)

    def part(n: int, done: int | None, word: str, singular: bool = True) -> str:
        return (f"{done} of " if done is not None else "") + f"{n} {word}" + ("" if n == 1 and singular else "s")

    if not clips:
        return part(images, done_images, "image", singular=False)
    said = part(clips, done_clips, "clip") + ("" if frames is None else f" ({part(frames, None, 'frame')})")
    return f"{part(images, done_images, 'image')} and {said}" if images else said


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
    if not source.strip():  # Path("") is the current folder: an unset shell variable would predict all of it
        raise GenPerceptError("the source is empty (an unset shell variable?); give an image file, a folder or a glob.")
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
        nothing = f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos ({', '.join(VIDEO_SUFFIXES)})"
    elif root.exists():
        raise GenPerceptError(f"{source} is not a regular file (a fifo, socket or device); give an image file.")
    else:
        raise GenPerceptError(f"{source} {why_missing(root)}.")
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
    from .video import output_suffixes

    earlier = OUTPUT_SUFFIXES + output_suffixes()

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
            elif entry.name.endswith(earlier):
                scan.earlier_outputs += 1
            elif pattern is None and path.suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
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


def auto_batch_size(pipe, processing_res: int) -> int:
    """The automatic batch size for images processed at `processing_res` (0: native, sized as 768): 1 on
    the CPU; on CUDA what the measured per-image memory model fits (`runtime.memory`)."""
    from .runtime.memory import auto_batch_size as fit

    side = processing_res or 768
    return fit(pipe, (side, side))


def model_labels(specs: list[CheckpointSpec]) -> list[str | None]:
    """What each model adds to its file names: nothing for one model (img_pred.npy); for several, its name
    after the image stem (img_depth_pred.npy, img_normal_pred.npy): the registry name, the hub id with "/"
    as "-", or a local folder's own name, with characters other than letters, digits, ".", "-" and "_" as
    "-". Raises GenPerceptError when two models would get the same label."""
    import re

    if len(specs) == 1:
        return [None]
    labels = [re.sub(r"[^A-Za-z0-9._-]", "-", Path(spec.name).name if spec.is_local else spec.name.replace("/", "-"))
              for spec in specs]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise GenPerceptError(f"Checkpoints {specs[labels.index(label)].name!r} and {specs[i].name!r} would both "
                                  f"write <stem>_{label}_*; give each model once, from folders of different names.")
    return labels


@dataclass(frozen=True)
class ModelOutputs:
    """One model of a run: its pipeline, its resolved options (`PredictOptions.validate_each`) and the label
    its files carry (`model_labels`; None: the image stem as it is)."""

    pipe: object
    options: PredictOptions
    label: str | None = None

    def stem(self, output: Path, rel_stem: Path) -> Path:
        """<output>/a/b/img, or <output>/a/b/img_<label> when several models run."""
        stem = output / rel_stem
        return stem if self.label is None else stem.parent / f"{stem.name}_{self.label}"

    def paths(self, output: Path, rel_stem: Path) -> list[Path]:
        from .outputs import output_paths

        return output_paths(self.stem(output, rel_stem), self.pipe.task, self.options.formats)


class ModelSet:
    """Several pipelines that the runner runs as one (`genpercept predict -c depth -c normal`): each image is
    decoded once and every model predicts it. Model inputs, launched batches and outputs are tuples with one
    member per model, in the order given ([B, 3, h_i, w_i] each: every model at its own processed size);
    post-processing gives each image the tuple of its models' arrays. All models stay loaded (resident on
    their devices) for the whole run."""

    def __init__(self, pipes):
        self.pipes = tuple(pipes)

    @property
    def queue_depth(self) -> int:
        return min(getattr(p, "queue_depth", 1) if hasattr(p, "launch") else 1 for p in self.pipes)

    @property
    def recoveries(self) -> int:
        return sum(p.recoveries for p in self.pipes)

    def processed_size(self, height: int, width: int, processing_res: tuple[int, ...]) -> tuple:
        return tuple(p.processed_size(height, width, res) for p, res in zip(self.pipes, processing_res, strict=True))

    def model_input(self, image, size: tuple) -> tuple:
        return tuple(p.model_input(image, s) for p, s in zip(self.pipes, size, strict=True))

    def predict_batch(self, rgb: tuple) -> tuple:
        return tuple(p.predict_batch(x) for p, x in zip(self.pipes, rgb, strict=True))

    def launch(self, rgb: tuple) -> tuple:
        return tuple(p.launch(x) for p, x in zip(self.pipes, rgb, strict=True))

    def finish(self, launched: tuple, sizes: list[tuple[int, int]]) -> list[tuple]:
        return list(zip(*(p.finish(one, sizes) for p, one in zip(self.pipes, launched, strict=True))))

    def postprocess_batch(self, preds: tuple, sizes: list[tuple[int, int]]) -> list[tuple]:
        return list(zip(*(p.postprocess_batch(one, sizes) for p, one in zip(self.pipes, preds, strict=True))))


def run_predict(
    pipe,
    images: list[InputImage],
    output: Path,
    options: PredictOptions | None = None,
    progress=None,
    clock=None,
    overlap: bool = True,
    after_batch=None,
    dist=None,
) -> PredictReport:
    """Predict every image and write its files under `output`; failures are reported, not raised.

    `pipe`: a pipeline, or a list of them (several models in one pass: each image is decoded once and every
    model predicts it, `ModelSet`; their files sit side by side, named by `model_labels`; depth and
    disparity models' ply/glb carry the first normal model's prediction as vertex normals; --skip-existing
    skips an image only when every model's files exist, else all its models run again).
    `options` (default: `PredictOptions()`, the command's defaults) are validated against each model's spec
    first (`PredictOptions.validate_each`); a bad option raises GenPerceptError before any image is read.
    `options.tile_above` applies to the pipelines for this run only.

    Runs the one runner (`runtime.runner.run`) with a reader that decodes and resizes and a writer sink;
    videos among `images` run after the images, clip by clip (`video.predict_clips`).
    Memory: a full-resolution image lives only while a reader thread decodes and resizes it (at most
    `workers` at once), unless a format needs it (the "rgba" cut-out, the 3D files' colours); at most
    `batch_size + workers` model inputs wait decoded, and a few predictions wait to be written. Ctrl-C (or
    SIGTERM, turned into KeyboardInterrupt by the CLI) cancels queued reads and writes; writes already running
    finish, and each is atomic, so no partial file remains. `clock`, `overlap`, `after_batch`: see the runner.

    `dist` (`runtime.distributed.Dist`, under torchrun): this rank predicts images rank, rank + world, ...
    and the returned report is the whole run's, on every rank; `progress` must then be a
    `GlobalProgress` on every rank.
    """
    from .outputs import get_task, write_prediction
    from .runtime.distributed import Dist
    from .runtime.runner import Loaded, run
    from .video import predict_clips

    dist = dist or Dist()
    pipes = list(pipe) if isinstance(pipe, (list, tuple)) else [pipe]
    resolved = (options or PredictOptions()).validate_each([p.spec for p in pipes])
    models = [ModelOutputs(p, o, label) for p, o, label in
              zip(pipes, resolved, model_labels([p.spec for p in pipes]), strict=True)]
    engine = pipes[0] if len(pipes) == 1 else ModelSet(pipes)
    opts = resolved[0]
    batch_size = opts.batch_size or min(auto_batch_size(m.pipe, m.options.processing_res) for m in models)
    report = PredictReport()
    jobs = _plan_jobs(engine, models, images, output, report, dist, batch_size)
    with_images = not all(is_video(item.path) for item in images)  # clips have bars of their own: no "0/0"
    if dist.active and not (progress and with_images):
        dist.gather(None)  # no rank writes before rank 0 has removed stale temporary files
    task_id = progress.add_task("predict", total=len(jobs)) if progress and with_images else None
    chosen = [get_task(m.pipe.task).formats[name] for m in models for name in m.options.formats]
    keep_image = any(fmt.needs_image for fmt in chosen)  # cut-out, 3D files: full-res pixels
    in_3d = any(not fmt.per_pixel for fmt in chosen)
    normal_model = next((i for i, m in enumerate(models) if m.pipe.task == "normal"), None)
    scene_options = next((m.options.scene for m in models if "camera" in get_task(m.pipe.task).formats), opts.scene)

    def load(job) -> Loaded:
        path = images[job.index].path
        image = read_rgb(path)  # once, whatever the number of models
        scene = scene_options.for_photo(read_focal_35mm(path)) if in_3d else None
        return Loaded(job, engine.model_input(image, job.size), image.shape[:2], (image if keep_image else None, scene))

    def write(loaded: Loaded, prediction) -> None:
        item = images[loaded.job.index]
        image, scene = loaded.context
        predictions = (prediction,) if len(models) == 1 else prediction
        for model, pred in zip(models, predictions, strict=True):
            spec, its, its_scene = model.pipe.spec, model.options, scene
            if scene is not None and normal_model is not None and geometry_formats(its.formats):
                its_scene = scene.with_normals(predictions[normal_model])  # as predicted: --normal-flip is for files
            write_prediction(pred, model.pipe.task, model.stem(output, item.rel_stem), its.formats, image=image,
                             normal_flip=its.normal_flip, kind=spec.kind, labels=spec.labels, scene=its_scene)

    with _tiled_decode(pipes, opts.tile_above):
        result = run(engine, jobs, load, write, batch_size=batch_size, workers=opts.workers, sink_workers=2,
                     overlap=overlap, describe=lambda job: str(images[job.index].path), after_batch=after_batch,
                     clock=clock, progress=progress, task_id=task_id)
        clips = [item for item in images if is_video(item.path)]  # every rank takes a share of every clip
        predict_clips(engine, clips, output, opts, report, batch_size, dist, progress,
                      models=None if len(models) == 1 else models, workers=opts.workers, overlap=overlap,
                      after_batch=after_batch, clock=clock)
    report.written += result.done
    report.failed += [(images[job.index].path, message) for job, message in result.failed]
    report.recoveries = engine.recoveries
    return PredictReport.combined(dist.gather(report)) if dist.active else report


def _plan_jobs(engine, models: list[ModelOutputs], images: list[InputImage], output: Path, report: PredictReport,
               dist, batch_size: int) -> list:
    """This rank's runner jobs, from the images' headers: removes stale temp files of a killed run (rank 0
    only, before any rank writes: progress totals are gathered after this), counts images already done
    (--skip-existing: every model's files exist) and lists unreadable or too thin ones in `report`. A job's
    size is the processed size, or with several models the tuple of each model's (`ModelSet`).

    Under torchrun every rank plans every image (headers are cheap) and takes its size-balanced share
    (`Dist.shard_batches`); image i's skip or failure is counted by rank i mod world only, so the
    combined report counts it once."""
    from .outputs import remove_stale_temp_files
    from .runtime.runner import Job

    if dist.is_main:
        for folder in sorted({(output / item.rel_stem).parent for item in images}):
            report.stale_removed += remove_stale_temp_files(folder)
    res = models[0].options.processing_res if len(models) == 1 else tuple(m.options.processing_res for m in models)
    jobs = []
    for index, item in enumerate(images):
        mine = index % dist.world == dist.rank
        if is_video(item.path):  # a source of its own jobs (`video.predict_clips`)
            continue
        if models[0].options.skip_existing and all(p.exists() for m in models for p in m.paths(output, item.rel_stem)):
            report.skipped_existing += mine
            continue
        try:
            jobs.append(Job(index, engine.processed_size(*read_size(item.path), res)))
        except ImageReadError as exc:
            if mine:
                report.failed.append((item.path, str(exc)))
        except GenPerceptError as exc:  # too thin for the model
            if mine:
                report.failed.append((item.path, f"{item.path}: {exc}"))
    return dist.shard_batches(jobs, batch_size)


@contextmanager
def _tiled_decode(pipes: list, megapixels: float | None):
    """The pipelines decode images above `megapixels` tile by tile (0: never) inside the block; None: as they are."""
    if megapixels is None:
        yield
        return
    previous = [pipe.tiled_decode_above for pipe in pipes]
    for pipe in pipes:
        pipe.tiled_decode_above = int(megapixels * 1e6) if megapixels else None
    try:
        yield
    finally:
        for pipe, before in zip(pipes, previous, strict=True):
            pipe.tiled_decode_above = before
