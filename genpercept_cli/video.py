"""Video as a source of frames and a sink of per-clip files (issue 21), decoded and encoded with PyAV.

A clip ``a/b/clip.mp4`` is one input of `genpercept predict`: its sampled frames (one size, so every batch
is full) stream through the one runner (`runtime.runner.run`) and its predictions are written to a raw
float32 file beside the outputs as they come (``.clip_raw.partial``, `RawFrames`: written and read a
frame at a time, never mapped, so memory stays bounded whatever the clip's length; a killed run leaves it,
and ``--skip-existing`` resumes from its last complete frame). A second pass reads
it back one frame at a time, aligns affine depth and disparity over time (`temporal`), encodes each format
and publishes every file atomically:

- ``npy``: ``clip_pred.npy`` of shape [T, H, W(, C)], written incrementally, its header fixed at the end;
- 8-bit pictures (colour maps, normal RGB, DIS/matting alpha): a video, the format's suffix with ``.mp4``
  (``clip_colored.mp4``, ``clip_pred.mp4``), at the sampled frame rate, H.264 (libx264) where the PyAV
  wheel has it, else MPEG-4 part 2; yuv420p needs even sides, so an odd last row/column is repeated;
- exact values (16-bit PNGs, class ids): a folder of PNG frames, ``clip_pred/000000_pred.png`` ...

Rotation metadata (the display matrix) is applied as EXIF orientation is for photos.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import GenPerceptError
from .files import temp_path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
ENCODERS = ("libx264", "mpeg4")  # the first the PyAV wheel provides encodes the visualisation videos
_EXACT_FORMATS = {("seg", "label"), ("semseg", "png")}  # class ids: lossy video would change them
_NPY_HEADER = 128  # bytes reserved for the incremental .npy header (magic + length + dict, padded)


class VideoReadError(GenPerceptError):
    """A video that cannot be read (in part): skipped or kept up to the damage, and reported."""


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class FrameRange:
    """Which frames of a clip are predicted: from `start` to `end` seconds (None: the end), every
    `stride`-th, at most `max_frames` (0: all)."""

    stride: int = 1
    max_frames: int = 0
    start: float = 0.0
    end: float | None = None

    def validate(self) -> FrameRange:
        """Raise GenPerceptError naming the first bad option in the words of `genpercept predict`."""
        if self.stride < 1:
            raise GenPerceptError("--frame-stride must be at least 1.")
        if self.max_frames < 0:
            raise GenPerceptError("--max-frames must be 0 (all) or positive.")
        if self.start < 0:
            raise GenPerceptError("--start must be 0 or a positive number of seconds.")
        if self.end is not None and self.end <= self.start:
            raise GenPerceptError("--end must be after --start.")
        return self

    def sampled(self, in_range: int) -> int:
        """How many frames are predicted of `in_range` frames between start and end."""
        count = -(-in_range // self.stride)
        return min(count, self.max_frames) if self.max_frames else count


@dataclass(frozen=True)
class ClipInfo:
    size: tuple[int, int]  # (H, W) of a frame after rotation
    frames: int  # frames to predict (after --start/--end/--frame-stride/--max-frames)
    rate: Fraction  # frames per second of the sampled frames
    damage: str | None = None  # the file ends before the frames its header announces (in the range)


def _open(path: Path, threads: int = 0):
    """The container and its first video stream, decoded by `threads` FFmpeg threads (0: FFmpeg's choice, one
    per core)."""
    import av

    try:
        container = av.open(str(path))
    except av.error.EOFError:  # a header and nothing after it (an empty file too)
        raise VideoReadError(f"{path}: holds no video frames.") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoReadError(f"{path}: cannot be read as a video ({_reason(exc)}; damaged, truncated or not a "
                             "video).") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: holds no video stream.")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None or not _can_decode(stream):  # PyAV gives no context (nor name) where FFmpeg has no decoder
        which = f"video codec ({codec.name})" if getattr(codec, "name", None) else "video codec"
        container.close()
        raise VideoReadError(f"{path}: its {which} is not one this FFmpeg build can decode.")
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    return container, stream


def _can_decode(stream) -> bool:
    import av

    try:
        return av.Codec(stream.codec_context.name, "r") is not None
    except (av.FFmpegError, ValueError, TypeError):
        return False


def _reason(exc: Exception) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip().rstrip(".")


def _seconds(pts, stream) -> float | None:
    if pts is None:
        return None
    return float((pts - (stream.start_time or 0)) * stream.time_base)


def probe_clip(path: Path, frames: FrameRange) -> ClipInfo:
    """What a clip holds, from its packets (no decoding, except the first frame for size and rotation).

    Raises VideoReadError for a file that is not a video, has no video stream, a codec this FFmpeg cannot
    decode, or no frame in the chosen range."""
    import av

    container, stream = _open(path)
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    # what the header announces: the frame count (mp4, avi) or the duration (mkv, webm)
    announced = stream.frames or round((container.duration or 0) / 1e6 * rate)
    in_range = total = 0
    last = 0.0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's flush packet
                continue
            total += 1
            t = _seconds(packet.pts, stream)
            last = max(last, t or 0.0)
            if t is None or (t >= frames.start - 1e-6 and (frames.end is None or t < frames.end)):
                in_range += 1
    except av.FFmpegError:
        in_range = max(in_range, 1)  # the damage is found and reported while decoding
    finally:
        container.close()
    damage = None
    if announced > total + 1 and (frames.end is None or last + 1 / rate < frames.end):
        damage = f"{path}: the file ends after {total} of the {announced} frames its header announces (truncated)."
    first = next(iter(read_frames(path, FrameRange(max_frames=1, start=frames.start, end=frames.end))), None)
    if in_range == 0 or first is None:
        where = "" if frames.start == 0 and frames.end is None else " between --start and --end"
        raise VideoReadError(f"{path}: holds no video frames{where}.")
    return ClipInfo(first.shape[:2], frames.sampled(in_range), Fraction(rate) / frames.stride, damage)


def upright(frame) -> np.ndarray:
    """A decoded av.VideoFrame -> uint8 [H, W, 3] RGB, turned by its display rotation as a player shows it
    (FFmpeg's display matrix angle: counter-clockwise degrees)."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter)) if quarter else rgb


def read_frames(path: Path, frames: FrameRange, threads: int = 0):
    """The sampled frames of a clip in order, uint8 [H, W, 3] upright, decoded by `threads` FFmpeg threads (0:
    one per core). A decoding error after some frames raises VideoReadError naming how many were read."""
    import av

    container, stream = _open(path, threads)
    taken = position = 0
    try:
        for frame in container.decode(stream):
            t = _seconds(frame.pts, stream)
            if t is not None and t < frames.start - 1e-6:
                continue
            if t is not None and frames.end is not None and t >= frames.end:
                break
            position += 1
            if (position - 1) % frames.stride:
                continue
            yield upright(frame)
            taken += 1
            if frames.max_frames and taken >= frames.max_frames:
                break
    except av.FFmpegError as exc:
        if not taken:  # e.g. damaged codec data (the stream's extradata): not even the first frame
            raise VideoReadError(f"{path}: no frame can be decoded ({_reason(exc)}).") from None
        raise VideoReadError(f"{path}: frames from {taken} on cannot be decoded ({_reason(exc)}).") from None
    finally:
        container.close()


class FrameSource:
    """Frame k of a clip for the runner's reader threads: decodes in order under a lock, keeping frames that
    were decoded for a later job until that job asks (at most the runner's read-ahead)."""

    def __init__(self, path: Path, frames: FrameRange, count: int, first: int = 0, threads: int = 0):
        """first: the first frame asked for (a resumed clip); earlier ones are decoded and dropped. threads:
        FFmpeg's decoder threads (read_frames)."""
        self.path, self.count, self.first = path, count, first
        self._frames = read_frames(path, frames, threads)
        self._next = 0
        self._ahead: dict[int, np.ndarray] = {}
        self._error: str | None = None
        self._lock = threading.Lock()

    def frame(self, k: int) -> np.ndarray:
        from .runtime.runner import SkipJob

        with self._lock:
            while k not in self._ahead and self._error is None:
                try:
                    frame = next(self._frames)
                    if self._next >= self.first:
                        self._ahead[self._next] = frame
                    self._next += 1
                except StopIteration:
                    self._error = f"{self.path}: frames from {self._next} on cannot be decoded (damaged)."
                except VideoReadError as exc:
                    self._error = str(exc)
            if k in self._ahead:
                return self._ahead.pop(k)
            raise SkipJob(self._error)

    def close(self) -> None:
        self._frames.close()


def output_files(stem: Path, task: str, formats) -> list[Path]:
    """The files (or frame folders) a clip's outputs go to, in format order (module docstring)."""
    from .outputs import output_paths

    return [_video_path(path, task, name) for path, name in zip(output_paths(stem, task, formats), formats)]


def for_clips(fmt) -> bool:
    """Whether a clip writes this format (`tasks.Format`): arrays per pixel, stored as .npy or PNG (as video
    or frames); not the cut-out (it needs the image), EXR, nor the whole-image 3D files (PLY, GLB, camera)."""
    from .files import npy_writer, png_writer

    return fmt.per_pixel and not fmt.needs_image and fmt.writer in (npy_writer, png_writer)


def _kind_of(task: str, name: str) -> str:
    """How a format is stored for a clip: "npy", "mp4" or "frames"."""
    from .tasks import get_task

    fmt = get_task(task).formats[name]
    if fmt.suffix.endswith(".npy"):
        return "npy"
    if not for_clips(fmt):  # refused for clips (`predict_clip`)
        return "frames"
    probe = np.full((2, 2, 3) if get_task(task).channels == 3 else (2, 2), 0.5, np.float32)
    encode = get_task(task).encoder(name, probe)
    exact = (task, name) in _EXACT_FORMATS or encode is None or encode(probe, None).dtype != np.uint8
    return "frames" if exact else "mp4"


def _video_path(path: Path, task: str, name: str) -> Path:
    kind = _kind_of(task, name)
    return path if kind == "npy" else path.with_suffix(".mp4") if kind == "mp4" else path.with_suffix("")


def output_suffixes() -> tuple[str, ...]:
    """Suffixes of the clip outputs that are files of their own ("_colored.mp4", ...): earlier outputs."""
    from .tasks import TASKS

    return tuple(sorted({_video_path(Path("x" + fmt.suffix), task.name, name).name[1:]
                         for task in TASKS.values() for name, fmt in task.formats.items()
                         if _kind_of(task.name, name) == "mp4"}))


class RawFrames:
    """float32 frames [T, ...] of a clip in a hidden file beside its outputs, at fixed offsets, written (from
    any thread) and read one at a time with pwrite/pread, so they never sit in memory (a memory map's pages
    would count). Layout: `identity` (what produced them), one done byte per frame, the frames. A frame's
    done byte is set after the frame is written, so a killed run leaves only complete frames marked.

    resume: keep the frames of an earlier, interrupted run when its identity is this one's (--skip-existing);
    else start over. `close(keep)`: keep the file for a resume, or remove it."""

    def __init__(self, path: Path, shape: tuple[int, ...], identity: bytes, resume: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.count, self.shape = path, shape[0], shape[1:]
        self.nbytes = int(np.prod(self.shape)) * 4
        head = len(identity).to_bytes(4, "little") + identity
        self.offset = len(head) + self.count
        flags = os.O_RDWR | os.O_CREAT
        self.fd = os.open(path, flags, 0o600)
        if not (resume and os.pread(self.fd, len(head), 0) == head):
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, head + bytes(self.count), 0)
        self.done = np.frombuffer(os.pread(self.fd, self.count, len(head)), np.uint8).astype(bool)
        self.done_at = len(head)

    def complete(self, reread: bool = False) -> int:
        """How many frames from the first on are written (where a resumed run starts); reread: as the file
        says now (other processes write frames too)."""
        if reread:
            self.done = np.frombuffer(os.pread(self.fd, self.count, self.done_at), np.uint8).astype(bool)
        return int(self.done.argmin()) if not self.done.all() else self.count

    def __setitem__(self, t: int, frame: np.ndarray) -> None:
        data = np.ascontiguousarray(frame, np.float32).tobytes()
        if os.pwrite(self.fd, data, self.offset + t * self.nbytes) != len(data):
            raise OSError(f"short write to {self.path}")
        os.pwrite(self.fd, b"\1", self.done_at + t)
        self.done[t] = True

    def __getitem__(self, t: int) -> np.ndarray:
        data = os.pread(self.fd, self.nbytes, self.offset + t * self.nbytes)
        return np.frombuffer(data, np.float32).reshape(self.shape)

    def close(self, keep: bool = False) -> None:
        os.close(self.fd)
        if not keep:
            self.path.unlink(missing_ok=True)


class NpyStream:
    """A .npy of shape [T, ...] written one frame at a time; `commit` fixes T in the header and publishes."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, temp_path(path)
        self.handle = None
        self.count = 0

    def add(self, array: np.ndarray) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.tmp, "wb")
            self.dtype, self.shape = array.dtype, array.shape
            self.handle.write(self._header(0))
        self.handle.write(np.ascontiguousarray(array, self.dtype).tobytes())
        self.count += 1

    def _header(self, count: int) -> bytes:
        info = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                "shape": (count, *self.shape)}
        text = repr(info).encode("latin1")
        return b"\x93NUMPY\x01\x00" + (_NPY_HEADER - 10).to_bytes(2, "little") + text.ljust(_NPY_HEADER - 11) + b"\n"

    def commit(self) -> None:
        self.handle.seek(0)
        self.handle.write(self._header(self.count))
        self.handle.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


class Mp4Stream:
    """uint8 frames ([H, W] or [H, W, 3]) encoded into a video at `rate`, published on `commit`."""

    def __init__(self, path: Path, rate: Fraction):
        self.path, self.tmp, self.rate = path, temp_path(path), rate
        self.container = self.stream = None
        self.count = 0

    def add(self, array: np.ndarray) -> None:
        import av

        rgb = np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array
        rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")  # yuv420p
        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.tmp), "w", format="mp4")
            self.stream = self.container.add_stream(video_encoder(), rate=self.rate)
            self.stream.width, self.stream.height = rgb.shape[1], rgb.shape[0]
            self.stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        frame.time_base = 1 / self.rate
        self.container.mux(self.stream.encode(frame))
        self.count += 1

    def commit(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.container is not None:
            self.container.close()
        self.tmp.unlink(missing_ok=True)


class PngFrames:
    """A folder of PNG frames <folder>/<t:06d><suffix>, filled in a temp folder and moved in on `commit`."""

    def __init__(self, folder: Path, suffix: str):
        self.path, self.tmp, self.suffix = folder, temp_path(folder), suffix
        self.count = 0

    def add(self, array: np.ndarray) -> None:
        from .files import png_writer

        self.tmp.mkdir(parents=True, exist_ok=True)
        png_writer(array)(self.tmp / f"{self.count:06d}{self.suffix}")
        self.count += 1

    def commit(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def video_encoder() -> str:
    """The encoder of the visualisation videos: the first of ENCODERS this PyAV build has."""
    import av

    return next(name for name in ENCODERS if name in av.codecs_available)


def remove_stale(folder: Path) -> int:
    """Temp files of clip outputs left by a killed run (files.remove_stale_temp_files' rule)."""
    from .files import remove_stale_temp_files

    return remove_stale_temp_files(folder, output_suffixes())


TEMPORAL_MODES = ("align", "none")
ALIGNED_KINDS = ("affine_depth", "affine_disparity")  # what temporal alignment applies to


def predict_clips(pipe, clips: list, output: Path, opts, report, batch_size: int, dist=None, progress=None,
                  models=None, **run_options) -> None:
    """Predict every clip (`predict.InputImage`s of videos) and write its files under `output`, filling
    `report` (`predict.PredictReport`): a clip written counts once, and its frames; a clip that failed, or was
    kept only up to a damaged frame, adds one line to `report.failed`. `opts`: resolved `predict.PredictOptions`;
    `run_options`: passed to the runner (workers, overlap, after_batch, clock); `progress`: the run's
    progress bar (`predict.run_predict`'s), which gets one task per clip counting its frames.
    models: the `predict.ModelOutputs` of a several-model run, `pipe` their `predict.ModelSet`: each clip is
    decoded once and every model's files written (skipped only when all exist); None: `pipe` alone.

    Under torchrun (`dist`) every rank takes part in every clip (`predict_clip`); rank 0 alone counts
    them, so the combined report counts each clip once."""
    from .runtime.distributed import Dist

    dist = dist or Dist()
    if dist.is_main:
        for folder in sorted({(output / clip.rel_stem).parent for clip in clips}):
            report.stale_removed += remove_stale(folder)
    for clip in clips:
        stem = output / clip.rel_stem
        outputs = None if models is None else [(m.pipe, m.options, m.stem(output, clip.rel_stem)) for m in models]
        if opts.skip_existing and all(p.exists() for member, its, its_stem in outputs or [(pipe, opts, stem)]
                                      for p in output_files(its_stem, member.task, its.formats)):
            report.skipped_existing += dist.is_main
            continue
        try:
            kept, problem = predict_clip(pipe, clip.path, stem, opts, batch_size, dist=dist, progress=progress,
                                         models=outputs, **run_options)
        except GenPerceptError as exc:
            kept, problem = 0, str(exc)
        if dist.is_main:
            report.written += kept > 0
            report.clips_written += kept > 0
            report.frames_written += kept
            if problem:
                report.failed.append((clip.path, problem))


def predict_clip(pipe, path: Path, stem: Path, opts, batch_size: int, dist=None, progress=None, models=None,
                 **run_options) -> tuple[int, str | None]:
    """Predict one clip's sampled frames through the runner and publish its files (module docstring).

    Returns (frames written, None) or, when frames failed, (the frames before the first failure, which
    are written, one sentence). Raises GenPerceptError (nothing written) for a clip that cannot be read.

    Under torchrun (`dist`, every rank calls this for the clip) the frames still to predict are split into
    contiguous ranges, one per rank, written into the one raw file; rank 0 then aligns and publishes, as
    one process would from the same raw frames, and every rank returns rank 0's answer.

    models: [(pipeline, its resolved options, its stem)] of a several-model run, `pipe` their
    `predict.ModelSet`: the frames are decoded once, each model's predictions go to a raw file of its own
    and each model publishes its files; a frame counts as written when every model's is."""
    from .outputs import _check_prediction
    from .runtime.distributed import Dist
    from .runtime.runner import Job, Loaded, run
    from .tasks import get_task

    members = models or [(pipe, opts, stem)]
    for member, its, _ in members:
        refused = [name for name in its.formats if not for_clips(get_task(member.task).formats[name])]
        if refused:
            raise GenPerceptError(f"{path}: the {refused[0]!r} format is not written for videos.")
    frames = opts.frame_range
    info = probe_clip(path, frames)
    res = opts.processing_res if models is None else tuple(its.processing_res for _, its, _ in members)
    size = pipe.processed_size(*info.size, res)
    dist = dist or Dist()
    raws = [_raw_frames(member, path, its_stem, its, info, dist) for member, its, its_stem in members]
    dist.gather(None)  # the others open the files rank 0 has prepared
    raws = [raw or _raw_frames(member, path, its_stem, its, info, dist, resume=True)
            for raw, (member, its, its_stem) in zip(raws, members)]
    # Batches as one uninterrupted process makes them (batch composition moves fp32 results by an ulp): a
    # resumed clip restarts at a batch boundary, and the ranks get contiguous runs of whole batches.
    resumed = min(raw.complete() for raw in raws) // batch_size * batch_size  # > 0: a killed run's (--skip-existing)
    batches = np.array_split(np.arange(-(-(info.frames - resumed) // batch_size)), dist.world)[dist.rank]
    first, stop = (resumed + int(batches[0]) * batch_size, min(info.frames, resumed + (int(batches[-1]) + 1)
                   * batch_size)) if len(batches) else (info.frames, info.frames)
    # On the CPU the model's threads take every core and FFmpeg's one-per-core decoder threads would take turns
    # with them: one decoder thread stays ahead of the model there (benchmarks/video.py, 64² clip, 2 cores,
    # frames/s median of 7: 63.2 with FFmpeg's threads, 77.4 with one; the same frames as PNGs 69.5).
    on_cpu = all(member.device.type == "cpu" for member, _, _ in members)
    source = FrameSource(path, frames, info.frames, first, threads=1 if on_cpu else 0)

    def load(job: Job) -> Loaded:
        return Loaded(job, pipe.model_input(source.frame(job.index), job.size), info.size)

    def sink(loaded: Loaded, prediction) -> None:
        predictions = (prediction,) if models is None else prediction
        for raw, (member, _, _), one in zip(raws, members, predictions, strict=True):
            raw[loaded.job.index] = _check_prediction(one, get_task(member.task), member.spec.kind)

    finished = False
    task_id = progress.add_task(path.name, total=stop - first) if progress else None  # a collective: every rank
    try:
        result = run(pipe, [Job(k, size) for k in range(first, stop)], load, sink, batch_size=batch_size,
                     sink_workers=2, describe=lambda job: f"{path} frame {job.index}", progress=progress,
                     task_id=task_id, **run_options)
        failed = [f for part in dist.gather(result.failed) for f in part]  # every rank's frames are on disk now
        kept = min(raw.complete(reread=dist.active) for raw in raws)  # frames before the first failure
        if kept and dist.is_main:
            for raw, (member, its, its_stem) in zip(raws, members, strict=True):
                temporal = its.temporal == "align" and member.spec.kind in ALIGNED_KINDS
                _publish(raw, kept, its_stem, member, its, info.rate, temporal)
        dist.gather(None)  # published before any rank goes on (a later --skip-existing test sees the files)
        finished = True
    finally:
        source.close()
        for raw in raws:
            raw.close(keep=not finished or not dist.is_main)  # interrupted: --skip-existing resumes from its frames
    if kept == info.frames:
        return kept, None if info.damage is None else f"{info.damage.rstrip('.')}; {kept} frames kept."
    failure = next((message for job, message in failed if job.index == kept),
                   f"{path}: frame {kept} was not predicted.")
    return kept, f"{failure.rstrip('.')}; {kept} of {info.frames} frames kept."


def _raw_frames(pipe, path: Path, stem: Path, opts, info: ClipInfo, dist, resume: bool = False) -> RawFrames | None:
    """The raw file of one model's predictions of a clip, beside its outputs (rank 0 prepares it, resuming an
    earlier run's frames under --skip-existing; `resume` opens the one prepared); None on the other ranks."""
    from .tasks import get_task

    if not (resume or dist.is_main):
        return None
    channels = get_task(pipe.task).channels
    shape = (info.frames, *info.size, *((channels,) if channels > 1 else ()))
    return RawFrames(stem.parent / f".{stem.name}_raw.partial", shape, _identity(pipe, path, opts, info),
                     resume=resume or opts.skip_existing)


def _identity(pipe, path: Path, opts, info: ClipInfo) -> bytes:
    """What the raw frames of a clip depend on: a resumed run reuses them only when all of it is the same."""
    stat = Path(path).stat()
    device = getattr(getattr(pipe, "device", None), "type", "")  # cuda, not cuda:1: ranks share the file
    return repr((str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, pipe.spec.name, str(pipe.dtype),
                 device, opts.processing_res, opts.frame_range, info.frames, info.size)).encode()


def _clip_range(raw: RawFrames, count: int) -> np.ndarray:
    """float32 [2]: the (min, max) of the finite values of the first `count` frames of `raw`, read one at a
    time; [0, 0] when there is none (as `colormap.finite_range` has it for one image)."""
    low, high = np.inf, -np.inf
    for t in range(count):
        frame = raw[t]
        finite = frame[np.isfinite(frame)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return np.array([low, high] if low <= high else [0.0, 0.0], np.float32)


def _publish(raw: RawFrames, count: int, stem: Path, pipe, opts, rate: Fraction, temporal: bool) -> None:
    """Encode the first `count` predictions of `raw` frame by frame into every format's file, aligned over
    time first where `temporal`; every file appears complete or not at all."""
    from .outputs import _encode
    from .tasks import get_task
    from .tasks.depth import METRIC
    from .temporal import ClipAlignment

    task = get_task(pipe.task)
    align = ClipAlignment.fit(raw[t] for t in range(count)) if temporal else None
    # metric depth keeps its metres: one clip-wide colour range, so a colour is the same distance in every frame
    whole = _clip_range(raw, count) if pipe.spec.kind == METRIC else None
    writers = []
    for path, name in zip(output_files(stem, pipe.task, opts.formats), opts.formats):
        kind = _kind_of(pipe.task, name)
        writer = (NpyStream(path) if kind == "npy" else Mp4Stream(path, rate) if kind == "mp4"
                  else PngFrames(path, task.formats[name].suffix))
        writers.append((name, writer))
    try:
        for t in range(count):
            frame = raw[t] if align is None else align.apply(t, raw[t])
            if opts.normal_flip:
                frame = task.flip(frame, opts.normal_flip)
            for name, writer in writers:
                writer.add(_encode(frame, task, name, None, pipe.spec.kind, pipe.spec.labels, whole=whole))
        for _, writer in writers:
            writer.commit()
    except BaseException:
        for _, writer in writers:
            writer.abort()
        raise
