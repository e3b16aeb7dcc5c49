"""Video input (issue 21): clips encoded here with PyAV, predicted through `genpercept predict`, and the
temporal alignment of affine depth on constructed sequences."""

import re
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genpercept_cli.cli import app
from genpercept_cli.files import quantize
from genpercept_cli.temporal import ClipAlignment, flicker
from genpercept_cli.video import FrameRange, read_frames

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _frame(i: int, h: int, w: int) -> np.ndarray:
    """Frame i of a test clip: a bright band that widens with i (order shows), a green top band."""
    image = np.full((h, w, 3), 40, np.uint8)
    image[:, : 6 + 4 * i] = 230
    image[: h // 4, :, 1] = 200
    return image


def write_clip(path: Path, frames: int = 8, h: int = 32, w: int = 48, codec: str = "libx264",
               rate: int = 10, noisy: bool = False) -> Path:
    """A clip of `frames` frames `_frame(i)`; noisy: random pixels added, so every frame takes many bytes."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            image = _frame(i, h, w)
            if noisy:
                image = image // 2 + rng.integers(0, 128, image.shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)])


def _decoded(path: Path) -> list:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [stream.average_rate, *(f.to_ndarray(format="rgb24") for f in container.decode(stream))]


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.mkv", "libx264"), ("clip.avi", "mpeg4"),
                                        ("clip.webm", "libvpx-vp9")])
def test_clip_outputs_have_one_frame_per_sampled_frame_in_order(tmp_path, checkpoint_root, name, codec):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    write_clip(src / name, codec=codec)
    out = tmp_path / "out"
    result = _predict(tmp_path / "src", "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res",
                      "32", "--frame-stride", "2", "--temporal", "none")
    assert result.exit_code == 0, result.output
    raw = np.load(out / "a" / "clip_pred.npy")
    assert raw.shape == (4, 32, 48) and raw.dtype == np.float32
    rate, *colored = _decoded(out / "a" / "clip_colored.mp4")
    assert rate == 5 and len(colored) == 4 and colored[0].shape == (32, 48, 3)  # 10 fps, every 2nd frame
    pngs = sorted((out / "a" / "clip_pred").iterdir())
    assert [p.name for p in pngs] == [f"{t:06d}_pred.png" for t in range(4)]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[3])), quantize(raw[3], np.uint16))
    assert not list(out.rglob(".*"))  # no temp file left


def test_on_the_cpu_a_clip_is_decoded_by_one_ffmpeg_thread_with_the_same_frames(tmp_path, checkpoint_root,
                                                                                  monkeypatch):
    from genpercept_cli import video

    clip = write_clip(tmp_path / "clip.mp4", frames=6)
    one = list(read_frames(clip, FrameRange(), threads=1))
    assert len(one) == 6 and all(np.array_equal(a, b) for a, b in zip(one, read_frames(clip, FrameRange())))
    opened, real_open = [], video._open

    def spy(path, threads=0):
        container, stream = real_open(path, threads)
        opened.append(stream.codec_context.thread_count)
        return container, stream

    monkeypatch.setattr(video, "_open", spy)
    result = _predict(clip, "-o", tmp_path / "out", "-c", checkpoint_root / "unet_depth_v2", "--processing-res", "32",
                      "--formats", "npy")
    assert result.exit_code == 0, result.output
    assert opened[-1] == 1  # the frames the model reads: one decoder thread beside torch's (probing may use more)


def test_raw_frames_equal_predict_on_the_same_frames_as_images(tmp_path, checkpoint_root):
    clip = write_clip(tmp_path / "clip.mov", frames=9, h=31, w=45, codec="mpeg4")  # odd sizes
    frames = list(read_frames(clip, FrameRange(stride=3, max_frames=2)))
    everything = list(read_frames(clip, FrameRange()))
    assert len(everything) == 9 and all(np.array_equal(a, b) for a, b in zip(frames, everything[::3]))
    stills = tmp_path / "stills"
    stills.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(stills / f"{t}.png")
    model = checkpoint_root / "unet_depth_v2"
    common = ["-c", model, "--processing-res", "32", "--formats", "npy,color", "--batch-size", "2"]
    assert _predict(stills, "-o", tmp_path / "ref", *common).exit_code == 0
    result = _predict(clip, "-o", tmp_path / "out", *common, "--frame-stride", "3", "--max-frames", "2",
                      "--temporal", "none")
    assert result.exit_code == 0, result.output
    raw = np.load(tmp_path / "out" / "clip_pred.npy")
    assert raw.shape == (2, 31, 45)
    for t in range(2):
        np.testing.assert_array_equal(raw[t], np.load(tmp_path / "ref" / f"{t}_pred.npy"))  # bit-exact
    _, *colored = _decoded(tmp_path / "out" / "clip_colored.mp4")
    assert colored[0].shape == (32, 46, 3)  # yuv420p: the odd last row and column repeated


def _rotated_90(clip: Path) -> Path:
    """`clip` (mp4) with the display matrix of a phone's "rotate=90" (shown turned clockwise) in its track
    header, as FFmpeg writes it: [[0, 1], [-1, 0]] in 16.16 fixed point (PyAV < 16 cannot set it)."""
    data = bytearray(clip.read_bytes())
    at = data.index(b"tkhd") + 4 + 40  # version/flags, times, track id, duration, reserved, layer, volume
    data[at : at + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    clip.write_bytes(bytes(data))
    return clip


def test_rotation_metadata_is_applied(tmp_path, checkpoint_root):
    clip = _rotated_90(write_clip(tmp_path / "phone.mp4"))
    first = next(read_frames(clip, FrameRange()))
    assert first.shape == (48, 32, 3)
    assert first[:4, :, 0].mean() > 200 and first[-4:, :, 0].mean() < 80  # the bright left band is on top
    assert first[:, -4:, 1].mean() > 150  # the green top band is on the right
    result = _predict(clip, "-c", checkpoint_root / "unet_normal_v2", "-o", tmp_path / "out", "--processing-res",
                      "32", "--max-frames", "3")
    assert result.exit_code == 0, result.output
    normals = np.load(tmp_path / "out" / "phone_pred.npy")
    assert normals.shape == (3, 48, 32, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
    assert len(_decoded(tmp_path / "out" / "phone_pred.mp4")) == 4  # rate + 3 RGB frames


def test_start_and_end_select_seconds(tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", frames=10)
    everything = list(read_frames(clip, FrameRange()))
    some = list(read_frames(clip, FrameRange(start=0.3, end=0.7)))
    assert len(some) == 4 and all(np.array_equal(a, b) for a, b in zip(some, everything[3:7]))


def _aligned(frames: list) -> list:
    alignment = ClipAlignment.fit(frames)
    return [alignment.apply(t, frame) for t, frame in enumerate(frames)]


def _depth_scene(t: int, size: int = 48) -> np.ndarray:
    """Ground-truth depth in [0.2, 1] of a slowly panning scene (a slanted plane with a bump)."""
    y, x = np.mgrid[0:size, 0:size] / size
    return 0.2 + 0.5 * y + 0.3 * np.exp(-((x - 0.3 - 0.01 * t) ** 2 + (y - 0.5) ** 2) / 0.02)


def test_alignment_brings_flicker_down_to_the_noise_level():
    rng = np.random.default_rng(0)
    noise = 0.002
    truth = [_depth_scene(t) for t in range(30)]
    distorted = []
    for depth in truth:  # the unknown scale and shift of each frame of an affine-invariant model, and noise
        d = rng.uniform(0.5, 2.0) * depth + rng.uniform(-0.5, 0.5) + rng.normal(0, noise, depth.shape)
        distorted.append(d.astype(np.float32))
    truth_norm = [(d - min(f.min() for f in truth)) / (max(f.max() for f in truth) - min(f.min() for f in truth))
                  for d in truth]
    aligned = _aligned(distorted)
    motion = flicker(truth_norm)  # what the scene itself changes per frame
    assert flicker(distorted) > motion + 0.02
    assert flicker(aligned) < motion + 2 * noise
    for frames, limit in ((aligned, 0.01), (distorted, None)):  # one affine map from the truth for the clip
        s, c = np.polyfit(np.ravel(truth_norm), np.ravel(frames), 1)
        error = max(np.abs(s * b + c - a).mean() for a, b in zip(frames, truth_norm))
        assert error < limit if limit else error > 0.1


def test_alignment_does_not_drift_over_1000_static_frames():
    rng = np.random.default_rng(1)
    noise = 0.005
    truth = _depth_scene(0, size=24)
    frames = [(rng.uniform(0.5, 2.0) * truth + rng.uniform(-0.5, 0.5) + rng.normal(0, noise, truth.shape))
              for _ in range(1000)]
    aligned = _aligned(frames)
    noise_level = np.abs(aligned[0] - aligned[1]).mean()  # two frames differ by their noise only
    assert np.abs(aligned[0] - aligned[-1]).mean() < 1.1 * noise_level
    unaligned = _aligned(frames[:1]) + [f for f in frames[1:]]
    assert np.abs(unaligned[0] - unaligned[-1]).mean() > 0.05


def test_depth_video_is_aligned_by_default_and_not_with_temporal_none(tmp_path, checkpoint_root):
    clip = write_clip(tmp_path / "clip.mp4")
    model = checkpoint_root / "unet_depth_v2"
    for mode in ("align", "none"):
        assert _predict(clip, "-c", model, "-o", tmp_path / mode, "--processing-res", "32", "--formats", "npy",
                        "--temporal", mode).exit_code == 0
    raw = np.load(tmp_path / "none" / "clip_pred.npy")
    aligned = np.load(tmp_path / "align" / "clip_pred.npy")
    expected = _aligned(list(raw))
    np.testing.assert_allclose(aligned, np.stack(expected), atol=1e-6)
    assert aligned.min() == 0.0 and aligned.max() == 1.0 and not np.array_equal(aligned, raw)


def test_truncated_clip_keeps_the_frames_before_the_damage(tmp_path, checkpoint_root):
    good = write_clip(tmp_path / "good.mkv", frames=8, noisy=True)
    bad = tmp_path / "src" / "cut.mkv"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[: good.stat().st_size * 6 // 10])
    result = _predict(bad.parent, "-c", checkpoint_root / "unet_dis_v2", "-o", tmp_path / "out",
                      "--processing-res", "32")
    assert result.exit_code == 1
    assert "cut.mkv: the file ends after 4 of the 8 frames its header announces (truncated); 4 frames kept." \
        in " ".join(result.output.split())
    assert np.load(tmp_path / "out" / "cut_pred.npy").shape == (4, 32, 48)
    assert len(_decoded(tmp_path / "out" / "cut_pred.mp4")) == 5  # the 8-bit alpha as video
    assert not list((tmp_path / "out").rglob(".*"))


def _no_video_stream(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _patched(clip: Path, old: bytes, new: bytes, count: int = -1) -> Path:
    data = clip.read_bytes()
    assert old in data
    clip.write_bytes(data.replace(old, new, count))
    return clip


def _damaged_codec_data(clip: Path) -> Path:
    """`clip` (H.264 mp4) with the body of its avcC box (the decoder's SPS/PPS, FFmpeg's extradata) zeroed."""
    data = bytearray(clip.read_bytes())
    at = data.index(b"avcC")
    size = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 : at - 4 + size] = bytes(size - 8)
    clip.write_bytes(bytes(data))
    return clip


@pytest.mark.parametrize("case,args,message", [
    ("not_a_video", [], "x.mp4: cannot be read as a video"),
    ("audio_only", [], "x.mkv: holds no video stream."),
    ("empty_range", ["--start", "5"], "x.mp4: holds no video frames between --start and --end."),
    ("zero_frames", [], "x.mkv: holds no video frames."),
    # EVC (MPEG-5) has an mp4 tag FFmpeg knows and no decoder in PyAV's wheel; an unknown Matroska codec id
    ("no_decoder", [], "x.mp4: its video codec is not one this FFmpeg build can decode."),
    ("unknown_codec", [], "x.mkv: its video codec is not one this FFmpeg build can decode."),
    ("damaged_codec_data", [], "x.mp4: no frame can be decoded (Invalid data found when processing input)."),
])
def test_unreadable_clips_write_nothing_and_fail_the_run(tmp_path, checkpoint_root, case, args, message):
    src = tmp_path / "src"
    src.mkdir()
    if case == "no_decoder":
        _patched(write_clip(src / "x.mp4"), b"avc1", b"evc1")
    elif case == "unknown_codec":
        _patched(write_clip(src / "x.mkv"), b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/ZZZ")
    elif case == "damaged_codec_data":
        _damaged_codec_data(write_clip(src / "x.mp4"))
    elif case == "not_a_video":
        (src / "x.mp4").write_bytes(b"\0" * 64 + b"not a video" * 30)
    elif case == "audio_only":
        _no_video_stream(src / "x.mkv")
    elif case == "zero_frames":
        with av.open(str(src / "x.mkv"), "w") as container:  # a stream's header, no frame
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
            container.start_encoding()
    else:
        write_clip(src / "x.mp4", frames=4)
    Image.fromarray(_frame(0, 32, 48)).save(src / "still.png")
    out = tmp_path / "out"
    result = _predict(src, "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32", *args)
    assert result.exit_code == 1 and message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["still_colored.png", "still_pred.npy", "still_pred.png"]


def test_a_clip_has_its_own_progress_count_of_frames(tmp_path, checkpoint_root):
    clip = write_clip(tmp_path / "clip.mp4", frames=5)
    result = _predict(clip, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", "--processing-res", "32")
    assert result.exit_code == 0, result.output
    assert re.search(r"clip\.mp4 .*5/5 +100%", result.output), result.output
    assert "0/0" not in result.output  # no bar of images when there are none
    assert result.output.startswith("1 clip -> ")
    assert re.search(r"^wrote 1 of 1 clip \(5 frames\) in [0-9.]+ s$", result.output, re.M), result.output


def test_the_header_and_summary_count_images_clips_and_frames(tmp_path, checkpoint_root):
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "a.mp4", frames=3)
    write_clip(src / "b.mkv", frames=5)
    (src / "c.mp4").write_bytes(b"not a video" * 30)
    for name in ("x.png", "y.png"):
        Image.fromarray(_frame(0, 32, 48)).save(src / name)
    result = _predict(src, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", "--processing-res", "32",
                      "--frame-stride", "2")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("2 images and 3 clips -> ")
    assert re.search(r"predict .*2/2 +100%", result.output), result.output  # the images' bar counts images
    assert re.search(r"^wrote 2 of 2 images and 2 of 3 clips \(5 frames\) in [0-9.]+ s, 1 failed", result.output,
                     re.M), result.output  # frames 0, 2 of a.mp4 and 0, 2, 4 of b.mkv


@pytest.mark.parametrize("formats", ["npy,exr", "npy,ply", "npy,glb,camera"])
def test_image_only_formats_refuse_the_clip_and_still_write_the_images(tmp_path, checkpoint_root, formats):
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "clip.mp4", frames=2)
    Image.fromarray(_frame(0, 32, 48)).save(src / "still.png")
    out = tmp_path / "out"
    result = _predict(src, "-c", checkpoint_root / "unet_depth_v2", "-o", out, "--processing-res", "32",
                      "--formats", formats)
    refused = formats.split(",")[1]
    assert result.exit_code == 1, result.output
    assert f"clip.mp4: the {refused!r} format is not written for videos." in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not [p for p in out.rglob("clip*")]
    assert (out / "still_pred.npy").is_file()


@pytest.mark.parametrize("flags,message", [
    (["--frame-stride", "0"], "--frame-stride must be at least 1."),
    (["--max-frames", "-1"], "--max-frames must be 0 (all) or positive."),
    (["--start", "2", "--end", "1"], "--end must be after --start."),
    (["--temporal", "smooth"], "--temporal must be one of align, none."),
])
def test_bad_video_options_are_usage_errors(tmp_path, checkpoint_root, flags, message):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    result = _predict(clip, "-c", checkpoint_root / "unet_depth_v2", "-o", tmp_path / "out", *flags)
    assert result.exit_code == 2 and result.output.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_skip_existing_resumes_a_killed_clip_from_its_last_complete_frame(tmp_path, checkpoint_root):
    from genpercept_cli.pipeline import GenPerceptPipeline
    from genpercept_cli.predict import PredictOptions, discover_images, run_predict

    clip = write_clip(tmp_path / "clip.mp4", frames=8)
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    images = discover_images(str(clip)).images
    options = PredictOptions(processing_res=32, batch_size=2, workers=1, skip_existing=True)
    run_predict(pipe, images, tmp_path / "whole", options)
    batches = []

    def killed_after_two_batches():
        batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_predict(pipe, images, tmp_path / "out", options, overlap=False, after_batch=killed_after_two_batches)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".clip_raw.partial"]  # nothing published
    batches.clear()
    report = run_predict(pipe, images, tmp_path / "out", options, overlap=False, after_batch=lambda: batches.append(1))
    assert (report.written, report.failed, len(batches)) == (1, [], 2)  # frames 4..7 only
    for name in ("clip_pred.npy", "clip_colored.mp4"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip_colored.mp4", "clip_pred", "clip_pred.npy"]


class _Rank1Of2:
    """rank 1 of 2 whose partner has nothing to say (gather returns this rank's object twice)."""

    rank, world, active, is_main = 1, 2, True, False

    def gather(self, obj):
        return [obj, obj]


def test_under_torchrun_a_rank_predicts_its_contiguous_whole_batches_and_rank_0_publishes(tmp_path, checkpoint_root):
    from genpercept_cli.pipeline import GenPerceptPipeline
    from genpercept_cli.predict import PredictOptions
    from genpercept_cli.video import predict_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=9)
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"))
    options = PredictOptions(processing_res=32).validate(pipe.spec)
    seen = []
    real = pipe.predict_batch
    pipe.predict_batch = lambda rgb: seen.append(len(rgb)) or real(rgb)
    predict_clip(pipe, clip, tmp_path / "out" / "clip", options, 2, dist=_Rank1Of2(), overlap=False)
    assert seen == [2, 1]  # of the batches [0 1] [2 3] [4 5] [6 7] [8]: rank 0 the first three, rank 1 the rest
    raw = tmp_path / "out" / ".clip_raw.partial"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [raw.name]  # rank 0 publishes and removes it
    done = raw.read_bytes()[-(9 * 32 * 48 * 4) - 9 : -(9 * 32 * 48 * 4)]
    assert done == bytes(6) + b"\1" * 3  # frames 6, 7, 8 written by this rank


def test_metric_depth_colour_video_spans_one_clip_wide_range(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from genpercept_cli import video
    from genpercept_cli.colormap import colorize_metric_depth

    frames = [np.array([[1.0, 2.0], [1.5, np.nan]], np.float32), np.array([[2.0, 4.0], [3.0, 2.5]], np.float32)]
    raw = video.RawFrames(tmp_path / ".raw", (2, 2, 2), b"test")
    for t, frame in enumerate(frames):
        raw[t] = frame
    pipe = SimpleNamespace(task="depth", spec=SimpleNamespace(kind="metric_depth", labels=None))
    opts = SimpleNamespace(formats=("npy", "color"), normal_flip="")
    encoded, add = [], video.Mp4Stream.add
    monkeypatch.setattr(video.Mp4Stream, "add", lambda self, array: encoded.append(array) or add(self, array))
    video._publish(raw, 2, tmp_path / "clip", pipe, opts, Fraction(10), temporal=False)
    raw.close()
    np.testing.assert_array_equal(np.load(tmp_path / "clip_pred.npy"), np.stack(frames))  # metres as predicted
    for frame, colours in zip(frames, encoded):  # 1 m (the clip's nearest) .. 4 m (its farthest) in every frame
        np.testing.assert_array_equal(colours, colorize_metric_depth(frame, 1.0, 4.0))
    np.testing.assert_array_equal(encoded[0][0, 1], encoded[1][0, 0])  # 2 m: one colour in both frames
    assert len(_decoded(tmp_path / "clip_colored.mp4")) == 3
