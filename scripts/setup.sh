#!/usr/bin/env bash
# Set up momattn in ./.venv: bash scripts/setup.sh [dev] [sweep] [hf] [lm-eval] [slurm] [mutation]
# (any of pyproject.toml's extras, installed together; CI: bash scripts/setup.sh dev sweep hf lm-eval slurm)
# On a machine without a GPU torch==2.13.0 is installed first (on this project's machines pip finds its CPU wheel on
# disk); elsewhere PyPI serves that release as a CUDA build unless PIP_EXTRA_INDEX_URL points at the CPU index
# (https://download.pytorch.org/whl/cpu; the README's Quickstart says so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "torch>=2.4,<3"                      # a GPU machine: pip's default (CUDA) build
  else
    # CPU only: a CPU wheel of this exact release (on this project's machines it is on disk already)
    $PIP install -q torch==2.13.0 2> >(grep -v "is ignored" >&2)
  fi
fi
EXTRAS=$(IFS=,; echo "$*")
# pip's and setuptools' chatter (deprecation boxes, ignored local indexes) is shown only when the install fails
LOG=$(mktemp)
if ! $PIP install -q -e ".${EXTRAS:+[$EXTRAS]}" >"$LOG" 2>&1; then
  cat "$LOG" >&2; rm -f "$LOG"; echo "setup.sh: pip install failed (output above)" >&2; exit 1
fi
rm -f "$LOG"
.venv/bin/python -c "import momattn, torch, lightning, hydra; print(f'momattn ready: torch {torch.__version__}, lightning {lightning.__version__}')"
