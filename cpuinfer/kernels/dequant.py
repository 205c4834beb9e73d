"""Dequantize a range of ggml rows to float32, for batched (prompt) matmuls.

A prompt chunk multiplies every weight by many activation rows at once; the
fastest way on a CPU without integer dot products in numba is to expand a
tile of weight rows to float32 here and let BLAS sgemm do the arithmetic.
Serial and nogil: the caller's worker threads split the rows (see parallel.py).
"""

import numpy as np
from numba import njit

from .llvm import half_to_float
from .matvec import Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES, U, _f16, _hi, _lo, f32


@njit(nogil=True, cache=True)
def dequant_rows_q8_0(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for i < out.shape[0]."""
    for i in range(out.shape[0]):
        r = r0 + i
        for b in range(w.shape[1] // Q8_0_BYTES):
            o = b * Q8_0_BYTES
            d = _f16(w, r, o)
            for j in range(32):
                out[U(i), U(b * 32 + j)] = d * f32(np.int8(w[U(r), U(o + 2 + j)]))


@njit(inline="always")
def _dequant_q4(w, r0, out, block_bytes):
    for i in range(out.shape[0]):
        r = r0 + i
        for b in range(w.shape[1] // block_bytes):
            o = b * block_bytes
            d = _f16(w, r, o)
            m = -f32(8) * d if block_bytes == Q4_0_BYTES else _f16(w, r, o + 2)
            for j in range(16):
                v = w[U(r), U(o + block_bytes - 16 + j)]
                out[U(i), U(b * 32 + j)] = d * _lo(v) + m
                out[U(i), U(b * 32 + j + 16)] = d * _hi(v) + m


@njit(nogil=True, cache=True)
def dequant_rows_q4_0(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q4_0 rows."""
    _dequant_q4(w, r0, out, Q4_0_BYTES)


@njit(nogil=True, cache=True)
def dequant_rows_q4_1(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q4_1 rows."""
    _dequant_q4(w, r0, out, Q4_1_BYTES)


@njit(nogil=True, cache=True)
def dequant_rows_f16(w, r0, out):
    """out[i, :] = float32(w[r0 + i]) for float16 rows given as uint16 bits."""
    for i in range(out.shape[0]):
        for k in range(w.shape[1]):
            out[U(i), U(k)] = half_to_float(w[U(r0 + i), U(k)])
