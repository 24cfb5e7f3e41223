"""Does the held-out-concept control rise because models read symbol pairs off the demonstrations? (a diagnostic)

    .venv/bin/python benchmarks/ginc_ood_probe.py --sweep <folder of GINC runs> [--prompts 500] [--seed 1] [--k 32]

The GINC control `ginc_ood` draws its prompts from concepts no pretraining document used, so a reader that knows
only the pretraining concepts gains nothing from examples (benchmarks/ginc_bayes.py: the Bayes readers *fall* with
k). Yet trained models rise by 1.5-2 points there (README). The untested reading: the held-out concepts share the
world (entities, symbols), so the examples show which symbols follow which. This probe tests it with a model-free
*in-context bigram reader*: its answer is the symbol that most often follows the test input's last symbol inside
the k examples (pairs within an example; ties: the lowest id; no such pair: the most common last symbol of the
examples; at k = 0 it has no answer). It knows no concept, so what it reads is in the prompt alone.

For every finished run under --sweep (evaluate.py's own prompts: seed --seed, --prompts of them; the test inputs
are the same at every k) and for `ginc` and `ginc_ood`, it reports, with the reader's answer taken from the k = K
prompt for both k:
  acc             the model's greedy accuracy at k = 0 and k = K
  agree           how often the model's greedy answer equals the reader's: the examples move the model toward
                  the reader's answer if agree rises from k = 0 to K
  acc where the reader is right / wrong
                  the model's accuracy at k = 0 and K on the prompts where the reader is right, and where it is
                  wrong: the reading predicts the rise sits where the reader is right
  wrong − right   the second minus the first: its change is the rise where the reader is wrong minus the rise
                  where it is right, paired within each run (the direct test of where the rise sits)
  answers "/"     how often the model's greedy answer is the delimiter "/" (symbol 0): what one example's format
                  tells a model (examples are l symbols, then "/") that the test input alone does not
  model = majority-label reader, accuracy where it is right / wrong
                  the same for a second reader, the most common last symbol of the examples whatever the test
                  input: what the examples say about which answers the concept gives (its label distribution)
  right answers on prompts answered "/" at k = 0, and on the other prompts (each over all prompts)
                  the accuracy split by the model's k = 0 answer: the two changes add up to the accuracy's, so
                  they say whether the rise is made of prompts the model left "/" for a right answer
and the reader's own accuracy at every k. Rows per attention are means over seeds with 95% t-intervals of the
k = 0 -> K change (per row, uncorrected for multiple comparisons). Writes
benchmarks/results/ginc_ood_probe/probe.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import check_out_dir, machine_info, run_main, write_json  # noqa: E402

from momattn.io import atomic_write_text  # noqa: E402
from momattn.utils import positive_int, stable_seed  # noqa: E402

TASKS = ("ginc", "ginc_ood")
SHOTS = (0, 1, 2, 4, 8, 16, 32)


def _examples(prompt) -> np.ndarray:
    """(k, l): the prompt's examples without their "/"."""
    length, k = prompt.example_len, prompt.k
    return np.asarray(prompt.symbols)[: k * (length + 1)].reshape(k, length + 1)[:, :length]


def _most_common(votes: Counter) -> int:
    top = max(votes.values())
    return min(sym for sym, n in votes.items() if n == top)  # ties: the lowest id


def bigram_reader(prompt) -> int:
    """The symbol that most often follows the test input's last symbol within the prompt's examples (ties: the
    lowest id); without such a pair the most common last symbol of the examples; -1 (no answer) at k = 0."""
    if prompt.k == 0:
        return -1
    demos, last = _examples(prompt), int(prompt.symbols[-1])
    after = Counter(int(b) for a, b in zip(demos[:, :-1].ravel(), demos[:, 1:].ravel()) if a == last)
    return _most_common(after or Counter(int(x) for x in demos[:, -1]))


def majority_reader(prompt) -> int:
    """The most common last symbol of the prompt's examples (ties: the lowest id), whatever the test input: what
    the examples say about which answers this concept gives; -1 (no answer) at k = 0."""
    return -1 if prompt.k == 0 else _most_common(Counter(int(x) for x in _examples(prompt)[:, -1]))


def reader_accuracy(world, task, n: int, seed: int, shots, readers) -> tuple[dict[str, dict[str, float]], float]:
    """({reader name: {k: its accuracy}}, the share of labels that are "/"; the labels are the same at every k)."""
    out = {name: {} for name in readers}
    for k in shots:
        prompts = world.prompts(task.example_len, k, n, ood=task.ood, seed=stable_seed("ginc-prompts", seed))
        for name, reader in readers.items():
            out[name][str(k)] = float(np.mean([reader(p) == p.label for p in prompts]))
    return out, float(np.mean([p.label == 0 for p in prompts]))


def greedy(evaluator, task, k: int, seed: int) -> tuple[list, np.ndarray]:
    prompts = evaluator.prompts(task, k, seed)
    logp = evaluator.last_logprobs(evaluator.encode(task, prompts))  # (N, n_ids)
    return prompts, evaluator.greedy(logp).numpy()  # evaluate.py's acc scores this answer


def _mean(hits: np.ndarray) -> float:
    """The fraction of hits; nan, without numpy's warning, where there are none (the reader never right)."""
    return float(hits.mean()) if hits.size else float("nan")


def _against(reader, tag: str, count: str, prompts, g0: np.ndarray, gk: np.ndarray, label: np.ndarray) -> dict:
    """The model's answers at k = 0 and K against a reader's (read from the k = K prompts): agree<tag>_*,
    acc<tag>_right_*, acc<tag>_wrong_* (accuracy where the reader is right / wrong), and `count`: how often the
    reader is right."""
    answer = np.array([reader(p) for p in prompts])
    right = answer == label
    out = {count: int(right.sum())}
    for k, g in (("0", g0), ("K", gk)):
        out |= {f"agree{tag}_{k}": float(np.mean(g == answer)), f"acc{tag}_right_{k}": _mean(g[right] == label[right]),
                f"acc{tag}_wrong_{k}": _mean(g[~right] == label[~right])}
    return out


def probe_run(path: Path, world, n: int, seed: int, K: int) -> dict:
    from momattn.checkpoint import load_checkpoint
    from momattn.eval.config import IclConfig
    from momattn.eval.ginc import GincEvaluator, ginc_task

    model, tok = load_checkpoint(str(path), map_location="cpu")
    model.eval()
    ev = GincEvaluator(model, tok, IclConfig(tasks=list(TASKS), shots=[0, K], seeds=[seed], max_examples=n), world)
    for name in TASKS:  # before any scoring (the evaluator's own guard fired after k = 0, naming no flag: review)
        if K > (fit := ev.k_max_fit(ginc_task(name))):
            raise SystemExit(f"error: --k {K}: at most {fit} examples of task '{name}' fit the model's "
                             f"{ev.context}-token context; give --k {fit} or less")
    out = {}
    for name in TASKS:
        task = ginc_task(name)
        p0, g0 = greedy(ev, task, 0, seed)
        pk, gk = greedy(ev, task, K, seed)
        label = np.array([p.label for p in pk])
        assert [p.label for p in p0] == label.tolist(), "the test inputs differ between k = 0 and k = K"
        slash0 = g0 == 0
        out[name] = {
            "acc_0": float(np.mean(g0 == label)), "acc_K": float(np.mean(gk == label)),
            **_against(bigram_reader, "", "reader_right", pk, g0, gk, label),
            **_against(majority_reader, "_major", "major_right", pk, g0, gk, label),
            "slash_0": float(np.mean(g0 == 0)), "slash_K": float(np.mean(gk == 0)),
            # the accuracy split by the k = 0 answer: right answers among the prompts the model answered "/" at
            # k = 0, and among the others, each over all prompts (the two changes add up to the accuracy's)
            "from_slash_0": float(np.mean((g0 == label) & slash0)), "from_slash_K": float(np.mean((gk == label) & slash0)),
            "from_other_0": float(np.mean((g0 == label) & ~slash0)),
            "from_other_K": float(np.mean((gk == label) & ~slash0)),
            "prompts": len(label),
        }
        for k in ("0", "K"):  # its change: the rise where the reader is wrong minus the rise where it is right
            out[name][f"gap_{k}"] = out[name][f"acc_wrong_{k}"] - out[name][f"acc_right_{k}"]
    return out


ROWS = (("acc", "model accuracy"), ("agree", "model = reader"), ("acc_right", "accuracy where the reader is right"),
        ("acc_wrong", "accuracy where the reader is wrong"),
        ("gap", "accuracy where the reader is wrong − where right"), ("slash", "model answers \"/\""),
        ("from_slash", "right answers on prompts answered \"/\" at k = 0 (of all prompts)"),
        ("from_other", "right answers on the other prompts (of all prompts)"),
        ("agree_major", "model = majority-label reader"),
        ("acc_major_right", "accuracy where the majority-label reader is right"),
        ("acc_major_wrong", "accuracy where the majority-label reader is wrong"))


def summarise(per_run: list[dict]) -> dict:
    from momattn.eval.sweep import t_interval

    by_att: dict[str, list[dict]] = defaultdict(list)
    for r in per_run:
        by_att[r["attention"]].append(r)
    out = {}
    for att, runs in sorted(by_att.items(), key=lambda kv: (kv[0] != "vanilla", kv[0])):
        rows = {}
        for name in TASKS:
            for key, _ in ROWS:
                a0 = np.array([r["tasks"][name][f"{key}_0"] for r in runs])
                aK = np.array([r["tasks"][name][f"{key}_K"] for r in runs])
                mean, lo, hi = t_interval((aK - a0).tolist())
                rows[f"{name}/{key}"] = {"k0": float(a0.mean()), "kK": float(aK.mean()), "change": mean,
                                         "lo": lo, "hi": hi}
        out[att] = {"seeds": sorted(r["seed"] for r in runs), "rows": rows}
    return out


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}"


def markdown(doc: dict) -> str:
    from momattn.eval.sweep import signed_pct_interval  # a nonzero bound never prints as 0 (sweep.md's rule)

    K, lines = doc["K"], []
    lines.append(f"The in-context readers alone (no model), accuracy in % on evaluate.py's {doc['prompts']} "
                 f"prompts of seed {doc['seed']}:\n")
    shots = list(doc["reader"][TASKS[0]])
    lines += ["| task | reader | " + " | ".join(f"k={k}" for k in shots) + " | always \"/\" |",
              "|---" * (len(shots) + 3) + "|"]
    for key, reader in (("reader", "bigram"), ("majority_reader", "majority label")):
        for name, row in doc.get(key, {}).items():
            lines.append(f"| `{name}` | {reader} | " + " | ".join("n/a" if k == "0" else f"{100 * row[k]:.1f}"
                                                                 for k in shots)
                         + f" | {100 * doc['slash'][name]:.1f} |")
    lines.append(f"\nModels, k = 0 -> {K} on the same test inputs (the reader's answer is its k = {K} one for both; "
                 "mean over seeds, change with its 95% t-interval, per row and uncorrected):\n")
    lines += [f"| attention | seeds | task | quantity | k=0 | k={K} | change | 95% interval |", "|---" * 8 + "|"]
    for att, s in doc["summary"].items():
        for key, row in s["rows"].items():
            name, q = key.split("/")
            label = dict(ROWS)[q]
            iv = "n/a" if row["lo"] != row["lo"] else signed_pct_interval(row["lo"], row["hi"])
            lines.append(f"| {att} | {len(s['seeds'])} | `{name}` | {label} | {100 * row['k0']:.1f} | "
                         f"{100 * row['kK']:.1f} | {pct(row['change'])} | {iv} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from momattn.errors import UserError
    from momattn.eval.ginc import ginc_task, ginc_world
    from momattn.eval.sweep import distinct, find_runs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--sweep", required=True, help="a folder holding finished GINC runs (searched recursively)")
    ap.add_argument("--prompts", type=positive_int, default=500, help="prompts per task (evaluate.py's; default 500)")
    ap.add_argument("--seed", type=int, default=1, help="the prompts' seed (evaluate.py's icl.seeds; default 1)")
    ap.add_argument("--k", type=positive_int, default=32, help="the examples in a prompt, against k = 0 (default 32)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ginc_ood_probe"),
                    help="the folder for probe.json and probe.md (default benchmarks/results/ginc_ood_probe)")
    a = ap.parse_args(argv)
    if not Path(a.sweep).is_dir():
        ap.error(f"--sweep {a.sweep}: no such folder; give the folder of a GINC sweep (e.g. multirun/<date>/<time>)")
    check_out_dir(ap, Path(a.out))
    runs, failed = find_runs(Path(a.sweep))
    for f in failed:
        print(f"left out: {f}", file=sys.stderr)
    if len({r.setting for r in runs}) > 1:  # the means over seeds would mix training settings, as no verdict does
        raise SystemExit(f"error: the runs under {a.sweep} hold {len({r.setting for r in runs})} training settings "
                         "(configs that differ beyond seed and attention); probe one setting's folder at a time")
    runs = distinct(runs, [])  # a second run of one attention and seed is left out (named), as the verdict does
    # each run's world checked against the one its checkpoint trained on, as evaluate.py does (a changed generator
    # would have scored another world's prompts and labels without a word; found by review)
    worlds = []
    for r in runs:
        try:
            worlds.append(ginc_world(r.config.get("data"), trained_on=r.meta.get("data_fingerprint")))
        except UserError as e:
            raise SystemExit(f"error: {r.path}: {e}") from None
    world = worlds[0]
    if any(w.fingerprint() != world.fingerprint() for w in worlds):
        raise SystemExit("error: the runs were trained on different GINC worlds; probe one world at a time")
    t0 = time.time()
    per_run = []
    for i, run in enumerate(runs):
        res = probe_run(run.path, world, a.prompts, a.seed, a.k)
        per_run.append({"attention": run.attention, "seed": run.seed, "checkpoint": str(run.path), "tasks": res})
        print(f"[{i + 1}/{len(runs)}] {run.attention} seed {run.seed}: " + ", ".join(
            f"{t} acc {100 * r['acc_0']:.1f} -> {100 * r['acc_K']:.1f}, agree {100 * r['agree_0']:.1f} -> "
            f"{100 * r['agree_K']:.1f}" for t, r in res.items()), flush=True)
    reader, major, slash = {}, {}, {}
    for name in TASKS:
        task = ginc_task(name)
        shots = [k for k in SHOTS if k <= a.k]
        acc, slash[name] = reader_accuracy(world, task, a.prompts, a.seed, shots,
                                           {"bigram": bigram_reader, "majority": majority_reader})
        reader[name], major[name] = acc["bigram"], acc["majority"]
    doc = {"sweep": str(a.sweep), "prompts": a.prompts, "seed": a.seed, "K": a.k, "reader": reader,
           "majority_reader": major, "slash": slash,
           "runs": per_run, "summary": summarise(per_run), "seconds": round(time.time() - t0, 1),
           "machine": machine_info("cpu"), "torch": torch.__version__}
    out = Path(a.out)
    md = markdown(doc)
    atomic_write_text(out / "probe.md", f"`python benchmarks/ginc_ood_probe.py --sweep {a.sweep} --prompts "
                      f"{a.prompts} --seed {a.seed} --k {a.k}` ({len(runs)} runs, {doc['seconds']} s)\n\n" + md)
    write_json(out / "probe.json", doc, indent=2)
    print(md)
    return doc


if __name__ == "__main__":
    run_main(main)
