"""Kill rate per module from `mutmut results --all true` (run by benchmarks/mutation.sh).

    python benchmarks/mutation_report.py benchmarks/results/mutation_raw.txt [sample.txt]

Writes benchmarks/results/mutation.json and mutation.md: per module, mutants killed / survived / other
(timeout, suspicious, no tests), the kill rate killed / (killed + survived) with a 95% Wilson interval, and
every survivor's name for `mutmut show <name>`. Mutants not run yet ("not checked") are left out and counted;
with sample.txt (mutation_sample.py's list) only the sampled mutants count. Survivors named in
benchmarks/mutation_equivalent.txt (name, then the reason) are shown with their reason, and a second rate leaves
them out: killed / (killed + survivors not named there). A named mutant that no longer survives is reported, so
the list cannot go stale silently."""

from __future__ import annotations

import math
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parents[1]))  # run from a checkout without installing

from momattn.io import atomic_write_text, json_text  # noqa: E402

EQUIVALENT = Path(__file__).resolve().parent / "mutation_equivalent.txt"
LINE = re.compile(r"^\s*(?P<name>[\w.]+)__mutmut_\d+: (?P<status>.+?)\s*$")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n ((nan, nan) for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def parse(text: str, only: set[str] | None = None) -> dict[str, Counter]:
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        full = line.strip().split(":")[0]
        if only is not None and full not in only:
            continue
        module = m["name"].rsplit(".", 1)[0]  # momattn.ops.x_func -> momattn.ops
        status = m["status"]
        per_module[module][status] += 1
        if status == "survived":
            survivors[module].append(full)
    return per_module, survivors


def read_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    """name -> reason, from lines "name  reason" ('#' starts a comment line)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, reason = line.strip().partition(" ")
            out[name] = reason.strip()
    return out


def row(name: str, c: Counter, n_equivalent: int = 0) -> dict:
    killed, survived = c["killed"], c["survived"]
    lo, hi = wilson(killed, killed + survived)
    real = survived - n_equivalent
    return {"module": name, "killed": killed, "survived": survived, "equivalent": n_equivalent,
            "not_checked": c["not checked"], "other": sum(c.values()) - killed - survived - c["not checked"],
            "kill_rate": killed / (killed + survived) if killed + survived else float("nan"), "ci95": [lo, hi],
            "kill_rate_non_equivalent": killed / (killed + real) if killed + real else float("nan")}


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def cells(r: dict) -> str:
    rate = "n/a" if math.isnan(r["kill_rate"]) else \
        f"{100 * r['kill_rate']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
    return (f"{r['killed']} | {r['survived']} | {r['equivalent']} | {r['other']} | {r['not_checked']} | {rate} | "
            f"{_pct(r['kill_rate_non_equivalent'])}")


def main(path: str, sample: str | None = None, equivalent: Path = EQUIVALENT, out: Path | None = None) -> None:
    out = RESULTS if out is None else out
    only = set(Path(sample).read_text().split()) if sample else None
    per_module, survivors = parse(Path(path).read_text(), only)
    if not per_module:  # another file given by mistake: the committed tables were replaced by empty ones
        raise SystemExit(f"error: {path} holds no mutmut result lines ('<mutant name>: <status>'); give the "
                         "listing benchmarks/mutation.sh writes (benchmarks/results/mutation_raw.txt)")
    named = read_equivalent(equivalent)
    n_eq = {m: sum(1 for s in names if s in named) for m, names in survivors.items()}
    rows = [row(module, c, n_eq.get(module, 0)) for module, c in sorted(per_module.items())]
    total = row("all", sum(per_module.values(), Counter()), sum(n_eq.values()))
    surviving = {s for names in survivors.values() for s in names}
    stale = sorted(n for n in named if n not in surviving and (only is None or n in only))
    doc = {"modules": rows, "total": total, "sampled": sample is not None, "survivors": survivors,
           "equivalent": {s: named[s] for s in sorted(surviving) if s in named}, "named_but_killed": stale}
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| module | killed | survived | of which equivalent | other | not checked | kill rate [95% CI] | "
             "kill rate, equivalent left out |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['module']} | {cells(r)} |" for r in rows]
    if total["killed"] + total["survived"]:
        lines.append(f"| **all** | {cells(total)} |")
    lines += ["", "Survivors (`mutmut show <name>`), with the reason where benchmarks/mutation_equivalent.txt gives one:", ""]
    lines += [f"- {name}" + (f": {named[name]}" if name in named else " (not explained)")
              for names in survivors.values() for name in names]
    if stale:
        lines += ["", "Named in mutation_equivalent.txt but no longer surviving (remove them):", ""]
        lines += [f"- {name}" for name in stale]
    atomic_write_text(out / "mutation.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "mutation.json", json_text(doc, indent=2) + "\n")  # a kill rate of no mutants: null
    print("\n".join(lines[: len(rows) + 3]))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", nargs="?", default=str(RESULTS / "mutation_raw.txt"), help="mutmut's results listing")
    ap.add_argument("sample", nargs="?", default=None, help="mutation_sample.py's list: only these mutants count")
    ap.add_argument("--out", type=Path, default=None, help="the folder for mutation.json and mutation.md (default "
                    "benchmarks/results)")
    a = ap.parse_args()
    for p in (a.raw, a.sample):
        if p is not None and not Path(p).is_file():
            ap.error(f"{p} is not a file")
    main(a.raw, a.sample, out=a.out)
