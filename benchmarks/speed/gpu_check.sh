#!/usr/bin/env bash
# The GPU check (benchmarks/results/README.md): on a CUDA machine with PyTorch and no network,
#   bash benchmarks/speed/gpu_check.sh [OUT_DIR] [--dry-run] [--budget SECONDS]
# installs the wheels of .whl/ (bash benchmarks/speed/prepare_gpu_wheels.sh made them), runs the CUDA
# tests and the measurements, and writes gpu_check.json, summary.md, gpu_check.log and runs.tar.gz into
# OUT_DIR (default: $OUT where set, else ./gpu_check_out). --dry-run: tiny models on the CPU, seconds.
set -u
cd "$(dirname "$0")/../.." || exit 1
PY="${PYTHON:-python3}"
out="${OUT:-gpu_check_out}"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then out="$1"; shift; fi
wheels="${GENPERCEPT_WHEELS:-.whl}"
if compgen -G "$wheels/*.whl" >/dev/null; then
  site="${GENPERCEPT_SITE:-/tmp/genpercept-site}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || { echo "gpu_check: installing the wheels of $wheels/ failed" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project runs from this working tree
exec "$PY" -m benchmarks.speed.gpu_check run --out "$out" "$@"
