#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (benchmarks.speed.gpu_check.WHEELS) into .whl/, for
# benchmarks/speed/gpu_check.sh. Needs the package index; .whl/ is git-ignored and travels via `carry`.
set -eu
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" -m benchmarks.speed.gpu_check wheels --dest .whl "$@"
