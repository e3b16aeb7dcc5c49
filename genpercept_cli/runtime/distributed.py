"""Data-parallel runs under `torchrun` (or `srun`, `accelerate launch`: anything that sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

Each rank runs the same command on its own device (`cuda:LOCAL_RANK`, or the CPU) over a deterministic
share of the work (`shard`: item i to rank i mod WORLD_SIZE; `shard_batches`: batches of one processed
size dealt in turn), so no item is dropped, padded in or done twice.
Results meet on every rank (`gather`); rank 0 alone prints. Collectives time out
(GENPERCEPT_DIST_TIMEOUT seconds, default 1800) instead of hanging forever when a rank is gone;
torchrun itself stops the other ranks when one fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from ..errors import GenPerceptError


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

    def close(self) -> None:
        """Wait until every rank is done with the others. The process group is left to the process's
        exit: with `destroy_process_group()` here, a rank aborted at exit now and then under load in
        our tests ("terminate called without an active exception", torch 2.13, gloo)."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                self.gather(None)



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


def exit_process(code: int) -> None:
    """End the process with `code`. In a data-parallel run (a process group is up) it ends at once,
    after flushing, without C++ static destructors: torch 2.13's gloo teardown aborted a finished rank
    now and then at interpreter exit in our tests ("terminate called without an active exception"),
    which torchrun reports as a failed run. Every file is already complete at this point."""
    import sys

    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def rank_device(device: str, dist: Dist) -> str:
    """The device of this rank: `auto`/`cuda` become cuda:LOCAL_RANK when CUDA is there; cpu stays."""
    if not dist.active or device not in ("auto", "cuda"):
        return device
    import torch

    return f"cuda:{dist.local_rank}" if torch.cuda.is_available() else ("cpu" if device == "auto" else device)


class GlobalProgress:
    """The progress bar of a run: on rank 0 a rich progress task over rank 0's share (its description
    says how many ranks share the work), on other ranks nothing. `add_task` is a collective (every rank
    calls it; the run's total is summed over ranks and shown), so it also marks the point before which
    no rank has started predicting.

    Use as the `progress` object of the runner: `add_task(description, total)` takes this rank's total
    and `advance(task_id)` counts one item. Progress is not exchanged between ranks while they run:
    the process group's store can do it, but its client aborted processes at exit under load in our
    tests (torch 2.13, gloo).
    """

    def __init__(self, progress, dist: Dist):
        self.progress, self.dist = progress, dist
        self.task_id = None

    def add_task(self, description: str, total: int):
        totals = self.dist.gather(total)
        if self.progress is not None:
            if self.dist.active:
                description += f" (rank 0's share; {sum(totals)} items over {self.dist.world} ranks)"
            self.task_id = self.progress.add_task(description, total=total)
        return self.task_id

    def advance(self, task_id=None) -> None:
        if self.progress is not None:
            self.progress.advance(self.task_id)
