"""Command-line text that goes back in as it came out: a value Hydra reads verbatim, an argument a shell keeps whole
(the resume commands momattn prints are pasted back)."""

from __future__ import annotations

import re
import shlex


def hydra_quoted(value) -> str:
    """value as Hydra reads it back verbatim: as it is where it holds only path characters (ASCII: Hydra's lexer
    takes no other unquoted), else in quotes, with a quote, the backslashes before one, before ${ or at the end,
    and ${ (an interpolation, resolved) escaped."""
    text = str(value)
    if all(ch.isascii() and ch.isalnum() or ch in "/._-" for ch in text):
        return text
    text = re.sub(r"(\\+)(?='|$|\$\{)", lambda m: m.group(1) * 2, text).replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


def shell_arg(key: str, value) -> str:
    """key=value as one argument to paste into a shell (a folder with a space or a quote was split by it, and the
    printed resume command failed to parse)."""
    arg = f"{key}={hydra_quoted(value)}"
    if arg == f"{key}={value}":
        return arg
    return f'"{arg}"' if arg.isprintable() and not any(ch in arg for ch in '"$`!\\') else shell_quote(arg)  # as
    # the README writes them


def shell_quote(text: str) -> str:
    """shlex.quote(text), or bash's $'...' with escapes where text holds a character that does not print (a
    recorded override's escape sequence, printed raw, reached the terminal: it could rewrite the line, or set the
    clipboard, beside a resume command to paste; found by review)."""
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(ch if ch.isprintable() and ch not in "\\'" else "\\" + ch if ch in "\\'" else
                          _escape(ch) for ch in text) + "'"


def printable(text) -> str:
    """text for a message: each character that does not print escaped (\\x1b, \\n), the rest as it is."""
    text = str(text)
    return text if text.isprintable() else "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
