"""Fault injection for the fault tests: a callback the tests add through the config, e.g.

    python train.py +callbacks.fault._target_=momattn.faults.FaultInjection +callbacks.fault.spec=sigterm@4

Specs (N = optimizer step): sigterm@N (a preemption, at the end of step N's hooks of this callback),
sigterm_job@N (the same, sent to the DataLoader workers first: SLURM signals every process of a job),
sigterm_late@N (after every hook of step N, right before Lightning looks at its SIGTERM flag), sigterm_in_val@N
(during the validation at step N), sigterm_setup@N (in fit's setup hook, before Lightning's handler is
registered; N is not read), kill@N (SIGKILL), nan@N (one batch's loss becomes NaN),
kill_during_save@N (SIGKILL while the real checkpoint writer is writing the first checkpoint at step >= N),
disk_full@N (every file write from step N on fails with ENOSPC, as on a full disk), sigint@N (Ctrl-C: a
KeyboardInterrupt at the end of step N's hooks of this callback), stall@N (sleep `+callbacks.fault.seconds=S`,
default 10, at the end of step N's hooks: a rank busy or hung while another one dies).
`+callbacks.fault.rank=R` fires on global rank R only (DDP), else on every rank. Two faults at once: a second
callback, e.g. `+callbacks.fault2._target_=momattn.faults.FaultInjection +callbacks.fault2.spec=stall@4`.
Nothing in the training code knows about this module.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from momattn import lightning_compat as compat
from momattn.errors import ConfigError
from momattn.io import TEMP_NAME

KINDS = ("sigterm", "sigterm_job", "sigterm_late", "sigterm_in_val", "sigterm_setup", "kill", "nan", "kill_during_save",
         "disk_full", "sigint", "stall")


def _fill_disk() -> None:
    """From now on, opening any file for writing fails with ENOSPC (what a full disk does to the next write)."""
    import builtins
    import errno

    real_open, real_os_open = builtins.open, os.open

    def full(file, mode="r", *args, **kwargs):
        if any(m in str(mode) for m in "wax+"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    def full_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open, os.open = full, full_os_open


def _die(why: str) -> None:
    print(f"[fault] SIGKILL {why}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _is_fsdp_temp(path) -> bool:
    """Whether `path` is an FSDP save's temporary folder, .<checkpoint name>.tmp (strategies.FSDPStrategy)."""
    return isinstance(path, (str, os.PathLike)) and re.fullmatch(r"\..+\.ckpt\.tmp", Path(path).name) is not None


class KillDuringSave:
    """Once armed, SIGKILL this process while a temp file of the atomic writer is being written.

    A process audit hook sees the writer open its temp file; a watcher thread then kills as soon as bytes have
    reached it. If the writer gets to its rename first, the rename's audit event kills before the rename (so
    the kill always lands inside the writer). A writer without a temp file is never killed: a test that expects
    the kill then fails, which is how it catches a checkpoint written straight to its final path."""

    def __init__(self):
        self.armed = False
        self._fired = False
        sys.addaudithook(self._audit)  # cannot be removed; inert until armed

    @staticmethod
    def _is_temp(path) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        m = TEMP_NAME.fullmatch(Path(path).name)  # momattn.io.atomic_write's temporary file
        # or a shard in an FSDP save's temporary folder (strategies.FSDPStrategy: .<name>.tmp/, renamed into place
        # once whole), which torch writes itself: the fault never fired there (found by review)
        return bool(m) and int(m.group(1)) == os.getpid() or _is_fsdp_temp(Path(path).parent)

    def _audit(self, event: str, args: tuple) -> None:
        if not self.armed:
            return
        if event == "open" and not self._fired and self._is_temp(args[0]) and any(m in str(args[1]) for m in "wxa+"):
            self._fired = True  # atomic_write opens with 'xb'
            threading.Thread(target=self._watch, args=(Path(args[0]),), daemon=True).start()
        elif event == "os.rename" and (self._is_temp(args[0]) or _is_fsdp_temp(args[0])):  # also after the open
            _die(f"before renaming {args[0]}")  # fired: a small file on a busy machine was written and renamed
            # before the watcher ran ("survived")

    @staticmethod
    def _watch(tmp: Path) -> None:
        while True:
            try:
                if tmp.stat().st_size > 0:
                    _die(f"while writing {tmp} ({tmp.stat().st_size} bytes so far)")
            except FileNotFoundError:
                pass
            time.sleep(0.0002)


class FaultInjection(Callback):
    """Simulate a preemption, a crash, a NaN, or a crash inside the checkpoint writer at optimizer step N."""

    def __init__(self, spec: str, rank: int | None = None, seconds: float = 10.0):
        self.rank = rank  # only this global rank (DDP); None: every rank
        self.seconds = seconds  # stall@N's sleep
        kind, _, step = str(spec).partition("@")
        if kind not in KINDS or not step.isdigit():
            raise ConfigError(f"fault spec '{spec}' is not KIND@STEP with KIND one of {', '.join(KINDS)} "
                              "(e.g. +callbacks.fault.spec=sigterm@4)")
        self.kind, self.step = kind, int(step)
        if self.step < 1 and kind not in ("nan", "kill_during_save", "sigterm_setup"):  # accepted, and never fired
            raise ConfigError(f"fault spec '{spec}': {kind} fires at the end of optimizer step N (or in its "
                              "validation), and steps end from 1 on; give N >= 1")
        self._saved: torch.Tensor | None = None
        self._save_killer = KillDuringSave() if kind == "kill_during_save" else None

    def setup(self, trainer, pl_module, stage):
        if self.kind == "sigterm_setup" and stage == "fit" and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kind == "nan" and trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            # this one batch's loss becomes NaN
            self._saved = pl_module.model.wte.weight.detach().clone()
            with torch.no_grad():
                pl_module.model.wte.weight.fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._saved is not None:
            with torch.no_grad():
                pl_module.model.wte.weight.copy_(self._saved)
            self._saved = None
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step == self.step and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            if self.kind == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif self.kind == "sigterm_job":
                import multiprocessing

                for worker in multiprocessing.active_children():  # the DataLoader's worker processes
                    os.kill(worker.pid, signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            elif self.kind == "sigterm_late":
                compat.after_train_batch(trainer, lambda: os.kill(os.getpid(), signal.SIGTERM))
            elif self.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.kind == "disk_full":
                _fill_disk()
            elif self.kind == "sigint":
                raise KeyboardInterrupt
            elif self.kind == "stall":
                time.sleep(self.seconds)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.kind == "sigterm_in_val" and batch_idx == 0 and not trainer.sanity_checking \
                and self.rank in (None, trainer.global_rank) \
                and trainer.state.fn == "fit" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # called while the checkpoint dict is assembled, right before the checkpoint IO plugin writes it
        if self._save_killer is not None and trainer.global_step >= self.step \
                and (self.rank is None or trainer.global_rank == self.rank):  # (it armed every rank: review)
            self._save_killer.armed = True
