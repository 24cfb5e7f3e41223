"""Small helpers used across momattn, each in exactly one place: stable hashing and seeded splits."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

import numpy as np


def leaves(obj: Any):
    """The leaves of nested dicts (their values), lists and tuples, in order."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from leaves(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from leaves(v)
    else:
        yield obj


def digest(obj: Any, n: int = 16) -> str:
    """A short, stable hex digest of a JSON-able object (keys sorted): cache keys and fingerprints."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from any parts, the same in every process (python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def seeded_split(n: int, fraction: float, seed: int | np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out): a seeded permutation of range(n) cut so that held_out has round(fraction * n) items
    (at least 1 when n >= 2); both sorted ascending."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    if n >= 2:
        k = min(max(k, 1), n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (a count of rounds, steps, examples, ...), refused with argparse's one line."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def duration(seconds: float) -> str:
    """1m05s, or 2h03m from an hour on: training's elapsed / ETA and the evaluation's part lines."""
    s = int(max(0, seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def stderr_tty() -> bool:
    """Whether stderr is a terminal a progress bar can be drawn on. A pseudo-terminal that reports 0 columns
    (`script -qc` without a size, some CI runners) drew tqdm's bar as nothing, and as a terminal it got no line
    every 30 s either: a blank line where the bar should have been."""
    if not sys.stderr.isatty():
        return False
    import os

    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except OSError:
        return False


def done_line(what: str, t0: float, tty: bool | None = None) -> None:
    """`[momattn] <what> (<seconds since t0>)` on stderr where it is not a terminal. The evaluation's and the
    analysis's parts show tqdm bars on a terminal, which tqdm hides elsewhere: a log file (a cluster job, train.py's
    evaluation redirected) was silent for the minutes they take; this line says when each part ends."""
    if not (stderr_tty() if tty is None else tty):
        print(f"[momattn] {what} ({duration(time.perf_counter() - t0)})", file=sys.stderr, flush=True)


# lightning.pytorch.callbacks.early_stopping.EarlyStoppingReason's values (0: not stopped)
THRESHOLD, DIVERGENCE, PATIENCE_EXHAUSTED = 1, 2, 3


def stop_reason(state: Any) -> int | None:
    """An EarlyStopping state's stopping_reason as its number (Lightning's enum, or the int), or None."""
    reason = state.get("stopping_reason") if isinstance(state, dict) else None
    value = getattr(reason, "value", reason)
    return int(value) if hasattr(value, "__int__") else None


def early_stopped(callback_states: Any) -> str | None:
    """Why an EarlyStopping callback stopped the run, from the callbacks' states (a checkpoint's "callbacks", or
    {cb.state_key: cb.state_dict()}), or None where none did: a run it stopped is finished, not one to resume."""
    for key, state in (callback_states or {}).items() if isinstance(callback_states, dict) else ():
        if not str(key).startswith("EarlyStopping") or not isinstance(state, dict):
            continue
        reason, wait, patience = state.get("stopping_reason"), state.get("wait_count"), state.get("patience")
        waited = isinstance(wait, int) and isinstance(patience, int) and wait >= patience
        code = stop_reason(state)
        if reason is None:  # a release that keeps no reason: the wait alone
            stopped = waited
        elif code == PATIENCE_EXHAUSTED:  # Lightning keeps the reason after the metric improves again (a resumed
            # run trained on): the wait must still be over too, where the state has one (flows review)
            stopped = waited or not isinstance(wait, int)
        else:  # a threshold reached, divergence, a non-finite metric: no wait counted (their runs read as not
            # stopped, and a resume trained past the stop: session 55's flows review)
            stopped = code != 0
        if stopped:
            return str(state.get("stopping_reason_message") or f"{key}: no improvement in {wait} validations")
    return None
