"""Command-line text that goes back in as it came out: a value Hydra reads verbatim, an argument a shell keeps whole
(the resume commands momattn prints are pasted back)."""

from __future__ import annotations

import re
import shlex


def hydra_quoted(value) -> str:
    """value as Hydra reads it back verbatim: as it is where it holds only path characters (ASCII: Hydra's lexer
    takes no other unquoted), else in quotes, with a quote, the backslashes before one or at the end, and ${
    (an interpolation, resolved) escaped."""
    text = str(value)
    if all(ch.isascii() and ch.isalnum() or ch in "/._-" for ch in text):
        return text
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


def shell_arg(key: str, value) -> str:
    """key=value as one argument to paste into a shell (a folder with a space or a quote was split by it, and the
    printed resume command failed to parse)."""
    arg = f"{key}={hydra_quoted(value)}"
    if arg == f"{key}={value}":
        return arg
    return f'"{arg}"' if not any(ch in arg for ch in '"$`!\\') else shlex.quote(arg)  # as the README writes them
