"""A Hydra callback that ends every train.py multirun with the command that compares its jobs, or runs it.

    hydra.callbacks.compare.run=false   print `python evaluate.py sweep_dir=<sweep>` (every multirun)
    hydra.callbacks.compare.run=true    run it (experiment=reproduce): Table 6/7 miniatures over seeds,
                                        paired 95% intervals vs vanilla, a verdict per metric (momattn.eval.sweep)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hydra.experimental.callback import Callback

ROOT = Path(__file__).resolve().parent.parent


_STARTED: list[CompareSweep] = []  # the sweep under way in this process (its end is not called when a job failed)
SWEEP: list = []  # the config of the sweep this process started (kept after its end: a stop's last line names it)
PREEMPTED: list[int] = []  # the step a job of this process saved at when a SIGTERM stopped it (joblib, submitit)
JOB_END = Path(".hydra") / "momattn_job_end.json"  # in each job's folder: how it ended, for the sweep's process


class CompareSweep(Callback):
    def __init__(self, run: bool = False):
        self.run = bool(run)
        self.config = None  # the sweep's config, from its start
        self.jobs: int | None = None  # the jobs it will run (Hydra's basic sweeper); None where not known
        self.ended = 0  # the jobs that ran to their end, failed ones too (in this process)
        self.failed: list[str] = []  # 'job N (its overrides)'
        self.started = 0.0  # time.time() at the sweep's start
        self.preempted: list[str] = []  # 'job N (...) at step S': stopped by a SIGTERM in a process of its own

    def command(self, sweep_dir: str) -> list[str]:
        """evaluate.py over the sweep; to W&B too where the sweep's jobs log there, with their project and mode (the
        verdict stayed local, evaluate.py's default, while the jobs' runs were in W&B: found by review)."""
        from omegaconf import OmegaConf

        from momattn.quoting import hydra_quoted

        cmd = [sys.executable, str(ROOT / "evaluate.py"), f"sweep_dir={hydra_quoted(sweep_dir)}"]  # (a folder with
        # a space, an accent, a quote or a comma did not parse: found by review)
        wandb = OmegaConf.select(self.config, "logger.wandb", default=None) if self.config is not None else None
        if wandb is not None and "wandb_logger" in str(wandb.get("_target_", "")):
            cmd.append("logger=wandb")
            for key in ("project", "offline", "group"):  # (the jobs' group: the verdict beside them)
                if (value := OmegaConf.select(wandb, key, default=None)) is not None:
                    cmd.append(f"logger.wandb.{key}={hydra_quoted(value)}")
        return cmd

    def on_multirun_start(self, config, **kwargs) -> None:
        self.config, self.ended, self.failed, self.jobs = config, 0, [], count_jobs(config)
        self.started = time.time()
        _STARTED[:] = [self]
        SWEEP[:] = [config]
        if not str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher"):
            from momattn.entry_signals import BEFORE_STOP

            BEFORE_STOP[:] = [self.stop_jobs]  # (this process's SIGTERM: its job processes save first)

    def stop_jobs(self) -> None:
        _stop_job_processes(ended=self._jobs_ended)

    def _jobs_ended(self) -> bool:
        """Whether every job this sweep started (its .hydra/config.yaml written since) has its end file (a pool's
        worker process lives on after its job: joblib's)."""
        def since(f: Path) -> bool:
            return f.is_file() and f.stat().st_mtime >= self.started - 1

        sweep = Path(self.config.hydra.sweep.dir)
        try:
            jobs = [f.parent for f in sweep.glob("*/.hydra") if since(f / "config.yaml")] if sweep.is_dir() else []
            return all(since(job / JOB_END) for job in jobs)
        except OSError:
            return False

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        from momattn.io import atomic_write_text

        job = f"job {config.hydra.job.get('num')} ({' '.join(map(str, job_return.overrides or []))})"
        failed = job_return.status == JobStatus.FAILED
        self.ended += 1
        if failed:
            self.failed.append(job)
        # the joblib and submitit launchers run this in the job's own process, not the sweep's: told by a file
        if "MULTIRUN" not in str(config.hydra.get("mode")):  # a single run (train.py without -m) is no sweep's job
            return
        stopped = PREEMPTED.pop() if PREEMPTED else None  # (a launcher that ran it here took its None as done)
        try:
            atomic_write_text(Path(config.hydra.runtime.output_dir) / JOB_END,
                              json.dumps({"job": job, "num": config.hydra.job.get("num"), "failed": failed,
                                          "preempted": stopped}))
        except (OSError, AttributeError):
            pass

    def _ended_elsewhere(self) -> None:
        """ended and failed from the files the jobs of this sweep wrote in processes of their own."""
        ends = []
        for f in Path(self.config.hydra.sweep.dir).glob(f"**/{JOB_END.as_posix()}"):
            try:
                if f.stat().st_mtime >= self.started - 1:  # not a file an earlier run of this sweep left
                    ends.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        ends.sort(key=lambda e: e.get("num") if isinstance(e.get("num"), int) else -1)
        self.ended, self.failed = len(ends), [str(e.get("job")) for e in ends if e.get("failed")]
        self.preempted = [f"{e.get('job')} at step {e['preempted']}" for e in ends if e.get("preempted") is not None]

    def after_failure(self) -> None:
        """Hydra's basic sweeper runs every job, then raises the first failed job's error, and the sweep's end (the
        comparison) is skipped: called after that, the jobs that completed are compared (or the command printed),
        with the failed ones named. Nothing where the sweep stopped before its last job (a SIGTERM) or none ran."""
        _STARTED.clear()
        if _other_rank():
            return
        if self.config is not None and self.ended == 0:  # joblib, submitit: the jobs ended in other processes
            self._ended_elsewhere()
        if self.config is None or not self.failed or self.jobs is None or self.ended < self.jobs:
            return
        done = self.ended - len(self.failed)
        if not done:
            return
        print(f"\n[momattn] {len(self.failed)} of the sweep's {self.jobs} jobs failed (their errors are above): "
              f"{'; '.join(self.failed[:5])}{' ...' if len(self.failed) > 5 else ''}. The comparison covers the "
              f"other {done}.", file=sys.stderr, flush=True)
        self.on_multirun_end(self.config)

    def on_multirun_end(self, config, **kwargs) -> None:
        _STARTED.clear()
        SWEEP.clear()  # (ended: a later stop in this process, a test's, is no longer this sweep's)
        self.config = config  # (the same config its start had)
        if _other_rank():  # a DDP job's other ranks run the sweep alongside rank 0, which ends it (it was said twice)
            return
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        from omegaconf import OmegaConf

        if self.ended == 0:  # joblib, submitit: the jobs ended in processes of their own, which took a SIGTERM's
            self._ended_elsewhere()  # saved job as done: "sweep done" and exit 0 (found by review)
        if self.preempted:
            from momattn.quoting import shell_arg

            search = _search(config)
            what = "search's trials" if search else "sweep's jobs"
            how = ("A search is not resumed with ckpt_path=last: finish a trial as a single run (python train.py "
                   f"ckpt_path=last hydra.run.dir={sweep_dir}/<its number>), and search again into a new folder for "
                   "more trials" if search else
                   f"Run the same command with ckpt_path=last {shell_arg('hydra.sweep.dir', sweep_dir)} to resume "
                   "them (finished jobs train no further, each job resumes its own folder)")
            print(f"\n[momattn] SIGTERM: {len(self.preempted)} of the {what} stopped, saved: "
                  f"{'; '.join(self.preempted[:5])}{' ...' if len(self.preempted) > 5 else ''}. {how}",
                  file=sys.stderr, flush=True)
            raise SystemExit(143)  # saved and resumable, not done (what a shell reports for a SIGTERM)

        if _search(config):
            metric = OmegaConf.select(config, "optimized_metric", default=None)
            storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
            study = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
            print(f"\n[momattn] search done: the best parameters and {metric or 'its metric'} are "
                  f"in {sweep_dir}/optimization_results.yaml" + best_trial(Path(sweep_dir), metric, storage, study),
                  file=sys.stderr, flush=True)
            return
        from momattn.quoting import shell_arg

        shown = f"python evaluate.py {shell_arg('sweep_dir', sweep_dir)}"
        if not self.run:
            print(f"\n[momattn] sweep done. Compare its jobs (mean +- std over seeds, paired intervals, verdicts):\n"
                  f"  {shown}", file=sys.stderr, flush=True)
            return
        print(f"\n[momattn] sweep done; comparing its jobs: {shown}", file=sys.stderr, flush=True)
        done = subprocess.run(self.command(sweep_dir), check=False)
        if done.returncode != 0:
            print(f"[momattn] the comparison failed (exit {done.returncode}); run it again with: {shown}",
                  file=sys.stderr, flush=True)


def _other_rank() -> bool:
    from momattn.cli import other_rank

    return other_rank()


def _job_order(path: Path) -> tuple:
    """A job folder's place in its sweep: by number (0, 1, 2, ..., 10), other names after them."""
    name = path.parent.name
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def best_trial(sweep_dir: Path, metric: str | None, storage: str | None = None, study: str | None = None) -> str:
    """'; best trial: <its folder> (<its best checkpoint>)': the job whose summary.json holds the search's best
    value; with a study stored in a database (hydra.sweeper.storage) whose best value no job here has, that an
    earlier search of the study may hold it; '' when it cannot be told (no results file, or no job with that value)."""
    import json

    import yaml

    try:
        best = float(yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["best_value"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return ""
    for summary in sorted(sweep_dir.glob("*/summary.json"), key=_job_order):  # a tie: the first trial (2 before 10)
        try:
            kept = json.loads(summary.read_text())
        except (OSError, ValueError):
            continue
        value = kept.get(metric) if metric else None
        if isinstance(value, int | float) and abs(value - best) <= 1e-9 * max(1.0, abs(best)):
            return f"; best trial: {summary.parent} ({kept.get('best_checkpoint') or 'no checkpoint'})"
    if storage and metric and study:  # the study goes on from earlier searches stored there: one may hold it
        # (study_name null: each search its own new study, named by Optuna; this one's best is one of its jobs)
        folder = None
        try:  # the folder each trial recorded (since session 51: the best could not be traced to its checkpoint)
            import optuna

            if not storage.startswith("sqlite:///") or Path(storage.removeprefix("sqlite:///")).is_file():
                # (opening a SQLite file that is not there would make one)
                found = optuna.load_study(study_name=study, storage=storage).best_trial
                folder = found.user_attrs.get("momattn.folder")
        except Exception:
            pass
        if folder:
            return f"; best trial: {folder}, of an earlier search of the stored study '{study}'"
        return (f"; no job in this folder has the best value, so an earlier search of the stored study may hold it "
                f"(optuna.load_study(study_name='{study}', storage='{_no_password(storage)}').best_trial)")
    return ""


def _no_password(text: str) -> str:
    """A database URL, or a message holding one, as it may be printed: 'postgresql://user:secret@host/db' ->
    'postgresql://user:***@host/db' (to the host's @, the last of the URL: a password may hold one)."""
    return re.sub(r"([A-Za-z][\w+.-]*://[^:/@\s]*:)\S*@", r"\1***@", str(text))


def count_jobs(config) -> int | None:
    """How many jobs the sweep runs: its params crossed with its task overrides, as Hydra's basic sweeper does
    (None for another sweeper)."""
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import BASIC, cross_jobs, sweeper_params

    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC:
        return None
    jobs = cross_jobs(sweeper_params(config), list(config.hydra.overrides.task))
    return None if jobs is None else len(jobs)


def _search(config) -> bool:
    """Whether the sweep is a search (an Optuna sweeper)."""
    from omegaconf import OmegaConf

    from momattn.sweep_jobs import optuna_search

    return optuna_search(OmegaConf.select(config, "hydra"))


JOB_GRACE_S = 120.0  # how long a SIGTERM'd sweep process waits for its job processes to save and end


def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the process's name (state, parent pid, ...); [] where it cannot be read."""
    try:  # (the name may hold spaces and parentheses)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _children() -> list[int]:
    """This process's child processes but multiprocessing's trackers (which ignore a SIGTERM): Linux's /proc; none
    where there is none."""
    me, out = str(os.getpid()), []
    for proc in Path("/proc").glob("[0-9]*"):
        if _stat(proc.name)[1:2] != [me]:
            continue
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command and b"semaphore_tracker" not in command:
            out.append(int(proc.name))
    return out


def _stop_job_processes(grace: float = JOB_GRACE_S, ended: Callable[[], bool] = lambda: False) -> None:
    """A SIGTERM to the process of a sweep whose jobs run in processes of its own (joblib, submitit's local
    launcher): passed on to them, and waited for (up to `grace`), so that each saves its checkpoint before the
    launcher ends them: joblib SIGKILLed a job in the middle of writing it (its steps lost), and submitit's jobs
    trained on unwatched (found by review). ended(): the jobs have ended, though their processes live on."""
    children = _children()
    if not children:
        return
    print(f"[momattn] SIGTERM: passing it to the sweep's {len(children)} job processes and waiting up to "
          f"{grace:.0f} s for them to save", file=sys.stderr, flush=True)
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (alive := [p for p in children if _alive(p)]) and not ended():
        time.sleep(0.2)
        children = alive


def _alive(pid: int) -> bool:
    """Whether process pid still runs (an ended child not yet reaped, a zombie, does not; it is left to the
    launcher to reap)."""
    return _stat(pid)[:1] not in ([], ["Z"])


def after_failed_sweep() -> None:
    """For the entry point, once Hydra ended a multirun with an error: the comparison its end would have run."""
    for callback in list(_STARTED):
        callback.after_failure()
