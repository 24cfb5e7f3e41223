"""Lightning internals that momattn needs (no public API exists for these), gathered here; checked against
Lightning 2.6. Besides these, only callbacks.Throughput (a ThroughputMonitor subclass) reaches inside: the monitor's own
counters, the validation loop's batch count and the logger connector; and LitGPT reads its `_trainer` (None when
detached, where `trainer` raises).

- the SIGTERM flag: `trainer.received_sigterm` is read-only, but a preemption checkpoint must be able to defer
  the stop to the next optimizer-step boundary and to re-raise it there; and the SIGTERM notifier inside
  Lightning's handler, which the preemption checkpoint replaces (it raises that flag and, under DDP, runs a
  collective inside the signal handler);
- ThroughputMonitor's per-stage `Throughput` objects: the monitor only logs them, while the end-of-run
  summary needs the last window and a measured CPU peak must reach them;
- the step loggers write metrics at (`_batches_that_stepped`): restored from a checkpoint it can be one behind or
  ahead, depending on where in the loop the file was saved, so a resumed curve would be shifted by a step;
- whether a micro-batch falls inside a gradient accumulation (last.ckpt is not refreshed there);
- ThroughputMonitor._compute(trainer, iter_num), which momattn's Throughput overrides to log at the loggers' step;
- the point after every hook of a training batch, where the fault tests send a late SIGTERM;
- the watcher of the local ranks Lightning's launcher starts (`_launch_process_observer`), which SIGKILLed this
  process the moment it saw another rank end with an error, before this process could say so (`patient_observer`);
- the command line of those ranks (`_hydra_subprocess_cmd`), which gives them the run folder unescaped
  (`quoted_rank_folder`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from lightning.fabric.utilities.throughput import Throughput as FabricThroughput
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage

from momattn.signal_watch import PREEMPTED_EXIT


def _require(obj: Any, attr: str) -> Any:
    if not hasattr(obj, attr):
        import lightning

        raise RuntimeError(f"{type(obj).__name__}.{attr} is gone in Lightning {lightning.__version__}; "
                           "update momattn/lightning_compat.py for this Lightning version")
    return getattr(obj, attr)


def set_received_sigterm(trainer, value: bool) -> None:
    """Set (Lightning stops after the current hook) or clear (training goes on) the SIGTERM flag."""
    _require(trainer, "_signal_connector").received_sigterm = value


def replace_sigterm_notifier(trainer, fn) -> None:
    """Have the SIGTERM handler Lightning registers when fit starts (and restores when it ends) call fn(signum,
    frame) in place of its own notifier; the handler's other parts (SLURM's requeue bypass) still run. Call it
    before fit registers its handlers (in on_fit_start)."""
    connector = _require(trainer, "_signal_connector")
    _require(connector, "_sigterm_notifier_fn")
    connector._sigterm_notifier_fn = fn  # looked up on the instance when the handler is registered


def align_logged_step(trainer) -> None:
    """Make the loggers' step counter equal the optimizer step, as it is in a run that was never interrupted
    (at the start of every batch both count the optimizer steps taken)."""
    loop = _require(trainer.fit_loop, "epoch_loop")
    _require(loop, "_batches_that_stepped")
    loop._batches_that_stepped = trainer.global_step


def mid_accumulation(trainer) -> bool:
    """Whether the current micro-batch is inside a gradient accumulation (no optimizer step at its end)."""
    return bool(getattr(trainer.fit_loop.epoch_loop, "_should_accumulate", lambda: False)())


def after_train_batch(trainer, fn) -> None:
    """Call fn() once, after every hook of the current training batch (its validation included), right before
    Lightning looks at its SIGTERM flag."""
    loop = _require(trainer.fit_loop, "epoch_loop")
    save_loggers = _require(loop, "_save_loggers_on_train_batch_end")

    def once():
        del loop._save_loggers_on_train_batch_end  # back to the class's method
        save_loggers()
        fn()

    loop._save_loggers_on_train_batch_end = once


def stage_throughputs(monitor: ThroughputMonitor) -> dict[RunningStage, FabricThroughput]:
    """The monitor's live {stage: Throughput} dict (filled in its setup); entries may be replaced."""
    return _require(monitor, "_throughputs")


def throughput_metrics(monitor: ThroughputMonitor, stage: RunningStage = RunningStage.TRAINING) -> dict[str, float]:
    """The last window's metrics of one stage (`device/items_per_sec`, `device/flops_per_sec`, `device/mfu`, ...);
    {} when the stage never ran or had too few batches for a window."""
    t = stage_throughputs(monitor).get(stage)
    if t is None:
        return {}
    try:
        return dict(t.compute())
    except Exception:  # Lightning raises when fewer batches than a window were seen
        return {}


def check_throughput_compute() -> None:
    """ThroughputMonitor._compute(trainer, iter_num) logs at iter_num, or at the loggers' step when it is None;
    callbacks.Throughput overrides it to pass None. Raise if Lightning changed it (the override would be dead)."""
    import inspect

    params = list(inspect.signature(_require(ThroughputMonitor, "_compute")).parameters)
    if params[:3] != ["self", "trainer", "iter_num"]:
        import lightning

        raise RuntimeError(f"ThroughputMonitor._compute{tuple(params)} changed in Lightning {lightning.__version__};"
                           " update momattn/lightning_compat.py and callbacks.Throughput for this Lightning version")


def drop_wandb_anonymous(logger) -> None:
    """Lightning's WandbLogger always passes anonymous=None to wandb.init, which W&B >= 0.19 answers with a
    deprecation warning on every run; the setting has no effect, so it is not passed."""
    _require(logger, "_wandb_init").pop("anonymous", None)


_WATCH: dict[str, Any] = {}  # the current fit's grace and message: the watcher of a sweep's first job outlives it


def patient_observer(grace_s: float, message: Callable[[int, str], str], period_s: float = 5.0) -> None:
    """Lightning's launcher looks at the ranks it started every period_s (its 5 s); when one has ended with an
    error it SIGKILLs the others and this process (rank 0) at once. Rank 0 usually hears of the loss first (gloo:
    "connection closed by peer") and ends in one line naming the checkpoint to resume from; on a busy machine the
    watcher won the race and the run ended in exit -9 with nothing said (found by CI). From now on, launches in
    this process use a watcher that says which rank ended and how, SIGKILLs the other started ranks as
    Lightning's does, and gives this process grace_s to end by itself; one still running then (hung in a
    collective) prints message(rank, how it ended) and exits 2. A rank that exits 143 (PREEMPTED_EXIT: saved
    after a SIGTERM, as every rank does) has not failed. Lightning starts the ranks once per process: a sweep's
    later jobs only update the grace and the message, which the running watcher reads when a rank ends."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

    _WATCH.update(grace_s=grace_s, message=message)
    base = _require(fabric_launcher, "_ChildProcessObserver")
    for launcher in (fabric_launcher, trainer_launcher):  # the Trainer's launcher imported the function by name
        _require(launcher, "_launch_process_observer")

    class PatientObserver(base):
        def _run(self) -> bool:
            children = _require(self, "_child_processes")
            codes = [proc.poll() for proc in children]
            done = (0, PREEMPTED_EXIT)  # ended well, or saved and stopped by a SIGTERM
            if all(code in done for code in codes):
                return True
            failed = next(((i, code) for i, code in enumerate(codes, 1) if code is not None and code not in done), None)
            if failed is None:
                return False
            # the global rank: Lightning starts local ranks 1.. on each node (NODE_RANK; this process is local 0)
            rank = int(os.environ.get("NODE_RANK") or 0) * (len(children) + 1) + failed[0]
            code = failed[1]
            try:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            except ValueError:
                how = f"killed by signal {-code}"
            alive = [proc for proc in children if proc.poll() is None]
            print(f"[momattn] the process of rank {rank} ended ({how})"
                  + ("; ending the other ranks it leaves" if alive else ""), file=sys.stderr, flush=True)
            for proc in alive:
                proc.kill()
            time.sleep(_WATCH["grace_s"])  # this process ends here when it stops by itself
            print(_WATCH["message"](rank, how), file=sys.stderr, flush=True)
            os._exit(2)

    def launch(child_processes) -> None:
        PatientObserver(child_processes=child_processes, main_pid=os.getpid(), sleep_period=period_s).start()

    for launcher in (fabric_launcher, trainer_launcher):
        launcher._launch_process_observer = launch


def quoted_rank_folder() -> None:
    """Lightning gives the ranks it starts the run folder as hydra.run.dir="<folder>", unescaped: a folder with a
    " (or ${, or a backslash at its end) did not parse in rank 1, whose error came 30 s later beside a resume
    command that failed the same way (found by review). From now on it is given as Hydra reads it back verbatim."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

    from momattn.quoting import hydra_quoted

    original = _require(fabric_launcher, "_hydra_subprocess_cmd")
    _require(trainer_launcher, "_hydra_subprocess_cmd")  # (imported by name)
    if getattr(original, "momattn", False):
        return

    def command(local_rank: int):
        from hydra.core.hydra_config import HydraConfig

        cmd, cwd = original(local_rank)
        folder = HydraConfig.get().run.dir
        lightning = f'hydra.run.dir="{folder}"'
        if lightning not in cmd:
            raise RuntimeError("Lightning's command line for the ranks it starts changed; update "
                               "momattn/lightning_compat.py:quoted_rank_folder for this Lightning version")
        return [f"hydra.run.dir={hydra_quoted(folder)}" if arg == lightning else arg for arg in cmd], cwd

    command.momattn = True
    for launcher in (fabric_launcher, trainer_launcher):
        launcher._hydra_subprocess_cmd = command
