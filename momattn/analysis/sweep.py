"""Section 4 over a sweep's seeds: `python analyze.py sweep_dir=multirun/.../<time>`.

1. The sweep's finished runs, found and grouped as evaluate.py's sweep verdict does (momattn.eval.sweep.find_runs:
   a setting per training config apart from seed and attention, one row per attention variant).
2. Each run analysed with this command's settings into <out>/jobs/<job>/ (results.json, results.md,
   per_layer.png), or that folder's results reused when they were made with the same settings from the same
   checkpoint (its path, step and modification time: not another sweep's job of the same name).
3. analysis_sweep.md / .json: per setting and attention, mean ± std over seeds of every headline metric; the
   paper's findings per seed with a 95% t-interval (SimAOU(dFT) above its random baseline, SimAM after FT above
   before, Kendall(ICL, FT) above Kendall(ICL, random), ICL and FT above ZSL): 'holds' / 'reversed' only when the
   interval excludes 0; and each attention minus vanilla, paired by seed.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from momattn.analysis.config import AnalyzeConfig
from momattn.analysis.report import FINDINGS, METRICS, PER_LAYER_LATER, PERCENT, REPORTS, SWEEP_REPORTS
from momattn.errors import ConfigError, DataError, NonFiniteLossError
from momattn.eval.sweep import (
    BASELINE,
    SweepRun,
    by_setting,
    distinct,
    find_runs,
    interval_end,
    job_name,
    no_interval,
    paired,
    pairing_line,
    row_seeds,
    seed_row,
    setting_title,
    t_interval,
    unpaired_line,
    unround,
    verdict_tables,
)
from momattn.io import atomic_write_text, json_text, remove_stale

LATER = {key for key, _ in PER_LAYER_LATER}  # metrics an analysis made by an earlier version lacks

# analyze.py keys that change how fast or where an analysis runs, not its numbers
NOT_SETTINGS = ("ckpt_path", "sweep_dir", "device", "batch_tokens", "ft_models_per_batch", "dual_check", "tags",
                "logger", "paths")


@dataclass
class Interval:
    name: str  # a finding, or a metric compared with vanilla
    attention: str
    mean: float
    lo: float
    hi: float
    n: int
    reading: str
    seeds: list[str] = field(default_factory=list)  # the seeds the differences are of (a comparison's: paired)


@dataclass
class SettingAnalysis:
    setting: str
    differs: dict  # what tells this setting from the others
    rows: dict[str, dict[str, dict]] = field(default_factory=dict)  # attention -> metric -> {mean, std, n, seeds}
    findings: list[Interval] = field(default_factory=list)
    comparisons: list[Interval] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "attention seed S: metric=nan", left out of every number
    duplicates: list[str] = field(default_factory=list)  # jobs left out: a second run of one attention and seed


def settings_of(conf: AnalyzeConfig) -> dict:
    """The analyze.py settings that shape the numbers (a reused analysis must have been made with these): a local
    task's files by their contents too (a task file edited in place kept its name, and its old analyses)."""
    settings = {k: v for k, v in asdict(conf).items() if k not in NOT_SETTINGS}
    ginc = _is_ginc(conf.task)
    settings.pop("select_examples" if ginc else "select_prompts")  # the other kind's: changing it changes nothing
    if len(conf.lr_grid) == 1:  # one rate: nothing is chosen, so neither selection setting shapes a number
        settings.pop("select_prompts" if ginc else "select_examples")
    if files := _task_files(conf.task):
        from momattn.data.sources import file_stamp  # what keys the token cache: changes when the file does

        settings["task_files"] = {f: list(file_stamp(Path(f).expanduser())) for f in files}
    return json.loads(json.dumps(settings, default=str))


def _is_ginc(task) -> bool:
    from momattn.eval.ginc import ginc_task

    return isinstance(task, str) and ginc_task(task, "task") is not None


def _task_files(task) -> list[str]:
    """The local files a task reads (its task file, data and demonstration files); [] for a named task."""
    from momattn.eval.tasks import TASK_FILE_SUFFIXES, read_task_file

    files = []
    if isinstance(task, str) and task.endswith(TASK_FILE_SUFFIXES):
        files.append(task)
        task = read_task_file(task, key="task")
    if isinstance(task, Mapping):
        files += [str(task[k]) for k in ("path", "demo_path") if task.get(k)]
    return [f for f in files if Path(f).expanduser().is_file()]


def metrics_of(result) -> dict[str, float | None]:
    """The headline numbers of one AnalysisResult: None where there is none (Rec2FTP with no example FT got right
    and ZSL wrong; a non-finite mean, which results.json writes as null), nan as it is; summarise names both."""
    return {key: None if (v := get(result)) is None else float(v) for key, _, get in METRICS}


def _usable(metrics: dict[str, float | None]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}


def reading(lo: float, hi: float, n: int, above: str = "holds", below: str = "reversed",
            neither: str = "no clear difference", diffs: Sequence[float] = ()) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return no_interval(n, diffs)
    return above if lo > 0 else below if hi < 0 else neither


def _interval(name: str, att: str, by_seed: Mapping, **words) -> Interval:
    """The t-interval of the differences by_seed (seed -> difference), with its reading and seeds."""
    diffs = list(by_seed.values())
    mean, lo, hi = t_interval(diffs)
    return Interval(name, att, mean, lo, hi, len(diffs), reading(lo, hi, len(diffs), diffs=diffs, **words),
                    [str(sd) for sd in by_seed])


def summarise(runs: Sequence[SweepRun], metrics: dict[int, dict[str, float]]) -> list[SettingAnalysis]:
    """metrics: id(run) -> its headline numbers, for the runs that were analysed."""
    labels = {key: label.removesuffix(" (%)") for key, label, _ in METRICS}
    out = []
    for s, differs, rs in by_setting([r for r in runs if id(r) in metrics]):
        summary = SettingAnalysis(s, differs)
        by_att: dict[str, dict] = defaultdict(dict)
        for r in distinct(rs, summary.duplicates):
            m = metrics[id(r)]
            for key, v in m.items():
                if v is None and key == "rec2ftp":
                    summary.missing.append(f"{r.attention} seed {r.seed}: {labels[key]} undefined (no test example "
                                           "that FT got right and ZSL wrong)")
                elif v is None or not math.isfinite(v):
                    summary.missing.append(f"{r.attention} seed {r.seed}: {labels[key]}={v if v is not None else 'nan'}")
            by_att[r.attention][r.seed] = _usable(m)
        for att, seeds in sorted(by_att.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])):
            summary.rows[att] = {key: row for key, _, _ in METRICS if (row := seed_row(seeds, key)) is not None}
            for name, a, b in FINDINGS:
                by_seed = {sd: v[a] - v[b] for sd, v in seeds.items() if a in v and b in v}
                if by_seed:
                    summary.findings.append(_interval(name, att, by_seed))
            if att == BASELINE or BASELINE not in by_att:
                continue
            for key, _, _ in METRICS:
                if by_seed := paired(seeds, by_att[BASELINE], key):
                    summary.comparisons.append(_interval(key, att, by_seed, above="higher", below="lower",
                                                         neither="inconclusive (interval holds 0)"))
        out.append(summary)
    return out


def _num(key: str, x: float) -> str:
    x = unround(x)
    return f"{100 * x:.1f}" if key in PERCENT else f"{x:.3f}"


def _ci(key: str, iv: Interval, one: str = "one seed") -> str:
    if not math.isfinite(iv.lo):
        return f"n/a ({one})" if iv.n < 2 else "n/a (no spread)"
    return f"[{_end(key, iv.lo)}, {_end(key, iv.hi)}]"


def _end(key: str, x: float) -> str:  # an interval's bound: never a nonzero one printed as 0
    return interval_end(100 * x, 1) if key in PERCENT else interval_end(x, 3)


def markdown(summaries: Sequence[SettingAnalysis], failed: Sequence[str], conf: AnalyzeConfig, n_runs: int) -> str:
    labels = {key: label for key, label, _ in METRICS}
    left = sum(len(s.duplicates) for s in summaries)
    lines = ["# momattn Section 4 over seeds (Dai et al. 2023)", "",
             f"{n_runs - left} run{'s' if n_runs - left != 1 else ''}" + (f" ({left} more left out as {'a repeat' if left == 1 else 'repeats'}, below)"
                                        if left else "") + f", each analysed with task={conf.task if isinstance(conf.task, str) else conf.task.get('name')}, "
             f"shots={conf.shots}, max_examples={conf.max_examples}, "
             f"{'prompt' if _is_ginc(conf.task) else 'demonstration'} seed {conf.seed}. Mean ± std "
             "(sample) over training seeds; accuracies and Rec2FTP in %. Findings are per-seed differences with a 95% "
             "t-interval: 'holds' / 'reversed' only when the interval excludes 0. Differences to vanilla are paired "
             "by seed. Each interval is 95% on its own: of 20 rows with no real difference, about one excludes 0 by "
             "chance, so a lone 'higher' / 'lower' among many rows is a lead to test with more seeds, not a finding. "
             "Each run's own report: jobs/<job>/results.md.", ""]
    if failed:
        lines += ["Failed, partial or not analysed (left out): " + "; ".join(failed), ""]
    for s in summaries:
        title = setting_title(s.differs)  # (as evaluate.py's verdict: a run resumed with other settings is named)
        lines += [f"## Setting {s.setting}: {title}", "", "| attention | seeds | " +
                  " | ".join(label for _, label, _ in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        if s.duplicates:
            lines[-2:-2] = ["Left out, a second run of the same attention and seed (pass each copy's sweep on its own "
                            "to analyse it): " + "; ".join(s.duplicates), ""]
        if s.missing:
            lines[-2:-2] = ["Missing or non-finite values, left out of every number below: " + "; ".join(s.missing),
                            ""]
        for att, row in s.rows.items():
            seeds = max((v["n"] for v in row.values()), default=0)
            cells = ["–" if key not in row else _num(key, row[key]["mean"]) if row[key]["n"] < 2 else
                     f"{_num(key, row[key]['mean'])} ± {_num(key, row[key]['std'])}" for key, _, _ in METRICS]
            lines.append(f"| {att} | {seeds} | " + " | ".join(cells) + " |")
        lines += ["", "### The paper's findings, per seed", "", "| attention | finding | difference | 95% interval | "
                  "seeds | reading |", "|---|---|---|---|---|---|"]
        for f in s.findings:
            key = next(a for name, a, _ in FINDINGS if name == f.name)
            lines.append(f"| {f.attention} | {f.name} | {_end(key, unround(f.mean))} | {_ci(key, f)} | {f.n} | {f.reading} |")
        lines.append("")
        if s.comparisons:
            lines += ["### Attention − vanilla, paired by seed", "", "| metric | attention − vanilla | 95% interval | "
                      "pairs | reading |", "|---|---|---|---|---|"]
            for c in s.comparisons:
                lines.append(f"| {labels[c.name]} | {c.attention}: {_end(c.name, unround(c.mean))} | "
                             f"{_ci(c.name, c, 'one pair')} | {c.n} | {c.reading} |")
            lines.append("")
            lines += pairing_line(row_seeds(s.rows), [(c.attention, c.name, c.seeds) for c in s.comparisons],
                                  show=labels.get)
            lines += unpaired_line(s.rows, s.comparisons)
        elif BASELINE not in s.rows:
            lines += [f"No {BASELINE} run in this setting: nothing to compare against.", ""]
        elif len(s.rows) > 1:  # pairs are by seed: vanilla seed 1 and momentum seed 2 make no pair
            lines += [f"No seed is shared with {BASELINE}: differences are paired by seed, so nothing is compared; "
                      "train the same seeds for each attention.", ""]
    return "\n".join(lines).rstrip() + "\n"


def made_of(run: SweepRun, settings: dict, text_task: bool = False) -> dict:
    """What a job's analysis was made from: these settings, and its checkpoint by resolved path, step and
    modification time. jobs/<job>/ is named by the job's folder alone, so another sweep analysed into the same
    output folder (its job 0 at the same step) or a job trained again in place must not find its analysis made."""
    path = run.path.resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = None
    return {"settings": settings, "checkpoint": str(path), "step": run.step, "mtime_ns": mtime,
            "methods": {**METHODS, **(TEXT_METHODS if text_task else {})}}


# how numbers are computed, where it changed them: an analysis recorded without these (made before) is made again
# (a rerun adding seeds mixed float32-era Kendall(ICL, FT) jobs with float64 ones in one verdict: diff review)
METHODS = {"kendall_ft_queries": "float64 from the layer inputs (session 57)"}
# a text task's only (GINC's drew per prompt already): one random update served every test example before
TEXT_METHODS = {"random_update": "one per test example (session 63)"}


def _reusable(job_out: Path, made: dict, dual_check: bool = False) -> tuple:
    """(the job's analysis in this output folder, None) when it was made with these settings on these weights
    (made_of), and holds the dual-form check where one is asked for (dual_check shapes no number, so made_of leaves
    it out); else (None, why it is made again, or None where there is none to reuse). Redone without a word, a
    touched checkpoint cost a 24-job sweep an hour with no clue (found by review)."""
    from momattn.analysis.runner import PROTOCOL, AnalysisResult

    try:
        recorded = json.loads((job_out / "settings.json").read_text())
        doc = json.loads((job_out / "results.json").read_text())
        result = AnalysisResult.from_json(doc["analyses"][0])
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None, "its records there do not read"
    if dual_check and not result.dual:
        return None, "it has no dual-form check, which dual_check=true asks for"
    if any(getattr(result, key) is None for key in LATER) or result.protocol != PROTOCOL or \
            recorded.get("methods") != made.get("methods"):  # made by an earlier version: analysed again, to have it
        return None, "it was made by an earlier version of momattn"
    if isinstance(recorded.get("settings"), dict):  # recorded before the other kind's selection key was left out
        kept = made.get("settings", {})
        for key in ("select_examples", "select_prompts"):
            if key not in kept:
                recorded["settings"].pop(key, None)
    if recorded == made:
        return result, None
    was, now = recorded.get("settings") or {}, made["settings"]
    if changed := sorted(k for k in {*was, *now} if was.get(k) != now.get(k)):
        return None, f"it was made with other settings ({', '.join(changed)})"
    if recorded.get("checkpoint") != made["checkpoint"]:
        return None, f"it was made from another checkpoint file ({recorded.get('checkpoint')})"
    if recorded.get("step") != made["step"]:
        return None, f"it was made at step {recorded.get('step')}, and the checkpoint is at step {made['step']}"
    return None, "its checkpoint was written since (its modification time), e.g. trained again, touched or copied"


def _verdict_of_kept_records(out: Path, sweep_dir: Path, names: list[str]) -> bool:
    """Whether the verdict in `out` (analysis_sweep.json) was made of this sweep's jobs that hold a record there now."""
    try:
        doc = json.loads((out / SWEEP_REPORTS[1]).read_text())
        made_of = {r["job"] for r in doc["runs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    kept = {n for n in names if (out / "jobs" / n / "settings.json").is_file()}
    same = Path(str(doc.get("sweep_dir"))).expanduser().resolve() == Path(sweep_dir).expanduser().resolve()
    return same and made_of == kept  # (the folder spelt another way: diff review)


def run_analyze_sweep(conf: AnalyzeConfig, out: Path, device: str) -> list[SettingAnalysis]:
    """analyze.py sweep_dir=...: every finished run analysed (or its analysis reused), then the seeds' verdict."""
    from momattn.analysis.report import log_wandb, write_reports
    from momattn.analysis.runner import analyze
    from momattn.checkpoint import load_checkpoint
    from momattn.errors import CheckpointError
    from momattn.wandb_runs import folder_group

    sweep_dir = Path(conf.sweep_dir).expanduser()
    runs, failed = find_runs(sweep_dir, entry="analyze.py")
    settings = settings_of(conf)
    from momattn.analysis.runner import analysis_task
    from momattn.eval.ginc import GincTask

    text_task = not isinstance(analysis_task(conf), GincTask)
    metrics: dict[int, dict[str, float]] = {}
    diverged: dict[int, int] = {}  # test models whose finetuning diverged, per run (left out of its means)
    chosen: dict[int, float] = {}  # the finetuning lr of each run (chosen on held-out prompts, or fixed by lrs)
    refused: dict[str, list[str]] = {}  # why a job could not be analysed: the jobs, named once per reason
    verdict_kept = True  # an earlier verdict stays until a job's record changes (then it is written again at the
    # end: a stop or failure before it left that one beside new jobs), so settings every job refuses keep it with
    # the jobs' records it was made of (diff review)
    for i, r in enumerate(runs, 1):
        name = job_name(r.job, sweep_dir)
        job_out = out / "jobs" / name
        made = made_of(r, settings, text_task)
        result, why = _reusable(job_out, made, conf.dual_check)
        print(f"[momattn] {i}/{len(runs)} {name} ({r.attention}, seed {r.seed}): "
              + ("its analysis in this folder is reused" if result is not None else f"analysing on {device}"
                 + (f" (its analysis in this folder is made again: {why})" if why else "")),
              file=sys.stderr, flush=True)
        if result is None:
            try:
                model, tokenizer = load_checkpoint(r.path, map_location=device)
            except CheckpointError as e:  # e.g. non-finite weights, or a sharded folder whose shard does not read
                refused.setdefault(f"unreadable checkpoint: {e}", []).append(name)
                continue
            try:
                result = analyze(model, tokenizer, r.config, conf, checkpoint=str(r.path),
                                 trained_on=r.meta.get("data_fingerprint"))
            except (ConfigError, DataError, NonFiniteLossError) as e:  # e.g. a text run asked for a GINC task
                refused.setdefault(str(e), []).append(name)  # every job of a sweep alike: said once, not per job
                continue
            finally:
                del model  # one model on the device at a time
            # the older analysis's record goes once the new one is made (removed first, a setting every job
            # refused emptied every job's folder: found by review), and before the new results: stopped between
            # results.json and settings.json, the new results would sit beside the old settings, reused under them.
            # (a job that fails now: see below)
            remove_stale(job_out, ("settings.json", *REPORTS), ())
            if verdict_kept:
                remove_stale(out, SWEEP_REPORTS, ())
                verdict_kept = False
            write_reports(result, job_out)
            atomic_write_text(job_out / "settings.json", json_text(made, indent=2))
            if conf.logger and "wandb" in conf.logger:
                log_wandb(result, job_out, conf.logger["wandb"], conf.tags, job=name,  # the group: the seeds'
                          group=f"section4-{folder_group(sweep_dir)}", settings=asdict(conf))  # verdict's run's
        metrics[id(r)] = metrics_of(result)
        diverged[id(r)] = int(result.ft.get("n_diverged") or 0)
        chosen[id(r)] = result.lr  # (each run's finetuning lr, in the verdict's file too: it was in jobs/ alone)
    failed += [f"{names[0]} ({why})" if len(names) == 1 else f"jobs {', '.join(names)} ({why})"
               for why, names in refused.items()]
    if not metrics:  # every job's older record is kept: nothing was made, and a rerun with the settings mended
        # reuses them; the verdict made of them too, where its runs are the jobs with a record here (else it was made
        # of other jobs, or another sweep's)
        if not _verdict_of_kept_records(out, sweep_dir, [job_name(r.job, sweep_dir) for r in runs]):
            remove_stale(out, SWEEP_REPORTS, ())
        raise ConfigError(f"no run of sweep_dir='{sweep_dir}' could be analysed: " + "; ".join(failed))
    remove_stale(out, SWEEP_REPORTS, ())  # (all jobs reused: written again below, as they were)
    # a single analysis's reports stood beside the sweep's (review); kept where every job refused (they were removed
    # before any job was checked: review)
    remove_stale(out, REPORTS, ())
    analysed = {job_name(r.job, sweep_dir) for r in runs if id(r) in metrics}
    jobs = out / "jobs"
    held = {p.parent for p in jobs.rglob("settings.json")} | {p.parent for p in jobs.rglob("results.json")} \
        if jobs.is_dir() else set()  # (nested: the jobs of sweeps side by side are named sweepA/3: diff review)
    for folder in sorted(held):
        # a job that failed under a verdict made now, or that the scan left out (its checkpoint gone, unreadable or
        # unfinished: found by review), keeps none of an older analysis's reports (they sat under the verdict's "each
        # run's own report": session 55)
        if folder.relative_to(jobs).as_posix() not in analysed:
            remove_stale(folder, ("settings.json", *REPORTS), ())
    summaries = summarise(runs, metrics)
    text = markdown(summaries, failed, conf, len(metrics))
    if any(diverged.values()):
        text += "\nDiverged test models (left out of the run's means; counted wrong in its FT accuracy): " + ", ".join(
            f"{job_name(r.job, sweep_dir)} {diverged[id(r)]}" for r in runs if diverged.get(id(r))) + "\n"
    atomic_write_text(out / SWEEP_REPORTS[0], text)
    doc = {"sweep_dir": str(sweep_dir), "settings": settings, "failed": failed,
           "runs": [{"job": job_name(r.job, sweep_dir), "attention": r.attention, "seed": r.seed,
                     "setting": r.setting, "metrics": metrics[id(r)], "n_diverged": diverged[id(r)], "lr": chosen[id(r)],
                     **({"resumed_with": r.resumed} if r.resumed else {})}
                    for r in runs if id(r) in metrics],
           "summaries": [asdict(s) for s in summaries]}
    atomic_write_text(out / SWEEP_REPORTS[1], json_text(doc, indent=2))
    print(text)
    print(f"[momattn] Section 4 over seeds written to {out}/ (analysis_sweep.md, analysis_sweep.json, jobs/)",
          file=sys.stderr, flush=True)
    if conf.logger and "wandb" in conf.logger:  # each newly analysed job got its own run above; the seeds' verdict:
        from momattn.wandb_runs import log_verdict

        wandb_cfg = {**conf.logger["wandb"], "tags": list(conf.logger["wandb"].get("tags") or conf.tags or []),  # as
                     "group": conf.logger["wandb"].get("group") or f"section4-{folder_group(sweep_dir)}"}  # each job's run
        log_verdict(out, wandb_cfg, "Section 4 over seeds", verdict_tables(summaries, ("findings", "comparisons")),
                    job_type="analyze-sweep", name=f"section4-{sweep_dir.name}",
                    config={"sweep_dir": str(sweep_dir), "settings": settings, "failed": failed})
    return summaries
