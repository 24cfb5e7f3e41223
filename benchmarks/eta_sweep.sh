#!/usr/bin/env bash
# The eta sweep of the README (issue 9): momentum with eta in {0.1, 0.3, 0.5, 0.7, 0.9} fixed, eta learnable
# (initialised at 0.5) and vanilla, seeds 1 and 2, 300 GINC steps each, then the verdict and the eta plot
# (evaluate.py writes <OUT>-verdict/: sweep.md, sweep.json, eta_<setting>.png; it reuses each run's own results
# because its evaluation settings below are those of experiment=eta_sweep).
#   bash benchmarks/eta_sweep.sh [OUT]      (OUT defaults to multirun/eta_sweep; ~70 min on 2 cores)
# OUT must be new: train.py refuses to start fresh runs over finished ones (resume a stopped sweep with
# RESUME=1, which adds ckpt_path=last: finished jobs train no further)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || command -v "$PY" >/dev/null || {  # a fresh clone: "line 15: .venv/bin/python: No such file", exit 127
  echo "error: no Python at $PY: set up .venv first (bash scripts/setup.sh) or set PYTHON= to one with momattn's packages" >&2; exit 2; }
OUT=${1:-multirun/eta_sweep}
RESUME_ARGS=()
if [ "${RESUME:-0}" = 1 ]; then RESUME_ARGS=(ckpt_path=last); fi
$PY train.py -m experiment=eta_sweep attention=vanilla ${RESUME_ARGS[@]+"${RESUME_ARGS[@]}"} hydra.sweep.dir="$OUT/vanilla"
$PY train.py -m experiment=eta_sweep attention.eta=0.1,0.3,0.5,0.7,0.9 ${RESUME_ARGS[@]+"${RESUME_ARGS[@]}"} hydra.sweep.dir="$OUT/fixed"
$PY train.py -m experiment=eta_sweep attention.eta=0.5 attention.learnable_eta=true ${RESUME_ARGS[@]+"${RESUME_ARGS[@]}"} hydra.sweep.dir="$OUT/learnable"
$PY evaluate.py sweep_dir="$OUT" hydra.run.dir="$OUT-verdict" batch_tokens=4096 ppl.max_windows=50 ppl.train=true \
  icl.tasks=[ginc,ginc_ood] icl.shots=[0,1,2,4,8,16,32] icl.seeds=[1] icl.max_examples=300 icl.max_shots=32

