#!/usr/bin/env bash
# Mutation testing of the core modules (pyproject.toml [tool.mutmut]): ops, model, data windows, ICL scoring,
# checkpoints, optimizer setup. Each mutant (a one-line change: an operator, a constant, a condition) is run
# against the tests that cover it; a mutant the tests do not notice "survives".
#   pip install -e ".[dev,mutation]" && bash benchmarks/mutation.sh [max_children] [sample]
# sample: a fraction (e.g. 0.25) runs a seeded random sample of every module's mutants (mutation_sample.py); the
# kill rates then carry a 95% interval. The full run (no sample) takes about 2 hours on 2 cores (3,016 mutants,
# ~3 s each); re-running continues where an interrupted run stopped (mutmut keeps its state in mutants/).
# Writes benchmarks/results/mutation.json and mutation.md (kill rate per module, survivors).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$(command -v "$PY")" ] || { echo "error: no Python at $PY: run bash scripts/setup.sh dev mutation, or set PYTHON=" >&2; exit 2; }
"$PY" -c "import mutmut" 2>/dev/null || {
  echo "error: mutmut is not installed for $PY: pip install -e '.[dev,mutation]' (or bash scripts/setup.sh dev mutation)" >&2; exit 2; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # one thread per mutant: the children run side by side
if [ -n "${2:-}" ]; then
  # generate every mutant and map the tests to functions; the filter matches no mutant, so nothing runs yet
  "$PY" -m mutmut run --max-children "${1:-2}" "generate-only-no-such-mutant" >/dev/null 2>&1 || true
  # the sample replaces the recorded one only once drawn (a failed draw left the tracked file empty)
  SAMPLE=$(mktemp)
  trap 'rm -f "$SAMPLE"' EXIT
  "$PY" benchmarks/mutation_sample.py "$2" > "$SAMPLE"
  [ -s "$SAMPLE" ] || { echo "error: empty sample" >&2; exit 1; }
  cp "$SAMPLE" benchmarks/results/mutation_sample.txt   # (cp: the file keeps its permissions, not mktemp's 0600)
  mapfile -t PENDING < <("$PY" benchmarks/mutation_sample.py "$2" --pending)
  echo "sample: $(wc -l < benchmarks/results/mutation_sample.txt) mutants (fraction $2 of every module), ${#PENDING[@]} not run yet"
  if [ "${#PENDING[@]}" -gt 0 ]; then
    "$PY" -m mutmut run --max-children "${1:-2}" "${PENDING[@]}"
  fi
else
  "$PY" -m mutmut run --max-children "${1:-2}"
fi
"$PY" -m mutmut results --all true > benchmarks/results/mutation_raw.txt 2>/dev/null || true
if [ -n "${2:-}" ]; then
  "$PY" benchmarks/mutation_report.py benchmarks/results/mutation_raw.txt benchmarks/results/mutation_sample.txt
else
  "$PY" benchmarks/mutation_report.py benchmarks/results/mutation_raw.txt
fi
