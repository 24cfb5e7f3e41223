"""A Hydra callback that claims a run's folder before Hydra writes into it (hydra.callbacks of conf/train.yaml,
evaluate.yaml and analyze.yaml).

Hydra names a run's folder by the second it starts (outputs/<date>/<time>, `${now:...}`), so two runs started in the
same second (a shell loop that backgrounds them) got one folder: the second rewrote the first's saved config
(.hydra/) and log before its lock refused it. Claimed here, at Hydra's run start, a run whose timed folder another
run of that second has taken (held, or there already: a run that failed at once and let go) moves to <time>_2 (then
_3, ...), saying so; any other folder held by another run is refused before anything is written. A folder given to
train.py on the command line without `${now:...}` is claimed before Hydra starts (momattn.cli). A sweep's folder
(multirun/<date>/<time>, or hydra.sweep.dir=...) that another sweep is writing is refused before the launcher writes
into it: it cannot be moved, since Hydra composes each job's config afresh, with `now` as the sweep resolved it, so
a changed hydra.sweep.dir would not reach the jobs. Its job folders are claimed by the jobs (momattn.cli). Ranks a
launcher starts one by one (srun, torchrun) each resolve `now` themselves, so give them one folder with
hydra.run.dir=... (README, "More than one machine").
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict, read_write

from momattn.cli import claim_run_folder, in_use, other_rank, report
from momattn.errors import ConfigError
from momattn.io import lock_folder
from momattn.quoting import shell_arg

_SWEEP_LOCKS: dict[Path, int] = {}  # the sweep folder this process launches jobs into, and its lock


def _second_sweep(config, folder: Path) -> ConfigError | None:
    """A fresh sweep into a folder named with ${now:...} that holds a sweep's runs already (cli.check_fresh_folder
    checks a folder given as is, before Hydra): its jobs trained into the other sweep's folders and one verdict
    mixed the two (found by review). None where it holds none, or the sweep resumes (ckpt_path given)."""
    from momattn.cli import _last, runs_held
    from momattn.sweep_jobs import _original_command

    task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=None) or []]
    if _last(task, "ckpt_path") not in (None, "null") or not folder.is_dir():
        return None
    held = runs_held([run for run in sorted(folder.iterdir()) if run.is_dir()])  # (as check_fresh_folder sees them)
    if not held:
        return None
    pattern = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("dir"))
    original = _original_command(folder, str(folder))
    return ConfigError(f"{folder} (hydra.sweep.dir={pattern}) holds {len(held)} job(s) of another sweep already "
                       f"({held[0]}{', ...' if len(held) > 1 else ''}): this sweep's jobs would train into them. Give "
                       "it a folder of its own (a pattern down to the second, e.g. "
                       "hydra.sweep.dir=multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}, or a new folder)"
                       + (f"; that sweep resumes with: {original}" if original else ""))


def _claimed_before_hydra(config) -> bool:
    """Whether momattn.cli claimed train.py's folder before Hydra started: hydra.run.dir given, no interpolation."""
    overrides = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)  # as typed: ${now:...} kept
    given = [str(o).split("=", 1)[1] for o in overrides if str(o).startswith("hydra.run.dir=")]
    return bool(given) and "${" not in given[-1]


def _a_training_runs(folder: Path) -> tuple[str, Path] | None:
    """(why an evaluation or analysis must not write into `folder`, the training run's folder), or None: it holds a
    train.py run (Hydra would rewrite the run's saved command line, .hydra/, which resuming it and evaluate.py's sweep
    read), or it is such a run's end-of-run evaluation (eval/, whose results.json a resume reads to know the
    evaluation is done)."""
    from momattn.eval.sweep import is_training_job

    def holds_run(f: Path) -> bool:
        return any((f / "checkpoints").glob("*.ckpt")) or is_training_job(f) is not False  # (None: unreadable)

    if holds_run(folder):
        return ("holds a training run (its checkpoints or its saved config): this would rewrite the run's .hydra/ "
                "command line, which resuming it reads", folder)
    if (folder / "results.json").exists() and not (folder / ".hydra").exists() and holds_run(folder.parent):
        return (f"is the end-of-run evaluation of the training run in {folder.parent}, which a resume reads to know "
                "it is done: this would replace it", folder.parent)
    return None


def _another_tools(folder: Path, kind: str) -> str | None:
    """'evaluate' or 'analyze' where `folder` holds that tool's run and `kind` is the other's: both write
    results.json and results.md, so analyze.py given evaluate.py's folder deleted its reports and wrote its own
    there, without a word (found by review)."""
    tool = {"evaluation": "analyze", "analysis": "evaluate"}.get(kind)
    return tool if tool and (folder / f"{tool}.log").is_file() else None


class ClaimRunFolder(Callback):
    """kind: what the entry point runs, named in a refusal ("training run"; evaluate.py's and analyze.py's configs
    name theirs: two of them in one second wrote their reports into one folder, the second over the first's)."""

    def __init__(self, kind: str = "training run"):
        self.kind = str(kind)

    def on_run_start(self, config, **kwargs) -> None:
        if (self.kind == "training run" and _claimed_before_hydra(config)) or other_rank():  # other ranks share
            return  # their first process's folder; evaluate.py's and analyze.py's are claimed here alone
        pattern = str(OmegaConf.to_container(config.hydra.run, resolve=False).get("dir", ""))
        timed = "${now:" in pattern
        name = str(OmegaConf.select(config, "hydra.run.dir"))  # Hydra's `now` is cached: run_job reads the same
        if not timed and self.kind != "training run" and (found := _a_training_runs(Path(name))):
            why, run = found
            report(ConfigError(f"hydra.run.dir={name} {why}. Give it a folder of its own, e.g. "
                               f"{shell_arg('hydra.run.dir', run / ('analyze' if 'analy' in self.kind else 'evaluate'))}"),
                   hydra=False)
            sys.exit(2)
        if not timed and (other := _another_tools(Path(name), self.kind)):
            report(ConfigError(f"hydra.run.dir={name} holds {other}'s reports ({other}.log, results.json, "
                               f"results.md), which this {self.kind} would replace under the same names. Give it a "
                               f"folder of its own, e.g. {shell_arg('hydra.run.dir', Path(name) / self.kind)}"),
                   hydra=False)
            sys.exit(2)
        if not timed:
            holder = claim_run_folder(Path(name))
            if holder is not None:
                report(in_use(Path(name).resolve(), holder, self.kind), hydra=False)
                sys.exit(2)
            return
        n = 1
        while True:  # a timed folder that exists was made by a run of that second (held, or it ended at once)
            candidate = name if n == 1 else f"{name}_{n}"
            if not Path(candidate).exists() and claim_run_folder(Path(candidate)) is None:
                break  # claimed (or no locks on this filesystem: as before)
            n += 1
        if candidate == name:
            return
        with read_write(config.hydra.run), open_dict(config.hydra.run):
            config.hydra.run.dir = candidate
        why = "was taken by a run started in the same second" if re.search(r"%[STXcsf]", pattern) else \
            "exists already (another run of this hydra.run.dir pattern)"  # a day's folder: not of one second (review)
        print(f"[momattn] {name} {why}; this run writes to {candidate}", file=sys.stderr, flush=True)

    def on_multirun_start(self, config, **kwargs) -> None:
        folder = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).resolve()  # `now` cached for the launcher
        if folder in _SWEEP_LOCKS or other_rank():
            return
        fd, holder = lock_folder(folder)
        if holder is not None:
            report(ConfigError(f"{folder} is in use by another sweep ({holder}), started in the same second or given "
                               "the same folder: their jobs would rewrite each other's saved configs. Start this "
                               "sweep again, or give it a folder of its own (hydra.sweep.dir=...)"), hydra=False)
            sys.exit(2)
        if fd is not None:
            _SWEEP_LOCKS[folder] = fd
        if self.kind == "training run" and (refusal := _second_sweep(config, folder)) is not None:
            report(refusal, hydra=False)
            sys.exit(2)

    def on_multirun_end(self, config, **kwargs) -> None:
        for folder in list(_SWEEP_LOCKS):
            os.close(_SWEEP_LOCKS.pop(folder))
