"""Run under torchrun by tests/test_distributed.py: evaluate each case of a JSON file data-parallel and
write rank 0's results (the JSON report and the per-image rows) to OUT/<case>.json."""

import json
import sys
from pathlib import Path

from benchmarks.evaluate import EvalOptions, evaluate
from genpercept_cli.runtime.distributed import GlobalProgress, exit_process, from_environment


def main(cases_file: str, out_dir: str) -> None:
    dist = from_environment()
    for name, options in json.loads(Path(cases_file).read_text()).items():
        result = evaluate(EvalOptions(**options), GlobalProgress(None, dist), dist=dist)
        if dist.is_main:
            report = {"json": result.to_json(), "rows": result.rows, "ranks": dist.world}
            (Path(out_dir) / f"{name}.json").write_text(json.dumps(report, default=str))
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
    exit_process(0)  # as the command line ends a data-parallel run
