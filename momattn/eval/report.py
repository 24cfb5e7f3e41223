"""Reports for one or several evaluated checkpoints: results.json, results.md (Table 6 and Table 7 layouts)
and PNG plots (perplexity vs length, accuracy vs number of demonstrations)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from momattn.eval import ginc as ginc_mod
from momattn.eval import icl as icl_mod
from momattn.eval import ppl as ppl_mod
from momattn.eval.results import IclResult, ModelResult, ShotResult, TaskResult, as_model_result
from momattn.io import atomic_write_text, json_text, save_figure

MISSING = "–"


def _f(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(acc: float | None, std: float | None = None) -> str:
    if acc is None:
        return MISSING
    return f"{100 * acc:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")  # seeds that agree: ± 0.0


def _acc(shot: ShotResult, k_used: bool = True) -> str:
    """'41.0 ± 2.1 (k_used=8.0)', or 'does not fit (k_used=1.0)' for a k the context cannot hold."""
    # nothing scored: a GINC k beyond the context names the largest that fits; a text task's k that does not fit,
    # scored by a diverged model (nan, read back as None), keeps its k_used
    nothing_fits = shot.acc is None and shot.k_max_fit is not None
    # a GINC k=max below the fewest demonstrations: "at most k=2" beside a scored k=2 read as a contradiction
    used = (f"k=max places only {shot.k_max_fit}" if shot.k == "max" else f"at most k={shot.k_max_fit}") \
        if nothing_fits else f"k_used={shot.k_used_mean:.1f}"
    if not shot.fits:  # more digits, and for a k every prompt must hold the fewest placed: "does not fit
        # (k_used=1.0)" at k=1 read as placed (0.95, one prompt with none: found by review)
        if not nothing_fits:
            used = icl_mod.short_k_used(shot.k_used_mean, min((r.k_used_min for r in shot.per_seed), default=None),
                                        shot.k)
        return f"does not fit ({used})"
    return _pct(shot.acc, shot.acc_std) + (f" ({used})" if k_used else "")


def _acc_cell(shot: ShotResult, score: str = "mean") -> str:
    """The headline accuracy (icl.score's rule), with the other rule's beside it."""
    if not shot.fits:
        return _acc(shot)
    other, value = ("sum", shot.acc_sum_lp) if score == "mean" else ("mean", shot.acc_mean_lp)
    return f"{_pct(shot.acc, shot.acc_std)} ({other}: {_pct(value)}; k_used={shot.k_used_mean:.1f})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# -----------------------------------------------------------------------------
# perplexity


def ppl_columns(results: Sequence[ModelResult]) -> list[tuple[str, str]]:
    """(split, length) columns over all checkpoints: Train{L} first, then Valid{L} ascending."""
    train, valid = set(), set()
    for r in results:
        if r.ppl:
            train.update(r.ppl.train)
            valid.update(r.ppl.valid)
    return [("train", n) for n in sorted(train, key=int)] + [("valid", n) for n in sorted(valid, key=int)]


def ppl_markdown(results: Sequence[ModelResult]) -> list[str]:
    cols = ppl_columns(results)
    if not cols:
        return []
    header = ["model"] + [f"{s.title()}{n}" for s, n in cols]

    def cell(r: ModelResult, split: str, n: str, metric: str, digits: int) -> str:
        numbers = getattr(r.ppl, split).get(n) if r.ppl else None
        return _f(getattr(numbers, metric), digits) if numbers else MISSING

    def rows(metric, digits):
        return [[r.label] + [cell(r, s, n, metric, digits) for s, n in cols] for r in results]

    # per column, each model's count: models with other tokenizers or contexts cut the text into other windows
    n_windows: dict[str, dict[str, int]] = {}
    for s, n in cols:
        for r in results:
            if r.ppl and n in getattr(r.ppl, s):
                n_windows.setdefault(f"{s}{n}", {})[r.label] = getattr(r.ppl, s)[n].n_windows

    def counts(by_model: dict[str, int]) -> str:
        if len(set(by_model.values())) == 1:
            return str(next(iter(by_model.values())))
        return ", ".join(f"{v} ({label})" for label, v in by_model.items())

    # (it read as a fact where windows were sampled, each model's over its own tokens: found by review)
    bpb = ("comparable across tokenizers over the same text where every window is scored (ppl.max_windows=null); "
           "these scored a sample of windows") if _sampled(results) else \
        "comparable across tokenizers over the same text: every window scored"
    return ["## Perplexity (Table 6 layout)", "", *_table(header, rows("ppl", 2)), "", f"Bits per byte ({bpb}):",
            "", *_table(header, rows("bpb", 4)), "",
            f"Windows scored: {'; '.join(f'{k}: {counts(v)}' for k, v in n_windows.items())}.", "",
            *_tokenizers_differ(results), *_corpora_differ(results), f"Protocol: {ppl_mod.PROTOCOL}.", ""]


def _sampled(results: Sequence[ModelResult]) -> bool:
    """Whether any model scored a sample of its windows (ppl.max_windows below their count), not every one."""
    return any(w.n_windows < w.n_windows_available for r in results if r.ppl
               for split in (r.ppl.train, r.ppl.valid) for w in split.values())


def _tokenizers_differ(results: Sequence[ModelResult]) -> list[str]:
    """A warning where the models' tokenizers differ: a perplexity is per token, so two vocabularies' numbers sat
    side by side (3381.55 beside 897.65) with nothing saying that they do not compare."""
    scored = [r for r in results if r.ppl]
    names = {r.label: _tokenizer_name(r) for r in scored}
    # two BPEs of one size trained on other texts share a name: their fingerprints (the vocabulary and merges) tell
    # them apart (results.json files written before session 59 have none: those compare by name)
    prints = {r.label: (r.tokenizer or {}).get("fingerprint") for r in scored}
    if len(set(names.values())) < 2 and (None in prints.values() or len(set(prints.values())) < 2):
        return []
    if len(set(names.values())) < 2:
        names = {label: f"{n}, fingerprint {prints[label]}" for label, n in names.items()}
    # with ppl.max_windows set, each model's windows are spread over its own token count: other parts of the text
    bpb = ("bits per byte do only over the same text, and these scored a subset of windows spread over each "
           "model's own tokens, so different parts of it: rerun with ppl.max_windows=null to compare them") \
        if _sampled(results) else "bits per byte do, over the same text"
    return [f"**Different tokenizers** ({'; '.join(f'{label}: {n}' for label, n in names.items())}): a perplexity "
            f"is per token of its own tokenizer, so these do not compare across models; {bpb}.", ""]


def _tokenizer_name(r: ModelResult) -> str:
    t = r.tokenizer or {}
    return f"{t.get('name', MISSING)}, {t['vocab_size']:,} tokens" if t.get("vocab_size") else str(t.get("name", MISSING))


def _corpora_differ(results: Sequence[ModelResult]) -> list[str]:
    """A warning where the models were scored on different texts (each on its own training run's corpus, unless
    ppl.data names one), whose numbers do not compare; the data keys that differ, per model. Empty otherwise."""
    from momattn.data.sources import LOADER_KEYS  # batching and cache keys do not change the text

    corpora = {r.label: {k: v for k, v in (r.ppl.data or {}).items() if k not in LOADER_KEYS}
               for r in results if r.ppl}
    keys = sorted({k for c in corpora.values() for k in c})
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in corpora.values()}) > 1]
    ginc = all(ginc_mod.describe_data(c) == "data=ginc" for c in corpora.values())  # (a text cannot be given them)
    if ginc:  # the size of a GINC world's training set leaves its validation documents as they are (diff review)
        from momattn.data.ginc import TRAIN_SIZE_FIELDS

        differ = [k for k in differ if k not in TRAIN_SIZE_FIELDS]
    if not differ:
        return []
    if any(k in differ for k in ("_target_", "source")):  # other sources: their names say enough
        each = "; ".join(f"{label}: {ginc_mod.describe_data(c)}" for label, c in corpora.items())
    else:
        each = "; ".join(f"{label}: " + ", ".join(f"data.{k}={c.get(k)}" for k in differ)
                         for label, c in corpora.items())
    how = ("compare GINC models trained on one world" if ginc else
           "ppl.data={source: text_files, paths: [...]} scores every model on one text")
    return [f"**Different corpora**: the models were scored on different texts ({each}; each model's run's data "
            f"section, with ppl.data merged over it), so their perplexities and bits per byte do not compare; {how}.",
            ""]


# -----------------------------------------------------------------------------
# in-context accuracy


def _icl_tasks(results: Sequence[ModelResult], kind: str | None = None) -> list[str]:
    names: list[str] = []
    for r in results:
        for name, t in (r.icl.tasks if r.icl else {}).items():
            if name not in names and (kind is None or t.kind == kind):
                names.append(name)
    return names


def _task_info(results: Sequence[ModelResult], name: str) -> TaskResult:
    return next(r.icl.tasks[name] for r in results if r.icl and name in r.icl.tasks)


def _per_model(results: Sequence[ModelResult], name: str, attr: str, show=str) -> str:
    """A task's figure (n, n_truncated, majority): the one value where the models agree, else each model's."""
    by_model = {r.label: getattr(r.icl.tasks[name], attr) for r in results if r.icl and name in r.icl.tasks}
    if len(set(by_model.values())) == 1:
        return show(next(iter(by_model.values())))
    return ", ".join(f"{show(v) if v is not None else MISSING} ({label})" for label, v in by_model.items())


def ties_line(results: Sequence[ModelResult], tasks: Sequence[str]) -> list[str]:
    """A line naming, per model and task, the scored prompts (over every k and seed) whose top score two answers
    shared: the argmax took the first answer, so those prompts count that answer's share of the labels, not a
    choice the model made."""
    parts = []
    for r in results:
        for t in tasks:
            runs = [run for s in r.icl.tasks[t].shots.values() for run in s.per_seed] if r.icl and t in r.icl.tasks else []
            if tied := sum(run.n_ties or 0 for run in runs):
                parts.append(f"{r.label} {t}: {tied} of {sum(run.n for run in runs)}")
    if not parts:
        return []
    return ["**Ties:** prompts (over every k and seed) where two or more answers had the same top score, and the "
            "first answer was taken (with many, the accuracy leans toward that answer's share of the labels): "
            + "; ".join(parts) + ".", ""]


def _own_test_sets(results: Sequence[ModelResult], tasks: Sequence[str]) -> str:
    """Why the models' ICL test sets differ ('' where they agree): another split seed reserves other rows, and
    another context or tokenizer skips others (n, or the commonest label's share, differs). The table had one n and
    one baseline, the first model's, for all."""
    seeds = {r.label: r.icl.split_seed for r in results if r.icl}
    if len(set(seeds.values())) > 1:
        return "data.split_seed " + ", ".join(f"{v} ({label})" for label, v in seeds.items())
    for t in tasks:
        got = {(tr.n, tr.majority) for r in results if r.icl and (tr := r.icl.tasks.get(t)) is not None}
        if len(got) > 1:
            return f"{t}: other test rows fit each model's context or tokenizer"
    return ""


def _choice_tasks(icl: IclResult) -> list[str]:
    return [n for n, t in icl.tasks.items() if t.kind == "choice"]


def _fit_every_k(icl: IclResult) -> list[str]:
    """The answer-choice tasks that fit at every k: the average icl.png draws across k (the table's per-k Avg
    leaves out, at each k, the tasks that do not fit there)."""
    return [n for n in _choice_tasks(icl) if all(icl.tasks[n].shots[s].fits for s in icl.shots)]


def _per_model_avg(values: Sequence[tuple[str, float]]) -> str:
    """A baseline row's Avg cell: one value, or each model's where the tasks their Avg holds differ."""
    if len({_pct(v) for _, v in values}) <= 1:
        return _pct(values[0][1]) if values else MISSING
    return ", ".join(f"{_pct(v)} ({label})" for label, v in values)


def _avg_cell(icl: IclResult, k: str) -> str:
    avg = icl.avg.get(k)
    if avg is None or avg.acc is None:
        return "no task fits" if avg and avg.excluded else MISSING
    return _pct(avg.acc) + (f" (without {', '.join(avg.excluded)})" if avg.excluded else "")


def choice_markdown(results: Sequence[ModelResult], first: IclResult) -> list[str]:
    tasks = _icl_tasks(results, "choice")
    if not tasks:
        return []
    k, score = first.headline_k, first.score
    rule = "mean log-prob per answer token" if score == "mean" else "sum of answer log-probs"
    header = ["model", *tasks, "Avg"]
    chance = ["chance"] + [_pct(_task_info(results, t).chance) for t in tasks]
    # each model's Avg is over the tasks that fit its context: its chance too (it was the first model's alone)
    chance.append(_per_model_avg([(r.label, r.icl.avg[k].chance) for r in results
                                  if r.icl and k in r.icl.avg and r.icl.avg[k].chance is not None]))
    own = _own_test_sets(results, tasks)
    majorities = []  # one row, or one per model where their test sets differ: each compared with its own
    for r in (results if own else results[:1]):
        if own and not r.icl:
            continue
        shares = [(r.icl.tasks[t].majority if r.icl and t in r.icl.tasks else None) if own
                  else _task_info(results, t).majority for t in tasks]  # None in results before session 18
        avgs = []  # over the tasks each model's Avg holds (one test set, other contexts: the first's alone, before)
        for m in ([r] if own else [x for x in results if x.icl] or results[:1]):
            excluded = m.icl.avg[k].excluded if m.icl and k in m.icl.avg else ()
            if fit := [v for t, v in zip(tasks, shares) if v is not None and t not in excluded]:
                avgs.append((m.label, sum(fit) / len(fit)))
        majorities.append([f"always the commonest label ({r.label})" if own else "always the commonest label"]
                          + [_pct(m) if m is not None else MISSING for m in shares] + [_per_model_avg(avgs)])
    rows = []
    for r in results:
        tr = r.icl.tasks if r.icl else {}
        row = [r.label] + [_acc(tr[t].shots[k]) if t in tr else MISSING for t in tasks]
        rows.append(row + [_avg_cell(r.icl, k) if r.icl else MISSING])
    unfit = sorted({t for r in results if r.icl and k in r.icl.avg for t in r.icl.avg[k].excluded})
    out = [f"## In-context accuracy (Table 7 layout, k = {k})", "",
           f"Accuracy in %, {rule}, mean ± std (population) over demonstration seeds {first.seeds}; k_used = demonstrations actually "
           f"placed (mean over prompts). A task whose prompts cannot hold the requested k (k=max: fewer than "
           f"{first.min_demos}) is marked 'does not fit' and left out of Avg"
           + (f" (here: {', '.join(unfit)})." if unfit else ".")
           + (f" **The models' test sets differ** ({own}): each is scored on its own rows, so each has its own "
              "baseline row; compare a model with its own, not across models." if own else ""), "",
           *_table(header, rows + [chance] + [m for m in majorities if any(c != MISSING for c in m[1:])]), "",
           "## Accuracy by number of demonstrations", ""]
    for t in tasks:
        info = _task_info(results, t)
        # per model: another tokenizer or context truncates (or skips) other test prompts than the first model's
        truncated = (f", {_per_model(results, t, 'n_truncated')} prompts truncated"
                     if any(r.icl.tasks[t].n_truncated for r in results if r.icl and t in r.icl.tasks) else "")
        dropped = (f", {info.n_demo_dropped} pool rows dropped as copies of test texts"
                   if info.n_demo_dropped else "")
        out += [f"### {t}", "", f"Source: {info.source}; n = {_per_model(results, t, 'n')} test examples (of "
                f"{info.n_test_available}), demonstration pool {info.n_demo_pool}{dropped}, "
                f"chance {_pct(info.chance)}%"
                + (f", always the commonest label {_per_model(results, t, 'majority', lambda v: _pct(v) + '%')}"
                   if info.majority is not None else "")
                + f"{truncated}.", ""]
        header = ["model"] + [f"k={s}" for s in first.shots]
        rows = []
        for r in results:
            tr = r.icl.tasks if r.icl else {}
            rows.append([r.label] + [_acc_cell(tr[t].shots[s], first.score) if t in tr and s in tr[t].shots else MISSING
                                     for s in first.shots])
        out += [*_table(header, rows), ""]
    out += ties_line(results, tasks)
    out += [f"Protocol: {icl_mod.PROTOCOL}", ""]
    return out


def ginc_markdown(results: Sequence[ModelResult], first: IclResult) -> list[str]:
    tasks = _icl_tasks(results, "ginc")
    if not tasks:
        return []
    shots = first.shots
    header = ["model", "task", *[f"k={s}" for s in shots], "always /", "chance"]
    acc_rows, cand_rows = [], []
    for r in results:
        for t in tasks:
            tr = r.icl.tasks.get(t) if r.icl else None
            if tr is None:
                continue
            head = [r.label, t]
            base = next((s.delimiter_baseline for s in tr.shots.values() if s.delimiter_baseline is not None),
                        None)
            tail = [_pct(base), _pct(tr.chance)]
            cells = [tr.shots[s] for s in shots]
            acc_rows.append(head + [_acc(c, k_used=(s == "max")) for s, c in zip(shots, cells)] + tail)
            cand_rows.append(head + [_pct(c.acc_cand, c.acc_cand_std) if c.fits else _acc(c) for c in cells]
                             + tail)
    lengths = ", ".join(f"{t}: l={_task_info(results, t).example_len}"
                        + (" (held-out concepts)" if _task_info(results, t).ood else "") for t in tasks)
    return ["## GINC: accuracy vs number of examples k", "", *_worlds_differ(results, tasks),
            f"Accuracy in %, greedy next token (argmax over the whole vocabulary) against the Bayes-optimal "
            f"label: the headline, as in Xie et al. 2022. Mean ± std (population) over prompt seeds {first.seeds}; {lengths}. "
            "'always /' = the share of labels that are the delimiter; chance = 1/V.", "",
            *_table(header, acc_rows), "",
            "Candidate rule (argmax over the V symbols; each candidate is one token, so its mean log-prob is "
            "its log-prob):", "", *_table(header, cand_rows), "",
            *ties_line(results, tasks), f"Protocol: {ginc_mod.PROTOCOL}", ""]


def _worlds_differ(results: Sequence[ModelResult], tasks: Sequence[str]) -> list[str]:
    """A warning where the models' GINC worlds differ: each is scored on its own world's prompts and labels, so
    their accuracies sit side by side over different test sets (found by review). Files written before session 60
    record no world: not compared."""
    worlds = {r.label: next(iter(w)) for r in results if r.icl and len(w := [
        r.icl.tasks[t].world for t in tasks if t in r.icl.tasks and r.icl.tasks[t].world is not None]) > 0}
    keys = sorted({k for w in worlds.values() for k in w})
    differ = [k for k in keys if len({json.dumps(w.get(k)) for w in worlds.values()}) > 1]
    if not differ:
        return []
    each = "; ".join(f"{label}: " + ", ".join(f"data.{k}={w.get(k)}" for k in differ) for label, w in worlds.items())
    return [f"**Different GINC worlds** ({each}): each model is scored on prompts and labels of its own world, so "
            "these accuracies are over different test sets; compare models trained on one world.", ""]


def icl_markdown(results: Sequence[ModelResult]) -> list[str]:
    first = next((r.icl for r in results if r.icl), None)
    if first is None:
        return []
    return choice_markdown(results, first) + ginc_markdown(results, first)


# -----------------------------------------------------------------------------
# plots


def plot_ppl(results: Sequence[ModelResult], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in results if r.ppl]
    if not res:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in res:
        valid = r.ppl.valid
        xs = sorted(map(int, valid))
        line, = ax.plot(xs, [valid[str(x)].ppl for x in xs], marker="o", label=f"{r.label} valid")
        for n, v in r.ppl.train.items():
            ax.plot([int(n)], [v.ppl], marker="x", linestyle="none", color=line.get_color(),
                    label=f"{r.label} train")
    ax.set_xscale("log", base=2)
    lengths = sorted({int(n) for r in res for n in [*r.ppl.valid, *r.ppl.train]})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("window length L (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity vs input length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


def _nan(x: float | None) -> float:
    return float("nan") if x is None else 100 * x


def plot_icl(results: Sequence[ModelResult], path: Path) -> bool:
    """Accuracy vs k, one panel per task (GINC tasks included) and one for the average; chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _icl_tasks(results)
    if not tasks:
        return False
    # the tasks that fit at every k for every model (side by side, each model's own set drew other averages under
    # one title: diff review)
    each = [_fit_every_k(r.icl) for r in results if r.icl]
    common = [t for t in (each[0] if each else []) if all(t in e for e in each)]
    panels = tasks + (["avg"] if common else [])
    left_out = sorted({t for r in results if r.icl for t in _choice_tasks(r.icl)} - set(common))
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        chance = None
        for r in results:
            icl = r.icl
            if not icl or (name != "avg" and name not in icl.tasks):
                continue
            shots = icl.shots
            xs = list(range(len(shots)))
            if name == "avg":  # the tasks that fit at every k: a per-k Avg over other task sets made a false trend
                ys, err = [sum(_nan(icl.tasks[t].shots[s].acc) for t in common) / len(common) for s in shots], None
                chance = sum(icl.tasks[t].chance for t in common) / len(common)
            else:
                t = icl.tasks[name]
                ys = [_nan(t.shots[s].acc) if t.shots[s].fits else float("nan") for s in shots]
                err = [_nan(t.shots[s].acc_std or 0.0) for s in shots]
                chance = t.chance
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=r.label)
            ax.set_xticks(xs, [f"k={s}" for s in shots])
        if chance is not None:
            ax.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_title(name if name != "avg" or not left_out else f"avg (without {', '.join(left_out)}: not every k fits)",
                     fontsize=None if name != "avg" or not left_out else 8)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("In-context accuracy vs number of demonstrations")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


# -----------------------------------------------------------------------------


def markdown_report(results: Sequence[ModelResult | Mapping]) -> str:
    results = [as_model_result(r) for r in results]
    lines = ["# momattn evaluation", ""]
    info = []
    for r in results:
        scored = str(r.checkpoint or MISSING) + (f" (step {r.step})" if r.step is not None else "")
        info.append([r.label, r.attention or MISSING, scored,
                     str(r.model.get("block_size", MISSING)), f"{r.model.get('n_params', 0) / 1e6:.2f}M",
                     _tokenizer_name(r)])
    lines += _table(["model", "attention", "checkpoint", "context", "params", "tokenizer"], info) + [""]
    lines += [f"Note ({r.label}): {note}" for r in results for note in r.notes] + (
        [""] if any(r.notes for r in results) else [])
    lines += ppl_markdown(results) + icl_markdown(results)
    return "\n".join(lines).rstrip() + "\n"


def protocols(ginc: str | None = None) -> dict[str, str]:
    """results.json's "protocol": the scoring rules it was made with (GINC's where GINC was scored)."""
    return {"ppl": ppl_mod.PROTOCOL, "icl": icl_mod.PROTOCOL, **({"ginc": ginc} if ginc else {})}


def results_document(results: Sequence[ModelResult | Mapping]) -> dict:
    """results.json: the protocols, what the headline numbers are, and every checkpoint's ModelResult."""
    results = [as_model_result(r) for r in results]
    first = next((r.icl for r in results if r.icl), None)
    choice = any(t.kind == "choice" for r in results if r.icl for t in r.icl.tasks.values())
    return {"protocol": protocols(first.ginc_protocol if first is not None else None),
            "headline": {"ppl": "valid perplexity per window length (Table 6)",
                         "icl": f"accuracy at k={first.headline_k} (Table 7; Avg over tasks that fit)"
                         if choice else None,  # GINC alone has no such average (found by review)
                         "ginc": "greedy next-token accuracy vs the Bayes-optimal label, per k"
                         if first and first.ginc_protocol else None},
            "checkpoints": [r.to_json() for r in results]}


def read_results(path: Path) -> list[ModelResult] | None:
    """The results a results.json holds, where it reads and was scored by today's protocols (an older momattn's
    numbers, scored another way, are computed again); None otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
        results = [ModelResult.from_json(r) for r in doc["checkpoints"]]
        protocol = dict(doc["protocol"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return results if protocol == protocols(ginc_mod.PROTOCOL if "ginc" in protocol else None) else None


def write_reports(results: Sequence[ModelResult | Mapping], out_dir: str | os.PathLike,
                  before_json: Callable[[], None] | None = None, pending: Sequence[str] = ()) -> list[str]:
    """results.md, ppl.png and icl.png (each plot where there is something to plot), then results.json, in out_dir:
    the evaluated checkpoints side by side. results.json comes last, after before_json (train.py logs the metrics
    there): it marks the evaluation done, and a stop before it leaves one that a resume makes again (it was first,
    and a stop after it left a run reported as evaluated without its tables, plots or logged metrics). pending: the
    checkpoints still to be evaluated (both files say so: a stop part-way left reports that read as complete).
    Returns the names of the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = [as_model_result(r) for r in results]
    partial = (f"**Partial:** {len(results)} of {len(results) + len(pending)} checkpoints evaluated so far; not yet: "
               f"{', '.join(pending)} (a stop leaves this; the same command into this folder goes on)\n\n"
               if pending else "")
    atomic_write_text(out / "results.md", partial + markdown_report(results))
    plots = [name for name, plot in (("ppl.png", plot_ppl), ("icl.png", plot_icl)) if plot(results, out / name)]
    if before_json is not None:
        before_json()
    doc = {**results_document(results), **({"pending": list(pending)} if pending else {})}
    atomic_write_text(out / "results.json", json_text(doc, indent=2) + "\n")
    return ["results.json", "results.md", *plots]
