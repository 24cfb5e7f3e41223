"""User-facing errors: what is wrong, which value, how to fix it. The CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint). Printed as one clear message."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class NonFiniteLossError(UserError):
    every_rank = True  # raised alike by every process of a run (momattn.lit): said once, by the first (cli.report)


class LaunchError(UserError):
    """Several processes could not meet (a node never joined, the first node unreachable)."""


def not_a_file(path: Path) -> str:
    """Why a path that should name a file does not: 'is a folder' or 'does not exist'."""
    return "is a folder" if path.is_dir() else "does not exist"


def raised_from(e: BaseException | None, kind: type[BaseException] | tuple) -> BaseException | None:
    """e itself where it is a `kind`, else the `kind` it was raised from or while handling (its __cause__ or
    __context__ chain), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line (at most limit characters), or its type's name where it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class DiskFullError(UserError):
    """The disk filled during a run: what was saved, and how to resume."""
