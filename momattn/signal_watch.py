"""Signals that arrive while the main thread waits inside a C++ call.

Python runs a signal handler only when the main thread next executes bytecode. A DDP rendezvous waiting for a node
that has not started blocks inside torch.distributed for up to dist_timeout_s (30 minutes by default), so a SIGTERM
there (SLURM's scancel, a preemption) or a Ctrl-C was heard only when the wait ended, and SLURM had killed the job
without a word long before. The signal module also writes each signal's number to a "wakeup" socket as it
arrives; a thread reading that socket learns of the signal at once and, where the main thread has not handled it
within `grace_s`, ends the process with the caller's words (`give_up`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable

PREEMPTED_EXIT = 128 + signal.SIGTERM  # a run (or sweep) stopped by SIGTERM after saving, as a shell reports it
_WATCH: SignalWatch | None = None  # the watch whose socket the signal module writes to in this process


def _not_in_a_fork() -> None:
    """A forked child (a DataLoader or tokenizing worker) inherits the wakeup socket: its own SIGTERM would reach
    the parent's watch, which then ended the parent. The child writes to no socket, and closes its copies."""
    if _WATCH is not None:
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # forked from a thread that is not the child's main thread
            pass
        _WATCH._write.close()
        _WATCH._read.close()


os.register_at_fork(after_in_child=_not_in_a_fork)


class SignalWatch:
    """Watches `signals` on a thread while it is open (start it on the main thread). For each one that arrives
    where `handled(signum)` says no other handler is in charge, it waits `grace_s` and calls `give_up(signum)`
    unless `handled` then says the main thread ran its handler. give_up is expected to end the process (os._exit).
    A signal that another handler was in charge of on arrival is left to it, however long its work takes (a
    SIGTERM in Lightning's training steps: the save, then the loggers' finish, an online W&B upload)."""

    def __init__(self, signals: Iterable[int], handled: Callable[[int], bool], give_up: Callable[[int], None],
                 grace_s: float = 3.0):
        global _WATCH
        self.signals, self.handled, self.give_up, self.grace_s = frozenset(signals), handled, give_up, grace_s
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        self._previous = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        _WATCH = self
        self._thread = threading.Thread(target=self._run, name="momattn-signal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                got = self._read.recv(64)
            except OSError:
                return
            if not got:  # closed
                return
            pending = [signum for signum in sorted(set(got) & self.signals) if not self.handled(signum)]
            if pending:
                time.sleep(self.grace_s)  # a main thread that runs Python has handled them by now
            for signum in pending:
                if _WATCH is self and not self.handled(signum):
                    self.give_up(signum)

    def close(self) -> None:
        """Stops watching (on the main thread): the signal module writes to the socket it wrote to before."""
        global _WATCH
        if _WATCH is self:
            signal.set_wakeup_fd(self._previous)
            _WATCH = None
        with contextlib.suppress(OSError):  # (closed already: a forked child's copy)
            self._read.shutdown(socket.SHUT_RDWR)  # the thread reads the end and returns (even where a child
        self._thread.join(timeout=1)  # process still holds a copy of the write end)
        self._write.close()
        self._read.close()
