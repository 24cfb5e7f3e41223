"""Reports for one or several evaluated checkpoints: results.json, results.md (Table 6 and Table 7 layouts)
and PNG plots (perplexity vs length, accuracy vs number of demonstrations)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from momattn.eval import icl as icl_mod
from momattn.eval import ppl as ppl_mod

MISSING = "–"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _f(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(acc: float, std: float | None = None) -> str:
    return f"{100 * acc:.1f}" + (f" ± {100 * std:.1f}" if std else "")


def _acc(shot: dict) -> str:
    return _pct(shot["acc"], shot["acc_std"])


def _acc_cell(shot: dict) -> str:
    return f"{_acc(shot)} (sum: {_pct(shot['acc_sum_lp'])}; k used {shot['k_used_mean']:.1f})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# -----------------------------------------------------------------------------
# perplexity


def ppl_columns(results: Sequence[dict]) -> list[tuple[str, str]]:
    """(split, length) columns over all checkpoints: Train{L} first, then Valid{L} ascending."""
    train, valid = set(), set()
    for r in results:
        if r.get("ppl"):
            train.update(r["ppl"]["train"])
            valid.update(r["ppl"]["valid"])
    return [("train", n) for n in sorted(train, key=int)] + [("valid", n) for n in sorted(valid, key=int)]


def ppl_markdown(results: Sequence[dict]) -> list[str]:
    cols = ppl_columns(results)
    if not cols:
        return []
    header = ["model"] + [f"{s.title()}{n}" for s, n in cols]

    def rows(metric, digits):
        return [[r["label"]] + [_f((r["ppl"] or {}).get(s, {}).get(n, {}).get(metric), digits) if r.get("ppl")
                                 else MISSING for s, n in cols] for r in results]

    n_windows = {f"{s}{n}": r["ppl"][s][n]["n_windows"] for r in results if r.get("ppl") for s, n in cols
                 if n in r["ppl"][s]}
    return ["## Perplexity (Table 6 layout)", "", *_table(header, rows("ppl", 2)), "",
            "Bits per byte (comparable across tokenizers):", "", *_table(header, rows("bpb", 4)), "",
            f"Windows scored: {', '.join(f'{k}: {v}' for k, v in n_windows.items())}.", "",
            f"Protocol: {ppl_mod.PROTOCOL}.", ""]


# -----------------------------------------------------------------------------
# in-context accuracy


def _icl_tasks(results: Sequence[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        for t in (r.get("icl") or {}).get("tasks", {}):
            if t not in names:
                names.append(t)
    return names


def icl_markdown(results: Sequence[dict]) -> list[str]:
    tasks = _icl_tasks(results)
    if not tasks:
        return []
    first = next(r["icl"] for r in results if r.get("icl"))
    k, score = first["headline_k"], first["score"]
    rule = "mean log-prob per answer token" if score == "mean" else "sum of answer log-probs"
    header = ["model", *tasks, "Avg"]
    chance = ["chance"] + [_pct(next(r["icl"]["tasks"][t]["chance"] for r in results
                                     if r.get("icl") and t in r["icl"]["tasks"])) for t in tasks]
    chance.append(_pct(first["avg"][k]["chance"]))
    rows = []
    for r in results:
        tr = (r.get("icl") or {}).get("tasks", {})
        row = [r["label"]] + [_acc(tr[t]["shots"][k]) if t in tr else MISSING for t in tasks]
        row.append(_pct(r["icl"]["avg"][k]["acc"]) if r.get("icl") else MISSING)
        rows.append(row)
    out = [f"## In-context accuracy (Table 7 layout, k = {k})", "",
           f"Accuracy in %, {rule}, mean ± std over seeds {first['seeds']}.", "",
           *_table(header, rows + [chance]), "",
           "## Accuracy by number of demonstrations", ""]
    for t in tasks:
        info = next(r["icl"]["tasks"][t] for r in results if r.get("icl") and t in r["icl"]["tasks"])
        shots = first["shots"]
        truncated = f", {info['n_truncated']} prompts truncated" if info["n_truncated"] else ""
        out += [f"### {t}", "", f"Source: {info['source']}; n = {info['n']} test examples (of "
                f"{info['n_test_available']}), demonstration pool {info['n_demo_pool']}, "
                f"chance {_pct(info['chance'])}%{truncated}.", ""]
        header = ["model"] + [f"k={s}" for s in shots]
        rows = []
        for r in results:
            tr = (r.get("icl") or {}).get("tasks", {})
            cells = [MISSING if t not in tr else _acc_cell(tr[t]["shots"][s]) for s in shots]
            rows.append([r["label"], *cells])
        out += [*_table(header, rows), ""]
    out += [f"Protocol: {icl_mod.PROTOCOL}", ""]
    return out


# -----------------------------------------------------------------------------
# plots


def plot_ppl(results: Sequence[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in results if r.get("ppl")]
    if not res:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in res:
        valid = r["ppl"]["valid"]
        xs = sorted(map(int, valid))
        line, = ax.plot(xs, [valid[str(x)]["ppl"] for x in xs], marker="o", label=f"{r['label']} valid")
        for n, v in r["ppl"]["train"].items():
            ax.plot([int(n)], [v["ppl"]], marker="x", linestyle="none", color=line.get_color(),
                    label=f"{r['label']} train")
    ax.set_xscale("log", base=2)
    lengths = sorted({int(n) for r in res for split in ("valid", "train") for n in r["ppl"][split]})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("window length L (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity vs input length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_icl(results: Sequence[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _icl_tasks(results)
    if not tasks:
        return False
    panels = tasks + ["avg"]
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        chance = None
        for r in results:
            icl = r.get("icl")
            if not icl or (name != "avg" and name not in icl["tasks"]):
                continue
            shots = icl["shots"]
            xs = range(len(shots))
            if name == "avg":
                ys, err, chance = [icl["avg"][s]["acc"] for s in shots], None, icl["avg"][shots[0]]["chance"]
            else:
                t = icl["tasks"][name]
                ys, err = [t["shots"][s]["acc"] for s in shots], [t["shots"][s]["acc_std"] for s in shots]
                chance = t["chance"]
            ax.errorbar(list(xs), [100 * y for y in ys], yerr=None if err is None else [100 * e for e in err],
                        marker="o", capsize=3, label=r["label"])
            ax.set_xticks(list(xs), [f"k={s}" for s in shots])
        if chance is not None:
            ax.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_title(name)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("In-context accuracy vs number of demonstrations")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -----------------------------------------------------------------------------


def markdown_report(results: Sequence[dict]) -> str:
    lines = ["# momattn evaluation", ""]
    info = []
    for r in results:
        model = r.get("model", {})
        info.append([r["label"], r.get("attention", MISSING), str(r.get("checkpoint") or MISSING),
                     str(model.get("block_size", MISSING)), f"{model.get('n_params', 0) / 1e6:.2f}M"])
    lines += _table(["model", "attention", "checkpoint", "context", "params"], info) + [""]
    lines += ppl_markdown(results) + icl_markdown(results)
    return "\n".join(lines).rstrip() + "\n"


def write_reports(results: list[dict], out_dir: str | os.PathLike) -> None:
    """results.json, results.md, ppl.png and icl.png in out_dir: the evaluated checkpoints side by side."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first_icl = next((r["icl"] for r in results if r.get("icl")), None)
    doc = {"protocol": {"ppl": ppl_mod.PROTOCOL, "icl": icl_mod.PROTOCOL},
           "headline": {"ppl": "valid perplexity per window length (Table 6)",
                        "icl": f"accuracy at k={first_icl['headline_k']} (Table 7)" if first_icl else None},
           "checkpoints": list(results)}
    _write_atomic(out / "results.json", json.dumps(doc, indent=2, allow_nan=True) + "\n")
    _write_atomic(out / "results.md", markdown_report(results))
    plot_ppl(results, out / "ppl.png")
    plot_icl(results, out / "icl.png")
