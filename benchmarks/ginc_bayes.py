"""The ceiling of GINC in-context accuracy: what the Bayes-optimal reader scores on the evaluator's own prompts.

    python benchmarks/ginc_bayes.py [--prompts 500] [--seed 1] [--context 256] [field=value ...]

field=value sets a GincCorpus field (n_symbols=100, n_train_concepts=10, ...; default: conf/data/ginc.yaml's,
the paper's). The reader knows how prompts are made but not their concept or start property; its posterior over
(pretraining concept, start property) after the k examples and the test input decides (GincCorpus.bayes_probs).
It is scored like a model: its argmax against the label, on exactly the prompts `evaluate.py` scores for
icl.seeds=[seed] and icl.max_examples=prompts. A model pretrained on GINC can at best reach these figures; the
rise from k = 0 to the largest k is the most in-context learning the data allows. Writes
benchmarks/results/ginc_bayes.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from momattn.data.ginc import GincCorpus, max_shots  # noqa: E402
from momattn.eval.ginc import ginc_task  # noqa: E402
from momattn.utils import stable_seed  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = ["ginc", "ginc_l3", "ginc_l8", "ginc_ood"]
SHOTS = [0, 1, 2, 4, 8, 16, 32]


def _field(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    types = {f.name: f.type for f in fields(GincCorpus)}
    if not sep or key not in types:
        raise SystemExit(f"error: '{text}' is not field=value with a GincCorpus field ({', '.join(types)})")
    return key, (float(value) if "float" in str(types[key]) else int(value))


def bayes_table(world: GincCorpus, tasks: list[str], shots: list[int], n: int, seed: int, context: int) -> dict:
    out = {}
    for name in tasks:
        task = ginc_task(name)
        fit = max_shots(task.example_len, context - 1)  # the evaluator puts <eot> first
        row = {}
        for k in shots:
            if k > fit:
                row[str(k)] = None  # does not fit the context
                continue
            prompts = world.prompts(task.example_len, k, n, ood=task.ood, seed=stable_seed("ginc-prompts", seed))
            pred = world.bayes_probs(prompts).argmax(axis=1)
            row[str(k)] = float(np.mean(pred == np.array([p.label for p in prompts])))
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("fields", nargs="*", help="GincCorpus field=value")
    a = ap.parse_args(argv)
    world = GincCorpus(**dict(_field(f) for f in a.fields))
    t0 = time.time()
    table = bayes_table(world, a.tasks.split(","), [int(k) for k in a.shots.split(",")], a.prompts, a.seed, a.context)
    doc = {"world": asdict(world), "prompts": a.prompts,
           "seed": a.seed, "context": a.context, "seconds": round(time.time() - t0, 1), "accuracy": table}
    shots = a.shots.split(",")
    lines = ["| task | " + " | ".join(f"k={k}" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for name, row in table.items():
        cells = ["(does not fit)" if row[k] is None else f"{100 * row[k]:.1f}" for k in shots]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ginc_bayes.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "ginc_bayes.md").write_text(f"Bayes-optimal reader, accuracy in % ({a.prompts} prompts, seed {a.seed}, "
                                       f"context {a.context}):\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"({doc['seconds']} s)")
    return doc


if __name__ == "__main__":
    main()
