"""Kill rate per module from `mutmut results --all true` (run by benchmarks/mutation.sh).

    python benchmarks/mutation_report.py benchmarks/results/mutation_raw.txt [sample.txt]

Writes benchmarks/results/mutation.json and mutation.md: per module, mutants killed / survived / other
(timeout, suspicious, no tests), the kill rate killed / (killed + survived) with a 95% Wilson interval, and
every survivor's name for `mutmut show <name>`. Mutants not run yet ("not checked") are left out and counted;
with sample.txt (mutation_sample.py's list) only the sampled mutants count."""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
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


def row(name: str, c: Counter) -> dict:
    killed, survived = c["killed"], c["survived"]
    lo, hi = wilson(killed, killed + survived)
    return {"module": name, "killed": killed, "survived": survived, "not_checked": c["not checked"],
            "other": sum(c.values()) - killed - survived - c["not checked"],
            "kill_rate": killed / (killed + survived) if killed + survived else float("nan"), "ci95": [lo, hi]}


def cells(r: dict) -> str:
    rate = "n/a" if math.isnan(r["kill_rate"]) else \
        f"{100 * r['kill_rate']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
    return f"{r['killed']} | {r['survived']} | {r['other']} | {r['not_checked']} | {rate}"


def main(path: str, sample: str | None = None) -> None:
    only = set(Path(sample).read_text().split()) if sample else None
    per_module, survivors = parse(Path(path).read_text(), only)
    rows = [row(module, c) for module, c in sorted(per_module.items())]
    total = row("all", sum(per_module.values(), Counter()))
    doc = {"modules": rows, "total": total, "sampled": sample is not None, "survivors": survivors}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| module | killed | survived | other | not checked | kill rate [95% CI] |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['module']} | {cells(r)} |" for r in rows]
    if total["killed"] + total["survived"]:
        lines.append(f"| **all** | {cells(total)} |")
    lines += ["", "Survivors (`mutmut show <name>`):", ""]
    lines += [f"- {name}" for names in survivors.values() for name in names]
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: len(rows) + 3]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(RESULTS / "mutation_raw.txt"), sys.argv[2] if len(sys.argv) > 2 else None)
