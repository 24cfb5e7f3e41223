#!/usr/bin/env bash
# The eta sweep of the README (issue 9): momentum with eta in {0.1, 0.3, 0.5, 0.7, 0.9} fixed, eta learnable
# (initialised at 0.5) and vanilla, seeds 1 and 2, 300 GINC steps each, then the verdict and the eta plot.
#   bash benchmarks/eta_sweep.sh [OUT]      (OUT defaults to multirun/eta_sweep; ~70 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-multirun/eta_sweep}
$PY train.py -m experiment=eta_sweep attention=vanilla hydra.sweep.dir="$OUT/vanilla"
$PY train.py -m experiment=eta_sweep attention.eta=0.1,0.3,0.5,0.7,0.9 hydra.sweep.dir="$OUT/fixed"
$PY train.py -m experiment=eta_sweep attention.eta=0.5 attention.learnable_eta=true hydra.sweep.dir="$OUT/learnable"
$PY evaluate.py sweep_dir="$OUT"
$PY benchmarks/eta_plot.py "$OUT"
