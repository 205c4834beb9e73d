"""Range checks for the numbers a user gives: one place for the CLI flags, the chat REPL's /commands
and the Python API, so each refuses the same values with the same message (naming the setting and its
flag, quoting the value), before anything runs with them."""

from __future__ import annotations

import math
import numbers

from .errors import CpuinferError, quote


def checked(value, name: str, integer: bool = False, lo=None, hi=None, above=None):
    """`value` if it is a finite number (an integer when `integer`) with lo <= value <= hi and value > above;
    else a CpuinferError naming `name` (e.g. "temperature (--temp, /temp)")."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and (integer or math.isfinite(value))
    if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)
               or (above is not None and value <= above)):
        ok = False
    if not ok:
        bounds = [f">= {lo}" if hi is None else f"in {lo}..{hi}"] if lo is not None else []
        bounds += [f"> {above}"] if above is not None else []
        raise CpuinferError(f"{name} must be {'an integer' if integer else 'a finite number'}"
                            f"{' ' + ' and '.join(bounds) if bounds else ''}, not {quote(value)}")
    return value


def token_limit(max_tokens: int | None) -> int | None:
    """A cap on generated tokens as llama.cpp's -n reads it: N >= 0 tokens at most (0: none), -1 or None:
    no cap (until an end-of-sequence token, a stop string or a full context)."""
    if max_tokens is None or max_tokens == -1:
        return None
    return checked(max_tokens, "max_tokens (-n/--max-tokens)", integer=True, lo=-1)
