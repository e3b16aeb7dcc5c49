"""The CPU heap switch: glibc keeps large blocks in the heap when tuned, maps them when not.

Each case runs in a fresh process (the setting is process-wide and applied once). What glibc did is
read back from `mallinfo2().hblkhd`, the bytes it currently holds in mmapped blocks: a 64 MiB block
is mmapped under glibc's defaults and comes from the heap once `M_MMAP_MAX` is 0.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import ctypes, json, sys
from genpercept_cli.runtime.allocator import heap_state, tune_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
before_call = heap_state().applied
state = tune_heap(sys.argv[1] if len(sys.argv) > 1 else None)
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
grown = libc.mallinfo2().hblkhd - mapped
libc.free(ctypes.c_void_p(block))
print(json.dumps({"state": state.as_dict(), "mmapped_bytes": grown, "before_call": before_call,
                  "again": tune_heap("system").as_dict()}))
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the switch acts on glibc only")


def probe(env_mode: str | None, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GENPERCEPT_MALLOC"}
    if env_mode is not None:
        env["GENPERCEPT_MALLOC"] = env_mode
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@glibc_only
def test_tuned_heap_serves_large_blocks_from_the_heap():
    result = probe(None)  # the default
    assert result["state"]["mode"] == "tuned" and result["state"]["applied"] is True
    assert result["mmapped_bytes"] == 0
    assert result["before_call"] is False
    assert result["again"] == result["state"]  # applied once per process; a later call changes nothing


@glibc_only
@pytest.mark.parametrize("env_mode, arg", [("system", None), ("tuned", "system")])
def test_system_mode_keeps_glibc_mapping_large_blocks(env_mode, arg):
    result = probe(env_mode, *([arg] if arg else []))
    assert result["state"] == {"mode": "system", "applied": False,
                               "reason": "glibc defaults kept (GENPERCEPT_MALLOC=system)"}
    assert result["mmapped_bytes"] >= 64 << 20


def test_unknown_mode_falls_back_to_the_default(monkeypatch):
    from genpercept_cli.runtime import allocator

    monkeypatch.setenv("GENPERCEPT_MALLOC", "jemalloc-please")
    assert allocator.requested_mode() == allocator.DEFAULT_MODE
    monkeypatch.setenv("GENPERCEPT_MALLOC", " System ")
    assert allocator.requested_mode() == "system"
    assert allocator.requested_mode("tuned") == "tuned"  # an explicit argument wins over the variable


def test_the_cli_applies_it_at_start_up(monkeypatch):
    """`genpercept` (the console script's `main`) tunes the heap before it runs any command."""
    from genpercept_cli import cli
    from genpercept_cli.runtime import allocator

    order = []
    monkeypatch.setattr(allocator, "tune_heap", lambda: order.append("tune_heap"))
    monkeypatch.setattr(cli, "app", lambda: order.append("app"))
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 0 and order == ["tune_heap", "app"]
