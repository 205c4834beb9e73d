"""BF16 weights: bfloat16 rows (uint16 bits), read in place like the block types.

For the decode kernel a row is cut into runs of 32 values, two sub-blocks
of scale 1, so the shared loop of blocks.py applies; rows must be
whole runs (every model's are). Dequantizing is a plain conversion, which
keeps every bit (NaN payloads too; 1 * v + 0 would not).
"""

from numba import njit

from .blocks import matvec_blocks
from .llvm import bfloat_to_float
from .matvec import U, f32

RUN = 32


@njit(inline="always")
def _unit(w, r, o, s):
    return f32(1), f32(0)


@njit(inline="always")
def _bf16_code(w, r, o, s, j):
    return bfloat_to_float(w[U(r), U(o + 16 * s + j)])


@njit(parallel=True, fastmath=True, cache=True)
def matvec_bf16(w, x, out):
    """out = w @ x for bfloat16 `w` given as its uint16 bits [rows, K] (K a multiple of 32)."""
    matvec_blocks(w, x, out, RUN, 2, 16, _unit, _bf16_code)


@njit(nogil=True, cache=True)
def dequant_rows_bf16(w, r0, out):
    """out[i, :] = float32(w[r0 + i]) for bfloat16 rows given as uint16 bits."""
    for i in range(out.shape[0]):
        for k in range(w.shape[1]):
            out[U(i), U(k)] = bfloat_to_float(w[U(r0 + i), U(k)])
