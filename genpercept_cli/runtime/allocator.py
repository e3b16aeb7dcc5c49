"""The CPU heap: glibc's malloc kept from handing large activations back to the kernel.

By default glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB)
with a fresh `mmap` and returns it with `munmap` when freed, and trims the heap top above 128 KiB. A
U-Net forward allocates and frees hundreds of activations of 10-300 MB, so every call the kernel maps
them anew, zero-fills them and takes a page fault per 4 KiB page (1.0 M minor faults and 2 s of system
time per image at 256² fp32). With mmap off and trimming effectively off, freed activations stay in
the heap and the next call reuses pages already faulted in: faster, at the cost of a higher resident
peak (`benchmarks/results/allocator_cpu_*.json` has both).

Applied once at CLI start-up (`tune_heap()`), on glibc only; `GENPERCEPT_MALLOC=system` keeps glibc's
defaults. Library users opt in by calling `tune_heap()` themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import asdict, dataclass

ENV = "GENPERCEPT_MALLOC"  # "tuned" (default) or "system"
MODES = ("tuned", "system")
M_TRIM_THRESHOLD = -1  # glibc <malloc.h> parameter numbers
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before a trim, i.e. rarely
# Measured (benchmarks/results/allocator_cpu_256_*.json): "tuned" used 1.34x (fp32) and 1.14x (bf16) less
# CPU time per image at 256², for +315 / +41 MiB of peak resident memory.
DEFAULT_MODE = "tuned"


@dataclass(frozen=True)
class HeapState:
    """What `tune_heap` did: the mode asked for, and whether glibc accepted the settings."""

    mode: str
    applied: bool
    reason: str  # one line: what was set, or why nothing was

    def as_dict(self) -> dict:
        return asdict(self)


_state: HeapState | None = None


def requested_mode(mode: str | None = None) -> str:
    """`mode`, else $GENPERCEPT_MALLOC, else DEFAULT_MODE; unknown values fall back to the default."""
    mode = (mode or os.environ.get(ENV) or DEFAULT_MODE).strip().lower()
    return mode if mode in MODES else DEFAULT_MODE


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_heap(mode: str | None = None) -> HeapState:
    """Apply the heap mode once per process (later calls return the first result); never raises."""
    global _state
    if _state is not None:
        return _state
    mode = requested_mode(mode)
    libc = _glibc()
    if mode == "system":
        _state = HeapState(mode, False, f"glibc defaults kept ({ENV}=system)")
    elif libc is None or not hasattr(libc, "mallopt"):
        _state = HeapState(mode, False, "not glibc: the system allocator is left as it is")
    else:
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        _state = HeapState(mode, ok, f"mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD={TRIM_THRESHOLD}" if ok
                           else "mallopt refused the settings")
    return _state


def heap_state() -> HeapState:
    """The mode this process runs with (`tune_heap` not called: glibc defaults)."""
    return _state or HeapState("system", False, "tune_heap() was not called")
