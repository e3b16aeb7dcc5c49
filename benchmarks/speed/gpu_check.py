"""The GPU check: everything a CUDA machine must measure, as one command that fits a short lease.

    bash benchmarks/speed/prepare_gpu_wheels.sh      # here (network): the missing wheels into .whl/
    bash benchmarks/speed/gpu_check.sh [OUT_DIR]      # there (no network): install, test, measure

The device image has PyTorch and most of our dependencies but not diffusers; `WHEELS` names what it
lacks, at versions our pyproject supports. The project itself runs from the working tree that travels.

`run` executes `plan()` step by step, most important numbers first, each step in its own process with a
timeout cut to what is left of the budget (default 450 s, inside the 8 minutes the issue allows), so a
step that hangs costs only itself. After every step it rewrites, in OUT_DIR (at most 4 files, so the
device tool brings all of them back):

    gpu_check.json   every step's status, seconds, command and JSON results; the environment
    summary.md       the tables of the one-step, peer and Marigold rows per configuration
    gpu_check.log    every step's output
    runs.tar.gz      the per-step JSON files and the pytest report (written at the end)

`--dry-run` runs the same plan on the CPU with tiny models and sizes in seconds (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What the device image lacks (/work/.library/device/KINDS.md): diffusers and its one missing need.
WHEELS = {"diffusers": "0.42.1", "importlib-metadata": "8.7.0"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
WHEEL_BUDGET_MB = 16  # the wheels travel with the tree (64 MiB in all); ours are ~6.4 MB
SITE = "/tmp/genpercept-site"
BUDGET_S = 450
OUT_FILES = ("gpu_check.json", "summary.md", "gpu_check.log", "runs.tar.gz")


# -- wheels -------------------------------------------------------------------------------------
def download_command(dest: Path, wheels: dict[str, str] = WHEELS, python: str = sys.executable) -> list[str]:
    """`pip download` of exactly `wheels`, as binaries for the device (CPython 3.12, x86-64 Linux)."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + ["-d", str(dest), *(f"{name}=={version}" for name, version in wheels.items())]


def install_command(wheel_dir: Path, target: str = SITE, python: str = "python3") -> list[str]:
    """The offline install on the device: no index, no dependency resolution, into `target`."""
    wheels = sorted(str(p) for p in Path(wheel_dir).glob("*.whl"))
    return [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--upgrade", "--target", target, *wheels]


def check_wheels(wheel_dir: Path, wheels: dict[str, str] = WHEELS) -> list[Path]:
    """The wheel files for `wheels`, one per name at its version; raises ValueError naming what is off."""
    files = sorted(Path(wheel_dir).glob("*.whl"))
    found: dict[str, list[str]] = {}
    for f in files:
        name, version = f.name.split("-")[:2]
        found.setdefault(name.lower().replace("_", "-"), []).append(version)
    for name, version in wheels.items():
        if found.get(name) != [version]:
            raise ValueError(f"{wheel_dir} should hold one {name} {version} wheel, has {found.get(name, [])}.")
    extra = sorted(set(found) - set(wheels))
    if extra:
        raise ValueError(f"{wheel_dir} holds wheels the device does not need: {', '.join(extra)}.")
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    if size_mb > WHEEL_BUDGET_MB:
        raise ValueError(f"the wheels take {size_mb:.1f} MB, over the {WHEEL_BUDGET_MB} MB they may travel with.")
    return files


def prepare_wheels(dest: Path) -> list[Path]:
    """Download the device's wheels into `dest` (emptied of other wheels first) and check them."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    subprocess.run(download_command(dest), check=True)
    return check_wheels(dest)


# -- the plan -----------------------------------------------------------------------------------
@dataclass
class Step:
    """One command of the check: `json` lists the result files it writes (merged into gpu_check.json)."""

    name: str
    argv: list[str]
    timeout_s: int
    json: list[str] = field(default_factory=list)


@dataclass
class Sizes:
    """What the check measures: the GPU's sizes, or the dry run's tiny ones on the CPU."""

    device: str = "cuda"
    model_size: str = "sd21"
    resolution: int = 768
    images: int = 32  # per bench repeat
    predict_images: int = 256
    predict_side: int = 1152  # square synthetic JPEGs, 1.5 x the resolution as bench-speed makes them
    predict_warm: int = 16  # images of the first, start-up-only predict run
    batches: tuple[int, ...] = (1, 4, 8, 16)
    headline_batch: int = 8
    dtypes: tuple[str, ...] = ("fp16", "bf16")
    marigold: str = "marigold:10x1@1"
    repeats: int = 2
    compile: bool = True
    peer: bool = True  # diffusers' MarigoldDepthPipeline measured beside us (needs transformers)

    @classmethod
    def dry_run(cls) -> Sizes:
        from .peer import peer_problem

        return cls(peer=peer_problem() is None, device="cpu", model_size="tiny", resolution=64, images=2,
                   predict_images=6, predict_side=96, predict_warm=1, batches=(1, 2), headline_batch=2,
                   dtypes=("fp32", "bf16"), marigold="marigold:2x1@1", repeats=1, compile=False)


def bench_args(s: Sizes, dtype: str, batch: int, json_path: Path, protocols=("diffusers",), *extra) -> list[str]:
    """One `genpercept bench-speed` command line (random weights: no download)."""
    args = ["--random-weights", "--model-size", s.model_size, "--device", s.device, "--dtype", dtype,
            "--resolution", str(s.resolution), "--batch-size", str(batch), "--num-images", str(max(s.images, batch)),
            "--repeats", str(s.repeats), "--json", str(json_path)]
    for p in protocols:
        args += ["--protocol", p]
    return args + list(extra)


def plan(work: Path, s: Sizes, python: str = sys.executable) -> list[Step]:
    """The steps, most important first: headline throughput and peer ratio per dtype, the CUDA tests,
    the batch/layout/head sweep, predict and eval end to end, what half precision changes in Meta Prompts'
    outputs (its reference runs in fp32), then torch.compile (slowest to warm)."""
    me = [python, "-m", "benchmarks.speed.gpu_check"]
    peer = ("diffusers",) if s.peer else ()
    headline = [(f"bench_{d}_b{s.headline_batch}", bench_args(
        s, d, s.headline_batch, work / f"bench_{d}_b{s.headline_batch}.json", ("genpercept", *peer, s.marigold)))
        for d in s.dtypes]
    sweep = [(f"bench_{s.dtypes[0]}_b{b}", bench_args(s, s.dtypes[0], b, work / f"bench_{s.dtypes[0]}_b{b}.json",
                                                      peer)) for b in s.batches if b != s.headline_batch]
    sweep.append((f"bench_{s.dtypes[0]}_auto", bench_args(s, s.dtypes[0], 0, work / f"bench_{s.dtypes[0]}_auto.json",
                                                          peer)))
    hb, d0 = s.headline_batch, s.dtypes[0]
    sweep.append((f"bench_{d0}_b{hb}_channels_last", bench_args(
        s, d0, hb, work / f"bench_{d0}_b{hb}_channels_last.json", (), "--channels-last")))
    sweep.append((f"bench_{d0}_b{hb}_no_channels_last", bench_args(
        s, d0, hb, work / f"bench_{d0}_b{hb}_no_channels_last.json", (), "--no-channels-last")))
    sweep.append((f"bench_{d0}_b{hb}_dpt", bench_args(s, d0, hb, work / f"bench_{d0}_b{hb}_dpt.json", (),
                                                      "--head", "dpt")))
    steps = [Step("environment", me + ["environment", "--device", s.device, "--json", str(work / "environment.json")],
                  60, [str(work / "environment.json")])]
    steps.append(_group("headline", headline, me, 200))
    steps.append(Step("pytest_cuda", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
                                      f"--junitxml={work / 'pytest_cuda.xml'}", "tests/test_cuda.py"], 150))
    steps.append(_group("sweep", sweep, me, 180))
    steps.append(Step("predict_e2e", me + ["predict-e2e", "--work", str(work / "predict"), "--device", s.device,
                                           "--dtype", s.dtypes[0], "--model-size", s.model_size,
                                           "--images", str(s.predict_images), "--warm", str(s.predict_warm),
                                           "--side", str(s.predict_side),
                                           "--resolution", str(s.resolution), "--json", str(work / "predict.json")],
                      150, [str(work / "predict.json")]))
    steps.append(Step("eval_e2e", me + ["eval-e2e", "--work", str(work / "eval"), "--device", s.device,
                                        "--dtype", s.dtypes[0], "--checkpoint", str(work / "predict" / "checkpoint"),
                                        "--resolution", str(s.resolution), "--json", str(work / "eval.json")],
                      90, [str(work / "eval.json")]))
    halves = ",".join(d for d in s.dtypes if d != "fp32")
    steps.append(Step("metaprompts_precision", me + [
        "metaprompts-precision", "--work", str(work / "metaprompts"), "--device", s.device, "--dtypes", halves,
        *(["--small"] if s.model_size == "tiny" else []), "--json", str(work / "metaprompts_precision.json")],
        90, [str(work / "metaprompts_precision.json")]))
    if s.compile:
        compiled = [(f"bench_{d0}_b{hb}_compile", bench_args(s, d0, hb, work / f"bench_{d0}_b{hb}_compile.json",
                                                             peer, "--compile")),
                    (f"bench_{d0}_b{hb}_compile_cuda_graphs", bench_args(
                        s, d0, hb, work / f"bench_{d0}_b{hb}_compile_cuda_graphs.json", (), "--compile",
                        "--cuda-graphs"))]
        steps.append(_group("compile", compiled, me, 240))
    return steps


def _group(name: str, runs: list[tuple[str, list[str]]], me: list[str], timeout_s: int) -> Step:
    """Several bench-speed runs in one process (CUDA and imports start once); each writes its JSON."""
    spec = json.dumps([args for _, args in runs])
    return Step(name, me + ["bench-group", spec], timeout_s, [args[args.index("--json") + 1] for _, args in runs])


# -- running it ---------------------------------------------------------------------------------
def run_plan(steps: list[Step], out: Path, work: Path, budget_s: float = BUDGET_S, notes: list[str] = ()) -> dict:
    """Run `steps` in order within `budget_s`, rewriting gpu_check.json and summary.md after each."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget_s, "notes": list(notes),
              "steps": [], "results": {}}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()}
    with open(out / "gpu_check.log", "a", encoding="utf-8") as log:
        for step in steps:
            left = budget_s - (time.monotonic() - start)
            entry = {"name": step.name, "command": step.argv}
            if left < 15:
                entry |= {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
            else:
                entry |= _run_step(step, min(step.timeout_s, left), env, log)
            entry["results"] = [p for p in step.json if Path(p).exists()]
            for p in entry["results"]:
                report["results"][Path(p).stem] = json.loads(Path(p).read_text(encoding="utf-8"))
            report["steps"].append(entry)
            report["elapsed_s"] = time.monotonic() - start
            _write(out, report)
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:  # results only: no images, weights or outputs
        for path in sorted(work.rglob("*")):
            if path.suffix in (".json", ".xml") and path.is_file():
                tar.add(path, arcname=str(Path("runs") / path.relative_to(work)))
    return report


def _pythonpath() -> str:
    parts = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def _run_step(step: Step, timeout_s: float, env: dict, log) -> dict:
    log.write(f"\n=== {step.name} ({timeout_s:.0f} s): {' '.join(step.argv)}\n")
    log.flush()
    t0 = time.monotonic()
    try:
        rc = subprocess.run(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout_s).returncode
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout_s:.0f} s"
    log.write(f"=== {step.name}: {status}\n")
    log.flush()
    return {"status": status, "seconds": round(time.monotonic() - t0, 1)}


def _write(out: Path, report: dict) -> None:
    from .gpu_summary import summary_markdown

    for name, text in (("gpu_check.json", json.dumps(report, indent=1) + "\n"),
                       ("summary.md", summary_markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


# -- the steps' own commands --------------------------------------------------------------------
def bench_group(spec: str) -> int:
    """Run several `bench-speed` command lines (a JSON list of argument lists) in this process."""
    import gc

    from genpercept_cli.cli import app
    from genpercept_cli.runtime.allocator import tune_heap

    tune_heap()  # as `genpercept` does at start-up

    failures = 0
    for args in json.loads(spec):
        tries = [args]
        if "diffusers" in args:  # if the peer cannot run, our rows still count: again without it
            i = args.index("diffusers")
            tries.append(args[: i - 1] + args[i + 1 :])
        for attempt in tries:
            print(f"--- bench-speed {' '.join(attempt)}", flush=True)
            try:
                code = app(["bench-speed", *attempt], standalone_mode=False)  # the CLI's exit code, None = 0
                if not code:
                    break
                print(f"--- failed: exit code {code}", flush=True)
            except Exception as exc:  # one configuration failing must not cost the others
                print(f"--- failed: {type(exc).__name__}: {exc}", flush=True)
            finally:
                gc.collect()
                _empty_cuda_cache()
        else:
            failures += 1
    return 1 if failures else 0


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_environment(device: str, json_path: Path) -> None:
    import torch

    from genpercept_cli.runtime.allocator import tune_heap

    from .environment import environment

    tune_heap()

    env = environment(torch.device(device))
    env["nvidia_smi"] = _capture(["nvidia-smi"])
    json_path.write_text(json.dumps(env, indent=1) + "\n", encoding="utf-8")


def _capture(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.gpu_check", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("wheels", help="download the device's wheels (network) and check them")
    p.add_argument("--dest", type=Path, default=ROOT / ".whl")
    p.add_argument("--print", action="store_true", help="print the pip command only")
    p = sub.add_parser("run", help="the check: tests and measurements into OUT")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (seconds)")
    p.add_argument("--budget", type=float, default=BUDGET_S)
    p.add_argument("--steps", help="comma-separated step names to run (default: all, in plan order)")
    p = sub.add_parser("plan", help="print the steps' command lines")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("bench-group")
    p.add_argument("spec")
    p = sub.add_parser("environment")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path, required=True)
    from .gpu_steps import add_step_parsers

    add_step_parsers(sub)
    args = parser.parse_args(argv)
    if args.cmd == "wheels":
        if args.print:
            print(" ".join(download_command(args.dest)))
            return 0
        files = prepare_wheels(args.dest)
        print(f"{len(files)} wheels, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {args.dest}")
        return 0
    sizes = Sizes.dry_run() if getattr(args, "dry_run", False) else Sizes()
    if args.cmd == "plan":
        for step in plan(Path("WORK"), sizes):
            print(f"{step.name} ({step.timeout_s} s): {' '.join(step.argv)}")
        return 0
    if args.cmd == "run":
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"genpercept-gpu-check-{os.getpid()}"
        steps = plan(work, sizes)
        if args.steps:
            wanted = args.steps.split(",")
            unknown = sorted(set(wanted) - {step.name for step in steps})
            if unknown:
                parser.error(f"unknown step(s) {', '.join(unknown)}; the plan has "
                             f"{', '.join(step.name for step in steps)}")
            steps = [step for step in steps if step.name in wanted]
        from .peer import peer_problem

        problem = peer_problem()
        notes = [] if problem is None else [f"The peer was not measured: {problem}"]
        report = run_plan(steps, args.out, work, args.budget, notes)
        shutil.rmtree(work, ignore_errors=True)
        return 0 if all(s["status"] == "ok" for s in report["steps"]) else 1
    if args.cmd == "bench-group":
        return bench_group(args.spec)
    if args.cmd == "environment":
        write_environment(args.device, args.json)
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
