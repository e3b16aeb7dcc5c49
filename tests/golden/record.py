"""Record the golden outputs that tests/test_golden.py compares against (overwrites tests/golden/*.json|npz).

    python tests/golden/record.py --from-commit 48cfd03   # what the files here hold: the pre-restructure code
    python tests/golden/record.py                         # the code importable now (the working tree)

Record from the code whose behaviour is to be frozen, never from the code under test. `--from-commit`
exports that commit (`git archive`) to a temporary folder, puts this folder's cases.py and record.py into
it, records there with the export first on PYTHONPATH (so no later edit leaks in), and copies the golden
files back. 48cfd03 is the last commit before the model/runtime restructure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("pipeline.npz", "cli.npz", "cli.json", "meta.json")
MAX_BYTES = 2_000_000  # golden data must stay small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-commit", metavar="REV", help="record from this commit, exported (not the working tree)")
    parser.add_argument("--commit", help=argparse.SUPPRESS)  # set by --from-commit in the export: noted in meta.json
    args = parser.parse_args()
    if args.from_commit:
        record_from_commit(args.from_commit)
    else:
        record(args.commit)


def record_from_commit(rev: str) -> None:
    repo = HERE.parent.parent
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(repo), "archive", sha], check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="genpercept-golden-base-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
            tar.extractall(tmp, **safe)
        golden = Path(tmp, "tests", "golden")
        golden.mkdir(parents=True, exist_ok=True)
        for name in ("cases.py", "record.py"):
            shutil.copy(HERE / name, golden / name)
        env = {**os.environ, "PYTHONPATH": tmp, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, str(golden / "record.py"), "--commit", sha], cwd=tmp, env=env, check=True)
        for name in OUTPUTS:
            shutil.copy(golden / name, HERE / name)
    print(f"recorded from {sha} into {HERE}")


def record(commit: str | None) -> None:
    import numpy as np

    sys.path.insert(0, str(HERE))
    import cases

    import genpercept_cli

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = cases.make_workspace()
    try:
        with cases.one_thread():
            pipeline = {}
            for model in cases.MODELS:
                pipeline |= cases.observe_pipeline(root, model)
            cli, cli_arrays = {}, {}
            for name in cases.CLI_CASES:
                cli[name], arrays = cases.observe_cli(root, name)
                cli_arrays |= {f"{name}/{rel}": array for rel, array in arrays.items()}
                crashed = [run["exception"] for run in cli[name]["runs"] if run["exception"]]
                if crashed:
                    raise SystemExit(f"{name} crashed ({crashed[0]}): fix the case or the code before recording.")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    np.savez_compressed(cases.PIPELINE_NPZ, **pipeline)
    np.savez_compressed(cases.CLI_NPZ, **cli_arrays)
    cases.CLI_JSON.write_text(json.dumps(cli, indent=1, ensure_ascii=False) + "\n")
    source = commit or str(Path(genpercept_cli.__file__).resolve().parent.parent)
    meta = {"source": source, "versions": cases.library_versions(), "python": sys.version.split()[0]}
    cases.META_JSON.write_text(json.dumps(meta, indent=1) + "\n")
    sizes = {name: (HERE / name).stat().st_size for name in OUTPUTS}
    for name, size in sizes.items():
        print(f"tests/golden/{name}: {size / 1e3:.0f} kB")
    print(f"{len(pipeline)} pipeline arrays, {len(cli)} command cases, {sum(sizes.values()) / 1e6:.2f} MB in all")
    if sum(sizes.values()) > MAX_BYTES:
        raise SystemExit(f"golden data is {sum(sizes.values()) / 1e6:.2f} MB, over the {MAX_BYTES / 1e6:.0f} MB budget")


if __name__ == "__main__":
    main()
