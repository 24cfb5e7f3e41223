"""A SIGTERM or Ctrl-C before a run's own handling takes over: one line saying what was kept, exit 143 or 130.

The entry points install these handlers on their first line (early_signals, before Hydra is imported): they cover
the command line's checks, Hydra composing the config and train.py importing Lightning (the first seconds of a
run), the time between a sweep's jobs, and the whole of evaluate.py, analyze.py and generate.py. Python's default
ended a SIGTERM there without a word (-15). A SIGTERM raises Terminated in the main thread, as Ctrl-C raises
KeyboardInterrupt, and the entry point prints the line; only a job's first process does (rank_zero). A stop
raised where Python drops exceptions (a weakref callback of a garbage collection, right after a sweep's job) is
raised again at the next job's start or the entry point's end (pending), without Python's "Exception ignored".

Except inside an import: an exception raised there leaves half-loaded C extensions (torch's, numpy's) behind, and
the except clause's own imports, or the interpreter's exit, then ran their start-up or teardown over them (a
traceback of torch's, "cannot load module more than once", a segmentation fault). Imports come before any work, so
the handler itself says the line, runs the cleanups (a resume's saved config put back) and ends the process.
train.py's own guard (training.SigtermOutsideFit) replaces these handlers for the run and puts them back after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from momattn.signal_watch import PREEMPTED_EXIT

_PID: int | None = None  # the process that installed the handlers (a forked worker inherits them)
PARENT_ENV = "MOMATTN_RANKS_PARENT"  # the pid of the process that started this rank (started_ranks_know_me)
_SAY: list[Callable[[str], str]] = []  # the line a stop ends with, innermost last (the job's, inside the entry's)
_CLEANUPS: list[Callable[[], None]] = []  # what a stop inside an import runs before ending the process
BEFORE_STOP: list[Callable[[], None]] = []  # run by a SIGTERM before it raises (a sweep's job processes told first)
_PENDING: list[BaseException] = []  # a stop Python dropped (raised in a weakref callback of a garbage collection,
# between a sweep's jobs), as sys.unraisablehook hears of it: raised again at the next job's start or the entry
# point's end (pending()). A stop that code caught and handled is not one of them


class Terminated(BaseException):
    """A SIGTERM, heard in the main thread. A BaseException, as KeyboardInterrupt is: a job's `except Exception`
    (Hydra's launcher, a library's retry) does not take it for a failure and go on."""

    code = PREEMPTED_EXIT
    signame = "SIGTERM"


def importing(frame) -> bool:
    """Whether the frame (a signal handler's: the main thread's) is inside an import: a module's start-up runs
    under importlib's _load_unlocked (imports on other threads do not count)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_load_unlocked" and code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def import_cut_short() -> bool:
    """Whether a signal's exception cut an import short: a package's submodule is loaded while the package is not
    (Python drops the package whose start-up failed, not the submodules it had loaded), or one is still starting."""
    names = set(sys.modules)
    return any("." in name and name.partition(".")[0] not in names for name in names) or \
        any(getattr(getattr(m, "__spec__", None), "_initializing", False) for m in list(sys.modules.values()))


def rank_zero() -> bool:
    """Whether this process is a job's first (the others, which Lightning or srun started, say nothing of a stop:
    the first one says it for the job)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def end_now(line: str | None, code: int) -> None:
    """Say the line (None: nothing, e.g. on a rank other than 0), run the cleanups, and end the process without
    unwinding (os._exit)."""
    if line is not None:
        with contextlib.suppress(Exception):
            print(line, file=sys.stderr, flush=True)
    for cleanup in reversed(_CLEANUPS):
        with contextlib.suppress(Exception):
            cleanup()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def end_now_if_importing(signame: str, code: int, frame) -> None:
    if importing(frame):
        try:
            line = _SAY[-1](signame) if _SAY else before_line(signame)
        except Exception:
            line = f"\n[momattn] interrupted ({signame})"
        end_now(line if rank_zero() else None, code)


def die_by_default(signum: int) -> None:
    """In a forked worker (a DataLoader's, a tokenizing pool's), which inherits a handler: the signal's default."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _PID:  # a forked worker: the default, as before these handlers
        return die_by_default(signum)
    end_now_if_importing(Terminated.signame, Terminated.code, frame)
    for hook in list(BEFORE_STOP):
        hook()
    raise _stop(Terminated())


def _on_sigint(signum, frame) -> None:
    if os.getpid() != _PID:  # a forked worker: Python's KeyboardInterrupt, as before
        signal.default_int_handler(signum, frame)
    end_now_if_importing("Ctrl-C", 130, frame)
    raise _stop(KeyboardInterrupt())


def _stop(e: BaseException) -> BaseException:
    e.momattn_stop = True  # raised by these handlers: _unraisable tells it from others
    return e


def _unraisable(hook):
    """sys.unraisablehook, where a stop these handlers raised is kept for pending() instead of said ("Exception
    ignored in" and its traceback); other exceptions go to hook."""
    def keep(unraisable) -> None:
        if getattr(unraisable.exc_value, "momattn_stop", False):
            _PENDING.append(unraisable.exc_value.with_traceback(None))  # (its frames' locals are not kept alive)
        else:
            hook(unraisable)

    return keep


def pending() -> None:
    """Raise a stop whose exception Python dropped (a handler that ran inside a weakref callback of a garbage
    collection: a SIGTERM right after a sweep's job went unnoticed, and the sweep went on)."""
    if _PENDING:
        raise _PENDING[-1]


def early_signals() -> None:
    """The handlers from an entry point's first line on, before Hydra is imported (~0.3 s): entry_signals, once
    the entry point runs, takes them over and puts Python's back at its end."""
    global _PID
    if threading.current_thread() is not threading.main_thread():
        return
    _PID = os.getpid()
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    die_with_parent()


def die_with_parent(on: bool = True) -> None:
    """A rank another process started (LOCAL_RANK 1, 2, ...: Lightning's launcher, or torchrun) ends when the
    process that started it ends, until its process group exists (on=False then: a rank lost mid-run is heard of
    in the next collective, and this rank says so and names the checkpoint). Rank 0 killed (out of memory, kill -9)
    while the ranks met left them waiting, with no collective yet to tell them, for twice dist_timeout_s, printing
    torch's C++ frames into its console after it had ended (found by review). Linux's parent-death signal;
    elsewhere nothing changes."""
    if os.environ.get("LOCAL_RANK", "0") in ("", "0") or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent, started_by = os.getppid(), os.environ.get(PARENT_ENV, "")
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL if on else 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    # it ended before the signal was set: this process was handed to another (init, a subreaper), whose end the
    # signal would wait for (flows review: rank 0 killed while rank 1 imported)
    if on and (os.getppid() != parent or (started_by.isdigit() and int(started_by) != parent)):
        os._exit(1)


def started_ranks_know_me() -> None:
    """Called by a job's first process before Lightning starts its other ranks: they read its pid (die_with_parent),
    so a rank whose starter ended before the rank armed its signal ends too."""
    os.environ[PARENT_ENV] = str(os.getpid())


def is_default(handler) -> bool:
    """Whether a SIGTERM handler is Python's default or the entry point's (which a run's guard may replace)."""
    return handler == signal.SIG_DFL or handler is _on_sigterm


def is_default_int(handler) -> bool:
    """The same for SIGINT."""
    return handler is signal.default_int_handler or handler is _on_sigint


@contextlib.contextmanager
def entry_signals(say: Callable[[str], str]) -> Iterator[None]:
    """The handlers, in this block, where nobody else's are installed (submitit's are left alone). `say(signame)`:
    the line a stop inside an import ends with, where no job has said another (`saying`)."""
    global _PID
    ours = threading.current_thread() is threading.main_thread()
    term = ours and is_default(signal.getsignal(signal.SIGTERM))  # (ours already: early_signals)
    intr = ours and is_default_int(signal.getsignal(signal.SIGINT))
    _PID = os.getpid()
    _PENDING.clear()
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    if term:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if intr:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        with saying(say):
            yield
    finally:
        sys.unraisablehook = hook
        if term and signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if intr and signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def saying(say: Callable[[str], str]) -> Iterator[None]:
    """In this block a stop inside an import ends with say(signame)."""
    _SAY.append(say)
    try:
        yield
    finally:
        _SAY.remove(say)


@contextlib.contextmanager
def on_stop(cleanup: Callable[[], None] | None) -> Iterator[None]:
    """In this block a stop that ends the process at once runs cleanup first."""
    if cleanup is None:
        yield
        return
    _CLEANUPS.append(cleanup)
    try:
        yield
    finally:
        _CLEANUPS.remove(cleanup)


def stop_of(e: BaseException) -> BaseException | None:
    """The stop these handlers raised that e is, or that e was raised while handling (a library's `finally` that
    failed on its way out, e.g. argparse's: "During handling of the above exception, another exception occurred")."""
    for _ in range(32):
        if e is None or getattr(e, "momattn_stop", False):
            return e
        e = e.__context__
    return None


def stopped(e: BaseException) -> tuple[str, int] | None:
    """(what stopped the run, its exit status) where e is a Ctrl-C or a SIGTERM, or an error raised while one
    unwound (stop_of); None for any other error."""
    stop = stop_of(e) or (e if isinstance(e, KeyboardInterrupt | Terminated) else None)
    return None if stop is None else stop_code(stop)


def before_line(signame: str) -> str:
    """The line of a stop before the first job began."""
    return f"\n[momattn] interrupted ({signame}) before the run started: nothing was done; run the same command again"


def stop_code(e: BaseException) -> tuple[str, int]:
    """(what stopped the run, its exit status) for a Ctrl-C or a SIGTERM."""
    return (e.signame, e.code) if isinstance(e, Terminated) else ("Ctrl-C", 130)
