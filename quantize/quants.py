"""Rows of float32 values -> the bytes of any ggml type cpuinfer writes.

The block quantizers live in blocks.py (32-value blocks), kquants.py (256-value
super-blocks) and iquants.py (non-linear codes); each type has two roundings:

- reference: ggml's reference quantizer, the bytes llama-quantize writes
  without an importance matrix (Q8_0 has only this one);
- search: ggml's error-minimising search, the bytes llama-quantize writes
  with an importance matrix; without one cpuinfer runs it with unit
  importances, which is its default.
"""

from __future__ import annotations

import functools

import numpy as np
from gguf.constants import GGMLQuantizationType as QT

from cpuinfer.parallel import Workers
from cpuinfer.threads import physical_cores

from . import blocks, iquants, kquants

QK = 32
QK_K = 256

# type -> (values per block, reference kernel(x, out), search kernel(x, importance, out) or None)
KERNELS = {
    QT.Q8_0: (QK, blocks.q8_0_reference, None),
    QT.Q4_0: (QK, blocks.q4_0_reference, blocks.q4_0_search),
    QT.Q4_1: (QK, blocks.q4_1_reference, blocks.q4_1_search),
    QT.Q5_0: (QK, blocks.q5_0_reference, blocks.q5_0_search),
    QT.Q5_1: (QK, blocks.q5_1_reference, blocks.q5_1_search),
    QT.Q2_K: (QK_K, kquants.q2_k_reference, kquants.q2_k_search),
    QT.Q3_K: (QK_K, kquants.q3_k_reference, kquants.q3_k_search),
    QT.Q4_K: (QK_K, kquants.q4_k_reference, kquants.q4_k_search),
    QT.Q5_K: (QK_K, kquants.q5_k_reference, kquants.q5_k_search),
    QT.Q6_K: (QK_K, kquants.q6_k_reference, kquants.q6_k_search),
    QT.IQ4_NL: (QK, iquants.iq4_nl_reference, iquants.iq4_nl_search),
    QT.IQ4_XS: (QK_K, iquants.iq4_xs_reference, iquants.iq4_xs_search),
}
BLOCK_BYTES = {QT[name.upper()]: n for table in (blocks.BLOCK_BYTES, kquants.BLOCK_BYTES, iquants.BLOCK_BYTES)
               for name, n in table.items()}


def block_values(qtype: int) -> int:
    """Values per block of `qtype` (1 for the float types)."""
    return KERNELS[qtype][0] if qtype in KERNELS else 1


def quantize_rows(x: np.ndarray, qtype: int, importance: np.ndarray | None = None,
                  reference: bool = False) -> np.ndarray:
    """Rows of float32 values [n, K] in `qtype`'s file layout: float32/float16/bfloat16 [n, K] or uint8 block bytes.

    `importance` (float32 [K], one per column) weights each value's error; without it the
    search runs with unit importances, or with `reference` ggml's reference rounding runs.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == QT.F32:
        return x
    if qtype == QT.F16:
        return x.astype(np.float16)
    if qtype == QT.BF16:
        return _bf16(x)
    n, k = x.shape
    block, reference_kernel, search_kernel = KERNELS[qtype]
    if k % block:
        raise ValueError(f"rows of {k} values are not whole {QT(qtype).name} blocks")
    out = np.empty((n, k // block * BLOCK_BYTES[qtype]), dtype=np.uint8)
    if search_kernel is None or (reference and importance is None):
        _split_rows(reference_kernel, x, out)
    else:
        if importance is None:
            importance = np.ones(k, dtype=np.float32)
        _split_rows(search_kernel, x, out, np.ascontiguousarray(importance, dtype=np.float32))
    return out


@functools.cache
def _workers() -> Workers:
    """One worker per core (made on first use, not at import); no scratch tiles."""
    return Workers(physical_cores(), widest_row=1, tile_floats=0)


def _split_rows(kernel, x: np.ndarray, out: np.ndarray, *args) -> None:
    """kernel(x, *args, out) on one contiguous row range per core (the kernels are serial and release the GIL)."""
    _workers().run(lambda _, a, b: kernel(x[a:b], *args, out[a:b]), x.shape[0])


def _bf16(x: np.ndarray) -> np.ndarray:
    """ggml's fp32 -> bf16: round to nearest even; NaNs stay (quiet) NaNs."""
    u = x.view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded[nan] = ((u[nan] >> 16) | 64).astype(np.uint16)
    return rounded
