"""The one runner: every job exactly once, batches of one size, sharding, failures, and eval batching."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _archives import write_tar, write_tree
from test_datasets import NYU_TAR, nyu_files

from benchmarks.evaluate import EvalOptions, evaluate
from genpercept_cli.errors import GenPerceptError
from genpercept_cli.runtime.runner import Job, Loaded, SkipJob, run


class FakePipe:
    """prediction = the input's first channel, as float; records every batch it sees."""

    def __init__(self, oom_above: int | None = None):
        self.batches, self.oom_above = [], oom_above

    def predict_batch(self, rgb):
        if self.oom_above is not None and rgb.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("fake")
        self.batches.append((rgb.shape[0], tuple(rgb.shape[-2:])))
        return rgb[:, :1].float()

    def postprocess(self, pred, size):
        assert tuple(pred.shape[-2:]) == tuple(size)
        return pred[0].numpy()


SIZES = [(8, 8), (8, 12), (12, 8)]


def _jobs(n: int, seed: int, known: bool):
    rng = np.random.default_rng(seed)
    sizes = [SIZES[i] for i in rng.integers(0, len(SIZES), n)]
    return [Job(i, sizes[i] if known else None) for i in range(n)], sizes


def _run(pipe, jobs, sizes, batch_size, shard=None, overlap=True):
    seen: dict[int, float] = {}

    def load(job):
        h, w = sizes[job.index]
        return Loaded(job, torch.full((1, 3, h, w), job.index % 256, dtype=torch.uint8), (h, w))

    def sink(loaded, prediction):
        assert loaded.job.index not in seen, "a job reached the sink twice"
        seen[loaded.job.index] = float(prediction[0, 0])

    report = run(pipe, jobs, load, sink, batch_size=batch_size, workers=2, overlap=overlap, shard=shard)
    return seen, report


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_job_once_in_batches_of_one_size(known, batch_size, seed):
    jobs, sizes = _jobs(23, seed, known)
    pipe = FakePipe()
    seen, report = _run(pipe, jobs, sizes, batch_size)
    assert report.done == 23 and report.failed == []
    assert seen == {i: float(i % 256) for i in range(23)}
    assert all(n <= batch_size for n, _ in pipe.batches) and sum(n for n, _ in pipe.batches) == 23
    if known:  # bucketed up front: every batch but the last of each size is full
        for size in set(sizes):
            counts = [n for n, s in pipe.batches if s == size]
            assert counts[:-1] == [batch_size] * (len(counts) - 1)


@pytest.mark.parametrize("shards", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_shards_cover_every_job_exactly_once(shards, batch_size):
    jobs, sizes = _jobs(17, 3, known=True)
    union: dict[int, float] = {}
    for rank in range(shards):
        seen, report = _run(FakePipe(), jobs, sizes, batch_size, shard=lambda js, r=rank: js[r::shards])
        assert not set(seen) & set(union)
        union.update(seen)
    assert sorted(union) == list(range(17))


def test_serial_mode_gives_the_same_predictions():
    jobs, sizes = _jobs(9, 4, known=False)
    assert _run(FakePipe(), jobs, sizes, 3, overlap=False)[0] == _run(FakePipe(), jobs, sizes, 3)[0]


def test_out_of_memory_halves_the_batch_then_reports_single_inputs():
    jobs, sizes = _jobs(12, 5, known=True)
    pipe = FakePipe(oom_above=1)
    seen, report = _run(pipe, jobs, sizes, 4)
    assert len(seen) == 12 and all(n == 1 for n, _ in pipe.batches)
    seen, report = _run(FakePipe(oom_above=0), jobs[:2], sizes, 2)
    h, w = sizes[0]
    assert seen == {} and report.failed[0] == (jobs[0], f"item 0: out of memory at {w}x{h}; lower --processing-res.")


def test_load_failures_are_reported_in_index_order_and_the_rest_runs():
    jobs, sizes = _jobs(6, 6, known=False)

    def load(job):
        if job.index in (1, 4):
            raise SkipJob(f"job {job.index} skipped")
        if job.index == 2:
            raise GenPerceptError("job 2 unreadable")
        h, w = sizes[job.index]
        return Loaded(job, torch.zeros(1, 3, h, w, dtype=torch.uint8), (h, w))

    report = run(FakePipe(), jobs, load, lambda loaded, pred: None, batch_size=2)
    assert report.done == 3
    assert [message for _, message in report.failed] == ["job 1 skipped", "job 2 unreadable", "job 4 skipped"]


def test_a_sink_problem_fails_that_job_only():
    jobs, sizes = _jobs(4, 7, known=True)

    def load(job):
        h, w = sizes[job.index]
        return Loaded(job, torch.zeros(1, 3, h, w, dtype=torch.uint8), (h, w))

    def sink(loaded, prediction):
        if loaded.job.index == 3:
            raise OSError("disk full")
        return "bad prediction" if loaded.job.index == 0 else None

    report = run(FakePipe(), jobs, load, sink, batch_size=2)
    assert report.done == 2
    assert report.failed == [(jobs[0], "bad prediction"), (jobs[3], "item 3: could not write outputs (disk full).")]


# -- eval batches through the runner ---------------------------------------------------------------
def _evaluate_recording(opts, pipe):
    """evaluate() with `pipe`, returning the result and the batch sizes the model saw."""
    seen, real = [], pipe.predict_batch

    def recording(rgb):
        seen.append(rgb.shape[0])
        return real(rgb)

    pipe.predict_batch = recording
    try:
        return evaluate(opts, pipe=pipe), seen
    finally:
        del pipe.predict_batch


def _assert_same_scores(one, many):
    assert one.n_images == many.n_images > 1 and [r["key"] for r in one.rows] == [r["key"] for r in many.rows]
    for key, value in one.metrics.items():
        if value is not None:
            assert many.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("batch_size", [2, 3])
def test_eval_batched_equals_batch_1_on_uniform_sizes(tmp_path, checkpoint_root, batch_size):
    from genpercept_cli.pipeline import GenPerceptPipeline

    files, _ = nyu_files(np.random.default_rng(0))
    write_tar(tmp_path / "data" / NYU_TAR, files)
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu", dtype="fp32")
    results = {}
    for bs in (1, batch_size):
        opts = EvalOptions(dataset="nyu", data_dir=tmp_path / "data", processing_res=64, batch_size=bs)
        results[bs] = _evaluate_recording(opts, pipe)
    n = results[1][0].n_images
    assert set(results[1][1]) == {1} and max(results[batch_size][1]) == min(batch_size, n)
    _assert_same_scores(results[1][0], results[batch_size][0])


def test_eval_batched_with_mixed_sizes(tmp_path, checkpoint_root):
    """DIS images of three sizes, interleaved: batches form per size as samples arrive."""
    from _archives import jpg_bytes, png_bytes

    from genpercept_cli.pipeline import GenPerceptPipeline

    rng = np.random.default_rng(1)
    files = {}
    for i, (h, w) in enumerate([(10, 12), (14, 10), (10, 12), (14, 10), (10, 12), (20, 16), (10, 12)]):
        subset = f"DIS-TE{1 + i % 4}"
        files[f"{subset}/im/s{i}.jpg"] = jpg_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        files[f"{subset}/gt/s{i}.png"] = png_bytes(rng.choice(np.array([0, 255], dtype=np.uint8), (h, w)))
    write_tree(tmp_path / "data" / "DIS5K", files)
    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_dis_v2"), device="cpu", dtype="fp32")
    out = {}
    for bs in (1, 4):
        opts = EvalOptions(dataset="dis-te", data_dir=tmp_path / "data", processing_res=32, batch_size=bs,
                           with_hce=False)
        out[bs] = _evaluate_recording(opts, pipe)
    assert max(out[4][1]) > 1 and sum(out[4][1]) == 7
    _assert_same_scores(out[1][0], out[4][0])
    assert json.dumps(sorted(out[1][0].subsets)) == json.dumps(sorted(out[4][0].subsets))


def test_eval_batch_size_must_not_be_negative(tmp_path):
    with pytest.raises(GenPerceptError, match="--batch-size must be 0"):
        evaluate(EvalOptions(dataset="nyu", data_dir=tmp_path, checkpoint="depth", batch_size=-1))


def test_eval_cli_batch_size_and_metric_space(tmp_path, checkpoint_root):
    from typer.testing import CliRunner

    from benchmarks.datasets import get_dataset
    from benchmarks.evaluate import prediction_stem
    from genpercept_cli.cli import app

    files, _ = nyu_files(np.random.default_rng(0))
    write_tar(tmp_path / "data" / NYU_TAR, files)
    data = tmp_path / "data"
    base = ["eval", "-d", "nyu", "--data-dir", str(data), "--limit", "2"]
    model = [*base, "-c", str(checkpoint_root / "unet_depth_v2"), "--processing-res", "64"]
    runner = CliRunner()
    outs = {}
    for bs in ("1", "2"):
        result = runner.invoke(app, [*model, "--batch-size", bs, "-o", str(tmp_path / f"b{bs}.json")])
        assert result.exit_code == 0, result.output
        outs[bs] = json.loads((tmp_path / f"b{bs}.json").read_text())["metrics"]
    assert outs["2"] == pytest.approx(outs["1"], rel=1e-6)
    result = runner.invoke(app, [*model, "--batch-size", "-1"])
    assert result.exit_code == 2 and "--batch-size must be 0 (automatic) or positive." in result.output
    # metric depth files are scored as they are: the ground truth itself scores 0 error, alignment "none"
    for sample in get_dataset("nyu", data, 2):
        path = tmp_path / "pred" / f"{prediction_stem(sample.key)}_pred.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.where(sample.valid, sample.gt, 1.0).astype(np.float32))
    out = tmp_path / "metric.json"
    result = runner.invoke(app, [*base, "--predictions", str(tmp_path / "pred"), "--space", "metric", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"]["alignment"] == "none" and report["protocol"]["space"] == "metric"
    assert report["metrics"]["absrel"] == 0 and report["metrics"]["delta1"] == 1


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_size_balanced_shards_keep_batches_full_and_cover_every_job_once(world, batch_size):
    from genpercept_cli.runtime.distributed import Dist

    jobs, sizes = _jobs(37, 9, known=True)
    shares = [Dist(rank, world).shard_batches(jobs, batch_size) for rank in range(world)]
    assert sorted(job.index for share in shares for job in share) == list(range(37))
    for size in set(sizes):
        counts = [sum(job.size == size for job in share) for share in shares]
        partial = [c % batch_size for c in counts if c % batch_size]
        assert len(partial) <= 1  # only the last batch of a size may be short, on one rank
        assert max(counts) - min(counts) <= batch_size  # every rank gets its share of every size


# -- the data path: batch post-processing, uploads, overlap, the memory model ----------------------
@pytest.mark.parametrize("task, channels", [("depth", 1), ("normal", 3), ("seg", 3), ("matting", 1)])
def test_batch_postprocess_equals_the_per_image_path(checkpoint_root, task, channels):
    from genpercept_cli.pipeline import GenPerceptPipeline

    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / f"unet_{task}_v2"), device="cpu")
    preds = torch.rand(4, channels, 12, 16, generator=torch.Generator().manual_seed(3)) * 1.2 - 0.1
    sizes = [(20, 27), (12, 16), (20, 27), (7, 9)]  # mixed input sizes, one of them the processed size
    for one_copy in (None, True):  # True: the CUDA path's single device-to-host copy, here on the CPU
        batch = pipe.postprocess_batch(preds, sizes, one_copy=one_copy)
        for pred, size, got in zip(preds, sizes, batch):
            want = pipe.postprocess(pred, size)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


class BatchPostPipe(FakePipe):
    """FakePipe with a batch post-processing that records the batches it gets."""

    def __init__(self):
        super().__init__()
        self.post_calls = []

    def postprocess_batch(self, preds, sizes):
        self.post_calls.append((preds.shape[0], list(sizes)))
        return [p[0].numpy() for p in preds]


def test_runner_post_processes_each_batch_in_one_call():
    pipe = BatchPostPipe()
    jobs, sizes = _jobs(7, seed=4, known=True)
    seen, report = _run(pipe, jobs, sizes, batch_size=3)
    assert report.done == 7 and seen == {i: float(i % 256) for i in range(7)}
    assert [n for n, _ in pipe.post_calls] == [n for n, _ in pipe.batches]  # one call per model batch
    assert all(len(set(s)) == 1 for _, s in pipe.post_calls)  # known sizes: batches of one size


def test_upload_resize_on_the_cpu_equals_model_input():
    from genpercept_cli.resize import model_input, upload, upload_resize

    image = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    got = upload_resize(image, (22, 32), "cpu")
    assert got.dtype == torch.uint8 and torch.equal(got, model_input(image, (22, 32)))
    x = torch.arange(6, dtype=torch.uint8)
    assert upload(x, "cpu") is x  # nothing to copy on the CPU


class SlowPipe(FakePipe):
    """A model that takes 40 ms a batch and flags while it computes."""

    def __init__(self):
        super().__init__()
        self.computing = False

    def predict_batch(self, rgb):
        self.computing = True
        time.sleep(0.04)
        self.computing = False
        return super().predict_batch(rgb)


@pytest.mark.parametrize("overlap", [True, False])
def test_reading_and_writing_overlap_compute_only_in_overlap_mode(overlap):
    pipe = SlowPipe()
    during = {"load": 0, "sink": 0}

    def load(job):
        time.sleep(0.01)
        during["load"] += pipe.computing
        return Loaded(job, torch.full((1, 3, 8, 8), job.index, dtype=torch.uint8), (8, 8))

    def sink(loaded, prediction):
        time.sleep(0.01)
        during["sink"] += pipe.computing

    report = run(pipe, [Job(i, (8, 8)) for i in range(12)], load, sink, batch_size=2, workers=2, overlap=overlap)
    assert report.done == 12
    if overlap:  # the next batches decode and the last ones write while the model computes
        assert during["load"] > 0 and during["sink"] > 0
    else:
        assert during == {"load": 0, "sink": 0}


def test_memory_model_from_a_fake_device():
    from genpercept_cli.runtime.memory import MemoryModel, fit_memory_model

    gib = 2**30
    model = fit_memory_model(lambda n: 0.5 * gib + n * 1.5 * gib)  # a device: 0.5 GiB fixed, 1.5 GiB an image
    assert model == MemoryModel(0.5 * gib, 1.5 * gib)
    assert model.batch_size(40 * gib) == 21  # (0.8 * 40 - 0.5) / 1.5 = 21.0
    assert model.batch_size(1 * gib) == 1  # never below one image
    assert model.batch_size(1000 * gib) == 32  # capped
    assert model.batch_size(40 * gib, headroom=0.5, cap=64) == 13  # (20 - 0.5) / 1.5 = 13.0


def test_auto_batch_size_is_one_on_the_cpu(checkpoint_root):
    from genpercept_cli.pipeline import GenPerceptPipeline
    from genpercept_cli.runtime.memory import auto_batch_size

    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_depth_v2"), device="cpu")
    assert auto_batch_size(pipe, (64, 64)) == 1


# -- batches in flight: launch batch k + 1 before collecting batch k (the CUDA data path) ---------------
class QueuedPipe(FakePipe):
    """A pipe with a queue, like a GPU: `launch` queues the compute on a one-thread "device" and returns
    at once; `finish` waits for that batch and post-processes it. Logs ("launch"|"finish", batch number).

    fail_at_finish: {job value: exception} raised by `finish` for the batch holding that value."""

    queue_depth = 2

    def __init__(self, oom_above=None, fail_at_finish=None):
        super().__init__(oom_above)
        self.log, self.fail_at_finish = [], fail_at_finish or {}
        self.device = ThreadPoolExecutor(1)

    def launch(self, rgb):
        if self.oom_above is not None and rgb.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("fake")  # raised at allocation, before anything is queued
        number = sum(event == "launch" for event, _ in self.log)
        self.log.append(("launch", number))
        self.batches.append((rgb.shape[0], tuple(rgb.shape[-2:])))
        return number, rgb, self.device.submit(self._compute, rgb)

    @staticmethod
    def _compute(rgb):
        time.sleep(0.005)  # the device is busy for a while
        return rgb[:, :1].float()

    def finish(self, launched, sizes):
        number, rgb, future = launched
        self.log.append(("finish", number))
        preds = future.result()
        for value in rgb[:, 0, 0, 0].tolist():
            if value in self.fail_at_finish:
                raise self.fail_at_finish[value]
        return [self.postprocess(pred, size) for pred, size in zip(preds, sizes)]


def _launch_precedes_finish(log) -> bool:
    """Every batch k but the last was collected only after batch k + 1 had been launched."""
    launches = [n for event, n in log if event == "launch"]
    return all(log.index(("launch", k + 1)) < log.index(("finish", k)) for k in launches[:-1])


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_next_batch_is_launched_before_the_current_one_is_collected(known, batch_size):
    jobs, sizes = _jobs(23, 2, known)
    pipe = QueuedPipe()
    seen, report = _run(pipe, jobs, sizes, batch_size)
    assert report.done == 23 and report.failed == []
    assert seen == {i: float(i) for i in range(23)}
    launches = sum(event == "launch" for event, _ in pipe.log)
    assert launches == len(pipe.batches) > 2 and _launch_precedes_finish(pipe.log)
    assert sorted(pipe.log, key=lambda e: e[1]) == [(e, k) for k in range(launches) for e in ("launch", "finish")]
    assert all(n <= batch_size for n, _ in pipe.batches) and sum(n for n, _ in pipe.batches) == 23
    if known:  # bucketed up front, as at depth 1: every batch but the last of each size is full
        for size in set(sizes):
            counts = [n for n, s in pipe.batches if s == size]
            assert counts[:-1] == [batch_size] * (len(counts) - 1)


@pytest.mark.parametrize("overlap, depth", [(False, 2), (True, 1)])
def test_without_overlap_or_a_queue_each_batch_is_predicted_then_collected(overlap, depth):
    jobs, sizes = _jobs(10, 3, known=True)
    pipe = QueuedPipe()
    pipe.queue_depth = depth
    seen, report = _run(pipe, jobs, sizes, 3, overlap=overlap)
    assert report.done == 10 and seen == {i: float(i) for i in range(10)}
    assert pipe.log == [] and sum(n for n, _ in pipe.batches) == 10  # predict_batch, batch by batch


def test_out_of_memory_at_launch_halves_the_batch():
    jobs, sizes = _jobs(12, 5, known=True)
    pipe = QueuedPipe(oom_above=1)
    seen, report = _run(pipe, jobs, sizes, 4)
    assert report.done == 12 and seen == {i: float(i) for i in range(12)}
    assert [n for n, _ in pipe.batches] == [1] * 12 and _launch_precedes_finish(pipe.log)
    seen, report = _run(QueuedPipe(oom_above=0), jobs[:2], sizes, 2)
    h, w = sizes[0]
    assert seen == {} and report.failed == [
        (jobs[0], f"item 0: out of memory at {w}x{h}; lower --processing-res."),
        (jobs[1], f"item 1: out of memory at {w}x{h}; lower --processing-res.")]


def test_a_failure_at_finish_fails_that_batch_only():
    from genpercept_cli.pipeline import NonFiniteError

    jobs = [Job(i, (8, 8)) for i in range(9)]  # one size: batches {0,1,2}, {3,4,5}, {6,7,8}
    sizes = [(8, 8)] * 9
    pipe = QueuedPipe(fail_at_finish={4: NonFiniteError("the model produced non-finite values even in float32."),
                                      7: RuntimeError("CUDA error: an illegal memory access\nmore")})
    seen, report = _run(pipe, jobs, sizes, 3)
    assert seen == {i: float(i) for i in (0, 1, 2)}
    assert report.done == 3 and report.failed == (
        [(jobs[i], f"item {i}: the model produced non-finite values even in float32.") for i in (3, 4, 5)]
        + [(jobs[i], f"item {i}: the model failed (CUDA error: an illegal memory access).") for i in (6, 7, 8)])


def test_out_of_memory_at_finish_reruns_that_batch_synchronously():
    jobs = [Job(i, (8, 8)) for i in range(6)]
    pipe = QueuedPipe(fail_at_finish={4: torch.OutOfMemoryError("fp32 copy")})
    pipe.predict_batch = lambda rgb: (pipe.log.append(("predict", rgb.shape[0])), FakePipe.predict_batch(pipe, rgb))[1]
    seen, report = _run(pipe, jobs, [(8, 8)] * 6, 3)
    assert report.done == 6 and seen == {i: float(i) for i in range(6)}
    assert ("predict", 3) in pipe.log and pipe.log.index(("finish", 1)) < pipe.log.index(("predict", 3))


def test_pipeline_launch_then_finish_equals_predict_then_postprocess(checkpoint_root):
    from genpercept_cli.pipeline import GenPerceptPipeline, NonFiniteError

    root = str(checkpoint_root / "unet_depth_v2")
    rgb = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sizes = [(40, 60), (32, 48), (17, 23)]
    for dtype, hooked in [("fp32", False), ("bf16", True)]:  # bf16 + overflow: the fp32 retry path
        pipe = GenPerceptPipeline.from_checkpoint(root, device="cpu", dtype=dtype)
        assert pipe.queue_depth == 1
        handle = pipe.stages.vae.encoder.register_forward_hook(_bf16_overflow) if hooked else None
        try:
            got = pipe.finish(pipe.launch(rgb), sizes)
            want = pipe.postprocess_batch(pipe.predict_batch(rgb), sizes)
        finally:
            if handle is not None:
                handle.remove()
        assert pipe.recoveries == (2 if hooked else 0)  # one retry each way
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and g.dtype == np.float32 and np.isfinite(g).all()
            np.testing.assert_array_equal(g, w)
    pipe = GenPerceptPipeline.from_checkpoint(root, device="cpu", dtype="fp32")
    handle = pipe.stages.vae.encoder.register_forward_hook(lambda module, args, output: output * float("inf"))
    try:
        with pytest.raises(NonFiniteError, match="non-finite values in float32"):
            pipe.finish(pipe.launch(rgb), sizes)
    finally:
        handle.remove()


def _bf16_overflow(module, args, output):  # what a half-precision VAE encoder overflow looks like
    return output * float("inf") if output.dtype != torch.float32 else output


def predictions_by_index(pipe, inputs, sizes, pad) -> dict:
    """{job index: array} from the runner (batches of 2) for uint8 model inputs at processed `sizes`, each
    post-processed to its size plus `pad` (rows, columns) as if that were the input image's size."""
    out = {}

    def load(job):
        h, w = sizes[job.index]
        return Loaded(job, inputs[job.index], (h + pad[0], w + pad[1]))

    def sink(loaded, prediction):
        out[loaded.job.index] = prediction

    report = run(pipe, [Job(i, s) for i, s in enumerate(sizes)], load, sink, batch_size=2, workers=2)
    assert report.done == len(sizes) and not report.failed
    return out


def test_depth_2_runner_on_the_real_pipeline_equals_depth_1(checkpoint_root, monkeypatch):
    from genpercept_cli.pipeline import GenPerceptPipeline

    pipe = GenPerceptPipeline.from_checkpoint(str(checkpoint_root / "unet_normal_v2"), device="cpu")
    sizes = [(24, 32), (32, 24), (24, 32), (24, 32), (32, 24), (24, 32), (16, 16)]
    rng = np.random.default_rng(8)
    inputs = [torch.from_numpy(rng.integers(0, 256, (1, 3, *s), dtype=np.uint8)) for s in sizes]

    def predictions():
        return predictions_by_index(pipe, inputs, sizes, pad=(5, 7))

    want = predictions()
    calls = []
    monkeypatch.setattr(GenPerceptPipeline, "queue_depth", property(lambda self: 2))
    for name in ("launch", "finish"):
        real = getattr(pipe, name)
        monkeypatch.setattr(pipe, name, lambda *a, real=real, name=name: (calls.append(name), real(*a))[1])
    got = predictions()
    assert calls[:3] == ["launch", "launch", "finish"] and calls.count("launch") == 4  # 24x32: 2 batches
    assert sorted(got) == sorted(want) == list(range(len(sizes)))
    for i in want:
        assert got[i].shape == (sizes[i][0] + 5, sizes[i][1] + 7, 3)
        np.testing.assert_array_equal(got[i], want[i])


def test_queue_depth_two_on_cuda_unless_the_environment_says_one(monkeypatch):
    from genpercept_cli.checkpoints import CheckpointSpec
    from genpercept_cli.pipeline import GenPerceptPipeline

    spec = CheckpointSpec(name="x", task="depth", output="test")
    on = {device: GenPerceptPipeline(None, spec, device) for device in ("cpu", "cuda")}  # no GPU is touched
    assert (on["cpu"].queue_depth, on["cuda"].queue_depth) == (1, 2)
    monkeypatch.setenv("GENPERCEPT_QUEUE_DEPTH", "1")
    assert (on["cpu"].queue_depth, on["cuda"].queue_depth) == (1, 1)
    monkeypatch.setenv("GENPERCEPT_QUEUE_DEPTH", "two")
    with pytest.raises(GenPerceptError, match="GENPERCEPT_QUEUE_DEPTH must be a whole number .* got 'two'"):
        getattr(on["cuda"], "queue_depth")  # noqa: B009 - the property raises
