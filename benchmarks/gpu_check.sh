#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh   (the device run: CUDA tests, bf16 attention benchmark, gpt2_124m throughput)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
