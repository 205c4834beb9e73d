"""Errors that carry a message meant for the user, and how file contents are quoted in them.

The CLI prints any `CpuinferError` as one line and exits with code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

# Longest text of a file (a key, a token, a value) quoted in a message: a corrupt length field once made one
# message 21 MB long.
QUOTE_LIMIT = 60
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class CpuinferError(Exception):
    """A problem with the user's input (file, arguments, environment)."""


class GGUFError(CpuinferError):
    """A GGUF file that is truncated, malformed or not something cpuinfer can run."""


class ContextFullError(CpuinferError):
    """The KV cache of a model without a sliding window has no room left."""


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """`value` (text read from a file, or any value) as an error message shows it: repr-quoted, so control
    characters, NULs and lone surrogates appear as escapes, and cut to `limit` characters."""
    if isinstance(value, (str, bytes)):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} {'characters' if isinstance(value, str) else 'bytes'})"
    text = " ".join(repr(value).split())  # numpy breaks long reprs into lines
    return text if len(text) <= limit else text[:limit] + "…"


def one_line(message: str) -> str:
    """`message` with line breaks, other control characters and lone surrogates escaped: one printable
    line, whatever paths or library texts it carries."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], message)
