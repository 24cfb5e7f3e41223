"""The analysis report: results.json (AnalysisResult.to_json, one entry per run), results.md in the paper's
table layout (rows = metrics, columns = task / model), per_layer.png, and W&B when logging is on."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from momattn.io import atomic_write_text, json_text, save_figure
from momattn.quoting import shell_quote

METRIC_ROWS = [  # (label, getter), the paper's Table 2-5 order with their baselines beside
    ("ZSL accuracy (%)", lambda r: _pct(r.acc["zsl"])),
    ("ICL accuracy (%)", lambda r: _pct(r.acc["icl"])),
    ("FT accuracy (%)", lambda r: _pct(r.acc["ft"])),
    ("Rec2FTP (%)", lambda r: _pct(r.rec2ftp) + f" (of {r.rec2ftp_n})"),
    ("SimAOU (dFT)", lambda r: _f(r.simaou_ft.mean)),
    ("SimAOU (random d)", lambda r: _f(r.simaou_random.mean)),
    ("SimAOU after c_proj (dFT / random d)", lambda r: _proj(r)),
    ("SimAM (before FT: ICL vs ZSL)", lambda r: _f(r.simam_before.mean)),
    ("SimAM (after FT: ICL vs FT)", lambda r: _f(r.simam_after.mean)),
    ("Kendall (ICL, FT)", lambda r: _f(r.kendall_ft.mean)),
    ("Kendall (ICL, random)", lambda r: _f(r.kendall_random.mean)),
    ("Kendall (ICL, FT), the authors' reading of ICL (scores summed over heads)",
     lambda r: _f(r.kendall_authors_ft.mean) if r.kendall_authors_ft is not None else "n/a"),
]
PER_LAYER = [("simaou_ft", "SimAOU (dFT)"), ("simaou_random", "SimAOU (random d)"),
             ("simam_before", "SimAM before FT"), ("simam_after", "SimAM after FT"),
             ("kendall_ft", "Kendall (ICL, FT)"), ("kendall_random", "Kendall (ICL, random)")]
# read by later versions: SimAOU after c_proj (session 18), the authors' Kendall (session 48); older results lack them
PER_LAYER_LATER = [("simaou_proj_ft", "SimAOU after c_proj (dFT)"),
                   ("simaou_proj_random", "SimAOU after c_proj (random d)"),
                   ("kendall_authors_ft", "Kendall (ICL, FT), authors' reading")]


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _proj(r) -> str:
    """SimAOU read after the output projection, as the authors' code does (n/a in results without it)."""
    if r.simaou_proj_ft is None:
        return "n/a"
    return f"{_f(r.simaou_proj_ft.mean)} / {_f(r.simaou_proj_random.mean)}"


def _col(r) -> str:
    return f"{r.task} ({r.attention}, k={r.shots})"


# the headline numbers of one analysis: (key, label, getter); accuracies and Rec2FTP are fractions
METRICS: list[tuple[str, str, Callable]] = [
    ("acc_zsl", "ZSL acc (%)", lambda r: r.acc["zsl"]),
    ("acc_icl", "ICL acc (%)", lambda r: r.acc["icl"]),
    ("acc_ft", "FT acc (%)", lambda r: r.acc["ft"]),
    ("rec2ftp", "Rec2FTP (%)", lambda r: r.rec2ftp),
    ("simaou_ft", "SimAOU(dFT)", lambda r: r.simaou_ft.mean),
    ("simaou_random", "SimAOU(random d)", lambda r: r.simaou_random.mean),
    ("simam_before", "SimAM before FT", lambda r: r.simam_before.mean),
    ("simam_after", "SimAM after FT", lambda r: r.simam_after.mean),
    ("kendall_ft", "Kendall(ICL, FT)", lambda r: r.kendall_ft.mean),
    ("kendall_random", "Kendall(ICL, random)", lambda r: r.kendall_random.mean),
    ("kendall_authors_ft", "Kendall(ICL, FT), authors' reading",
     lambda r: r.kendall_authors_ft.mean if r.kendall_authors_ft is not None else None),
]
PERCENT = {"acc_zsl", "acc_icl", "acc_ft", "rec2ftp"}
# the paper's qualitative findings, "a above b": checked on one run here (findings) and as per-seed differences
# a - b with intervals over a sweep (analysis/sweep.py); one definition for both (the run's Kendall line also asked
# for a positive Kendall(ICL, FT), and said 'no' beside a sweep's 'holds')
FINDINGS = [
    ("ICL above ZSL", "acc_icl", "acc_zsl"),
    ("FT above ZSL", "acc_ft", "acc_zsl"),
    ("SimAOU(dFT) above SimAOU(random d)", "simaou_ft", "simaou_random"),
    ("SimAM after FT above before FT", "simam_after", "simam_before"),
    ("Kendall(ICL, FT) above Kendall(ICL, random)", "kendall_ft", "kendall_random"),
    ("Kendall(ICL, FT), authors' reading, above Kendall(ICL, random)", "kendall_authors_ft", "kendall_random"),
]


def findings(r) -> list[str]:
    """The paper's qualitative findings (FINDINGS), checked on this run."""
    values = {key: get(r) for key, _, get in METRICS}

    def cmp(a, b):
        return "n/a" if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) else \
            ("yes" if a > b else "no")

    return [f"{label}: {cmp(values[a], values[b])}" for label, a, b in FINDINGS]


def markdown(results: Sequence) -> str:
    cols = [_col(r) for r in results]
    lines = ["# ICL vs finetuning (Dai et al. 2023, Section 4)", "",
             "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, get in METRIC_ROWS:
        lines.append(f"| {label} | " + " | ".join(get(r) for r in results) + " |")
    for r in results:
        L = len(r.simaou_ft.per_layer)
        lines += ["", f"## {_col(r)}: per layer", "",
                  "| metric | " + " | ".join(f"layer {i}" for i in range(L)) + " | mean |", "|---|" + "---|" * (L + 1)]
        for key, label in PER_LAYER + PER_LAYER_LATER:
            m = getattr(r, key)
            if m is None:
                continue
            lines.append(f"| {label} | " + " | ".join(_f(v) for v in m.per_layer) + f" | {_f(m.mean)} |")
        lines += ["", "Paper's findings on this run: " + "; ".join(findings(r)) + ".", ""]
        sel = ", ".join(f"{float(lr):g}: {_pct(a) if a is not None else 'diverged'}" for lr, a in r.lr_selection.items())
        best = max((a for a in r.lr_selection.values() if a is not None), default=None)
        tied = [f"{float(lr):g}" for lr, a in r.lr_selection.items() if a is not None and a == best]
        if len(tied) > 1:  # the choice among equals is the held-out log-prob's, which the console did not say
            sel += f"; {', '.join(tied)} tie at {_pct(best)}%, broken by the held-out mean log-prob of the label"
        ginc = r.kind == "ginc"
        lines += [f"- checkpoint: {r.checkpoint}; test examples: {r.n_test}; chance {_pct(r.chance)}%; "
                  + (f"prompt seed {r.seed} (test prompts and demonstrations)" if ginc else f"demonstration seed {r.seed}")
                  + ((f", test-set seed {r.settings['test_seed']}" if not ginc else "")
                     + f", baselines' seed {r.settings['random_seed']}, separator {r.settings['separator']!r}"
                     + (" (GINC's delimiter)" if ginc else "") if r.settings else ""),
                  (f"- learning rate {r.lr:g}, chosen on {r.n_select} held-out "
                   f"{'rows' if r.kind == 'choice' else 'prompts'} (accuracy %: {sel})"
                   if r.lr_selection else f"- learning rate {r.lr:g}, fixed by lrs (not chosen on held-out "
                   f"{'rows' if r.kind == 'choice' else 'prompts'})"),
                  f"- FT loss per step (first, last): {_f(r.ft['loss_per_step'][0])}, "
                  f"{_f(r.ft['loss_per_step'][-1])}; update norm per layer: "
                  + ", ".join(_f(v) for v in r.ft["update_norm_per_layer"])
                  + f"; diverged test models: {r.ft['n_diverged']}"
                  + (f"; test examples with non-finite FT scores (left out of the means, counted wrong): "
                     f"{r.ft['n_nonfinite_examples']}" if r.ft.get("n_nonfinite_examples") else "")]
        if r.dual:
            mem = r.dual.get("memory_op_max_rel_err")
            lines.append(f"- dual form (float64, every layer, {r.dual['n_demo_tokens']} tokens of demonstrations, "
                         "their separators included): "
                         f"linear attention = (W_ZSL + dW_ICL) q to max relative error "
                         f"{r.dual['linear_attention_max_rel_err']:.1e} (an identity on this layer's q, k, v: it "
                         "shows the dual form's terms, and holds for any weights)"
                         + (f"; the model's own memory op = the naive decayed sum to {mem:.1e} (this part tests the "
                            "code), split into query-side + demonstration update" if mem is not None else ""))
        lines.append("- time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.timing_s.items()))
        lines += ["", f"Protocol: {r.protocol}"]
    return "\n".join(lines) + "\n"


def plot_layers(results: Sequence, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    pairs = [("simaou_ft", "simaou_random", "SimAOU"), ("simam_after", "simam_before", "SimAM"),
             ("kendall_ft", "kendall_random", "Kendall")]
    for ax, (a, b, title) in zip(axes, pairs):
        for r in results:
            for key, style in ((a, "-o"), (b, "--x")):
                vals = getattr(r, key).per_layer
                ax.plot(range(len(vals)), vals, style, label=f"{_col(r)}: {dict(PER_LAYER)[key]}")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no layer 0.5
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return True


REPORTS = ("results.json", "results.md", "per_layer.png")
SWEEP_REPORTS = ("analysis_sweep.md", "analysis_sweep.json")  # a sweep's verdict (its jobs' reports: jobs/)


def write_reports(results, out_dir: str | os.PathLike) -> list[str]:
    """results.json, results.md and (with matplotlib) per_layer.png; the names of those written."""
    results = results if isinstance(results, list | tuple) else [results]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json_text({"analyses": [r.to_json() for r in results]}, indent=2))
    atomic_write_text(out / "results.md", markdown(results))
    plotted = plot_layers(results, out / "per_layer.png")
    return [*REPORTS[:2], *(REPORTS[2:] if plotted else ())]


def flat_metrics(r) -> dict[str, float]:
    out = {f"analyze/acc_{k}": v for k, v in r.acc.items()}
    if r.rec2ftp is not None:
        out["analyze/rec2ftp"] = r.rec2ftp
    for key, _ in PER_LAYER + PER_LAYER_LATER:
        m = getattr(r, key)
        if m is None:
            continue
        out[f"analyze/{key}"] = m.mean
        out.update({f"analyze/{key}@layer{i}": v for i, v in enumerate(m.per_layer)})
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def log_wandb(r, out_dir: Path, wandb_cfg: Mapping, tags: Sequence[str] = (), job: str | None = None,
              group: str | None = None, settings: Mapping | None = None) -> bool:
    """One W&B run under train.py's rules (momattn.wandb_runs: offline unless wandb_cfg says offline: false or
    WANDB_MODE=online, none for WANDB_MODE=disabled, offline when W&B cannot be reached); False when there is no
    run (wandb cannot be imported, or WANDB_MODE=disabled). job: a sweep job's name (its runs were all named
    <task>-<attention>, so seeds could not be told apart), group: the sweep verdict's (where logger.wandb.group
    names none); settings: analyze.py's config, logged with the run (two runs of other seeds or grids had the same
    name and config); the run's folder is said, as train.py and evaluate.py say theirs."""
    try:
        import wandb
    except ImportError:
        return False
    from momattn.analysis.config import AnalyzeConfig
    from momattn.eval.runner import train_run_id_of
    from momattn.wandb_runs import start_run, where

    given = {k: v for k, v in (settings or {}).items() if k not in ("logger", "paths", "ckpt_path", "sweep_dir")}
    default = AnalyzeConfig.__dataclass_fields__["seed"].default
    seed = f" seed {given['seed']}" if given.get("seed", default) != default else ""  # the demonstrations drawn
    run = start_run(out_dir, wandb_cfg, "the analysis", job_type="analyze", group=wandb_cfg.get("group") or group,
                    tags=list(wandb_cfg.get("tags") or tags or []),  # logger.wandb.tags (${tags} by default)
                    name=f"{r.task}-{r.attention}" + (f" job {job}" if job else "") + seed,
                    config={**given, "checkpoint": r.checkpoint, "lr": r.lr, "shots": r.shots,
                            "train_run_id": train_run_id_of(r.checkpoint), **({"job": job} if job else {})})
    if run is None:
        return False
    try:
        metrics = flat_metrics(r)
        run.log(metrics)
        run.summary.update(metrics)
        if (out_dir / "per_layer.png").exists():
            run.log({"analyze/per_layer": wandb.Image(str(out_dir / "per_layer.png"))})
        run_dir, offline = where(run)
    finally:
        run.finish()
    print(f"[momattn] W&B run of the analysis{f' of job {job}' if job else ''}: {run_dir}"
          + (f" (offline; upload with: wandb sync {shell_quote(str(run_dir))})" if offline else ""), file=sys.stderr)
    return True
