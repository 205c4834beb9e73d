"""Q5_0 and Q5_1: 32-value blocks of 5-bit codes, whose 5th bits are packed in one 32-bit word.

  Q5_0 22 bytes: f16 d | qh[4] | qs[16]            value = d * (q - 16)
  Q5_1 24 bytes: f16 d | f16 m | qh[4] | qs[16]    value = d * q + m
As in Q4_0, value j < 16 is the low nibble of qs[j] and value j + 16 its high
nibble; bit j of the little-endian word qh is value j's 5th bit. llama.cpp
writes these into K-quant files for tensors whose rows are not multiples of
256. Each block is two 16-value sub-blocks (the low and the high nibbles) of
one scale; Q5_0's -16 goes into the offset (-16*d, d*q exact in float32).
"""

import numpy as np
from numba import njit

from .blocks import dequant_blocks, matvec_blocks
from .matvec import U, _f16, f32

Q5_0_BYTES, Q5_1_BYTES = 22, 24
FIFTEEN, FOUR, ONE = np.uint8(15), np.uint8(4), np.uint32(1)


@njit(inline="always")
def _u32(w, r, i):
    """The little-endian 32-bit word at bytes i ... i + 3 of row r."""
    word = np.uint32(w[U(r), U(i)])
    for k in range(1, 4):  # np.bitwise_or and np.left_shift keep uint32 (| and << widen to 64 bits)
        word = np.bitwise_or(word, np.left_shift(np.uint32(w[U(r), U(i + k)]), np.uint32(8 * k)))
    return word


@njit(inline="always")
def _code(w, r, o, s, j, qh):
    """The 5-bit code of value 16s + j of the block whose qh word starts at byte o + qh."""
    v = w[U(r), U(o + qh + 4 + j)]
    low = np.right_shift(v, FOUR) if s else np.bitwise_and(v, FIFTEEN)
    high = np.bitwise_and(np.right_shift(_u32(w, r, o + qh), np.uint32(16 * s + j)), ONE)
    return f32(np.bitwise_or(np.uint32(low), np.left_shift(high, np.uint32(4))))


@njit(inline="always")
def _q5_0_sub_block(w, r, o, s):
    d = _f16(w, r, o)
    return d, f32(-16) * d


@njit(inline="always")
def _q5_0_code(w, r, o, s, j):
    return _code(w, r, o, s, j, 2)


@njit(inline="always")
def _q5_1_sub_block(w, r, o, s):
    return _f16(w, r, o), _f16(w, r, o + 2)


@njit(inline="always")
def _q5_1_code(w, r, o, s, j):
    return _code(w, r, o, s, j, 4)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5_0(w, x, out):
    """out = dequant(w) @ x for Q5_0 rows `w` (uint8 [rows, K/32*22])."""
    matvec_blocks(w, x, out, Q5_0_BYTES, 2, 16, _q5_0_sub_block, _q5_0_code)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5_1(w, x, out):
    """out = dequant(w) @ x for Q5_1 rows `w` (uint8 [rows, K/32*24])."""
    matvec_blocks(w, x, out, Q5_1_BYTES, 2, 16, _q5_1_sub_block, _q5_1_code)


@njit(nogil=True, cache=True)
def dequant_rows_q5_0(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q5_0 rows."""
    dequant_blocks(w, r0, out, Q5_0_BYTES, 2, 16, _q5_0_sub_block, _q5_0_code)


@njit(nogil=True, cache=True)
def dequant_rows_q5_1(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q5_1 rows."""
    dequant_blocks(w, r0, out, Q5_1_BYTES, 2, 16, _q5_1_sub_block, _q5_1_code)
