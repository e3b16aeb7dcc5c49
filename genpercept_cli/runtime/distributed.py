"""Data-parallel runs under `torchrun` (or `srun`, `accelerate launch`: anything that sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

Each rank runs the same command on its own device (`cuda:LOCAL_RANK`, or the CPU) over a deterministic
share of the work (`shard`: item i to rank i mod WORLD_SIZE; `shard_batches`: batches of one processed
size dealt in turn), so no item is dropped, padded in or done twice.
Results meet on rank 0 (`gather`), which alone prints; a shared counter in the process group's store
gives rank 0 the global progress. Collectives time out (GENPERCEPT_DIST_TIMEOUT seconds, default 1800)
instead of hanging forever when a rank is gone; torchrun itself stops the other ranks when one fails.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta

from ..errors import GenPerceptError

PROGRESS_KEY = "genpercept/progress"


class DistributedError(GenPerceptError):
    """A rank that cannot reach the others any more: the run ends with exit code 1."""

    exit_code = 1


@dataclass
class Dist:
    """This process's place in a run: rank `rank` of `world` (1 = not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share: items rank, rank + world, ... (in order)."""
        return items[self.rank :: self.world] if self.active else items

    def shard_batches(self, jobs: list, batch_size: int) -> list:
        """This rank's share of runner jobs whose processed sizes are known, balanced by size: the jobs
        are bucketed by size, each bucket cut into batches of `batch_size`, and the batches dealt to the
        ranks in turn, so every batch but the last of each size is full and each rank gets its share of
        every size. Every rank computes the same plan; no job is dropped, padded in or given twice."""
        if not self.active:
            return jobs
        buckets: dict = {}
        for job in jobs:
            buckets.setdefault(job.size, []).append(job)
        batches = [bucket[i : i + batch_size] for bucket in buckets.values() for i in range(0, len(bucket), batch_size)]
        return [job for k, batch in enumerate(batches) if k % self.world == self.rank for job in batch]

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects).

        Raises DistributedError when another rank is gone (it failed, or the collective timed out)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        try:
            dist.all_gather_object(out, obj)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.world} lost the other ranks ({reason}); files already written are "
                "complete: rerun with --skip-existing to finish."
            ) from None
        return out

    def sum(self, value: int) -> int:
        return sum(self.gather(value))

    def close(self) -> None:
        """Leave the process group once every rank is done with it (a rank tearing its connections
        down while another still talks to it can abort the other)."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                self.gather(None)
                dist.destroy_process_group()

    # -- global progress ---------------------------------------------------------------------------
    def count_done(self, n: int = 1) -> int:
        """Add `n` finished items to the run's counter; returns the global count so far."""
        if not self.active:
            return n
        import torch.distributed as dist

        return int(dist.distributed_c10d._get_default_store().add(PROGRESS_KEY, n))


def from_environment() -> Dist:
    """The Dist of this process; initialises the process group when WORLD_SIZE > 1 (gloo on the CPU,
    nccl when CUDA is available and not refused with GENPERCEPT_DIST_BACKEND=gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise GenPerceptError(
            f"WORLD_SIZE is {world} but {', '.join(missing)} is not set; start the command with torchrun."
        )
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = os.environ.get("GENPERCEPT_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = timedelta(seconds=float(os.environ.get("GENPERCEPT_DIST_TIMEOUT", "1800")))
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timeout)
    return Dist(rank, world, local_rank)


def rank_device(device: str, dist: Dist) -> str:
    """The device of this rank: `auto`/`cuda` become cuda:LOCAL_RANK when CUDA is there; cpu stays."""
    if not dist.active or device not in ("auto", "cuda"):
        return device
    import torch

    return f"cuda:{dist.local_rank}" if torch.cuda.is_available() else ("cpu" if device == "auto" else device)


class GlobalProgress:
    """A rich progress task on rank 0 that shows every rank's finished items; other ranks only count.

    Use as the `progress` object of the runner: `add_task(description, total)` takes this rank's total
    (the global total is summed over ranks) and `advance(task_id)` counts one item.
    """

    def __init__(self, progress, dist: Dist):
        self.progress, self.dist = progress, dist
        self.task_id = None
        self.done = 0  # this rank's finished items
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def add_task(self, description: str, total: int):
        total = self.dist.sum(total)
        if self.progress is not None:
            self.task_id = self.progress.add_task(description, total=total)
            if self.dist.active:
                self._poller = threading.Thread(target=self._poll, daemon=True)
                self._poller.start()
        return self.task_id

    def advance(self, task_id=None) -> None:
        self.done += 1
        done = self.dist.count_done(1) if self.dist.active else self.done
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.progress.update(self.task_id, completed=self.dist.count_done(0))

    def finish(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        if self.progress is not None and self.task_id is not None and self.dist.active:
            self.progress.update(self.task_id, completed=self.dist.count_done(0))
