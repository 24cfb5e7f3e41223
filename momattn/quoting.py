"""Command-line text that goes back in as it came out: a value Hydra reads verbatim, an argument a shell keeps whole
(the resume commands momattn prints are pasted back)."""

from __future__ import annotations

import re
import shlex
import unicodedata


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
    return f'"{arg}"' if not hidden(arg) and not any(ch in arg for ch in '"$`!\\') else shell_quote(arg)  # as
    # the README writes them


# characters a terminal acts on or does not show: controls (an escape sequence could rewrite the line beside a
# resume command, or set the clipboard), format characters (a right-to-left override), line and paragraph
# separators, lone surrogates. A no-break space or an accented letter prints: it stays as it is
_HIDDEN = ("Cc", "Cf", "Zl", "Zp", "Cs")


def hidden(text: str) -> bool:
    """Whether text holds a character of _HIDDEN."""
    return not text.isprintable() and any(unicodedata.category(ch) in _HIDDEN for ch in text)


def shell_quote(text: str) -> str:
    """shlex.quote(text), or bash's $'...' with escapes where text holds a character of _HIDDEN (a recorded
    override's escape sequence, printed raw, reached the terminal: found by review). Above U+007F an escape is
    \\uXXXX, a character (\\xNN is one byte in $'...': a no-break space came back as a lone byte); bash writes
    \\u in the locale's encoding (in the C locale it leaves one it cannot write as it is)."""
    if not hidden(text):
        return shlex.quote(text)
    return "$'" + "".join(_escape(ch) if unicodedata.category(ch) in _HIDDEN else "\\" + ch if ch in "\\'" else ch
                          for ch in text) + "'"


def printable(text) -> str:
    """text for a message: each character of _HIDDEN escaped (\\x1b, \\n), the rest as it is."""
    text = str(text)
    return text if not hidden(text) else "".join(_escape(ch) if unicodedata.category(ch) in _HIDDEN else ch
                                                 for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8 (Python's surrogateescape): that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
