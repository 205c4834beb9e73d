"""What every input format turns into: GGUF metadata plus tensors whose rows are read on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from gguf.constants import GGUFValueType as VT


@dataclass(frozen=True)
class Matrix:
    """rows x cols float32 values of the source, read a row range at a time."""

    rows: int
    cols: int
    read: Callable[[int, int], np.ndarray]  # (r0, r1) -> float32 [r1 - r0, cols]


@dataclass(frozen=True)
class SourceTensor:
    """One output tensor: a 1-D vector, a 2-D matrix, or a 3-D stack of experts (one Matrix each)."""

    name: str  # llama.cpp's GGUF name
    shape: tuple[int, ...]  # numpy order
    parts: list[Matrix]
    stored: tuple[int, np.ndarray] | None = None  # a GGUF source's (ggml type, block bytes [rows, row bytes])
    # Called once the tensor is written: a mapped source drops its pages, so the resident set holds about one
    # tensor of the source at a time (7B-shape Q8_0 -> Q4_K_M: peak RSS was 7.7 GB, the whole file).
    release: Callable[[], None] | None = None

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass
class Source:
    """A model to convert: GGUF key/values (value, type, array item type) and its tensors in file order."""

    description: str
    metadata: dict[str, tuple[Any, VT, VT | None]] = field(default_factory=dict)
    tensors: list[SourceTensor] = field(default_factory=list)

    def set(self, key: str, value: Any, vtype: VT, item_type: VT | None = None) -> None:
        self.metadata[key] = (value, vtype, item_type)


def whole(shape: tuple[int, ...], read_all: Callable[[], np.ndarray]) -> Matrix:
    """A small tensor read in one go (norm vectors, routers)."""
    rows = shape[0] if len(shape) == 2 else 1
    return Matrix(rows, shape[-1], lambda r0, r1: read_all().reshape(rows, -1)[r0:r1])


def rope_row_order(rows: int, n_heads: int) -> np.ndarray:
    """Source row of every output row when un-permuting Hugging Face's rotate_half Q/K layout.

    HF checkpoints store each head's rows as [first halves of the rotary pairs,
    second halves]; llama.cpp's `llama` architecture rotates adjacent pairs,
    so its converter interleaves them back: out[h, i, p] = src[h, p, i].
    """
    head_dim = rows // n_heads
    return np.arange(rows).reshape(n_heads, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


def reordered(m: Matrix, order: np.ndarray) -> Matrix:
    """m with its rows taken in `order` (a permutation within aligned row groups)."""

    def read(r0: int, r1: int) -> np.ndarray:
        src = order[r0:r1]
        lo, hi = int(src.min()), int(src.max()) + 1
        return m.read(lo, hi)[src - lo]

    return Matrix(m.rows, m.cols, read)
