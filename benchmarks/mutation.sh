#!/usr/bin/env bash
# Mutation testing of the core modules (pyproject.toml [tool.mutmut]): ops, model, data windows, ICL scoring,
# checkpoints, optimizer setup. Each mutant (a one-line change: an operator, a constant, a condition) is run
# against the tests that cover it; a mutant the tests do not notice "survives".
#   pip install -e ".[dev,mutation]" && bash benchmarks/mutation.sh [max_children]
# Writes benchmarks/results/mutation.json and mutation.md (kill rate per module, survivors). About an hour on
# 2 cores; re-running continues where an interrupted run stopped (mutmut keeps its state in mutants/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # one thread per mutant: the children run side by side
"$PY" -m mutmut run --max-children "${1:-2}"
"$PY" -m mutmut results --all true > benchmarks/results/mutation_raw.txt 2>/dev/null || true
"$PY" benchmarks/mutation_report.py benchmarks/results/mutation_raw.txt
