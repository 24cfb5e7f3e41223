"""The verdict of a multirun: `python evaluate.py sweep_dir=multirun/.../<time>`.

1. Every `checkpoints/last.ckpt` under sweep_dir is a run; a job folder (one holding `.hydra/`) without one is
   named as failed or partial, and the rest are aggregated.
2. Runs are grouped by their training config (stored in the checkpoint) apart from the seed and the
   attention: a "setting" holds one row per attention variant, one value per seed.
3. Each run is evaluated with this command's ppl / icl settings (results in <out>/jobs/<job>/results.json),
   or its job's eval/results.json is reused when that was made with the same settings.
4. sweep.md / sweep.json: per setting, Table 6 / Table 7 miniatures with mean ± std over seeds, and for each
   non-vanilla attention the difference to vanilla paired by seed with a 95% t-interval and a verdict:
   "better" / "worse" only when the interval excludes 0, else "inconclusive (interval holds 0)" ("cannot tell"
   with a single seed pair, which has no interval, or when every pair differs by exactly the same amount, as
   accuracies on a few hundred prompts can over two seeds: a zero-width interval is no evidence).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from momattn.errors import ConfigError, DataError
from momattn.eval.config import EvalConfig, to_plain
from momattn.eval.results import ModelResult
from momattn.io import atomic_write_text, json_text, remove_stale, save_figure
from momattn.utils import digest

BASELINE = "vanilla"
# run-config keys that do not define the experiment (where a run writes, how it logs) or that vary on purpose
IGNORED_KEYS = ("seed", "attention", "paths", "logger", "hydra", "callbacks", "tags", "task_name", "ckpt_path",
                "run_eval", "eval", "extras", "dist_timeout_s", "optimized_metric")
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: _t975's expansion), to 7 decimals
# (scipy.stats.t.ppf(0.975, df)): at 3 decimals an interval's end of +0.0001 read "worse" where scipy's was below 0
T975 = (12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243, 2.3060041, 2.2621572,
        2.2281389, 2.2009852, 2.1788128, 2.1603687, 2.1447867, 2.1314495, 2.1199053, 2.1098156, 2.1009220,
        2.0930241, 2.0859634, 2.0796138, 2.0738731, 2.0686576, 2.0638986, 2.0595386, 2.0555294, 2.0518305,
        2.0484071, 2.0452296, 2.0422725)


@dataclass
class SweepRun:
    path: Path  # the checkpoint
    job: Path  # its job folder
    attention: str
    seed: int | None
    setting: str  # digest of the config apart from seed and attention
    config: dict
    result: ModelResult | None = None
    reused: bool = False
    attention_params: dict = field(default_factory=dict)  # the checkpoint's attention config
    eval_key: str | None = None  # own_settings: digest of the run's own evaluation settings, where runs differ
    step: int | None = None  # the checkpoint's global_step
    meta: dict = field(default_factory=dict, repr=False)  # the checkpoint's `momattn` entry, read by find_runs
    resumed: list[str] = field(default_factory=list)  # resumed_with's: settings changed by a resume, oldest first


@dataclass
class Comparison:
    metric: str
    attention: str
    diff_mean: float
    lo: float
    hi: float
    n_pairs: int
    verdict: str
    seeds: list[str] = field(default_factory=list)  # the seeds paired: those both attentions have a value at


@dataclass
class Rise:
    """In-context learning of one attention on one task: accuracy at the largest k minus k = 0, per seed."""

    attention: str
    task: str
    k: int  # the largest k every seed that scored the task scored
    mean: float
    lo: float
    hi: float
    std: float | None  # None for one seed
    n_seeds: int
    reading: str
    seeds: list[str] = field(default_factory=list)


@dataclass
class SettingSummary:
    setting: str
    differs: dict  # what tells this setting from the others
    rows: dict[str, dict[str, dict]] = field(default_factory=dict)  # attention -> metric -> {mean, std, n, seeds}
    comparisons: list[Comparison] = field(default_factory=list)
    rises: list[Rise] = field(default_factory=list)
    params: dict[str, dict] = field(default_factory=dict)  # attention label -> its attention config
    non_finite: list[str] = field(default_factory=list)  # "attention seed S (metric, ...)": runs left out of every number
    duplicates: list[str] = field(default_factory=list)  # jobs left out: a second run of one attention and seed
    no_rise: list[str] = field(default_factory=list)  # rises_of's gaps: tasks whose seeds share no k > 0


def t_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean of paired differences (nan bounds for one pair, and
    for pairs that all differ by the same amount: no spread, no interval)."""
    d = np.asarray(diffs, dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2 or float(d.std(ddof=1)) <= 1e-9 * (1.0 + abs(mean)):  # no spread beyond float rounding
        return mean, float("nan"), float("nan")
    t = T975[len(d) - 2] if len(d) - 1 <= len(T975) else _t975(len(d) - 1)
    half = t * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def _t975(df: int) -> float:
    """Student's t 97.5% quantile beyond the table: the Cornish-Fisher expansion around the normal's 1.96 to its
    fifth term (within 3e-8 of scipy's from 31 degrees of freedom on)."""
    z = 1.959963985
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def scored_at_k0(metrics: Mapping[str, float]) -> dict[str, set[int]]:
    """task -> the numeric k it was scored at ('<task>/acc@k<k>'), for the tasks scored at k = 0 (a rise's start)."""
    ks: dict[str, set[int]] = defaultdict(set)
    for m in metrics:
        task, _, k = m.partition("/acc@k")
        if k.isdigit():
            ks[task].add(int(k))
    return {task: task_ks for task, task_ks in ks.items() if 0 in task_ks}


def rises_of(attention: str, seeds: Mapping[int | None, Mapping[str, float]],
             gaps: list[str] | None = None) -> list[Rise]:
    """Per task, over the seeds that scored it at k = 0: acc(largest numeric k they all scored) - acc(k = 0) per
    seed, its mean, sample std and 95% t-interval; 'rises' / 'falls' only when the interval excludes 0. A seed
    without the task (a run evaluated without ICL) is left out of that task's rise, which n_seeds then shows.
    gaps: where given, gets a line per task scored at some k > 0 whose seeds share none (a rise left out)."""
    scored: dict[str, list[tuple[str, Mapping[str, float], set[int]]]] = defaultdict(list)  # task -> (seed, metrics, ks)
    for sd, metrics in seeds.items():
        for task, task_ks in scored_at_k0(metrics).items():
            scored[task].append((str(sd), metrics, task_ks))
    out = []
    for task, runs in sorted(scored.items()):
        ks = set.intersection(*(task_ks for _, _, task_ks in runs))
        if max(ks) == 0:  # (left out silently where the seeds scored other k > 0: found by review)
            if gaps is not None and any(max(task_ks) > 0 for _, _, task_ks in runs):
                gaps.append(f"{attention} on {task} (" + "; ".join(
                    f"seed {sd}: k = {', '.join(map(str, sorted(task_ks)))}" for sd, _, task_ks in runs) + ")")
            continue
        k = max(ks)
        diffs = [v[f"{task}/acc@k{k}"] - v[f"{task}/acc@k0"] for _, v, _ in runs]
        mean, lo, hi = t_interval(diffs)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            reading = no_interval(len(diffs), diffs)
        else:
            reading = "rises" if lo > 0 else "falls" if hi < 0 else "no clear change"
        std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None  # one seed: no spread was measured
        out.append(Rise(attention, task, k, mean, lo, hi, std, len(diffs), reading, [sd for sd, _, _ in runs]))
    return out


def rise_ks(by_att: Mapping[str, Mapping[int | None, Mapping[str, float]]]) -> dict[str, int]:
    """task -> the largest k > 0 that every seed of every attention scoring the task at k = 0 also scored: the k at
    which the attentions' in-context rises are compared."""
    common: dict[str, set[int]] = {}
    for seeds in by_att.values():
        for metrics in seeds.values():
            for task, task_ks in scored_at_k0(metrics).items():
                common[task] = common[task] & task_ks if task in common else task_ks
    return {task: max(ks) for task, ks in sorted(common.items()) if max(ks) > 0}


def seed_rises(seeds: Mapping[int | None, Mapping[str, float]], ks: Mapping[str, int]) -> dict:
    """seed -> {'<task>/rise@k<K>': acc@kK - acc@k0}: each seed's in-context rise, a metric to pair by seed."""
    return {sd: {f"{t}/rise@k{k}": v[f"{t}/acc@k{k}"] - v[f"{t}/acc@k0"] for t, k in ks.items()
                 if f"{t}/acc@k{k}" in v and f"{t}/acc@k0" in v} for sd, v in seeds.items()}


def no_interval(n: int, diffs: Sequence[float] = ()) -> str:
    """Why an interval is missing: one seed, no spread, or a value that is not a number (which the sweep leaves out
    before it gets here: a nan read as 'no spread')."""
    if not all(math.isfinite(d) for d in diffs):
        return "cannot tell (a non-finite value: no interval)"
    return ("cannot tell (one seed: no interval)" if n < 2 else
            f"cannot tell (the same difference in all {n} seeds: no spread, no interval)")


def verdict(metric: str, lo: float, hi: float, n: int = 1, diffs: Sequence[float] = ()) -> str:
    """better / worse when the interval excludes 0 (lower is better for perplexity), else inconclusive (an interval
    holding 0 says the seeds could not tell the two apart, not that they are the same, however wide it is); no
    interval (a single seed pair, or n pairs with no spread) says nothing either way."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return no_interval(n, diffs)
    if lo <= 0 <= hi:
        return "inconclusive (interval holds 0)"
    higher = lo > 0
    lower_is_better = is_ppl(metric)
    return "better" if higher != lower_is_better else "worse"


ANY = object()  # a DROPPED key left out whatever its value
# keys left out of a setting's identity: at ANY value, keys inside a section that change how a run is fed or shown,
# not what it trains (two sweeps of one experiment with another cache folder, a resolved absolute path, were two
# settings, with no vanilla to compare against); at the value given, settings added by later momattn versions at
# the value that changes nothing (a run that lacks one, trained before it existed, and a run that has it at this
# value trained the same way, so they stay one setting)
DROPPED = {("data", "cache_dir"): ANY, ("data", "num_workers"): ANY, ("data", "num_proc"): ANY,
           ("trainer", "enable_progress_bar"): ANY, ("trainer", "enable_model_summary"): ANY,
           ("trainer", "log_every_n_steps"): ANY,
           ("global_batch",): None, ("val_every_steps",): None, ("trainer", "num_nodes"): 1}


def setting_config(config: Mapping) -> dict:
    """A run's config as its setting's identity: without IGNORED_KEYS, and without DROPPED's keys."""
    out = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    for path, value in DROPPED.items():
        *parents, leaf = path
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and leaf in node and (value is ANY or node[leaf] == value):
            if parents:  # copy the section before changing it: the run's own config stays as it was
                out[parents[0]] = node = {k: v for k, v in node.items() if k != leaf}
            else:
                out.pop(leaf)
    return out


def resumed_with(meta: Mapping, config: Mapping) -> list[str]:
    """'at step 3 with optim.lr=0.001 (was 0.002)' for each resume that changed a setting of the run's identity
    (meta["history"]: train.py's configs before such resumes), oldest first; [] for a run trained as its config
    says from step 0. Such a run is a setting of its own: it was averaged with runs trained that way throughout
    (found by review)."""
    out, history = [], [h for h in meta.get("history") or () if isinstance(h, Mapping)]
    for i, h in enumerate(history):
        after = to_plain(history[i + 1].get("config")) if i + 1 < len(history) else config
        old, new = _flat(setting_config(to_plain(h.get("config")) or {})), _flat(setting_config(after or {}))
        if changed := [f"{k}={json.dumps(new.get(k), default=str)} (was {json.dumps(old.get(k), default=str)})"
                       for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]:
            out.append(f"at step {h.get('step')} with {', '.join(changed)}")
    return out


def _flat(config: Mapping, prefix: str = "") -> dict:
    """{'trainer.max_steps': 400, ...}: every leaf of a nested config under its dotted key."""
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_training_job(folder: Path) -> bool | None:
    """Whether a folder holding .hydra/ is a train.py job: evaluate.py's and analyze.py's own folders (one written
    inside the sweep folder was listed as a failed job) have no trainer section. None: its .hydra/config.yaml is
    there but cannot be read (such a job vanished from a sweep's report unnamed: found by review)."""
    import yaml

    file = folder / ".hydra" / "config.yaml"
    try:
        config = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None if file.is_file() else False
    return isinstance(config, Mapping) and "trainer" in config


def _folders(sweep_dir: Path) -> list[Path]:
    """Every folder under sweep_dir, itself first, in order, through links to folders (sweeps gathered under one
    parent with ln -s were passed over unnamed: found by review), each real folder once (a link loop, or a sweep
    linked twice, is read once); a job's own checkpoints/, .hydra/ and wandb/ are not entered."""
    seen, out = set(), []
    for root, dirs, _ in os.walk(sweep_dir, followlinks=True):
        if (real := os.path.realpath(root)) in seen:
            dirs[:] = []
            continue
        seen.add(real)
        out.append(Path(root))
        dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", ".hydra", "wandb"))
    return out


def _unfinished(config: Mapping, step: int | None, ckpt: Mapping | None = None) -> str | None:
    """Why a checkpoint is not a finished run (None if it is): it stopped before trainer.max_steps (diverged,
    interrupted, or still training) and, with trainer.max_time, before that time (Lightning's Timer keeps the
    training time in the checkpoint). Its numbers are of a model trained for fewer steps, so averaging them with
    finished runs would make a verdict of unlike things."""
    trainer = config.get("trainer")
    if not isinstance(trainer, Mapping) or trainer.get("max_epochs") not in (None, -1):
        return None  # an epoch limit may end the run first, finished: only max_steps tells a short run here
    max_steps = trainer.get("max_steps")
    if not (isinstance(step, int) and isinstance(max_steps, int) and not isinstance(max_steps, bool) and 0 < max_steps
            and step < max_steps):
        return None
    from momattn.utils import early_stopped

    if early_stopped((ckpt or {}).get("callbacks")):  # an EarlyStopping callback ended it: finished (it read as
        return None  # "diverged or interrupted; resume it", which trained past the stop: found by review)
    limit = trainer.get("max_time")
    if limit:  # a run that reached its time limit is finished; one a SIGTERM or a crash stopped before it is not
        seconds, spent = _seconds(limit), _train_seconds(ckpt)
        if seconds is None or spent is None or spent >= 0.99 * seconds:
            return None
        return f"partial: trained {step} steps in {spent:.0f} s of trainer.max_time={limit} {_GO_ON}"
    return f"partial: trained {step} of trainer.max_steps={max_steps} steps {_GO_ON}"


# (a job still training read as one to resume: found by review)
_GO_ON = ("(diverged or interrupted; resume it with ckpt_path=last, or evaluate it alone with evaluate.py "
          "ckpt_path=...; or still training: evaluate the sweep once it ends)")


def _seconds(limit) -> float | None:
    """trainer.max_time in seconds, as train.py hands it to Lightning (config.max_time); None if unreadable."""
    from momattn.config import max_time
    from momattn.errors import ConfigError

    try:
        td = max_time(limit)
    except ConfigError:
        return None
    return None if td is None else td.total_seconds()


def _train_seconds(ckpt: Mapping | None) -> float | None:
    """The training time Lightning's Timer callback saved in a checkpoint, or None."""
    timer = ((ckpt or {}).get("callbacks") or {}).get("Timer") or {}
    spent = (timer.get("time_elapsed") or {}).get("train") if isinstance(timer, Mapping) else None
    return float(spent) if isinstance(spent, int | float) and not isinstance(spent, bool) else None


def job_name(job: Path, sweep_dir: Path) -> str:
    """A job's folder as reports name it: relative to the sweep's, or its own name where sweep_dir is the job (a
    single run given as sweep_dir, which was named '.')."""
    return job.resolve().name if job == sweep_dir else str(job.relative_to(sweep_dir))  # sweep_dir=. : its name


def _never_started(sweep_dir: Path) -> list[str]:
    """The jobs of the basic sweeps in sweep_dir (each sweep's multirun.yaml: the folder itself, or sweeps side by
    side under one parent, as the README advises) that have no folder: a sweep stopped before them (a SIGTERM, a
    failed job) left no trace of them, and their attention or seed vanished from the tables unnamed."""
    out = []
    for found in [f / "multirun.yaml" for f in _folders(sweep_dir) if (f / "multirun.yaml").is_file()]:
        where = found.parent.relative_to(sweep_dir).as_posix()
        out += [f"{where}/{job}" if where != "." else job for job in _never_started_in(found.parent)]
    return out


def _never_started_in(sweep_dir: Path) -> list[str]:
    """_never_started of one sweep's folder."""
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import BASIC, cross_jobs, sweeper_params

    try:
        cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        basic = OmegaConf.select(cfg, "hydra.sweeper._target_") == BASIC
        subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
        jobs = cross_jobs(sweeper_params(cfg), [str(o) for o in cfg.hydra.overrides.task]) if basic else None
    except Exception:  # no multirun.yaml (a single run, a hand-made folder), or not Hydra's: nothing to add
        return []
    if not jobs:
        return []
    values: dict[str, set] = defaultdict(set)
    for job in jobs:
        for o in job:
            values[o.split("=", 1)[0]].add(o)
    swept = {k for k, v in values.items() if len(v) > 1}  # what tells the jobs apart (seed=2), not every setting

    def key(job) -> frozenset:
        return frozenset(o for o in job if o.split("=", 1)[0] in swept)

    if subdir == "${hydra.job.num}":
        missing = [i for i in range(len(jobs)) if not (sweep_dir / str(i)).exists()]
    else:  # a subdir of its own (${hydra.job.override_dirname}, ...): the jobs whose swept values no job folder's
        # saved command line holds (they were left out unnamed: found by review)
        started = set()
        for saved in sweep_dir.rglob(".hydra/overrides.yaml"):
            with contextlib.suppress(Exception):
                started.add(key(str(o) for o in OmegaConf.load(saved)))
        missing = [i for i, job in enumerate(jobs) if key(job) not in started]
    return [f"{i} (never started: {' '.join(o for o in jobs[i] if o.split('=', 1)[0] in swept) or 'the sweep stopped before it'})"
            for i in missing]


def find_runs(sweep_dir: Path, entry: str = "evaluate.py") -> tuple[list[SweepRun], list[str]]:
    """The finished runs of a sweep, and the names of its jobs that left no last checkpoint or stopped early (with
    the `entry` command that takes such a job's checkpoint alone)."""
    from momattn.checkpoint import read_meta

    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep_dir='{sweep_dir}' is not a folder; pass the multirun folder of a "
                          "`python train.py -m ...` sweep (it holds one folder per job)")
    runs, failed = [], []
    folders = _folders(sweep_dir)
    ckpts = [f / "checkpoints" / "last.ckpt" for f in folders if os.path.lexists(f / "checkpoints" / "last.ckpt")]
    done = {p.parent.parent for p in ckpts}
    for job in (f for f in folders if f not in done and (f / ".hydra").is_dir()):
        if (training := is_training_job(job)) is None:
            failed.append(f"{job_name(job, sweep_dir)} (no checkpoints/last.ckpt, and its .hydra/config.yaml "
                          "cannot be read)")
        elif training:  # kept by its best files alone (save_last=false): which is the final model is not known
            from momattn.cli import best_files_only, run_held

            held = run_held(job)
            failed.append(f"{job_name(job, sweep_dir)} (no checkpoints/last.ckpt" + (
                f"; it holds {held.name} (save_last=false?): {entry} ckpt_path={held} "
                f"{'scores' if entry == 'evaluate.py' else 'analyses'} it alone)"
                if held is not None and best_files_only(held) else ")"))
    for path in ckpts:
        try:
            ckpt = read_meta(path)  # a sharded folder's meta.pt alone: a run whose results are reused needs no weights
            meta = ckpt["momattn"]
        except Exception as e:  # a half-written or foreign file: name it and go on with the others
            failed.append(f"{job_name(path.parent.parent, sweep_dir)} (unreadable checkpoint: {e})")
            continue
        config = to_plain(meta.get("config")) or {}
        if why := _unfinished(config, ckpt.get("global_step"), ckpt):
            failed.append(f"{job_name(path.parent.parent, sweep_dir)} ({why})")
            continue
        att = dict((meta.get("model_config") or {}).get("attention") or config.get("attention") or {})
        resumed = resumed_with(meta, config)
        run = SweepRun(path, path.parent.parent, str(att.get("kind", "unknown")), config.get("seed"),
                       digest([setting_config(config), resumed] if resumed else setting_config(config)), config, resumed=resumed)
        run.attention_params = att
        run.step = ckpt.get("global_step")  # an int (read_meta checks it), or None
        run.meta = meta
        runs.append(run)
    failed += _never_started(sweep_dir)
    _label_variants(runs)
    if not runs:
        raise ConfigError(f"sweep_dir='{sweep_dir}' holds no finished run (a job's checkpoints/last.ckpt at its "
                          "trainer.max_steps)" + (f"; failed or partial jobs: {'; '.join(failed)}" if failed else ""))
    if len(runs) == 1 and not failed and os.path.samefile(runs[0].job, sweep_dir):  # (a verdict of one seed, read
        # as a sweep's: day-one review)
        print(f"[momattn] note: sweep_dir={sweep_dir} is one run's folder, not a sweep's: its verdict holds that "
              f"run's numbers alone, with no seeds to spread over and no other attention to compare with. To score this run "
              f"alone: {entry} ckpt_path={runs[0].path}", file=sys.stderr, flush=True)
    return runs, failed


def _label_variants(runs: Sequence[SweepRun]) -> None:
    """Runs of one attention kind that differ in its settings (an eta sweep) are distinct variants: their label
    names what differs, e.g. 'momentum(eta=0.3)', 'momentum(learnable_eta=True)'."""
    from momattn.eval.runner import variant_labels

    for r, label in zip(runs, variant_labels([{**r.attention_params, "kind": r.attention} for r in runs])):
        r.attention = label


def eval_inputs(cfg: EvalConfig) -> dict[str, list]:
    """{resolved path: file_stamp} of the local files an evaluation with these settings reads: the task files in
    icl.task_dirs, the .yaml tasks in icl.tasks and the rows they name, and the files ppl.data names. Settings
    name files, not their contents: a task file edited in place kept its name, and a sweep reused the old scores."""
    from momattn.data.sources import file_stamp, named_files
    from momattn.eval.tasks import TASK_FILE_SUFFIXES, expand_task_files, task_files

    files: set[Path] = set()
    if cfg.icl.enabled:
        try:
            dirs = [str(d) for d in cfg.icl.task_dirs]
            files |= set(task_files(dirs).values()) if dirs else set()
            files |= {Path(e).expanduser() for e in cfg.icl.tasks
                      if isinstance(e, str) and e.endswith(TASK_FILE_SUFFIXES)}
            for e in expand_task_files(cfg.icl.tasks, dirs):
                if isinstance(e, Mapping):
                    files |= {Path(str(e[k])).expanduser() for k in ("path", "demo_path") if e.get(k)}
        except (ConfigError, DataError):  # a task file that cannot be read is named where the evaluation reads it
            pass

    data = to_plain(cfg.ppl.data) if cfg.ppl.enabled and cfg.ppl.data else {}
    for key in ("paths", "data_files"):  # the keys that name files (split names and cache_dir are not read)
        files.update(named_files(data.get(key)))
    if isinstance(data.get("name"), str) and (folder := Path(data["name"]).expanduser()).is_dir():
        files.update(q for q in folder.rglob("*") if q.is_file())  # a local folder as data.name
    try:
        return {str(p.resolve()): list(file_stamp(p)) for p in sorted(files) if p.is_file()}
    except OSError:  # a file gone while it was listed: nothing to reuse against, and never the evaluation lost
        return {}


def reusable(job: Path, eval_cfg: EvalConfig, step: int | None = None,
             results: Path | None = None) -> ModelResult | None:
    """The job's own eval/results.json (or `results`, a results.json of its scored elsewhere), when it was made
    with exactly these evaluation settings, by today's scoring protocols (an older momattn's numbers, scored
    another way, are computed again) and of the weights at
    `step`, last.ckpt's (a run trained on after its evaluation, then stopped before the next one, left numbers of
    older weights; a results.json that records no step, from before it did, is taken as it is). The caller checks
    the weights themselves (stale_reason)."""
    from momattn.eval.report import read_results

    if not (read := read_results(results or job / "eval" / "results.json")):
        return None
    result = read[0]
    if step is not None and result.step is not None and result.step != step:
        return None
    return result if result.eval_config == json.loads(json.dumps(asdict(eval_cfg))) else None


def stale_reason(run: SweepRun, result: ModelResult, eval_cfg: EvalConfig) -> str | None:
    """Why a job's own evaluation (`result`, reusable by its settings and step) is not of its last.ckpt's weights
    and today's files, or None where it is. A job trained again in place to the same step, or a task file edited
    since, left numbers of other weights or rows in the verdict, in silence (found by review)."""
    from momattn.checkpoint import load_checkpoint, weights_digest
    from momattn.errors import CheckpointError

    if result.weights is None:
        return "its eval/results.json does not record which weights it scored (an older momattn's)"
    if result.inputs is not None and result.inputs != eval_inputs(eval_cfg):
        return "a file it read (a task file, its rows or ppl.data) has changed since"
    try:
        model, _ = load_checkpoint(run.path, check_env=False)  # its weights hashed, not run
    except CheckpointError:
        return "its checkpoint cannot be read"  # and is named as such where the job is evaluated
    digest = weights_digest(model)
    del model
    return None if digest == result.weights else "last.ckpt holds other weights than those it scored"


def reuse_note(runs: Sequence[SweepRun], sweep_dir: Path) -> str:
    """A line naming the jobs whose own end-of-run evaluation was reused, so that the verdict says which numbers
    it computed and which it read."""
    reused = [job_name(r.job, sweep_dir) for r in runs if r.reused]
    if not reused:
        return ""
    return (f"\nReused: the end-of-run evaluation (eval/results.json) of job{'s' if len(reused) > 1 else ''} "
            f"{', '.join(reused)}: the same settings, the weights of its last.ckpt and the same local files; "
            f"{'the other jobs were' if len(reused) < len(runs) else 'no job was'} evaluated here.\n")


def metrics_of(result: ModelResult) -> dict[str, float]:
    """The Table 6 / Table 7 numbers compared: valid perplexity per length and headline-k accuracy per task."""
    out = {}
    if result.ppl:
        out.update({f"ppl@{n}": v.ppl for n, v in result.ppl.valid.items()})
    if result.icl:
        k = result.icl.headline_k
        for name, t in result.icl.tasks.items():
            for s, shot in t.shots.items():
                if shot.acc is not None and shot.fits and (s == k or t.kind == "ginc"):
                    out[f"{name}/acc@k{s}"] = shot.acc
        if k in result.icl.avg and result.icl.avg[k].acc is not None:
            out[f"avg/acc@k{k}"] = result.icl.avg[k].acc
    return out


def text_rise_metrics(result: ModelResult) -> dict[str, float]:
    """A text task's accuracy at k = 0 and at each numeric k: its in-context rise, which metrics_of's headline k
    alone cannot give (Table 7 compares that k only; GINC's every k are in metrics_of already)."""
    if not result.icl:
        return {}
    return {f"{name}/acc@k{s}": shot.acc for name, t in result.icl.tasks.items() if t.kind != "ginc"
            for s, shot in t.shots.items() if shot.acc is not None and shot.fits and str(s).isdigit()}


def is_ppl(metric: str) -> bool:
    """A perplexity (ppl@N; lower is better) rather than an accuracy (TASK/acc@kK, whatever the task's name)."""
    return re.fullmatch(r"(ppl|bpb)@\d+", metric) is not None


def step_note(runs: Sequence[SweepRun], sweep_dir: Path) -> str:
    """A line naming the runs of a setting trained for fewer steps than others of it: under trainer.max_epochs or
    trainer.max_time a run's step does not tell a finished run from a stopped one (_unfinished keeps them), and one
    stopped early was averaged in unsaid (found by review)."""
    lines = []
    for setting, _, rs in by_setting(runs):
        steps = {r.step for r in rs if isinstance(r.step, int)}
        if len(steps) > 1:
            top = max(steps)
            short = [f"{job_name(r.job, sweep_dir)} ({r.attention}, seed {r.seed}) at step {r.step}" for r in rs
                     if isinstance(r.step, int) and r.step < top]
            lines.append(f"\nSteps differ in setting {setting}: {'; '.join(short)}, the others at step {top}. An "
                         "epoch or time limit ends runs at their own step, so these may be finished runs or stopped "
                         "ones; their numbers are averaged with the others'.\n")
    return "".join(lines)


def unfit_note(runs: Sequence[SweepRun]) -> str:
    """A line naming the text tasks left out of the tables because their headline k does not fit a run's
    context (metrics_of compares the headline k only), and one naming the GINC k (each compared) that do not fit,
    so that a missing Table 7 or k is never silent."""
    left: dict[str, set] = defaultdict(set)
    ginc: dict[str, set] = defaultdict(set)  # GINC compares every k: one that does not fit left them silently
    for r in runs:
        icl = r.result.icl if r.result is not None else None
        if icl:
            for name, t in icl.tasks.items():
                shot = t.shots.get(icl.headline_k)
                if t.kind != "ginc" and shot is not None and not shot.fits:
                    left[name].add(f"k={icl.headline_k}")
                if t.kind == "ginc":
                    ginc[name] |= {k for k, s in t.shots.items() if not (s.fits and s.acc is not None)}
    note = ""
    if left:
        note += ("\nLeft out of Table 7 (the headline k does not fit the runs' context; each job's results.md, in "
                 "jobs/<job>/ here or its run's eval/, has the smaller k): " + "; ".join(f"{n} at {', '.join(sorted(ks))}" for n, ks in sorted(left.items())) + "\n")
    if ginc := {n: ks for n, ks in ginc.items() if ks}:
        note += ("\nLeft out of the tables (these k do not fit the context of at least one run; each job's "
                 "results.md, in jobs/<job>/ here or its run's eval/, says which k fit): " + "; ".join(f"{n} at k={', '.join(map(str, sorted(ks, key=_k_order)))}"
                                       for n, ks in sorted(ginc.items())) + "\n")
    return note


def _k_order(k) -> tuple:
    return (0, int(k)) if str(k).isdigit() else (1, str(k))


def metric_order(m: str) -> tuple:
    """Perplexities by length, then each task's accuracies by k (numerically: k2 before k16, kmax last)."""
    if m.startswith("ppl@"):
        return (0, "", int(m[4:]) if m[4:].isdigit() else 1 << 30)
    task, _, k = m.partition("/acc@k")
    return (1, task, int(k) if k.isdigit() else 1 << 30)


def setting_title(differs: Mapping) -> str:
    """A setting's heading: what tells it from the others (by_setting's), as key=value, and how it was resumed."""
    return ", ".join(f"{k}={json.dumps(v, default=str)[:80]}" if k != "resumed" else
                     f"resumed {v}" if v else "not resumed with other settings"
                     for k, v in differs.items()) or "all runs"


def by_setting(runs: Sequence[SweepRun]) -> list[tuple[str, dict, list[SweepRun]]]:
    """(setting, what tells it from the other settings, its runs) for runs in first-seen order; what differs is
    read leaf by leaf (trainer.max_steps=4, not the whole trainer section)."""
    settings: dict[str, list[SweepRun]] = defaultdict(list)
    for r in runs:
        settings[r.setting].append(r)
    configs = {s: {**_flat(setting_config(rs[0].config)), **({"eval settings": rs[0].eval_key} if rs[0].eval_key else {}),
                   "resumed": "; ".join(rs[0].resumed) or None} for s, rs in settings.items()}
    return [(s, {k: v for k, v in configs[s].items() if any(c.get(k) != v for c in configs.values())}, rs)
            for s, rs in settings.items()]


def distinct(runs: Sequence[SweepRun], duplicates: list[str]) -> list[SweepRun]:
    """One run per (attention, seed) of a setting: a second one is warned about, named in duplicates, left out."""
    jobs: dict[tuple, Path] = {}
    out = []
    for r in runs:
        if (r.attention, r.seed) in jobs:  # e.g. jobs that differ only in an ignored key (callbacks, logger)
            first = jobs[r.attention, r.seed]
            print(f"[momattn] warning: {first} and {r.job}: same attention ({r.attention}) and seed ({r.seed}) in one "
                  "setting; the second is left out", file=sys.stderr, flush=True)
            duplicates.append(f"{r.job} ({r.attention}, seed {r.seed}: a second run of {first})")
            continue
        jobs[r.attention, r.seed] = r.job
        out.append(r)
    return out


def seed_row(seeds: Mapping, key: str) -> dict | None:
    """{mean, std (sample; None for one seed, where 0 would read as no spread), n, seeds} of key over the seeds that have it (seed -> metrics)."""
    vals = {sd: v[key] for sd, v in seeds.items() if key in v}
    if not vals:
        return None
    x = list(vals.values())
    return {"mean": float(np.mean(x)), "std": float(np.std(x, ddof=1)) if len(x) > 1 else None, "n": len(x),
            "seeds": sorted(str(k) for k in vals)}


def paired(seeds: Mapping, base: Mapping, key: str) -> dict:
    """seed -> key's difference seeds - base, over the seeds both have it in (seed -> metrics each)."""
    return {sd: v[key] - base[sd][key] for sd, v in seeds.items() if sd in base and key in v and key in base[sd]}


def seed_list(seeds) -> str:
    """Seeds (as text) in numeric order where they are numbers: 1, 2, 10."""
    return ", ".join(sorted(seeds, key=lambda x: (len(x), x)))


def unpaired_line(rows: Mapping[str, Mapping[str, Mapping]], comparisons: Sequence) -> list[str]:
    """Where some attentions are compared with vanilla, a line naming those that are not (no seed shared with it,
    or none with a value on both sides): pairs are by seed, and their rows were missing from the verdict silently."""
    def seeds(att: str) -> str:
        return seed_list({sd for v in rows[att].values() for sd in v["seeds"]})

    left = [att for att in rows if att != BASELINE and all(c.attention != att for c in comparisons)]
    if not comparisons or BASELINE not in rows or not left:
        return []
    return [f"Not compared with {BASELINE} (differences are paired by seed, and no seed has a value on both sides; "
            f"{BASELINE}'s seeds: {seeds(BASELINE)}): " + "; ".join(f"{att} (seeds {seeds(att)})" for att in left), ""]


def row_seeds(rows: Mapping[str, Mapping[str, Mapping]]) -> Callable[[str, str], list[str] | None]:
    """(attention, metric) -> the seeds a table row's mean is over (rows: attention -> metric -> seed_row)."""
    return lambda att, metric: (rows.get(att, {}).get(metric) or {}).get("seeds")


def pairing_line(own_seeds: Callable[[str, str], Sequence[str] | None],
                 pairs: Sequence[tuple[str, str, Sequence[str]]], show: Callable[[str], str] = str) -> list[str]:
    """A line naming the differences taken over fewer seeds than an attention's numbers above them (the attentions
    were trained on other seeds, or a seed's value was not finite): a table's mean is over the attention's own
    seeds, a difference over the seeds both have, and the two told different stories without a word.
    pairs: (attention, metric, the seeds paired); own_seeds(attention, metric) -> that row's seeds; show(metric):
    its name on the page."""
    odd: dict[tuple, list[str]] = defaultdict(list)
    for att, metric, both in pairs:
        a, b = own_seeds(att, metric), own_seeds(BASELINE, metric)
        if a and b and len(both) < max(len(a), len(b)):
            odd[(att, tuple(both), tuple(a), tuple(b))].append(show(metric))
    if not odd:
        return []
    return ["Fewer pairs than seeds: a difference is over the seeds both attentions have, a table's mean over the "
            "attention's own, so the two need not agree. " + "; ".join(
                f"{att}: pairs of seeds {seed_list(both)} (of {att}'s {seed_list(a)} and {BASELINE}'s {seed_list(b)}) "
                "for " + ", ".join(metrics) for (att, both, a, b), metrics in odd.items()), ""]


def pairing_note(s: SettingSummary) -> list[str]:
    """pairing_line for a sweep verdict: a rise's own seeds are its Rise row's."""
    rises = {(r.attention, r.task): r.seeds for r in s.rises}
    rows = row_seeds(s.rows)

    def own(att: str, metric: str) -> list[str] | None:
        task, rise, _ = metric.partition("/rise@k")
        return rises.get((att, task)) if rise else rows(att, metric)
    return pairing_line(own, [(c.attention, c.metric, c.seeds) for c in s.comparisons])


def verdict_tables(summaries: Sequence, parts: Sequence[str]) -> dict[str, list[dict]]:
    """A sweep verdict's tables as flat rows (for W&B): `rows`, one per (setting, attention, metric) with its mean,
    std, n and seeds, and each of `parts` (a list of dataclasses on every summary: comparisons, rises, findings),
    every row with its setting."""
    out: dict[str, list[dict]] = {"rows": [], **{part: [] for part in parts}}
    for s in summaries:
        for att, metrics in s.rows.items():
            out["rows"].extend({"setting": s.setting, "attention": att, "metric": m, **v} for m, v in metrics.items())
        for part in parts:
            out[part].extend({"setting": s.setting, **asdict(x)} for x in getattr(s, part))
    return out


def summarise(runs: Sequence[SweepRun]) -> list[SettingSummary]:
    out = []
    for s, differs, rs in by_setting([r for r in runs if r.result is not None]):
        summary = SettingSummary(s, differs)
        by_att: dict[str, dict[int | None, dict[str, float]]] = defaultdict(dict)
        rise_in: dict[str, dict[int | None, dict[str, float]]] = defaultdict(dict)  # and every k of text tasks
        for r in distinct(rs, summary.duplicates):
            compared = metrics_of(r.result)
            metrics = {**text_rise_metrics(r.result), **compared}  # with a text task's every k: its rise
            summary.params[r.attention] = dict(r.attention_params)
            if bad := [m for m, v in metrics.items() if not math.isfinite(v)]:  # a diverged run: nan / inf ppl (JSON
                # keeps either as null), nan acc: left out of every number, its accuracies too (an overflowed
                # perplexity beside finite near-chance accuracies was averaged and paired: found by review)
                summary.non_finite.append(f"{r.attention} seed {r.seed} ({', '.join(sorted(bad, key=metric_order))})")
                continue
            by_att[r.attention][r.seed] = dict(compared)
            rise_in[r.attention][r.seed] = metrics
        ks = rise_ks(rise_in)
        for att, seeds in sorted(by_att.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])):
            names = sorted({m for v in seeds.values() for m in v}, key=metric_order)
            summary.rows[att] = {m: seed_row(seeds, m) for m in names}
            summary.rises += rises_of(att, rise_in[att], summary.no_rise)
            if att == BASELINE or BASELINE not in by_att:
                continue
            rises, base_rises = seed_rises(rise_in[att], ks), seed_rises(rise_in[BASELINE], ks)
            for values, base, keys in ((seeds, by_att[BASELINE], names),  # then the rises: does it learn more in context?
                                       (rises, base_rises, [f"{t}/rise@k{k}" for t, k in ks.items()])):
                for m in keys:
                    if by_seed := paired(values, base, m):
                        diffs = list(by_seed.values())
                        mean, lo, hi = t_interval(diffs)
                        summary.comparisons.append(Comparison(m, att, mean, lo, hi, len(diffs),
                                                              verdict(m, lo, hi, len(diffs), diffs),
                                                              seeds=[str(sd) for sd in by_seed]))
        out.append(summary)
    return out


def _num(metric: str, x: float) -> str:
    x = unround(x)
    return f"{x:.2f}" if is_ppl(metric) else f"{100 * x:.1f}"


def unround(x: float) -> float:
    """0 for a float's rounding residue (accuracies of 0.375 and 0.425 against 0.4 differ by -3e-17 on average),
    which printed as -0.0: a sign no data gave."""
    return 0.0 if abs(x) < 1e-9 else x


def interval_end(x: float, decimals: int, sign: str = "") -> str:
    """An interval's bound to `decimals` places, or to as many more as it takes not to print a bound that is not 0
    as 0: [0.0, 2.4] beside 'better' read as an interval that reaches 0 (its low end was +0.0004), -0.0 likewise."""
    while x != 0 and math.isfinite(x) and float(f"{x:.{decimals}f}") == 0 and decimals < 12:
        decimals += 1
    return f"{x:{sign}.{decimals}f}"


def signed_pct_interval(lo: float, hi: float) -> str:
    """A 95% interval of a change in accuracy (fractions) as signed percentage points, by interval_end's rule."""
    return f"[{interval_end(100 * lo, 1, '+')}, {interval_end(100 * hi, 1, '+')}]"


def _end(metric: str, x: float) -> str:
    return interval_end(x, 2) if is_ppl(metric) else interval_end(100 * x, 1)


def sweep_markdown(summaries: Sequence[SettingSummary], failed: Sequence[str], n_runs: int) -> str:
    left = sum(len(s.duplicates) for s in summaries)
    lines = ["# momattn sweep verdict", "",
             f"{n_runs - left} run{'s' if n_runs - left != 1 else ''}"
             + (f" ({left} more left out as repeats, below)" if left else "") + "; accuracy in %, perplexity as is; mean ± std (sample) over seeds. Differences are "
             f"attention − {BASELINE}, paired by seed, with a 95% t-interval; 'better' / 'worse' only when the "
             "interval excludes 0 (lower perplexity is better). Each interval is 95% on its own: of 20 rows with no real "
             "difference, about one excludes 0 by chance, so a lone 'better' / 'worse' among many rows is a lead to "
             "test with more seeds, not a finding. The seeds vary the training (the model's initialisation and the "
             "order of the data); the data itself (a GINC world: data.seed) and the test prompts (icl.seeds) are "
             "the same in every run of a setting, so an interval says how a result moves with training, not with another world "
             "or test set.", ""]
    if failed:
        lines += ["Failed or partial jobs (left out): " + "; ".join(failed), ""]
    for s in summaries:
        title = setting_title(s.differs)
        lines += [f"## Setting {s.setting}: {title}", ""]
        if s.duplicates:
            lines += ["Left out, a second run of the same attention and seed (pass each copy's sweep on its own to "
                      "score it): " + "; ".join(s.duplicates), ""]
        if s.non_finite:
            lines += ["Runs with values that are not finite (diverged?), left out of every number below: "
                      + "; ".join(s.non_finite), ""]
        metrics = sorted({m for row in s.rows.values() for m in row}, key=metric_order)
        for kind, ppl in (("Table 6 (valid perplexity)", True), ("Table 7 (in-context accuracy)", False)):
            cols = [m for m in metrics if is_ppl(m) == ppl]
            if not cols:
                continue
            lines += [f"### {kind}", "", "| attention | seeds | " + " | ".join(cols) + " |",
                      "|---|---|" + "---|" * len(cols)]
            for att, row in s.rows.items():
                seeds = max((row[m]["n"] for m in cols if m in row), default=0)
                cells = [("–" if m not in row else _num(m, row[m]["mean"]) if row[m]["n"] < 2 else  # no std of one
                          f"{_num(m, row[m]['mean'])} ± {_num(m, row[m]['std'])}") for m in cols]
                lines.append(f"| {att} | {seeds} | " + " | ".join(cells) + " |")
            lines.append("")
        if s.rises:
            lines += ["### In-context rise (accuracy at the largest numbered k minus k = 0, per seed; k = max, which "
                      "places a different k per prompt, is not part of it)", "",
                      "| attention | task | k | rise | 95% interval | seeds | reading |", "|---|---|---|---|---|---|---|"]
            for r in s.rises:
                ci = ("n/a (one seed)" if r.n_seeds < 2 else "n/a (no spread)") if not math.isfinite(r.lo) else signed_pct_interval(r.lo, r.hi)
                rise = f"{100 * unround(r.mean):+.1f}" + (f" ± {100 * r.std:.1f}" if r.n_seeds > 1 else "")
                lines.append(f"| {r.attention} | {r.task} | 0 -> {r.k} | {rise} | {ci} | {r.n_seeds} | {r.reading} |")
            lines.append("")
        if s.no_rise:
            lines += ["No in-context rise for these (its seeds share no k > 0 to take it at; evaluate them at one list "
                      "of k): " + "; ".join(s.no_rise), ""]
        if s.comparisons:
            lines += ["### Verdict", ""]
            if any("/rise@k" in c.metric for c in s.comparisons):
                lines += ["`<task>/rise@k<K>`: the in-context rise, accuracy at k = K minus k = 0 (K: the largest k every "
                          "run scored), paired by seed like the rest: does the attention learn more in context than "
                          f"{BASELINE}?", ""]
            lines += ["| metric | attention − vanilla | 95% interval | pairs | verdict |", "|---|---|---|---|---|"]
            for c in s.comparisons:
                ci = ("n/a (one pair)" if c.n_pairs < 2 else "n/a (no spread)") if not math.isfinite(c.lo) else f"[{_end(c.metric, c.lo)}, {_end(c.metric, c.hi)}]"
                lines.append(f"| {c.metric} | {c.attention}: {_end(c.metric, unround(c.diff_mean))} | {ci} | {c.n_pairs} | "
                             f"{c.verdict} |")
            lines.append("")
            lines += pairing_note(s)
            lines += unpaired_line(s.rows, s.comparisons)
        elif BASELINE not in s.rows:
            lines += [f"No {BASELINE} run in this setting: nothing to compare against.", ""]
        elif unscored := [a for a, row in s.rows.items() if not any(row.values())]:  # (it read as no shared seed:
            lines += [f"No metric was scored for {', '.join(unscored)} in this setting (the notes below say why): "  # review)
                      "nothing is compared.", ""]
        elif len(s.rows) > 1:  # pairs are by seed: vanilla seed 1 and momentum seed 2 make no pair
            lines += [f"No seed is shared with {BASELINE}: differences are paired by seed, so nothing is compared; "
                      "train the same seeds for each attention.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _band(row: Mapping) -> float:
    """A seed row's std as a plot's band: 0 (no band) for one seed, whose std is None."""
    return row["std"] or 0.0


def _curves(row: Mapping[str, Mapping]) -> dict[str, list[tuple[int, float, float, int]]]:
    """task -> [(k, mean, std, n)] sorted by k, from metric names '<task>/acc@k<k>' (numeric k only)."""
    out: dict[str, list] = defaultdict(list)
    for m, v in row.items():
        task, _, k = m.partition("/acc@k")
        if k.isdigit():
            out[task].append((int(k), v["mean"], _band(v), v["n"]))
    return {t: sorted(c) for t, c in out.items()}


def sweep_plots(summaries: Sequence[SettingSummary], out: Path) -> list[Path]:
    """Per setting: icl_<setting>.png (accuracy vs k per task, one line per attention, band = mean ± std over
    seeds) and ppl_<setting>.png (valid perplexity by length, same bands). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    out.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        tasks = sorted({t for row in s.rows.values() for t in _curves(row)})
        if tasks:
            fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
            for ax, task in zip(axes[0], tasks):
                for att, row in s.rows.items():
                    c = _curves(row).get(task)
                    if not c:
                        continue
                    ks = np.array([x[0] for x in c], dtype=float)
                    xs = np.where(ks > 0, ks, 0.5)  # k = 0 drawn at 0.5 on the log axis
                    mean, std = (np.array([100 * x[i] for x in c]) for i in (1, 2))
                    line, = ax.plot(xs, mean, marker="o", label=f"{att} (n={max(x[3] for x in c)})")
                    ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
                ax.set_xscale("log", base=2)
                ks_all = sorted({x[0] for row in s.rows.values() for x in _curves(row).get(task, [])})
                ax.set_xticks([k if k > 0 else 0.5 for k in ks_all], [str(k) for k in ks_all])
                ax.minorticks_off()
                ax.set_xlabel("k (examples in the prompt)")
                ax.set_title(task)
                ax.grid(alpha=0.3)
            axes[0][0].set_ylabel("accuracy % (mean ± std over seeds)")
            axes[0][0].legend(fontsize=8)
            fig.tight_layout()
            path = out / f"icl_{s.setting}.png"
            save_figure(fig, path, dpi=110)
            plt.close(fig)
            written.append(path)
        lengths = sorted({int(m.split("@")[1]) for row in s.rows.values() for m in row if re.fullmatch(r"ppl@\d+", m)})
        if lengths:
            fig, ax = plt.subplots(figsize=(4.5, 3.4))
            for att, row in s.rows.items():
                pts = [(n, row[f"ppl@{n}"]) for n in lengths if f"ppl@{n}" in row]
                if pts:
                    ax.errorbar([n for n, _ in pts], [v["mean"] for _, v in pts], yerr=[_band(v) for _, v in pts],
                                marker="o", capsize=3, label=att)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("evaluation length (tokens)")
            ax.set_ylabel("valid perplexity (mean ± std)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out / f"ppl_{s.setting}.png"
            save_figure(fig, path, dpi=110)
            plt.close(fig)
            written.append(path)
        path = eta_plot(s, out / f"eta_{s.setting}.png")
        if path is not None:
            written.append(path)
    if (out / "sweep.md").is_file():  # an earlier verdict's plots (perplexity off now) read as this one's; only
        remove_stale(out, ["icl_*.png", "ppl_*.png", "eta_*.png"], {p.name for p in written})  # in its own folder
    return written


def eta_panels(s: SettingSummary) -> list[tuple[str, str]]:
    """(metric, axis label) drawn against eta: valid perplexity at the longest length, then the first task's
    accuracy at its smallest and largest k (GINC: k = 0 and k = max)."""
    metrics = {m for row in s.rows.values() for m in row}
    ppl = sorted((m for m in metrics if m.startswith("ppl@")), key=metric_order)
    curves = sorted({t for row in s.rows.values() for t in _curves(row)})
    panels = [(ppl[-1], f"valid perplexity, {ppl[-1][4:]} tokens")] if ppl else []
    if curves:
        task = "ginc" if "ginc" in curves else curves[0]
        ks = sorted({k for row in s.rows.values() for k, *_ in _curves(row).get(task, [])})
        panels += [(f"{task}/acc@k{k}", f"{task} accuracy, k = {k}") for k in dict.fromkeys([ks[0], ks[-1]])]
    return panels


def eta_plot(s: SettingSummary, path: Path) -> Path | None:
    """eta_<setting>.png when a setting holds fixed-eta momentum runs at two or more eta values: each panel
    (eta_panels) is mean ± std over seeds against eta, vanilla as a dashed band, learnable eta as a star at the
    value it started from. None when there is no eta sweep."""
    fixed = sorted((float(p["eta"]), att) for att, p in s.params.items()
                   if p.get("kind") == "momentum" and not p.get("learnable_eta") and "eta" in p)
    if len({e for e, _ in fixed}) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = eta_panels(s)
    if not panels:
        return None
    learn = [(float(p.get("eta", 0.5)), att) for att, p in s.params.items()
             if p.get("kind") == "momentum" and p.get("learnable_eta")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        scale = 1.0 if metric.startswith("ppl@") else 100.0
        pts = [(e, s.rows[att][metric]) for e, att in fixed if metric in s.rows[att]]
        ax.errorbar([e for e, _ in pts], [scale * v["mean"] for _, v in pts], yerr=[scale * _band(v) for _, v in pts],
                    marker="o", capsize=3, label="momentum, fixed eta")
        for e, att in learn:
            if metric in s.rows[att]:
                v = s.rows[att][metric]
                ax.errorbar([e], [scale * v["mean"]], yerr=[scale * _band(v)], marker="*", markersize=11,
                            capsize=3, linestyle="none", color="C2", label=f"learnable eta (from {e:g})")
        base = s.rows.get(BASELINE, {}).get(metric)
        if base is not None:
            m, sd = scale * base["mean"], scale * _band(base)
            ax.axhline(m, color="C3", linestyle="--", label=BASELINE)
            ax.axhspan(m - sd, m + sd, color="C3", alpha=0.12)
        ax.set_xlabel("eta")
        ax.set_ylabel(label + (" %" if scale != 1.0 else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def run_settings(run: SweepRun, default: EvalConfig) -> EvalConfig:
    """The evaluation settings of a run's own end-of-run evaluation (its config's eval: section), else default."""
    section = run.config.get("eval")
    if not isinstance(section, Mapping) or not section.get("icl") and not section.get("ppl"):
        return default
    return EvalConfig.from_mapping({"batch_tokens": default.batch_tokens, **section}, "eval")


def _say_replaced_verdict(out: Path, sweep_dir: Path) -> None:
    """A verdict of another sweep in the output folder is replaced by this one's: said (it was, without a word:
    found by review)."""
    try:
        doc = json.loads((out / "sweep.json").read_text())
        was, where = doc.get("sweep_dir"), doc.get("sweep_path")
    except (OSError, ValueError, AttributeError):
        return
    # (sweep_dir as typed: a relative one from another folder was another sweep's; the resolved path since session 63)
    same = where == str(sweep_dir.resolve()) if isinstance(where, str) else \
        isinstance(was, str) and Path(was).name == sweep_dir.name
    if isinstance(was, str) and not same:
        print(f"[momattn] note: {out} holds the verdict of sweep_dir={was}; this one's, of sweep_dir={sweep_dir}, "
              f"replaces its sweep.md and sweep.json, and the earlier sweep's job results under jobs/ that this one does "
              "not write stay there (to keep the two apart, give each its own hydra.run.dir)",
              file=sys.stderr, flush=True)


def run_sweep(sweep_dir: str | Path, eval_cfg: EvalConfig, out: Path, device: str,
              cache_dir: str | None = None, own_settings: bool = False,
              wandb_cfg: Mapping | None = None) -> list[SettingSummary]:
    """Evaluate (or reuse) every run of a sweep and write the verdict. own_settings: each run with the settings of
    its own end-of-run evaluation (eval_cfg where it has none), so its results.json is reused; else eval_cfg.
    wandb_cfg (logger.wandb): the verdict's tables and plots also go to one W&B run."""
    from momattn.checkpoint import model_from, read_checkpoint, weights_digest
    from momattn.errors import CheckpointError
    from momattn.eval.report import markdown_report, results_document
    from momattn.eval.runner import check_saved, evaluate_model

    sweep_dir = Path(sweep_dir).expanduser()
    runs, failed = find_runs(sweep_dir)
    _say_replaced_verdict(out, sweep_dir)
    settings: dict[str, dict] = {}
    cfgs: dict[int, EvalConfig] = {}  # each run's evaluation settings, by id(run)
    for r in list(runs):
        name = job_name(r.job, sweep_dir)
        try:
            cfg = cfgs[id(r)] = run_settings(r, eval_cfg) if own_settings else eval_cfg
        except ConfigError as e:  # an old run's eval: section (a key since renamed): that job, not the sweep
            failed.append(f"{name} (its own end-of-run eval settings cannot be used: {e}; pass the settings on "
                          "the command line, e.g. icl.tasks=[...], to evaluate every job with them)")
            runs.remove(r)
            continue
        settings[name] = asdict(cfg)
        r.result = reusable(r.job, cfg, r.step)
        if r.result is not None and (why := stale_reason(r, r.result, cfg)) is not None:
            print(f"[momattn] {name}: its own evaluation is not reused: {why}", file=sys.stderr, flush=True)
            r.result = None
        r.reused = r.result is not None
        if r.reused:
            print(f"[momattn] {name}: its own evaluation is reused ({r.job / 'eval' / 'results.json'})",
                  file=sys.stderr, flush=True)
        # scored into this folder by an evaluation a stop cut short: run again there, it goes on (every job was
        # scored again; found by review)
        elif (done := reusable(r.job, cfg, r.step, out / "jobs" / name / "results.json")) is not None and \
                stale_reason(r, done, cfg) is None:
            r.result = done
            print(f"[momattn] {name}: scored into this folder before ({out / 'jobs' / name / 'results.json'}): "
                  "reused", file=sys.stderr, flush=True)
        if r.result is None:  # every job it will score checked first: a setting job 1 cannot take failed after job 0
            try:
                check_saved(r.path, r.meta, cfg, cache_dir)
            except CheckpointError as e:  # a model config or tokenizer this momattn cannot build: that job only
                failed.append(f"{name} (unreadable checkpoint: {e})")
                runs.remove(r)
                settings.pop(name)
            except (ConfigError, DataError) as e:  # which job, where a sweep holds several kinds of run
                raise type(e)(f"sweep job {name} ({r.path}): {e}; no job was scored") from None
    def twin_key(r: SweepRun) -> tuple:  # (setting, evaluation settings, attention, seed)
        return r.setting, digest(settings[job_name(r.job, sweep_dir)]) if own_settings else "", r.attention, r.seed

    seen: dict[tuple, SweepRun] = {}
    for r in runs:  # said before any scoring: in a long sweep the line came hours in (flows review)
        if (first := seen.setdefault(twin_key(r), r)) is not r and r.result is None:
            print(f"[momattn] warning: {first.job} and {r.job}: same attention ({r.attention}) and seed ({r.seed}) in "
                  "one setting; the second is left out, not scored (unless the first cannot be)", file=sys.stderr,
                  flush=True)
    first_of: dict[tuple, SweepRun] = {}  # twin_key -> its first run scored
    twins: list[tuple[SweepRun, SweepRun]] = []  # (a second run of one attention and seed, the first): not scored
    for r in list(runs):
        name, cfg = job_name(r.job, sweep_dir), cfgs[id(r)]
        key = twin_key(r)
        if r.result is None and key in first_of:  # distinct leaves it out of the verdict: it was scored, then dropped
            twins.append((r, first_of[key]))
            runs.remove(r)
            continue
        if r.result is None:
            print(f"[momattn] evaluating {name} ({r.attention}, seed {r.seed})", file=sys.stderr, flush=True)
            try:
                ckpt = read_checkpoint(r.path, verify=True)  # its step labels the weights of this one read
                model, tokenizer = model_from(ckpt, r.path, map_location=device)
            except CheckpointError as e:  # e.g. a sharded folder whose meta.pt reads but a shard does not
                failed.append(f"{name} (unreadable checkpoint: {e})")
                runs.remove(r)
                settings.pop(name)
                continue
            if ckpt.get("global_step") != r.step:  # replaced since the job was found (a run still training?)
                print(f"[momattn] warning: {r.path} changed since it was first read (step {r.step}, now "
                      f"{ckpt.get('global_step')}): job {name} is scored at the step read now", file=sys.stderr,
                      flush=True)
                r.step = ckpt.get("global_step")
            del ckpt
            try:
                r.result = evaluate_model(model, tokenizer, r.config, cfg, out / "jobs" / name, r.attention,
                                          cache_dir=cache_dir, trained_on=r.meta.get("data_fingerprint"))
            except (ConfigError, DataError) as e:  # which job, where a sweep holds several kinds of run
                raise type(e)(f"sweep job {name} ({r.path}): {e}") from None
            r.result.checkpoint, r.result.step = str(r.path), r.step
            r.result.weights, r.result.inputs = weights_digest(model), eval_inputs(cfg)
            # the job's own tables, which the verdict's notes point to (a job scored here had none: found by
            # review), before its results.json, which marks it done
            atomic_write_text(out / "jobs" / name / "results.md", markdown_report([r.result]))
            atomic_write_text(out / "jobs" / name / "results.json",
                              json_text(results_document([r.result]), indent=2) + "\n")
            del model
        first_of.setdefault(key, r)
    if not runs:
        raise CheckpointError(f"no run of sweep_dir='{sweep_dir}' could be evaluated: {'; '.join(failed)}")
    if own_settings:  # runs evaluated under different protocols are never compared: their settings split
        keys = {id(r): digest(settings[job_name(r.job, sweep_dir)])[:8] for r in runs}
        by_setting: dict[str, set] = defaultdict(set)
        for r in runs:
            by_setting[r.setting].add(keys[id(r)])
        for r in runs:
            if len(by_setting[r.setting]) > 1:
                r.eval_key = keys[id(r)]
                r.setting = f"{r.setting}-{r.eval_key}"
    summaries = summarise(runs)
    for r, first in twins:
        next(s for s in summaries if s.setting == first.setting).duplicates.append(
            f"{r.job} ({r.attention}, seed {r.seed}: a second run of {first.job}, not scored)")
    shared = list(settings.values())
    doc = {"sweep_dir": str(sweep_dir), "sweep_path": str(sweep_dir.resolve()), "failed": failed,
           "eval_config": shared[0] if shared and all(v == shared[0] for v in shared) else settings,
           "runs": [{"checkpoint": str(r.path), "attention": r.attention, "seed": r.seed, "step": r.step,
                     "setting": r.setting, "reused_results": r.reused, "metrics": metrics_of(r.result),
                     **({"resumed_with": r.resumed} if r.resumed else {})} for r in runs]
                   + [{"checkpoint": str(r.path), "attention": r.attention, "seed": r.seed, "step": r.step,
                       "setting": first.setting, "left_out": f"a second run of {first.job}, not scored"}
                      for r, first in twins],
           "settings": [asdict(s) for s in summaries]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json", json_text(doc, indent=2, default=str) + "\n")
    plots = sweep_plots(summaries, out)
    md = sweep_markdown(summaries, failed, len(runs) + len(twins)) + step_note(runs, sweep_dir) + unfit_note(runs) + \
        reuse_note(runs, sweep_dir)
    if plots:
        md += "\nPlots: " + ", ".join(f"[{p.name}]({p.name})" for p in plots) + "\n"
    atomic_write_text(out / "sweep.md", md)
    print(md)
    print(f"sweep verdict written to {out}/ (sweep.md, sweep.json" + "".join(f", {p.name}" for p in plots) + ")")
    if wandb_cfg is not None:
        from momattn.wandb_runs import folder_group, log_verdict

        # in the sweep's W&B group, beside the runs it judges (it was evaluate.py's own folder's: found by review)
        wandb_cfg = {**wandb_cfg, "group": wandb_cfg.get("group") or folder_group(sweep_dir.resolve())}
        log_verdict(out, wandb_cfg, "the sweep's verdict", verdict_tables(summaries, ("comparisons", "rises")), plots,
                    job_type="sweep-verdict", name=f"verdict-{sweep_dir.name}",
                    config={"sweep_dir": str(sweep_dir), "eval": doc["eval_config"], "failed": failed})
    return summaries
