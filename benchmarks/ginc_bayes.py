"""The ceiling of GINC in-context accuracy: what Bayes-optimal readers score on the evaluator's own prompts.

    python benchmarks/ginc_bayes.py [--prompts 500] [--seed 1] [--context 256] [field=value ...]

field=value sets a GincCorpus field (n_symbols=100, n_train_concepts=10, ...; default: conf/data/ginc.yaml's,
the paper's). The first two readers know how prompts are made (each example restarts at a start property all
share, "/" separates them) but not their concept or start property, and hold the posterior over (pretraining
concept, start property) after the k examples and the test input:
  label vote   each pair votes for its own label with its posterior weight (GincCorpus.bayes_label_probs): the
               most accurate answer any reader can give, the ceiling of accuracy at that k, on the tasks of the
               pretraining concepts (on ginc_ood, whose concepts the prior does not hold, no reader is a ceiling:
               the predictive reader scores more there);
  predictive   the argmax of the posterior mixture of the pairs' next-symbol distributions (bayes_probs): the
               idealised in-context reader of Xie et al.'s analysis, done exactly.
They differ where several pairs stay plausible (short examples, few of them). The third knows only the
pretraining distribution:
  pretraining  the greedy answer of a model that learned the pretraining documents perfectly and reads <eot> +
               the prompt as the start of one (GincCorpus.pretraining_probs); where the examples' restarts make
               the prompt impossible as a document its answer is undefined (uniform here, so "/"), and the share
               of prompts it can read at all is reported beside it.
Each is scored like a model, against
the label, on exactly the prompts `evaluate.py` scores for icl.seeds=[seed] and icl.max_examples=prompts; the rise
from k = 0 to the largest k is the most in-context learning the data allows. Writes
benchmarks/results/ginc_bayes.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from momattn.data.ginc import MAX_PROMPTS, GincCorpus, max_shots, prompt_length  # noqa: E402
from momattn.errors import ConfigError  # noqa: E402
from momattn.eval.ginc import ginc_task  # noqa: E402
from momattn.io import atomic_write_text  # noqa: E402
from momattn.utils import positive_int, stable_seed  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import check_out_dir, run_main, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = ["ginc", "ginc_l3", "ginc_l8", "ginc_ood"]
SHOTS = [0, 1, 2, 4, 8, 16, 32]


def _field(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    types = {f.name: f.type for f in fields(GincCorpus)}
    if not sep or key not in types:
        raise SystemExit(f"error: '{text}' is not field=value with a GincCorpus field ({', '.join(types)})")
    if value.lower() in ("null", "none") and "None" in str(types[key]):
        return key, None
    try:
        return key, (float(value) if "float" in str(types[key]) else int(value))
    except ValueError:
        raise SystemExit(f"error: {key}={value} must be a number ({types[key]})") from None


READERS = {"label vote": lambda w, ps: w.bayes_label_probs(ps), "predictive": lambda w, ps: w.bayes_probs(ps),
           "pretraining": lambda w, ps: w.pretraining_probs(ps)[0],
           "pretraining: prompts it can read": lambda w, ps: w.pretraining_probs(ps)[1]}


def bayes_table(world: GincCorpus, tasks: list[str], shots: list[int], n: int, seed: int, context: int,
                reader: str = "label vote") -> dict:
    """{task: {k: accuracy, or for the share reader the share of prompts (None: k does not fit)}}."""
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
            out_ = READERS[reader](world, prompts)
            row[str(k)] = float(np.mean(out_ if out_.ndim == 1 else
                                        out_.argmax(axis=1) == np.array([p.label for p in prompts])))
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--prompts", type=positive_int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--context", type=positive_int, default=256)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("fields", nargs="*", help="GincCorpus field=value")
    a = ap.parse_args(argv)
    try:
        shot_ints = [int(k) for k in a.shots.split(",")]
    except ValueError:
        ap.error(f"--shots must be comma-separated integers, got {a.shots!r}")
    if any(k < 0 for k in shot_ints):
        ap.error(f"--shots {a.shots}: k must be >= 0")
    tasks = a.tasks.split(",")
    if bad := [t for t in tasks if ginc_task(t, "--tasks") is None]:
        ap.error(f"--tasks: {', '.join(bad)} is not a GINC task; e.g. {', '.join(TASKS)}")
    if a.prompts > MAX_PROMPTS:
        ap.error(f"--prompts {a.prompts}: at most {MAX_PROMPTS:,} (all are made and held at once)")
    for name, length in ((t, ginc_task(t).example_len) for t in tasks):  # the evaluator puts <eot> first: context
        if prompt_length(length, 0) > a.context - 1:  # - 1 tokens for the prompt
            ap.error(f"--context {a.context}: task {name}'s test input alone takes {length - 1} tokens after <eot>; "
                     "raise --context or drop the task")
    check_out_dir(ap, Path(a.out))
    t0 = time.time()
    try:
        world = GincCorpus(**dict(_field(f) for f in a.fields))
        tables = {label: bayes_table(world, tasks, shot_ints, a.prompts, a.seed, a.context, label)
                  for label in READERS}
    except ConfigError as e:  # in the script's own spelling: field=value, not data.field
        ap.error(str(e).replace("data.", ""))
    doc = {"world": asdict(world), "prompts": a.prompts, "seed": a.seed, "context": a.context,
           "seconds": round(time.time() - t0, 1), "accuracy": tables["label vote"], "accuracy_predictive":
           tables["predictive"], "accuracy_pretraining": tables["pretraining"],
           "readable_pretraining": tables["pretraining: prompts it can read"],
           "readers": {"accuracy": "label vote (the ceiling)",
                       "accuracy_predictive": "predictive argmax (the idealised in-context reader, who knows the "
                                              "prompt format)",
                       "accuracy_pretraining": "a perfect model of the pretraining documents, greedy (uniform where "
                                               "the prompt is impossible as a document)",
                       "readable_pretraining": "share of prompts possible as a pretraining document"}}
    shots = [str(k) for k in shot_ints]  # bayes_table's keys ("04" would miss "4")
    lines = ["| reader | task | " + " | ".join(f"k={k}" for k in shots) + " |", "|---" * (len(shots) + 2) + "|"]
    for label, table in tables.items():
        for name, row in table.items():
            cells = ["(does not fit)" if row[k] is None else f"{100 * row[k]:.1f}" for k in shots]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    out = Path(a.out)
    atomic_write_text(out / "ginc_bayes.md", f"Bayes-optimal readers, accuracy in % ({a.prompts} prompts, seed "
                      f"{a.seed}, context {a.context}; label vote = the ceiling on the pretraining concepts' tasks "
                      "(on ginc_ood, whose concepts the prior does not hold, no reader is), predictive = the "
                      "idealised in-context reader who knows the prompt format, pretraining = a perfect model of the "
                      "pretraining documents, greedy; its last rows: the share of prompts possible as a document):"
                      "\n\n" + "\n".join(lines) + "\n")
    write_json(out / "ginc_bayes.json", doc, indent=2)
    print("\n".join(lines))
    print(f"({doc['seconds']} s)")
    return doc


if __name__ == "__main__":
    run_main(main)
