"""The jobs a multirun will launch, known before Hydra starts, so that a sweep's mistakes are refused before any
job runs or any job folder is written: a key that only some options of a swept group have, and a resume
(ckpt_path=last) whose value lists differ from the ones that made the job folders."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass
class Sweep:
    jobs: list[list[str]]  # each job's task overrides ("key=value"), in Hydra's job order (job N is jobs[N])
    sweep_dir: str | None  # hydra.sweep.dir where the command line gives it
    subdir: str  # hydra.sweep.subdir as composed (unresolved): '${hydra.job.num}' puts job N in <sweep_dir>/N


def plan_sweep(config_name: str, overrides: list[str]) -> Sweep | None:
    """The jobs of a multirun run by Hydra's basic sweeper: its params (an experiment's hydra.sweeper.params)
    then the command line's task overrides, crossed as BasicSweeper crosses them. None for another sweeper (Optuna
    picks its trials as it goes) or where Hydra cannot compose the config (Hydra reports that itself)."""
    from omegaconf import OmegaConf

    from momattn.cli import _last, hydra_section

    parsed, cfg = hydra_section(config_name, overrides)  # not parsed: check_overrides reports it
    if cfg is None or OmegaConf.select(cfg, "hydra.sweeper._target_") != BASIC:
        return None
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    check_basic_sweeps(sweeper_params(cfg), task)
    jobs = cross_jobs(sweeper_params(cfg), task)
    if jobs is None:
        return None
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
    return Sweep(jobs, _last(overrides, "hydra.sweep.dir"), str(subdir))


def sweeper_params(cfg) -> dict:
    """hydra.sweeper.params of a config composed with its hydra section ({} where unset), values unresolved."""
    from omegaconf import OmegaConf

    given = OmegaConf.select(cfg, "hydra.sweeper.params")
    return OmegaConf.to_container(given, resolve=False) if given else {}


def check_basic_sweeps(params: dict, task: list[str]) -> None:
    """Refuse a sweep kind Hydra's basic sweeper cannot expand, interval(), by name: Hydra raised it from inside
    the sweeper, a traceback of its frames (train.py -m optim.lr='interval(1e-4,1e-3)')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    from momattn.cli import _groups
    from momattn.errors import ConfigError, first_line

    given = [f"{k}={v}" for k, v in params.items()] + list(task)
    parser = OverridesParser.create(config_loader=_GroupOptions())
    for line in given:
        try:
            o = parser.parse_override(line)
        except Exception:  # what does not parse is named by check_overrides
            continue
        where = "" if line in task else " (hydra.sweeper.params)"
        if o.is_sweep_override() and o.is_discrete_sweep() and o.key_or_group not in _groups():  # range(1,3,0): Hydra's ValueError traceback; an empty
            # range(3,1): "Launching 0 jobs", exit 0, then "sweep done" (both found by review)
            if o.value_type == ValueType.GLOB_CHOICE_SWEEP:  # (Hydra: "ConfigLoader is not set")
                raise ConfigError(f"{line}{where}: glob() chooses among the options of a config group, and "
                                  f"{o.key_or_group} is none; give its values as a list: {line.split('=', 1)[0]}=1,2,3")
            try:
                values = list(o.sweep_string_iterator())
            except Exception as e:
                raise ConfigError(f"{line}{where}: {first_line(e)}") from None
            if not values:  # (a group's glob that matches none: check_overrides names the options)
                raise ConfigError(f"{line}{where} gives no values, so the sweep would have no jobs")
        if o.value_type == ValueType.INTERVAL_SWEEP:
            raise ConfigError(f"{line}{where}: interval() is a range of floats that an Optuna search samples "
                              "(hparams_search=optuna); Hydra's basic sweeper runs a list of values: give "
                              f"{o.get_key_element()}=1e-4,3e-4,1e-3 or choice(...), or "
                              f"{o.get_key_element()}='range(start,stop,step)'")


def cross_jobs(params: dict, task: list[str]) -> list[list[str]] | None:
    """Each job's task overrides, in Hydra's job order: the sweeper's params, then the task overrides, crossed as
    BasicSweeper crosses them. None for a sweep kind the basic sweeper refuses (range over floats, ...: Hydra says
    which)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create(config_loader=_GroupOptions()).parse_overrides(
            [f"{k}={v}" for k, v in params.items()] + list(task)), None)
    except Exception:
        return None
    return [list(job) for batch in batches for job in batch]


class _GroupOptions:
    """What Hydra's config loader tells a glob(...) sweep, attention=glob(m*): the options of a config group under
    conf/. Without it, a glob sweep was not planned: its keys were checked against the group's default alone and a
    failed job's sweep ended without the comparison of the others."""

    def get_group_options(self, group: str, results_filter=None) -> list[str]:
        from momattn.cli import _groups

        return _groups().get(group, [])


def group_choices(jobs: list[list[str]], groups: dict[str, list[str]]) -> list[list[str]]:
    """The distinct combinations of config-group options among the jobs ('attention=vanilla', ...), in job order."""
    seen: dict[tuple[str, ...], None] = {}
    for job in jobs:
        seen.setdefault(tuple(o for o in job if o.split("=", 1)[0] in groups), None)
    return [list(c) for c in seen]


def check_resume(sweep: Sweep, cwd: Path | None = None) -> None:
    """A sweep resumed with ckpt_path=last: job N resumes <sweep>/N. Refused here, before Hydra rewrites each job's
    .hydra/ files, where a job's folder holds a run trained with other values (the value lists, or their order,
    changed): every such job named at once. The job's own check in training.py stays, for other launchers."""
    from momattn.cli import _checkpoint_overrides, changed_overrides
    from momattn.errors import ConfigError

    if not sweep.sweep_dir or sweep.subdir != "${hydra.job.num}":
        return
    root = (cwd or Path.cwd()) / sweep.sweep_dir
    clashes, first = [], ""
    for num, job in enumerate(sweep.jobs):
        ckpt = root / str(num) / "checkpoints" / "last.ckpt"
        saved = _checkpoint_overrides(str(ckpt)) if ckpt.exists() else []  # (FSDP's is a folder)
        if saved and (changed := changed_overrides(saved, job)):
            clashes.append(f"job {num} would resume {ckpt}, trained with {'; '.join(changed)}")
            first = first or (f"job {num}'s were: "
                              f"{' '.join(o for o in saved if not o.startswith(('hydra.', 'ckpt_path=')))}")
    if clashes:
        more = f" (and {len(clashes) - 3} more job{'s' * (len(clashes) > 4)})" if len(clashes) > 3 else ""
        original = _original_command(root, sweep.sweep_dir)
        raise ConfigError(
            f"{'; '.join(clashes[:3])}{more}: the sweep's value lists (or their order) differ from the ones that made "
            "its job folders; nothing was started or rewritten. Resume with the sweep's original overrides plus "
            "ckpt_path=last (trainer.max_steps, logger and eval settings may change)"
            + (f": {original}" if original else f"; {first}"))


def _original_command(root: Path, sweep_dir: str) -> str:
    """The command line that made the sweep, from Hydra's <sweep_dir>/multirun.yaml (written at the sweep's start,
    so the last sweep into the folder), as a resume: 'python <script> -m <its overrides> ckpt_path=last
    hydra.sweep.dir=<dir>'; '' where the file is missing or unreadable."""
    from omegaconf import OmegaConf

    from momattn.quoting import shell_quote

    try:
        cfg = OmegaConf.load(root / "multirun.yaml")
        task = [str(o) for o in OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []]
        script = Path(str(OmegaConf.select(cfg, "hydra.job.name", default="train"))).name
        # a DDP sweep's other ranks, which Lightning starts as jobs named so, rewrite the file in the same folder
        script = "train" if re.fullmatch(r"train_ddp_process_\d+", script) else script
    except Exception:  # a missing or damaged file: the job's own overrides are named instead
        return ""
    keep = [o for o in task if not o.startswith(("ckpt_path=", "hydra.sweep.dir="))]
    return " ".join(["python", f"{shell_quote(script)}.py", "-m", *map(shell_quote, keep), "ckpt_path=last",
                     shell_quote(f"hydra.sweep.dir={sweep_dir}")])


# jobs run on this machine: its checks hold for them (submitit's LocalLauncher: local processes too)
SEARCH_KEYS_ENV = "MOMATTN_SEARCH_KEYS"  # the keys an Optuna search varies (JSON), for its trials' W&B names
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "submitit_launcher.LocalLauncher")


def check_entry_jobs(config_name: str, sweep: Sweep, overrides: list[str]) -> None:
    """evaluate.py -m / analyze.py -m: every job's settings checked as one run checks them at its start, before
    the first job starts (icl.max_examples=5,0 failed job 1 after job 0's whole evaluation: found by review)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from momattn.cli import hydra_section

    parsed, cfg = hydra_section(config_name, overrides)
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="")) if cfg is not None else ""
    hydra_args = [o.input_line for o in parsed if o.is_hydra_override() and not o.is_sweep_override()]
    checked: set[tuple[str, ...]] = set()
    previous = HydraConfig.instance().cfg  # put back after: the settings' interpolations read the hydra node
    try:
        for num, job in enumerate(sweep.jobs):
            if tuple(job) in checked:
                continue
            checked.add(tuple(job))
            if (composed := _job_config(config_name, job, num, hydra_args, launcher)) is None:
                continue  # (Hydra says why it cannot compose a job when it runs it)
            _check_entry_job(config_name, OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"]),
                             f"job {num} of the sweep ({' '.join(job)})")
    finally:
        HydraConfig.instance().cfg = previous


def _job_config(config_name: str, job: list[str], num: int, hydra_args: list[str], launcher: str):
    """Job `num` of a sweep composed as Hydra's launcher and run_job set it up (its number, id and folder), and
    made the current Hydra config (the settings' interpolations read it); None where Hydra cannot compose it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from momattn.cli import _compose

    composed = _compose(config_name, [*job, *hydra_args], return_hydra_config=True)
    if composed is None:
        return None
    with open_dict(composed):
        composed.hydra.job.num = num
        composed.hydra.job.id = num if launcher.endswith("BasicLauncher") else f"{composed.hydra.job.name}_{num}"
    HydraConfig().set_config(composed)  # the folder's interpolations may read the hydra node
    sweep_dir = str(OmegaConf.to_container(composed.hydra.sweep, resolve=False).get("dir"))
    if "${now:" in sweep_dir:  # Hydra resolves the sweep's folder once: jobs composed a second apart here
        with read_write(composed.hydra), open_dict(composed.hydra):  # got two (and a shared one went unseen)
            composed.hydra.sweep.dir = re.sub(r"\$\{now:[^}]*\}", "<now>", sweep_dir)
    folder = os.path.join(str(OmegaConf.select(composed, "hydra.sweep.dir")),
                          str(OmegaConf.select(composed, "hydra.sweep.subdir")))
    with read_write(composed.hydra), open_dict(composed.hydra):
        composed.hydra.runtime.output_dir = os.path.abspath(folder)
        composed.hydra.runtime.cwd = os.getcwd()
    HydraConfig().set_config(composed)
    return composed


def _check_entry_job(config_name: str, cfg, job: str) -> None:
    from momattn.errors import ConfigError, UserError

    try:
        if config_name == "evaluate":
            from momattn.eval.config import EvaluateConfig
            from momattn.eval.tasks import resolve_tasks

            conf = EvaluateConfig.from_mapping(cfg)
            if conf.icl.enabled:
                resolve_tasks(conf.icl.tasks)
        else:
            from momattn.analysis.config import AnalyzeConfig
            from momattn.analysis.runner import analysis_task
            from momattn.eval.config import build

            analysis_task(build(AnalyzeConfig, cfg))
    except UserError as e:
        raise ConfigError(f"{job}: {e}; no job was started") from None


def check_jobs(sweep: Sweep, overrides: list[str], search: bool = False) -> None:
    """Every job of a train.py sweep run here, composed and checked as train.py checks one run (load_train_config)
    before the first starts: a value that one job takes (optim.lr=1e-3,-1) failed only when that job started,
    after the jobs before it had trained. Jobs a cluster launcher (submitit) runs elsewhere are left to their
    nodes: a GPU job is refused on a login node without one. search: the jobs are an Optuna search's trial
    patterns (search_trials), named so."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import env_override
    from omegaconf import OmegaConf, open_dict

    from momattn.cli import _last, hydra_section
    from momattn.config import load_train_config, world_size
    from momattn.errors import ConfigError, UserError
    from momattn.training import check_lightning_values

    parsed, cfg = hydra_section("train", overrides)
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="")) if cfg is not None else ""
    check_launcher_settings(cfg)
    hydra_args = [o.input_line for o in parsed if o.is_hydra_override() and not o.is_sweep_override()]
    if launcher.endswith("SlurmLauncher"):
        _check_slurm_tasks(sweep, hydra_args, launcher)
    if not launcher.endswith(LOCAL_LAUNCHERS):
        return
    checked: set[tuple[str, ...]] = set()
    lightning: set[str] = set()  # the trainer and callbacks settings Lightning has checked
    folders: dict[Path, int] = {}  # each job's run folder: paths.output_dir=X gave them all one
    local: dict[int, list[int]] = {}  # processes per node: the jobs with each count
    run_ids: dict[str, int] = {}  # a W&B run id the config gives (logger.wandb.id), and the first job with it
    runs: dict[str, int] = {}  # each job's settings (its folder left out), and the first job with them
    previous = HydraConfig.instance().cfg  # put back after: Hydra's run_job sets each job's own
    try:
        for num, job in enumerate(sweep.jobs):
            if tuple(job) in checked and search:
                continue
            checked.add(tuple(job))
            if (composed := _job_config("train", job, num, hydra_args, launcher)) is None:
                continue  # Hydra says why when it composes the job itself
            try:
                with env_override(dict(composed.hydra.job.env_set or {})), \
                        contextlib.redirect_stderr(io.StringIO()):  # its notes: said by each job as it runs (they
                    c = load_train_config(composed)  # came twice per job, the first naming none: diff review)
                    # Lightning's checks of its values too (save_top_k=-5 or accelerator=foo in job 1 was refused
                    # after job 0 had trained: found by review), once per distinct trainer and callbacks
                    if (key := json.dumps([c.trainer, c.callbacks], sort_keys=True, default=str)) not in lightning:
                        lightning.add(key)
                        check_lightning_values(c, composed.hydra.runtime.output_dir)
            except UserError as e:
                raise ConfigError(f"a trial of the search ({' '.join(job)}): {e}; no trial was started" if search else
                                  f"job {num} of the sweep ({' '.join(job)}): {e}; no job was started") from None
            if not search and (first := runs.setdefault(_settings_key(c, composed), num)) != num:
                # seed=1,2,2 trained seed 2 twice, and evaluate.py then left the copy out (found by review)
                raise ConfigError(f"jobs {first} and {num} of the sweep are the same run ({' '.join(sweep.jobs[first])} "
                                  f"/ {' '.join(job)}): a value given twice in a list, or spelt two ways (1e-3 and "
                                  "0.001), would train one model twice; drop the repeat. No job was started")
            # Hydra gives every job the sweep's resolved `now`: the same time in each job's folder name
            written = str(OmegaConf.to_container(composed.paths, resolve=False).get("output_dir"))
            if "${now:" in written:
                with open_dict(composed):
                    composed.paths.output_dir = re.sub(r"\$\{now:[^}]*\}", "<now>", written)
            for key, lg in (c.logger or {}).items():  # one id for every job: their histories collided in one run
                rid = lg.get("id") if isinstance(lg, Mapping) and "wandb" in str(lg.get("_target_", "")).lower() else None
                if rid is not None and (first := run_ids.setdefault(str(rid), num)) != num:
                    who = "the search's trials" if search else f"jobs {first} and {num} of the sweep"
                    raise ConfigError(f"logger.{key}.id={rid!r}: {who} would log into this one W&B run, whose histories would collide; drop it (each job starts its "
                                      "own run, and a resume continues it), or make it differ by job, e.g. "
                                      "logger.wandb.id=run-${seed}")
            local.setdefault(world_size(c.trainer) // (c.trainer.get("num_nodes", 1) or 1), []).append(num)
            folder = Path(str(OmegaConf.select(composed, "paths.output_dir"))).expanduser().resolve()
            if (other := folders.setdefault(folder, num)) != num and "hydra:runtime.output_dir" in written:
                subdir = OmegaConf.to_container(composed.hydra.sweep, resolve=False).get("subdir")
                jobs = "trials" if search else "jobs"
                why = ("; ckpt_path is left out of ${hydra.job.override_dirname} (conf/train.yaml's hydra.job.config."
                       "override_dirname.exclude_keys, so that a resume keeps the folders): sweep checkpoints with "
                       "hydra.sweep.subdir=${hydra.job.num}"
                       if "override_dirname" in str(subdir) and _last(job, "ckpt_path") != _last(sweep.jobs[other],
                                                                                                "ckpt_path") else "")
                raise ConfigError(f"hydra.sweep.subdir={subdir}: {jobs} {other} and {num} of the "
                                  f"{'search' if search else 'sweep'} would write into one folder, {folder}; leave "
                                  "hydra.sweep.subdir at its default, ${hydra.job.num}, or give it the job's number"
                                  + why)
            if other != num:  # job 1 found job 0's run there, blamed the sweep
                raise ConfigError(f"paths.output_dir={c.paths.output_dir}: {'trials' if search else 'jobs'} {other} "
                                  f"and {num} of the {'search' if search else 'sweep'} would "
                                  "write into this one folder (the second refused, after the first had trained); leave "
                                  "paths.output_dir at its default, ${hydra:runtime.output_dir}, which is each job's "
                                  "own folder under hydra.sweep.dir")
    finally:
        HydraConfig.instance().cfg = previous
    if not search:
        check_resumed_folders(sweep, overrides, folders)
    if max(local, default=1) > 1 and not launcher.endswith("BasicLauncher"):
        # Lightning starts a job's other processes by running its command line again, which a joblib or local
        # submitit worker does not have: a TerminatedWorkerError or an UncompletedJobError traceback (found by review)
        jobs = ", ".join(map(str, sorted(n for c, js in local.items() if c > 1 for n in js)[:5]))
        who = "the search's trials" if search else f"job(s) {jobs} of the sweep"
        raise ConfigError(f"{who} train on {max(local)} processes (trainer.devices) under "
                          f"{launcher.rsplit('.', 1)[-1]}, whose workers cannot start a job's other processes "
                          "(Lightning runs the command line again); sweep them with the basic launcher (drop "
                          "hydra/launcher), or on SLURM with hydra/launcher=submitit_slurm and "
                          "hydra.launcher.tasks_per_node=<devices>")
    if len(local) > 1 and max(local) > 1 and launcher.endswith("BasicLauncher"):
        counts = "; ".join(f"{n} in job(s) {', '.join(map(str, jobs[:5]))}" for n, jobs in sorted(local.items()))
        if search:
            raise ConfigError("the search's trials would train on different numbers of processes per node: Lightning "
                              "starts a trial's other processes once, and they run the later trials alongside rank 0; "
                              "give every trial one trainer.devices (search it in searches of its own)")
        raise ConfigError(f"the sweep's jobs train on different numbers of processes per node ({counts}): Lightning "
                          "starts a job's other processes once, with the sweep's command line, and they run the later "
                          "jobs alongside rank 0 (a job on another count crashed them); give the jobs of one sweep one "
                          "trainer.devices, and sweep each count in a sweep of its own (hydra.sweep.dir=<parent>/<name>), "
                          "then compare them all: python evaluate.py sweep_dir=<parent>")


def _settings_key(c, composed) -> str:
    """A job's resolved settings with its own folder left out: equal for two jobs that would train one model."""
    from omegaconf import OmegaConf

    env = OmegaConf.to_container(composed.hydra.job.env_set, resolve=True) if composed.hydra.job.env_set else {}
    # the seed as trained (seed=1,01: the text '01' is seed 1: flows review)
    text = json.dumps([{**c.resolved, "seed": c.seed}, env], sort_keys=True, default=str)
    for folder in {str(OmegaConf.select(composed, "paths.output_dir")), str(composed.hydra.runtime.output_dir)}:
        text = text.replace(json.dumps(folder)[1:-1], "<run>")
    return text


def _check_slurm_tasks(sweep: Sweep, hydra_args: list[str], launcher: str) -> None:
    """Each job's processes per node (trainer.devices, where a number) against the SLURM tasks per node it is
    submitted with (hydra.launcher.tasks_per_node), and its nodes against hydra.launcher.nodes: Lightning runs one
    process per task, and a mismatch failed on the node, after the queue's wait, as a traceback (found by review).
    The jobs' other values are judged on their nodes, whose hardware this machine may not have."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from momattn.errors import ConfigError

    previous = HydraConfig.instance().cfg
    seen: set[tuple[str, ...]] = set()  # the jobs' settings that can change either count: composed once each (a
    # thousand jobs took minutes on the login node: diff review)
    try:
        for num, job in enumerate(sweep.jobs):
            key = tuple(o for o in job if o.lstrip("+~").startswith(("trainer", "hydra", "experiment", "recipe",
                                                                      "debug")))
            if key in seen:
                continue
            seen.add(key)
            if (composed := _job_config("train", job, num, hydra_args, launcher)) is None:
                continue
            for ours, theirs, default in (("trainer.devices", "hydra.launcher.tasks_per_node", 1),
                                          ("trainer.num_nodes", "hydra.launcher.nodes", 1)):
                want = OmegaConf.select(composed, ours, default=1)
                if OmegaConf.is_list(want):  # device ids: one process each
                    want = len(want)
                have = OmegaConf.select(composed, theirs, default=default)
                # (-1 and auto are every GPU of the node, known there only: diff review)
                if isinstance(want, int) and not isinstance(want, bool) and want > 0 and isinstance(have, int) \
                        and want != have:
                    raise ConfigError(f"job {num} of the sweep ({' '.join(job)}): {ours}={want} but {theirs}={have}: "
                                      f"on SLURM Lightning runs one process per task, and refuses the job on its node "
                                      f"when the two differ; set {theirs}={want}; no job was submitted")
    finally:
        HydraConfig.instance().cfg = previous


def check_resumed_folders(sweep: Sweep, overrides: list[str], folders: dict[Path, int]) -> None:
    """A sweep resumed with ckpt_path=last under a subdir of its own (e.g. ${hydra.job.override_dirname}), whose
    jobs' folders (`folders`, check_jobs') are none of the trained ones the sweep folder holds: the folder names
    took the command line's settings, which differ from the sweep's, and every job retrained from step 0 in new
    folders beside the old (found by review). ConfigError; jobs under the default subdir are check_resume's."""
    from momattn.cli import _last, run_held
    from momattn.errors import ConfigError

    if (_last(overrides, "ckpt_path") != "last" or not sweep.sweep_dir or "${" in sweep.sweep_dir or not folders
            or sweep.subdir == "${hydra.job.num}" or any(f.exists() for f in folders)):
        return
    root = Path(sweep.sweep_dir).expanduser().resolve()
    held = sorted({d for p in root.rglob(".hydra") if run_held(d := p.parent)}) if root.is_dir() else []
    if not held:
        return
    excluded = _last(overrides, "hydra.job.config.override_dirname.exclude_keys")  # (given: not advised again)
    if any("ckpt_path=" in d.name for d in held) and excluded is None:  # named before ckpt_path was left out
        how = ("its folders were named with ckpt_path in them (before momattn left it out): resume with the same "
               "command plus hydra.job.config.override_dirname.exclude_keys=[]")
    else:
        original = _original_command(root, sweep.sweep_dir)
        how = ("resume with the sweep's original overrides plus ckpt_path=last" + (f": {original}" if original else "")
               + "; new values go into a sweep folder of their own (hydra.sweep.dir=...)")
    raise ConfigError(f"hydra.sweep.subdir={sweep.subdir}: none of the resumed jobs' folders (e.g. {min(folders)}) "
                      f"is one of the {len(held)} trained job folder(s) {root} holds (e.g. {held[0]}): the folder "
                      "names take the command line's settings, which differ from the sweep's, and every job would "
                      f"retrain from step 0 in a new folder; nothing was started. {how[0].upper()}{how[1:]}")


def check_search(config_name: str, overrides: list[str]) -> None:
    """A search (an Optuna sweeper): every key of its space (hydra.sweeper.params, in an hparams_search file) must
    be one the config has, and an option searched for a config group one of the group's: Hydra's multi-line
    'Could not override' came at the first trial. And ckpt_path=last cannot resume it: job N would resume folder
    N, but this search's trial N is a new suggestion of the sampler, not the one trained there, so every job
    failed on the clash."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from momattn.cli import MAX_COMBOS, _check_key, _compose, _groups, _last, hydra_section
    from momattn.errors import ConfigError, did_you_mean

    check_sweep_extra(overrides)
    check_sweeper_keys(config_name, overrides)
    parsed, cfg = hydra_section(config_name, overrides)
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")) if cfg is not None else ""
    check_launcher_settings(cfg)
    if "optuna" not in target.lower():
        return
    if _last(overrides, "ckpt_path") == "last":
        raise ConfigError(
            "ckpt_path=last cannot resume a search: its trials are new suggestions of the sampler, not the ones its "
            "job folders were trained with. To go on with a study, keep it in a database (hydra.sweeper.storage="
            "sqlite:///study.db) and run the search again into a new folder: the study keeps its finished trials and "
            "the sampler learns from them. A trial cut short can be finished as a single run: python train.py "
            "ckpt_path=<sweep folder>/<N>/checkpoints/last.ckpt")
    check_optuna_settings(cfg.hydra.sweeper, _last(overrides, "optimized_metric") or cfg.get("optimized_metric"))
    params = sweeper_params(cfg)
    groups = _groups()
    searched: dict[str, list[str]] = {}  # the config-group options a trial may take: the space's and the command line's
    for o in parsed:
        if o.key_or_group in groups and not o.is_hydra_override() and not o.is_add() and not o.is_delete():
            try:
                searched[o.key_or_group] = (list(o.sweep_string_iterator()) if o.is_sweep_override()
                                            else [o.get_value_element_as_str()])
            except Exception:  # glob(...), interval(...): Hydra or the sweeper judge those
                continue
    keys = []
    for key, space in params.items():
        if key in groups:
            try:
                options = list(OverridesParser.create().parse_override(f"{key}={space}").sweep_string_iterator())
            except Exception:  # interval(...) or a tag: the sweeper says what it accepts
                continue
            for option in options:
                if option not in groups[key]:
                    raise ConfigError(f"hydra.sweeper.params: {key}: {space} searches {key}={option}, which is not an "
                                      f"option of the config group '{key}'.{did_you_mean(option, groups[key])} "
                                      f"Options: {', '.join(groups[key])}")
            searched[key] = options
        elif not key.startswith("+"):  # +key adds a key and ++key sets it either way: the sweeper passes them on
            keys.append(key)
    # a key holds where some trial's group options have it (attention.eta with attention: choice(momentum, vanilla))
    combos = [list(c) for c in itertools.islice(itertools.product(
        *([f"{g}={v}" for v in options] for g, options in searched.items())), MAX_COMBOS)]
    pairs = [(combo, _compose(config_name, combo)) for combo in combos]
    configs = [c for _, c in pairs if c is not None]
    for key in keys:
        refused = []
        for task in configs:
            try:
                _check_key(task, key, hint="a search space names keys the config has: correct it in the "
                                           "hparams_search file")
                break
            except ConfigError as e:
                refused.append(e)
        else:
            if refused:
                raise ConfigError(f"hydra.sweeper.params: {refused[0]}") from None
    if config_name == "train":
        subdir = str(OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir"))
        grid = "GridSampler" in str(OmegaConf.select(cfg, "hydra.sweeper.sampler._target_", default=""))
        trials = search_trials(params, [o for o in parsed if not o.is_hydra_override()], set(groups), pairs, grid)
        try:
            check_jobs(Sweep(trials, _last(overrides, "hydra.sweep.dir"), subdir), overrides, search=True)
        except ConfigError as e:  # Hydra's interval() is float at both ends, and so is the trial's value
            if "could not be converted to Integer" in str(e) and "interval(" in " ".join(
                    [*map(str, params.values()), *(o.input_line for o in parsed)]):
                raise ConfigError(f"{e} (an Optuna search samples interval(...) as floats: for an int key give "
                                  "range(a,b) or choice(...))") from None
            raise


def search_trials(params: dict, task: list, groups: set[str], pairs: list[tuple[list[str], object]],
                  grid: bool = False) -> list[list[str]]:
    """Trial patterns that check_jobs checks before a search starts (a value some trials take, optim.schedule=
    choice(cosine,cosinee), or an interval's end that an int key refuses, failed trial after trial, each
    recorded in a stored study): under each combination of the searched group options (pairs: each with its
    composed config, None where Hydra cannot compose it), every value a choice or range lists and both ends of each
    interval, one key at a time, the others at their first. A key some combination lacks, a glob, which Optuna
    cannot sample, and a searched seed are refused. grid: the grid sampler's search, whose range(a,b) leaves b
    out as Hydra's does (the other samplers' int distribution includes it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob, IntervalSweep, RangeSweep

    from momattn.cli import _check_key
    from momattn.errors import ConfigError

    values: dict[str, list[str]] = {}  # key -> the values to try, in order; the command line's after the space's
    for o in [OverridesParser.create().parse_override(f"{k}={v}") for k, v in params.items()] + list(task):
        key = o.get_key_element()
        if not o.is_sweep_override():
            values[key] = [o.get_value_element_as_str()]
            continue
        if isinstance(o.value(), Glob):
            raise ConfigError(f"{o.input_line}: an Optuna search cannot sample glob(...), the basic sweeper's; list "
                              f"the options, e.g. {key}=choice(momentum,multirate_ema)")
        if o.key_or_group == "seed":  # experiment=eta_sweep's seed: 1,2 under hparams_search=optuna
            raise ConfigError(f"{o.input_line}: this search would tune the seed, and call the luckiest one its best "
                              "hyperparameter; fix it (seed=1) and search again per seed for a spread, or leave out "
                              "the experiment whose sweep lists seeds (e.g. experiment=eta_sweep)")
        v = o.value()
        got = [repr(v.start), repr(v.end)] if isinstance(v, IntervalSweep) else list(o.sweep_string_iterator())
        got = got if len(got) <= 8 else [got[0], got[-1]]
        if isinstance(v, RangeSweep) and not v.shuffle and all(isinstance(x, int) for x in (v.start, v.stop, v.step)) \
                and v.step and (v.stop - v.start) % v.step == 0 and not grid:
            # hydra-optuna-sweeper's range includes its end, which Hydra's list leaves out; the grid's does not, and
            # a grid search was refused for a value it never samples (found by review)
            got.append(str(v.stop))
        values[key] = got
    swept = {k for k, v in values.items() if k.lstrip("+") in groups and len(v) > 1}
    firsts: list[list[str]] = []  # each combination's first pattern before any one's variants: the cap keeps them
    variants: list[list[str]] = []
    for combo, config in pairs or [([], None)]:
        chosen = {c.split("=", 1)[0] for c in combo}
        here = {}
        for key, vals in values.items():
            name = key.lstrip("+")
            if key in chosen or name in groups:
                continue
            if config is not None and not key.startswith("+"):
                try:
                    _check_key(config, name, hint="")
                except ConfigError as e:  # Optuna gives every trial every key: this option's would all fail
                    which = " ".join(c for c in combo if c.split("=", 1)[0] in swept)
                    raise ConfigError(f"the search's trials with {which}: {e} Optuna gives every trial each key "
                                      "of the search, so they would all fail: search those options apart (a search "
                                      "each), or leave the key out (hparams_search=optuna searches attention.eta for "
                                      "momentum and attention.n_rates for multirate_ema by itself)") from None
            here[key] = vals
        fixed_groups = [f"{k}={v[0]}" for k, v in values.items() if k.lstrip("+") in groups and k not in chosen]
        firsts.append([*combo, *fixed_groups, *(f"{k}={v[0]}" for k, v in here.items())])
        for key, vals in here.items():
            variants += [[*combo, *fixed_groups, *(f"{k}={x if k == key else v[0]}" for k, v in here.items())]
                         for x in vals[1:]]
    return (firsts + variants)[:MAX_TRIAL_CHECKS]


MAX_TRIAL_CHECKS = 48  # a search's trial patterns composed and checked before it starts


def check_launcher_settings(cfg) -> None:
    """The joblib launcher's n_jobs, which joblib refused with a traceback once the sweep had started; the SLURM
    launcher on a machine without SLURM (submitit's 'Could not detect "srun"' came as a traceback)."""
    import shutil

    from omegaconf import OmegaConf

    from momattn.errors import ConfigError

    target = "" if cfg is None else str(OmegaConf.select(cfg, "hydra.launcher._target_", default=""))
    if target.endswith("submitit_launcher.SlurmLauncher") and shutil.which("srun") is None:  # submitit's own test
        raise ConfigError("hydra/launcher=submitit_slurm submits the jobs to SLURM, and this machine has no srun on "
                          "its PATH (not a SLURM login node): run the command where SLURM is, or sweep on this "
                          "machine with the basic launcher (drop hydra/launcher) or hydra/launcher=submitit_local")
    if not target.endswith("JoblibLauncher"):
        return
    n_jobs = OmegaConf.select(cfg, "hydra.launcher.n_jobs", default=None)
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0):
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs} must be an int other than 0: the jobs run at a time "
                          "(-1: one per CPU core)")


def optuna_sweeper_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None


def check_sweep_extra(overrides: list[str]) -> None:
    """An hparams_search file that picks Optuna's sweeper, without the [sweep] extra: Hydra said only that it could
    not find 'hydra/sweeper/optuna' among the options 'basic' (the plugin registers that config)."""
    from omegaconf import OmegaConf

    from momattn.cli import CONF_DIR, _last
    from momattn.errors import ConfigError

    name = _last(overrides, "hparams_search")
    path = CONF_DIR / "hparams_search" / f"{name}.yaml"
    if not name or not path.is_file() or optuna_sweeper_installed():
        return
    defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults") or []
    if any(isinstance(d, dict) and d.get("override /hydra/sweeper") == "optuna" for d in defaults):
        raise ConfigError(f"hparams_search={name} needs the [sweep] extra (hydra-optuna-sweeper is missing): pip "
                          "install 'momattn[sweep]' (or bash scripts/setup.sh sweep)")


def check_sweeper_keys(config_name: str, overrides: list[str]) -> None:
    """A misspelt sweeper setting (hydra.sweeper.n_trial=3): Hydra's multi-line 'Could not override', without the
    nearest name. Checked against the sweeper's section composed without the command line's hydra.sweeper keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from momattn.cli import _check_key, hydra_section

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # check_overrides names a syntax error
        return
    from momattn.errors import ConfigError

    for o in parsed:  # Hydra's two lines ("Sweeping over Hydra's configuration is not supported"), exit 1, 15 s in
        if o.key_or_group.startswith("hydra.sweeper.params.") and o.is_sweep_override():
            key, value = o.key_or_group.removeprefix("hydra.sweeper.params."), o.input_line.split("=", 1)[1]
            raise ConfigError(f"{o.input_line}: a search space of the command line is given by its own key, "
                              f"'{key}={value}' (Hydra refuses a sweep inside its own hydra.* section)")
    setting = [o for o in parsed if o.key_or_group.startswith("hydra.sweeper.") and not o.is_add()
               and not o.is_force_add() and not o.key_or_group.startswith("hydra.sweeper.params.")]
    if not setting:
        return
    cfg = hydra_section(config_name, [o.input_line for o in parsed if o not in setting])[1]
    for o in setting if cfg is not None else []:
        _check_key(cfg, o.key_or_group, hint="the sweeper's settings: conf/hparams_search/optuna.yaml for a search")


def check_optuna_settings(sweeper, metric: str | None) -> None:
    """The Optuna sweeper's own settings, which it (or Optuna, or SQLAlchemy) refused with a traceback or a bare
    AssertionError once Hydra had started (n_jobs=0 divided by zero after launching nothing); and a direction that
    maximizes a loss: every metric training returns (config.LOGGED) is better lower, so the search ran to the end
    and named the worst trial its best."""
    import re

    from momattn.errors import ConfigError

    n_jobs, rate = sweeper.get("n_jobs"), sweeper.get("max_failure_rate")
    direction, storage = sweeper.get("direction"), sweeper.get("storage")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ConfigError(f"hydra.sweeper.n_jobs={n_jobs} must be an int >= 1 (the trials asked for at a time)")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={rate} must be a number in [0, 1] (the share of a batch "
                          "of trials that may fail before the search stops; 1.0 never stops it)")
    n_trials, seed = sweeper.get("n_trials"), (sweeper.get("sampler") or {}).get("seed")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials!r}: a search runs at least one trial; set "
                          "hydra.sweeper.n_trials=N with N >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise ConfigError(f"hydra.sweeper.sampler.seed={seed!r} must be an int in [0, 2**32 - 1], or null for an "
                          "unseeded sampler")
    startup = (sweeper.get("sampler") or {}).get("n_startup_trials")
    if startup is not None and (isinstance(startup, bool) or not isinstance(startup, int) or startup < 0):
        # Optuna took -1 as 0 (no random start) without a word
        raise ConfigError(f"hydra.sweeper.sampler.n_startup_trials={startup!r} must be an int >= 0 (the random trials "
                          "before the sampler models the results)")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"hydra.sweeper.direction={direction!r} is neither minimize nor maximize (train.py returns "
                          "one metric, optimized_metric)")
    if direction == "maximize":
        raise ConfigError(f"hydra.sweeper.direction=maximize would search for the worst {metric or 'metric'}: every "
                          "metric training returns (optimized_metric) is better lower. Leave direction=minimize")
    if isinstance(storage, str) and not re.match(r"^[A-Za-z][\w+.-]*://", storage):
        raise ConfigError(f"hydra.sweeper.storage={storage!r} is not a database URL; for a SQLite file write "
                          f"hydra.sweeper.storage=sqlite:///{storage} (any SQLAlchemy URL), or null for none")
    file = re.match(r"^sqlite(?:\+\w+)?:///([^?]+)", storage) if isinstance(storage, str) else None
    if file and file[1].startswith("~"):  # SQLAlchemy opens it literally: a folder named '~' (unable to open it)
        raise ConfigError(f"hydra.sweeper.storage={storage}: SQLite does not expand '~'; give the absolute path, "
                          f"e.g. sqlite:///{Path(file[1]).expanduser()}")
    if file and file[1] != ":memory:" and Path(file[1]).is_dir():
        raise ConfigError(f"hydra.sweeper.storage={storage}: {file[1]} is a folder; name the SQLite file in it, e.g. "
                          f"sqlite:///{Path(file[1]) / 'study.db'}")
    if file and file[1] != ":memory:" and not (folder := Path(file[1]).parent).is_dir():
        # SQLAlchemy's 'unable to open database file', a traceback of a hundred lines once Hydra had started
        raise ConfigError(f"hydra.sweeper.storage={storage}: the folder of its SQLite file, {folder}, does not exist; "
                          f"make it (mkdir -p {folder}) or name a file in another (sqlite:////abs/path/study.db is an "
                          "absolute path, sqlite:///study.db one in this folder)")


def optuna_search(hydra: object) -> bool:
    """Whether a config's `hydra` section (or HydraConfig.get()) sweeps with Optuna's sweeper: a search, whose
    trials ckpt_path=last cannot resume and which reads optimized_metric from each trial. None: no Hydra section.
    Here, not in momattn.utils (numpy): the command line's checks before Hydra ask it."""
    from omegaconf import OmegaConf

    return hydra is not None and "optuna" in str(OmegaConf.select(hydra, "sweeper._target_", default="")).lower()

