"""Kill rate per module from `mutmut results --all true` (run by benchmarks/mutation.sh).

    python benchmarks/mutation_report.py benchmarks/results/mutation_raw.txt

Writes benchmarks/results/mutation.json and mutation.md: per module, mutants killed / survived / other
(timeout, suspicious, no tests), the kill rate killed / (killed + survived), and every survivor's name for
`mutmut show <name>`."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LINE = re.compile(r"^\s*(?P<name>[\w.]+)__mutmut_\d+: (?P<status>.+?)\s*$")


def parse(text: str) -> dict[str, Counter]:
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        full = line.strip().split(":")[0]
        module = m["name"].rsplit(".", 1)[0]  # momattn.ops.x_func -> momattn.ops
        status = m["status"]
        per_module[module][status] += 1
        if status == "survived":
            survivors[module].append(full)
    return per_module, survivors


def main(path: str) -> None:
    per_module, survivors = parse(Path(path).read_text())
    rows, total = [], Counter()
    for module, c in sorted(per_module.items()):
        total.update(c)
        killed, survived = c["killed"], c["survived"]
        rate = killed / (killed + survived) if killed + survived else float("nan")
        rows.append({"module": module, "killed": killed, "survived": survived,
                     "other": sum(c.values()) - killed - survived, "kill_rate": rate})
    k, s = total["killed"], total["survived"]
    doc = {"modules": rows, "total": {"killed": k, "survived": s, "kill_rate": k / (k + s) if k + s else None},
           "survivors": survivors}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| module | killed | survived | other | kill rate |", "|---|---|---|---|---|"]
    lines += [f"| {r['module']} | {r['killed']} | {r['survived']} | {r['other']} | {100 * r['kill_rate']:.1f}% |"
              for r in rows]
    if k + s:
        lines.append(f"| **all** | {k} | {s} | | **{100 * k / (k + s):.1f}%** |")
    lines += ["", "Survivors (`mutmut show <name>`):", ""]
    lines += [f"- {name}" for names in survivors.values() for name in names]
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: len(rows) + 3]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(RESULTS / "mutation_raw.txt"))
