"""The one loop every command runs: `predict` writes files, `eval` scores, `bench-speed` times.

    jobs -> (shard) -> bucket by processed size -> load in reader threads, a bounded distance ahead
    -> batches of one size -> launch the model (out-of-memory halves the batch)
    -> collect the oldest launched batch: finite check, post-process (per batch) -> sink threads

    CUDA (`pipe.queue_depth` 2):
        host  launch 1 · launch 2 · collect 1 · launch 3 · collect 2 · launch 4 · collect 3 · ...
        GPU   [ batch 1 ][ batch 2 ][ batch 3 ][ batch 4 ] ...   (collecting k waits for k only)

On CUDA batch k + 1 is queued on the GPU before the host waits for batch k's results (`pipe.launch`,
`pipe.finish`), so the GPU computes while the host post-processes, hands arrays to the sinks and
launches the next batch. Elsewhere (depth 1: the CPU, stand-ins with only `predict_batch`) and with
overlap=False each batch is predicted and collected before the next one starts.

The sink differs per command (a writer, a scorer, nothing); the loop does not. Jobs whose processed
size is known up front (image headers) are bucketed before loading, so every batch is full; jobs whose
size is known only once loaded (benchmark samples) are grouped as they arrive, holding at most
`2 * batch_size` loaded inputs. Batching is exact: the maths is per sample.

Timing goes through `clock.stage(name, sync)` around reading ("load"), post-processing ("postprocess",
which on CUDA includes waiting for the batch's results) and the sink ("write"); `bench-speed` passes its
clock, everyone else the null clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import GenPerceptError
from ..files import DiskFullError


@dataclass(frozen=True)
class Job:
    """One item of work: `index` is the caller's position (image list, dataset index); `size` the
    processed (h, w) when it is known before loading, else None."""

    index: int
    size: tuple[int, int] | None = None


@dataclass
class Loaded:
    """A loaded job: the model input, the size the prediction goes back to, and what the sink needs."""

    job: Job
    rgb: torch.Tensor  # [1, 3, h, w] in [0, 255] at the processed size (`pipe.model_input`: uint8 or float32);
    # several models (`predict.ModelSet`): a tuple of them, one per model
    size: tuple[int, int]  # (H, W) of the input image: post-processing resizes the prediction to it
    context: Any = None


class SkipJob(Exception):
    """Raised by `load` for a job that cannot or need not run; its message is the job's failure."""


@dataclass
class RunReport:
    done: int = 0  # jobs whose prediction reached the sink without a problem
    failed: list[tuple[Job, str]] = field(default_factory=list)  # (job, one-sentence reason)


class NullClock:
    def stage(self, name: str, sync: bool = True):
        return nullcontext()


def run(
    pipe,
    jobs: Iterable[Job],
    load: Callable[[Job], Loaded],
    sink: Callable[[Loaded, Any], str | None],
    *,
    batch_size: int = 1,
    workers: int = 4,
    sink_workers: int = 2,
    overlap: bool = True,
    describe: Callable[[Job], str] = lambda job: f"item {job.index}",
    shard: Callable[[list[Job]], list[Job]] | None = None,
    after_batch: Callable[[], None] | None = None,
    clock=None,
    progress=None,
    task_id=None,
) -> RunReport:
    """Run `pipe` (a `GenPerceptPipeline`) over `jobs`; failures are reported, never raised.

    load(job) -> Loaded, in reader threads (raise SkipJob or a GenPerceptError to fail the job).
    sink(loaded, prediction) -> None, or a one-sentence problem; `prediction` is the post-processed
    numpy array at `loaded.size`. Sinks run in `sink_workers` threads (1 keeps a scorer single-threaded).
    overlap=False runs everything in series in this thread (the reference's loop, for bench-speed).
    Out of memory halves the batch; on a pipe with `queue_depth` 2 (CUDA) the next batch is launched
    before the current one is collected, and out of memory while collecting re-runs that batch in series.
    shard(jobs) -> the jobs this process runs (data-parallel runs); after_batch() runs after each batch.
    """
    jobs = list(jobs)
    if shard is not None:
        jobs = shard(jobs)
    if jobs and all(job.size is not None for job in jobs):
        jobs = _bucketed(jobs)
    clock = clock or NullClock()
    report = RunReport()
    advance = (lambda: progress.advance(task_id)) if progress is not None else (lambda: None)

    def timed_load(job: Job) -> Loaded:
        with clock.stage("load", sync=False):
            return load(job)

    def timed_sink(loaded: Loaded, prediction) -> str | None:
        with clock.stage("write", sync=False):
            return sink(loaded, prediction)

    readers = ThreadPoolExecutor(workers, thread_name_prefix="genpercept-read") if overlap else None
    writers = ThreadPoolExecutor(sink_workers, thread_name_prefix="genpercept-sink") if overlap else None
    depth = _queue_depth(pipe, overlap)
    launch = pipe.launch if depth > 1 else pipe.predict_batch
    pending: list[tuple[Loaded, Future]] = []

    def collect(batch: list[Loaded], parts: list[tuple[list[Loaded], Any]]) -> None:
        nonlocal pending
        with clock.stage("postprocess", sync=depth == 1):  # a device-wide sync would wait for batch k+1 too
            results = _postprocessed(pipe, parts) if depth == 1 else _finished(pipe, parts, report, describe)
        for loaded, array in results:
            if writers is None:
                _account(loaded, _call_sink(timed_sink, loaded, array, describe), report)
            else:
                pending.append((loaded, writers.submit(_call_sink, timed_sink, loaded, array, describe)))
                pending = _collect(pending, report, keep=2 * sink_workers)
        for _ in batch:
            advance()
        if after_batch is not None:
            after_batch()

    try:
        loaded_stream = _loaded(readers, timed_load, jobs, ahead=batch_size + workers)
        in_flight: deque[tuple[list[Loaded], list]] = deque()  # launched batches, oldest first
        for batch in _batches(loaded_stream, batch_size, report, advance):
            in_flight.append((batch, _run_or_split(launch, batch, report, describe)))
            if len(in_flight) == depth:  # depth 2: batch k + 1 is already queued while batch k is collected
                collect(*in_flight.popleft())
        while in_flight:
            collect(*in_flight.popleft())
        _collect(pending, report, keep=0)
    finally:  # on Ctrl-C/SIGTERM or a bug: drop queued work, let running sinks finish
        for pool in (readers, writers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    report.failed.sort(key=lambda failure: failure[0].index)
    return report


def _bucketed(jobs: list[Job]) -> list[Job]:
    """Jobs grouped by processed size (sizes in order of first appearance, jobs in order within)."""
    buckets: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        buckets.setdefault(job.size, []).append(job)
    return [job for bucket in buckets.values() for job in bucket]


def _loaded(pool: ThreadPoolExecutor | None, load, jobs: list[Job], ahead: int) -> Iterator[tuple[Job, Future]]:
    """(job, future of load(job)) in job order, at most `ahead` loads submitted and not yet handed out."""
    if pool is None:
        for job in jobs:
            future: Future = Future()
            try:
                future.set_result(load(job))
            except Exception as exc:  # reported by _batches, like a reader thread's failure
                future.set_exception(exc)
            yield job, future
        return
    queue: deque[tuple[Job, Future]] = deque((job, pool.submit(load, job)) for job in jobs[:ahead])
    for job in jobs[ahead:]:
        yield queue.popleft()
        queue.append((job, pool.submit(load, job)))
    while queue:
        yield queue.popleft()


def _batches(stream, batch_size: int, report: RunReport, advance) -> Iterator[list[Loaded]]:
    """Loaded jobs grouped by processed size into batches of at most `batch_size`.

    A size's batch is handed out when full; when `2 * batch_size` inputs are held, the oldest size is
    handed out as it is; at the end every remainder, oldest size first.
    """
    held: dict[tuple[int, int], list[Loaded]] = {}
    count = 0
    for job, future in stream:
        try:
            loaded = future.result()
        except (SkipJob, GenPerceptError) as exc:
            report.failed.append((job, str(exc)))
            advance()
            continue
        size = input_size(loaded.rgb)
        group = held.setdefault(size, [])
        group.append(loaded)
        count += 1
        if len(group) == batch_size:
            count -= len(held.pop(size))
            yield group
        elif count >= 2 * batch_size:
            oldest = next(iter(held))
            count -= len(held[oldest])
            yield held.pop(oldest)
    yield from held.values()


def input_size(rgb) -> tuple:
    """The processed (h, w) of a model input [1, 3, h, w]; of a several-model input (a tuple, one tensor per
    model: `predict.ModelSet`), the tuple of its members' sizes. Inputs of one size batch together."""
    return tuple(input_size(r) for r in rgb) if isinstance(rgb, tuple) else tuple(rgb.shape[-2:])


def stacked(parts: list):
    """Model inputs or outputs [n, ...] concatenated along the batch; tuples (several models) member by member."""
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(group) for group in zip(*parts))
    return torch.cat(parts)


def _queue_depth(pipe, overlap: bool) -> int:
    """How many batches may be launched and not yet collected: the pipe's `queue_depth` where it can
    launch without waiting (`launch`/`finish`) and the loop overlaps, else 1."""
    if not (overlap and hasattr(pipe, "launch") and hasattr(pipe, "finish")):
        return 1
    return max(1, getattr(pipe, "queue_depth", 1))


def _run_or_split(run_batch, batch: list[Loaded], report: RunReport, describe) -> list[tuple[list[Loaded], Any]]:
    """[(part, run_batch(part's model inputs))] for the parts of `batch` that ran, in order.

    run_batch is `pipe.predict_batch` or `pipe.launch`. On out-of-memory the batch is halved until single
    inputs fail; failed inputs are left out, with a line in the report."""
    try:
        return [(batch, run_batch(stacked([loaded.rgb for loaded in batch])))]
    except torch.OutOfMemoryError:
        if len(batch) > 1:
            half = len(batch) // 2
            return (_run_or_split(run_batch, batch[:half], report, describe)
                    + _run_or_split(run_batch, batch[half:], report, describe))
        loaded = batch[0]
        sizes = input_size(loaded.rgb)
        h, w = max(sizes, key=lambda s: s[0] * s[1]) if isinstance(sizes[0], tuple) else sizes
        report.failed.append((loaded.job, f"{describe(loaded.job)}: out of memory at {w}x{h}; "
                                          "lower --processing-res."))
    except (GenPerceptError, RuntimeError) as exc:
        _fail(batch, exc, report, describe)
    return []


def _fail(batch: list[Loaded], exc: Exception, report: RunReport, describe) -> None:
    """A line in the report for every input of a batch the model failed on."""
    if isinstance(exc, GenPerceptError):
        reason = str(exc)
    else:  # e.g. the CPU allocator out of memory: fail these inputs, keep going
        first_line = next(iter(str(exc).splitlines()), type(exc).__name__)
        reason = f"the model failed ({first_line[:200]})."
    report.failed.extend((loaded.job, f"{describe(loaded.job)}: {reason}") for loaded in batch)


def _postprocessed(pipe, parts: list[tuple[list[Loaded], torch.Tensor]]) -> list[tuple[Loaded, Any]]:
    """(loaded, post-processed array) for a batch's predictions ([n, C, h, w] per part): in one go where
    the pipe can (one device-to-host copy per batch), else one by one."""
    live = [loaded for part, _ in parts for loaded in part]
    if not live:
        return []
    # one part (no out-of-memory split): its tensor as the model left it, as `finish` post-processes it
    preds = parts[0][1] if len(parts) == 1 else stacked([preds for _, preds in parts])
    if hasattr(pipe, "postprocess_batch"):
        arrays = pipe.postprocess_batch(preds, [loaded.size for loaded in live])
    else:
        arrays = [pipe.postprocess(pred, loaded.size) for loaded, pred in zip(live, preds)]
    return list(zip(live, arrays))


def _finished(pipe, parts: list[tuple[list[Loaded], Any]], report: RunReport, describe) -> list[tuple[Loaded, Any]]:
    """(loaded, post-processed array) for the launched parts of a batch (`pipe.finish`).

    A non-finite or failed part fails its inputs with `_run_or_split`'s sentences. Out of memory while
    collecting (the fp32 retry's model copy, the post-processing beside the next batch) re-runs the part
    the synchronous way, which halves it as depth 1 would."""
    results = []
    for part, launched in parts:
        try:
            arrays = pipe.finish(launched, [loaded.size for loaded in part])
        except torch.OutOfMemoryError:
            results += _postprocessed(pipe, _run_or_split(pipe.predict_batch, part, report, describe))
            continue
        except (GenPerceptError, RuntimeError) as exc:
            _fail(part, exc, report, describe)
            continue
        results += zip(part, arrays)
    return results


def _call_sink(sink, loaded: Loaded, array, describe) -> str | None:
    try:
        return sink(loaded, array)
    except DiskFullError:  # every later image would fail the same way: the run stops here
        raise
    except (OSError, ValueError, GenPerceptError) as exc:
        return f"{describe(loaded.job)}: could not write outputs ({exc})."


def _account(loaded: Loaded, problem: str | None, report: RunReport) -> None:
    if problem is None:
        report.done += 1
    else:
        report.failed.append((loaded.job, problem))


def _collect(pending: list[tuple[Loaded, Future]], report: RunReport, keep: int) -> list:
    """Account finished sinks, waiting for the oldest until at most `keep` are pending; returns those."""
    still = []
    for i, (loaded, future) in enumerate(pending):
        if not future.done() and len(pending) - i <= keep:
            still.append((loaded, future))
            continue
        _account(loaded, future.result(), report)
    return still
