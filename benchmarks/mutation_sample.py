"""A seeded, per-module random sample of mutmut's mutants (benchmarks/mutation.sh SAMPLE): prints their names.

    python benchmarks/mutation_sample.py 0.25 [seed] [--pending]

--pending prints only the sampled mutants not run yet (mutmut re-runs any mutant it is given by name, so an
interrupted sampled run continues with these).

Reads the mutant lists mutmut wrote to mutants/**/*.meta when it generated them. Sampling the same fraction of
every module keeps each module's kill rate an unbiased estimate of its full-run rate; mutation_report.py gives it
a 95% (Wilson) interval. Mutants already checked by an earlier run are kept in the sample (their verdict is free).
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def mutant_names(root: Path = Path("mutants")) -> dict[str, list[tuple[str, int | None]]]:
    """module file -> [(mutant name, exit code or None when not run yet)], in mutmut's order."""
    out = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[str(meta.relative_to(root))[: -len(".meta")]] = list(codes.items())
    return out


def sample(names: dict[str, list[tuple[str, int | None]]], fraction: float, seed: int = 0) -> list[str]:
    if not 0 < fraction <= 1:
        raise SystemExit(f"error: the sample fraction must be in (0, 1], got {fraction}")
    rng = random.Random(seed)
    picked = []
    for _, mutants in sorted(names.items()):
        n = max(1, round(fraction * len(mutants)))
        picked += sorted(name for name, _ in rng.sample(mutants, min(n, len(mutants))))
    return picked


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fraction", type=float, help="the share of every module's mutants to sample, in (0, 1]")
    ap.add_argument("seed", type=int, nargs="?", default=0)
    ap.add_argument("--pending", action="store_true", help="only the sampled mutants not run yet")
    a = ap.parse_args()
    if not 0 < a.fraction <= 1:
        ap.error(f"fraction {a.fraction} must be in (0, 1], e.g. 0.25")
    found = mutant_names()
    if not found:
        raise SystemExit("error: no mutants/ folder with mutant lists: run `mutmut run` once (benchmarks/mutation.sh "
                         "generates them) before sampling")
    picked = sample(found, a.fraction, a.seed)
    if a.pending:
        done = {name for mutants in found.values() for name, code in mutants if code is not None}
        picked = [name for name in picked if name not in done]
    print("\n".join(picked))
