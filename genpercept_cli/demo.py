"""`genpercept demo`: a local web page (Gradio) to try every model on your own pictures (issue 23).

The page is a source of uploads and a sink of files; the loop and the writers are `predict`'s:

    uploads of several sessions (queued; Gradio hands a batch of them to one call)
    -> checks (inside the page's folder, bytes, pixels, kind) -> grouped by model and options
    -> `run_predict` per group (the runner stacks equal processed sizes into one model call)
    -> the files `genpercept predict` writes for that image, in the request's folder
    -> comparison slider (input | coloured result), downloads, 3D viewer (glb), video (clips)

Safety: the page names a model from `DemoModels` (registry names and the folders given on the command
line), never a path; an upload is read only from the page's own temporary folder, and is refused with one
sentence when it is too big (bytes or pixels), not an image, truncated, or a video on the image tab. Every
file (uploads, outputs, Gradio's cache) lives in that folder, which the command removes at exit.

Gradio is imported only by `build_app` (the `demo` extra), so everything else here is tested without it.
"""

from __future__ import annotations

import shutil
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .checkpoints import CheckpointSpec, load_registry, resolve_checkpoint
from .errors import GenPerceptError
from .images import IMAGE_SUFFIXES, ImageReadError, read_size
from .predict import InputImage, PredictOptions
from .video import VIDEO_SUFFIXES, is_video

MAX_COMPARE = 3  # models side by side on the Compare tab
KEEP_SECONDS = 3600  # a request's files (and Gradio's copies of them) are kept this long, then removed
EXAMPLES = Path(__file__).resolve().parent / "examples" / "photos"  # what the wheel carries (pyproject)
if not EXAMPLES.is_dir():
    EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"  # a source checkout's


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask of the server.

    max_upload_mb: bytes of one upload, in MB (10**6 bytes); max_megapixels: pixels of one image (after
    EXIF rotation, read from the header before decoding); max_frames: frames predicted per clip;
    max_batch: requests Gradio hands to one call (equal processed sizes share one model call)."""

    max_upload_mb: float = 50.0
    max_megapixels: float = 40.0
    max_frames: int = 300
    max_batch: int = 4

    def validate(self) -> DemoLimits:
        if self.max_upload_mb <= 0:
            raise GenPerceptError("--max-upload-mb must be positive.")
        if self.max_megapixels <= 0:
            raise GenPerceptError("--max-megapixels must be positive.")
        if self.max_frames < 1:
            raise GenPerceptError("--max-frames must be at least 1.")
        if self.max_batch < 1:
            raise GenPerceptError("--batch-size must be at least 1.")
        return self


class DemoModels:
    """The models the page offers, by name: the checkpoints given on the command line (resolved now, so a
    bad one stops the command before the page opens), then the registry's names.

    The page only ever sends one of these names; `spec` refuses anything else."""

    def __init__(self, command_line: list[str] | tuple[str, ...] = ()):
        self._specs: dict[str, CheckpointSpec] = {}
        for ref in command_line:
            self._specs.setdefault(ref, resolve_checkpoint(ref))
        self.command_line = list(self._specs)
        for name, spec in load_registry().items():
            self._specs.setdefault(name, spec)

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    @property
    def default(self) -> str:
        return self.command_line[0] if self.command_line else "depth"

    def spec(self, name: str | None) -> CheckpointSpec:
        if name not in self._specs:
            raise GenPerceptError(f"{name!r} is not a model this page offers; choose one from the list.")
        return self._specs[name]


class ModelCache:
    """Loaded pipelines kept between requests, keyed by (model name, device, dtype); beyond `size` the least
    recently used is dropped. `load(spec, device, dtype)` builds one (`GenPerceptPipeline.from_checkpoint`).
    One lock: a model is loaded once however many requests ask for it at the same time."""

    def __init__(self, load: Callable | None = None, size: int = 3):
        if load is None:
            from .pipeline import GenPerceptPipeline

            load = GenPerceptPipeline.from_checkpoint
        self._load, self.size = load, size
        self._pipes: OrderedDict[tuple[str, str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, spec: CheckpointSpec, device: str, dtype: str) -> tuple[object, float]:
        """(pipeline, seconds spent loading it now: 0.0 when it was loaded already)."""
        key = (name, device, dtype)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key], 0.0
            began = time.perf_counter()
            pipe = self._load(spec, device=device, dtype=dtype)
            self._pipes[key] = pipe
            while len(self._pipes) > self.size:
                self._pipes.popitem(last=False)
            return pipe, time.perf_counter() - began

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._pipes


@dataclass
class Result:
    """What the page shows for one request: `message` (one sentence: what ran, or why nothing did), the
    input image, the coloured result, the files to download (`genpercept predict`'s, in format order),
    the mesh (glb) and, for a clip, its coloured video."""

    message: str
    image: Path | None = None
    picture: Path | None = None
    files: list[Path] = field(default_factory=list)
    mesh: Path | None = None
    video: Path | None = None
    seconds: float = 0.0


def _named(message: str, path: Path) -> str:
    """A reader's sentence about an upload, naming the file as the user knows it, not its server path."""
    return message.replace(str(path), path.name)


def check_upload(upload: str | Path | None, root: Path, limits: DemoLimits, video: bool = False) -> Path:
    """The uploaded file's path, or GenPerceptError with one sentence: nothing chosen, a path outside the
    page's folder `root` (the page never names server files), too many bytes, the wrong kind (a video on
    the image tab, an image on the video tab), not an image or too many pixels (header only)."""
    if not upload:
        raise GenPerceptError(f"choose {'a video' if video else 'an image'} first.")
    path = Path(upload)
    try:
        inside = path.resolve().is_relative_to(root.resolve()) and path.resolve().is_file()
    except OSError:
        inside = False
    if not inside:
        raise GenPerceptError(f"{path.name} is not a file uploaded to this page.")
    size = path.stat().st_size
    if size > limits.max_upload_mb * 1e6:
        raise GenPerceptError(
            f"{path.name} is {size / 1e6:.1f} MB; this page takes files up to {limits.max_upload_mb:g} MB."
        )
    if video:
        if not is_video(path):
            raise GenPerceptError(f"{path.name} is not a video ({', '.join(VIDEO_SUFFIXES)}).")
        return path
    if is_video(path):
        raise GenPerceptError(f"{path.name} is a video; use the Video tab.")
    try:
        height, width = read_size(path)
    except ImageReadError as exc:
        raise GenPerceptError(_named(str(exc), path)) from None
    if height * width > limits.max_megapixels * 1e6:
        raise GenPerceptError(
            f"{path.name} is {width}x{height} = {height * width / 1e6:.1f} megapixels; this page takes images "
            f"up to {limits.max_megapixels:g} megapixels."
        )
    return path


def preview_format(task: str, chosen: tuple[str, ...]) -> str | None:
    """The task's 8-bit picture (depth `color`, normal `rgb`, dis/matting `png`, seg `color`) shown on the
    page, unless it would clash with a chosen format (dis/matting `png16` writes the same file)."""
    from .outputs import parse_formats
    from .tasks import get_task
    from .video import _kind_of  # "mp4": the formats a clip stores as a video, i.e. the 8-bit pictures

    for name in get_task(task).formats:
        if _kind_of(task, name) == "mp4":
            try:
                parse_formats(task, ",".join((*chosen, name)))
            except GenPerceptError:
                continue
            return name
    return None


class Demo:
    """The page's work, without Gradio: requests in, `Result`s out (`build_app` wires it to the page).

    root: the page's temporary folder (uploads arrive below it; outputs go to root/requests/<id>/).
    device, dtype: as `genpercept predict`'s flags; every model runs there."""

    def __init__(self, models: DemoModels, root: Path, limits: DemoLimits | None = None,
                 device: str = "auto", dtype: str = "auto", cache: ModelCache | None = None):
        self.models, self.root = models, Path(root)
        self.limits = (limits or DemoLimits()).validate()
        self.device, self.dtype = device, dtype
        self.cache = cache or ModelCache()
        self.log = print  # where a bug's traceback goes (the server's console), never to the page

    def _folder(self) -> Path:
        """A new request's output folder; those of requests older than `KEEP_SECONDS` are removed first, so a
        page left running for days does not fill the disk (Gradio's copies age out alike: `delete_cache`)."""
        requests = self.root / "requests"
        if requests.is_dir():
            oldest = time.time() - KEEP_SECONDS
            for old in requests.iterdir():
                if old.stat().st_mtime < oldest:
                    shutil.rmtree(old, ignore_errors=True)
        folder = requests / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def _options(self, name: str, processing_res, formats) -> tuple[CheckpointSpec, PredictOptions]:
        """The model and `predict`'s options for a request (raises GenPerceptError for a bad one)."""
        spec = self.models.spec(name)
        res = None
        if processing_res not in (None, ""):
            try:
                res = int(float(processing_res))
                whole = res == float(processing_res)
            except (TypeError, ValueError, OverflowError):
                whole = False
            if not whole:
                raise GenPerceptError("the processing resolution must be a whole number of pixels.")
        options = PredictOptions(processing_res=res, formats=",".join(formats or ()), workers=2)
        return spec, options.validate(spec)

    def predict_images(self, uploads: list, names: list, resolutions: list, formats: list) -> list[Result]:
        """One result per request (the lists are parallel, one entry per request, as Gradio batches them).
        Requests for the same model and options run as one `run_predict`: equal processed sizes share a
        model call."""
        results: list[Result | None] = [None] * len(uploads)
        groups: dict[tuple, list[tuple[int, Path]]] = {}
        for i, (upload, name, res, chosen) in enumerate(zip(uploads, names, resolutions, formats, strict=True)):
            try:
                spec, options = self._options(name, res, chosen)
                path = check_upload(upload, self.root, self.limits)
            except GenPerceptError as exc:
                results[i] = Result(str(exc))
                continue
            groups.setdefault((name, options), []).append((i, path))
        for (name, options), items in groups.items():
            for i, result in zip([i for i, _ in items], self._run_group(name, options, [p for _, p in items])):
                results[i] = result
        return results

    def _run_group(self, name: str, options: PredictOptions, paths: list[Path]) -> list[Result]:
        from .outputs import output_paths

        spec = self.models.spec(name)
        preview = preview_format(spec.task, options.formats)
        run_options = replace(options, formats=options.formats + ((preview,) if preview else ()),
                              batch_size=len(paths))
        folder = self._folder()
        images = [InputImage(path, Path(str(k)) / path.stem) for k, path in enumerate(paths)]
        try:
            report, seconds, loaded = self._run(name, spec, images, folder, run_options)
        except GenPerceptError as exc:
            return [Result(str(exc)) for _ in paths]
        failed = dict(report.failed)
        results = []
        for item in images:
            if item.path in failed:
                results.append(Result(_named(failed[item.path], item.path), image=item.path))
                continue
            stem = folder / item.rel_stem
            files = output_paths(stem, spec.task, options.formats)
            picture = output_paths(stem, spec.task, (preview,))[0] if preview else None
            mesh = next((p for p in files if p.suffix == ".glb"), None)
            message = f"{item.path.name}: {spec.task} by {name} in {seconds:.2f} s" + (
                f" (model loaded in {loaded:.1f} s)" if loaded >= 0.05 else "") + (
                f", {len(paths)} images in one run" if len(paths) > 1 else "") + "."
            results.append(Result(message, item.path, picture, files, mesh, seconds=seconds))
        return results

    def _run(self, name: str, spec: CheckpointSpec, images: list[InputImage], folder: Path, options):
        """run_predict on a cached model: (report, seconds predicting, seconds loading). A bug's traceback
        goes to the server's console; the page gets one sentence."""
        from .predict import run_predict

        try:
            pipe, loaded = self.cache.get(name, spec, self.device, self.dtype)
            began = time.perf_counter()
            report = run_predict(pipe, images, folder, options)
        except GenPerceptError:
            raise
        except Exception as exc:
            self.log(traceback.format_exc())
            message = f"the model failed ({type(exc).__name__}); the server's console has the details."
            raise GenPerceptError(message) from None
        return report, time.perf_counter() - began, loaded

    def compare(self, upload, names: list[str], processing_res) -> tuple[list[tuple[Path, str]], str]:
        """The same image through 2-3 models: ([(coloured result, "name: T s"), ...], one sentence)."""
        if not names:
            return [], "choose the models to compare."
        if len(names) > MAX_COMPARE:
            return [], f"choose at most {MAX_COMPARE} models to compare."
        try:  # once, not once per model
            check_upload(upload, self.root, self.limits)
        except GenPerceptError as exc:
            return [], str(exc)
        shown, notes = [], []
        for name in names:
            result = self.predict_images([upload], [name], [processing_res], [()])[0]
            if result.picture is None:
                notes.append(f"{name}: {result.message}")
            else:
                shown.append((result.picture, f"{name}: {result.seconds:.2f} s"))
        return shown, " ".join(notes) or f"{len(shown)} models on the same image."

    def predict_video(self, upload, name: str, processing_res) -> Result:
        """A clip through one model: the coloured video and the files `genpercept predict` writes for it
        (the .npy; frame folders are not offered), at most `limits.max_frames` frames."""
        from .video import output_files

        try:
            spec, options = self._options(name, processing_res, ())
            path = check_upload(upload, self.root, self.limits, video=True)
        except GenPerceptError as exc:
            return Result(str(exc))
        preview = preview_format(spec.task, ())
        formats = ("npy", preview) if preview and preview != "npy" else ("npy",)
        options = replace(options, formats=formats, max_frames=self.limits.max_frames)
        folder = self._folder()
        item = InputImage(path, Path(path.stem))
        try:
            report, seconds, loaded = self._run(name, spec, [item], folder, options)
        except GenPerceptError as exc:
            return Result(str(exc))
        if report.failed:
            return Result(_named(report.failed[0][1], path))
        outputs = output_files(folder / item.rel_stem, spec.task, formats)
        video = next((p for p in outputs if p.suffix == ".mp4"), None)
        message = f"{path.name}: {spec.task} by {name} in {seconds:.2f} s" + (
            f" (model loaded in {loaded:.1f} s)" if loaded >= 0.05 else "") + "."
        return Result(message, files=[p for p in outputs if p.is_file()], video=video, seconds=seconds)


def cleanup(root: Path) -> None:
    """Remove the page's temporary folder and everything in it."""
    shutil.rmtree(root, ignore_errors=True)


def copy_examples(root: Path) -> list[Path]:
    """examples/photos (the wheel's, or a source checkout's) copied into the page's folder, where uploads are
    read from."""
    if not EXAMPLES.is_dir():
        return []
    target = root / "examples"
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in sorted(EXAMPLES.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            copies.append(Path(shutil.copy2(path, target / path.name)))
    return copies


INTRO = """# genpercept demo
Depth, normals, segmentation and more from one image, by the one-step models of `genpercept`, on this
computer. Upload a picture (or pick an example), choose a model, press **Predict**. The slider compares the
input with the result; the files are those `genpercept predict` writes for the image."""


def _markdown_text(message: str) -> str:
    """`message` shown as it is by a Markdown component (file names may hold `*`, `_`, `[`, ...)."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!<>|~" else c for c in message)


def build_app(demo: Demo, examples: list[Path] = ()):
    """The page as a `gr.Blocks` (not served: `launch` it). Three tabs: Image (slider, downloads, the glb in a
    3D viewer), Compare (2-3 models side by side, each one's time), Video (the coloured clip). Every event
    that runs a model shares one queue slot; the Image tab's requests arrive in batches of up to
    `demo.limits.max_batch`."""
    import gradio as gr

    from .images import read_rgb
    from .tasks import get_task

    models, limits = demo.models, demo.limits

    def task_controls(name: str):
        """The chosen model's formats (its defaults ticked) and processing resolution."""
        spec = models.spec(name)
        task = get_task(spec.task)
        return (gr.update(choices=list(task.formats), value=list(task.default_formats)),
                gr.update(value=spec.processing_res))

    def image_batch(uploads, names, resolutions, formats):
        results = demo.predict_images(uploads, names, resolutions, formats)
        return (
            [_markdown_text(r.message) for r in results],
            [(read_rgb(r.image), str(r.picture)) if r.picture else None for r in results],
            [[str(p) for p in r.files] or None for r in results],
            [str(r.mesh) if r.mesh else None for r in results],
        )

    def compare(upload, names, res):
        shown, message = demo.compare(upload, names or [], res)
        return [(str(path), caption) for path, caption in shown], _markdown_text(message)

    def video(upload, name, res):
        result = demo.predict_video(upload, name, res)
        files = [str(p) for p in result.files] or None
        return _markdown_text(result.message), str(result.video) if result.video else None, files

    default = models.spec(models.default)
    first_formats, first_res = list(get_task(default.task).formats), default.processing_res
    resolution_label = "Processing resolution (the long side the model sees; 0 = native)"
    with gr.Blocks(title="genpercept demo", delete_cache=(KEEP_SECONDS, KEEP_SECONDS)) as app:
        gr.Markdown(INTRO)
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Image", type="filepath", elem_id="image-upload")
                    if examples:
                        gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples")
                    model = gr.Dropdown(models.names, value=models.default, label="Model", elem_id="image-model")
                    res = gr.Number(first_res, label=resolution_label, precision=0, minimum=0, elem_id="image-res")
                    formats = gr.CheckboxGroup(first_formats, value=list(get_task(default.task).default_formats),
                                               label="Files to download", elem_id="image-formats")
                    run = gr.Button("Predict", variant="primary", elem_id="image-run")
                with gr.Column():
                    status = gr.Markdown(elem_id="image-status")
                    slider = gr.ImageSlider(label="Input | result", type="filepath", elem_id="image-slider")
                    files = gr.File(label="Files (as genpercept predict writes them)", file_count="multiple",
                                    interactive=False, elem_id="image-files")
                    mesh = gr.Model3D(label="3D mesh (tick glb; depth and disparity models)", elem_id="image-mesh")
            model.change(task_controls, model, [formats, res])
            run.click(image_batch, [upload, model, res, formats], [status, slider, files, mesh], batch=True,
                      max_batch_size=limits.max_batch, concurrency_id="model", concurrency_limit=1)
        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column():
                    upload_c = gr.File(label="Image", type="filepath", elem_id="compare-upload")
                    if examples:
                        gr.Examples([[str(p)] for p in examples], inputs=[upload_c], label="Examples")
                    chosen = gr.Dropdown(models.names, value=models.command_line[:MAX_COMPARE], multiselect=True,
                                         max_choices=MAX_COMPARE, label=f"Models (up to {MAX_COMPARE})",
                                         elem_id="compare-models")
                    res_c = gr.Number(None, label=resolution_label + "; blank = each model's", precision=0,
                                      minimum=0, elem_id="compare-res")
                    run_c = gr.Button("Compare", variant="primary", elem_id="compare-run")
                with gr.Column():
                    status_c = gr.Markdown(elem_id="compare-status")
                    gallery = gr.Gallery(label="Results (model: seconds predicting)", columns=MAX_COMPARE,
                                         elem_id="compare-gallery")
            run_c.click(compare, [upload_c, chosen, res_c], [gallery, status_c], concurrency_id="model")
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    upload_v = gr.File(label=f"Short clip ({', '.join(VIDEO_SUFFIXES)}; at most "
                                       f"{limits.max_frames} frames are predicted)", type="filepath",
                                       elem_id="video-upload")
                    model_v = gr.Dropdown(models.names, value=models.default, label="Model", elem_id="video-model")
                    res_v = gr.Number(first_res, label=resolution_label, precision=0, minimum=0, elem_id="video-res")
                    run_v = gr.Button("Predict the clip", variant="primary", elem_id="video-run")
                with gr.Column():
                    status_v = gr.Markdown(elem_id="video-status")
                    clip = gr.Video(label="Result", elem_id="video-result")
                    files_v = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="video-files")
            model_v.change(lambda name: models.spec(name).processing_res, model_v, res_v)
            run_v.click(video, [upload_v, model_v, res_v], [status_v, clip, files_v], concurrency_id="model")
    return app
