"""Typed reads of GGUF metadata: the one place a value from the file's key/value table is checked.

Every key the model, the tokenizer or `info` uses goes through one of these
readers, which checks the value's type and range before anything is computed
from it; an error names the key, quotes the value and says what was expected.
GGUF keeps each value's type, so a reader is as strict as llama.cpp: an
integer key holding a float (2.5 layers) or a string is refused, not rounded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import GGUFError, quote

_REQUIRED = object()


def _value(md: dict[str, Any], key: str, default: Any) -> Any:
    """The value, or `default` when the key is absent (GGUF has no null: None only ever is a default)."""
    value = md.get(key, default)
    if value is _REQUIRED:
        raise GGUFError(f"missing metadata key {key}")
    return value


def _refuse(key: str, value: Any, expected: str) -> GGUFError:
    kind = "array" if isinstance(value, (list, np.ndarray)) else type(value).__name__
    return GGUFError(f"metadata key {key} holds {quote(value)} ({kind}); expected {expected}")


def integer(md: dict[str, Any], key: str, default: Any = _REQUIRED, lo: int | None = None,
            hi: int | None = None) -> int:
    """An integer key, within lo..hi (inclusive) when given."""
    value = _value(md, key, default)
    if value is None:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" in {lo}..{hi}" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
        raise _refuse(key, value, f"an integer{bounds}")
    return int(value)


def number(md: dict[str, Any], key: str, default: Any = _REQUIRED, positive: bool = True) -> float:
    """A finite number (integer or float) key; > 0 unless positive=False (then >= 0)."""
    value = _value(md, key, default)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise _refuse(key, value, f"a finite number {'>' if positive else '>='} 0")
    return float(value)


def text(md: dict[str, Any], key: str, default: Any = _REQUIRED) -> str:
    """A string key (None stays None when it is the default)."""
    value = _value(md, key, default)
    if value is not None and not isinstance(value, str):
        raise _refuse(key, value, "a string")
    return value


def flag(md: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean key."""
    value = _value(md, key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise _refuse(key, value, "a boolean")
    return bool(value)


def strings(md: dict[str, Any], key: str, default: Any = _REQUIRED) -> list[str] | None:
    """An array of strings (GGUF string arrays read as lists of str)."""
    value = _value(md, key, default)
    if value is not None and not isinstance(value, list):
        raise _refuse(key, value, "an array of strings")
    return value


def numbers(md: dict[str, Any], key: str, n: int, default: np.ndarray, dtype) -> np.ndarray:
    """An array of n finite numbers (GGUF numeric arrays read as ndarrays), as `dtype`; integers only
    when `dtype` is an integer type."""
    value = md.get(key, default)
    kinds = "iu" if np.dtype(dtype).kind in "iu" else "iuf"
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
        raise _refuse(key, value, f"an array of {n} {'integers' if kinds == 'iu' else 'numbers'}")
    if value.shape != (n,):
        raise GGUFError(f"metadata key {key} has {value.size} entries for {n} tokens")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise GGUFError(f"metadata key {key} holds a value that is not a finite number")
    return value.astype(dtype)
