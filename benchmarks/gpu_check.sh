#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh   (the device run: CUDA tests, bf16 attention benchmark, gpt2_124m throughput)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# a fresh clone without .venv: python3 without torch ended in a ModuleNotFoundError traceback (found by review)
"$PY" -c "import torch" 2>/dev/null || {
  echo "error: $PY cannot import torch: set up .venv first (bash scripts/setup.sh) or set PYTHON= to a Python with torch" >&2; exit 2; }
exec "$PY" benchmarks/gpu_check.py "$@"
