"""Library versions and hardware facts recorded beside every `bench-speed` report."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """Library versions and the hardware facts that decide the numbers."""
    from importlib import metadata

    import diffusers
    import numpy
    import PIL
    import torch

    from genpercept_cli.runtime.allocator import heap_state

    flags = cpu_flags()
    env = {
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "genpercept": _version(metadata),
        },
        "cpu": {
            "model": device_name(torch.device("cpu")), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "bf16_native": sorted(flags & {"amx_bf16", "avx512_bf16"}),
            "load_average_1min": os.getloadavg()[0],
        },
        "platform": platform.platform(),
        "allocator": heap_state().as_dict(),  # glibc heap mode (genpercept_cli.runtime.allocator)
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["cuda"] = {"name": props.name, "memory_gib": props.total_memory / 2**30,
                       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "capability": f"{props.major}.{props.minor}", "driver": _nvidia_driver()}
    return env


def _version(metadata) -> str:
    try:
        return metadata.version("genpercept")
    except metadata.PackageNotFoundError:
        return "unknown"


def _nvidia_driver() -> str:
    """The NVIDIA driver version as nvidia-smi reports it ("unknown" without nvidia-smi)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"
