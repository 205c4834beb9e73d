"""K-quants: ggml's 256-value super-blocks with packed sub-block scales, Q2_K ... Q6_K.

Byte layouts of one super-block (ggml-common.h), and what a value is:
  Q2_K  84: scales[16] | qs[64] | f16 d | f16 dmin       16 x 16 values: d*(sc&15)*q - dmin*(sc>>4), q 2-bit
  Q3_K 110: hmask[32] | qs[64] | scales[12] | f16 d      16 x 16: d*(sc-32)*(q - 4 + 4*h), sc 6-bit, q 2-bit
  Q4_K 144: f16 d | f16 dmin | scales[12] | qs[128]      8 x 32: d*sc*q - dmin*m, sc/m 6-bit, q 4-bit
  Q5_K 176: f16 d | f16 dmin | scales[12] | qh[32] | qs[128]     as Q4_K with a 5th bit of q from qh
  Q6_K 210: ql[128] | qh[64] | scales[16] int8 | f16 d   16 x 16: d*sc*(q - 32), q = 4 bits of ql, 2 of qh
Packing of the codes (value e of the super-block, sub-block s):
- 2-bit fields (Q2_K/Q3_K qs, Q6_K qh): value 128h + 32k + l is bits 2k, 2k+1 of
  byte 32h + l; for 16-value sub-blocks, h = s/8, k = (s/2)%4, l = 16(s%2) + j;
- nibbles (Q4_K/Q5_K qs): 32-value sub-block s is the low (s even) or high
  nibbles of bytes 32(s/2) ... 32(s/2) + 31; Q6_K ql: value 128h + 32k + l is
  nibble k/2 of byte 64h + 32(k%2) + l;
- high bits: Q3_K's bit h of value e is bit e/32 of hmask[e%32]; Q5_K's 5th bit
  of sub-block s, value j, is bit s of qh[j].
Q6_K's -32 goes into the offset (-32*d*sc), so the inner loop has one
subtraction less; products like d*sc*q are exact in float32 (at most 24
significant bits), so splitting them off changes no bit of a dequantized value
(but +0.0 may stand where ggml has -0.0).
"""

import numpy as np
from numba import njit

from .blocks import dequant_blocks, matvec_blocks
from .matvec import U, _f16, f32

Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES = 84, 110, 144, 176, 210
ONE, THREE, FIFTEEN, SIX_BITS = np.uint8(1), np.uint8(3), np.uint8(15), np.uint8(63)
FOUR, SIX = np.uint8(4), np.uint8(6)


@njit(inline="always")
def _byte(w, r, i):
    return w[U(r), U(i)]


@njit(inline="always")
def _or_shifted(low, high, shift):
    """low | high << shift in uint8 (the | and << operators widen to int64, which vectorizes 4x worse)."""
    return np.bitwise_or(low, np.left_shift(high, np.uint8(shift)))


@njit(inline="always")
def _two_bits(w, r, base, s, j):
    """The 2-bit field of value j of sub-block s, packed from byte `base` on."""
    v = _byte(w, r, base + 32 * (s >> 3) + 16 * (s & 1) + j)
    return np.bitwise_and(np.right_shift(v, np.uint8(2 * ((s >> 1) & 3))), THREE)


@njit(inline="always")
def _scale_min_k4(w, r, q, t):
    """The 6-bit scale and min of sub-block t, packed in the 12 bytes at q (ggml's get_scale_min_k4)."""
    if t < 4:
        return (np.bitwise_and(_byte(w, r, q + t), SIX_BITS), np.bitwise_and(_byte(w, r, q + t + 4), SIX_BITS))
    sc = _or_shifted(np.bitwise_and(_byte(w, r, q + t + 4), FIFTEEN), np.right_shift(_byte(w, r, q + t - 4), SIX), 4)
    m = _or_shifted(np.right_shift(_byte(w, r, q + t + 4), FOUR), np.right_shift(_byte(w, r, q + t), SIX), 4)
    return sc, m


# --- Q2_K ---------------------------------------------------------------------------

@njit(inline="always")
def _q2_k_sub_block(w, r, o, s):
    v = _byte(w, r, o + s)
    return (_f16(w, r, o + 80) * f32(np.bitwise_and(v, FIFTEEN)),
            -(_f16(w, r, o + 82) * f32(np.right_shift(v, FOUR))))


@njit(inline="always")
def _q2_k_code(w, r, o, s, j):
    return f32(_two_bits(w, r, o + 16, s, j))


# --- Q3_K ---------------------------------------------------------------------------

@njit(inline="always")
def _q3_k_sub_block(w, r, o, s):
    lo = np.bitwise_and(np.right_shift(_byte(w, r, o + 96 + (s & 7)), np.uint8(4 * (s >> 3))), FIFTEEN)
    hi = np.bitwise_and(np.right_shift(_byte(w, r, o + 104 + (s & 3)), np.uint8(2 * (s >> 2))), THREE)
    return _f16(w, r, o + 108) * f32(np.int32(_or_shifted(lo, hi, 4)) - 32), f32(0)


@njit(inline="always")
def _q3_k_code(w, r, o, s, j):
    h = np.bitwise_and(np.right_shift(_byte(w, r, o + 16 * (s & 1) + j), np.uint8(s >> 1)), ONE)
    return f32(_or_shifted(_two_bits(w, r, o + 32, s, j), h, 2)) - f32(4)


# --- Q4_K / Q5_K ----------------------------------------------------------------------

@njit(inline="always")
def _q45_k_sub_block(w, r, o, s):
    sc, m = _scale_min_k4(w, r, o + 4, s)
    return _f16(w, r, o) * f32(sc), -(_f16(w, r, o + 2) * f32(m))


@njit(inline="always")
def _nibble(w, r, base, s, j):
    """The 4-bit code of value j of 32-value sub-block s, packed from byte `base` on."""
    v = _byte(w, r, base + 32 * (s >> 1) + j)
    return np.right_shift(v, FOUR) if s & 1 else np.bitwise_and(v, FIFTEEN)


@njit(inline="always")
def _q4_k_code(w, r, o, s, j):
    return f32(_nibble(w, r, o + 16, s, j))


@njit(inline="always")
def _q5_k_code(w, r, o, s, j):
    h = np.bitwise_and(np.right_shift(_byte(w, r, o + 16 + j), np.uint8(s)), ONE)
    return f32(_or_shifted(_nibble(w, r, o + 48, s, j), h, 4))


# --- Q6_K ---------------------------------------------------------------------------

@njit(inline="always")
def _q6_k_sub_block(w, r, o, s):
    d = _f16(w, r, o + 208) * f32(np.int8(_byte(w, r, o + 192 + s)))
    return d, f32(-32) * d


@njit(inline="always")
def _q6_k_code(w, r, o, s, j):
    v = _byte(w, r, o + 64 * (s >> 3) + 32 * ((s >> 1) & 1) + 16 * (s & 1) + j)
    low = np.right_shift(v, FOUR) if s & 4 else np.bitwise_and(v, FIFTEEN)
    return f32(_or_shifted(low, _two_bits(w, r, o + 128, s, j), 4))


# --- kernels ------------------------------------------------------------------------

@njit(parallel=True, fastmath=True, cache=True)
def matvec_q2_k(w, x, out):
    """out = dequant(w) @ x for Q2_K rows `w` (uint8 [rows, K/256*84])."""
    matvec_blocks(w, x, out, Q2_K_BYTES, 16, 16, _q2_k_sub_block, _q2_k_code)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q3_k(w, x, out):
    """out = dequant(w) @ x for Q3_K rows `w` (uint8 [rows, K/256*110])."""
    matvec_blocks(w, x, out, Q3_K_BYTES, 16, 16, _q3_k_sub_block, _q3_k_code)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_k(w, x, out):
    """out = dequant(w) @ x for Q4_K rows `w` (uint8 [rows, K/256*144])."""
    matvec_blocks(w, x, out, Q4_K_BYTES, 8, 32, _q45_k_sub_block, _q4_k_code)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q5_k(w, x, out):
    """out = dequant(w) @ x for Q5_K rows `w` (uint8 [rows, K/256*176])."""
    matvec_blocks(w, x, out, Q5_K_BYTES, 8, 32, _q45_k_sub_block, _q5_k_code)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q6_k(w, x, out):
    """out = dequant(w) @ x for Q6_K rows `w` (uint8 [rows, K/256*210])."""
    matvec_blocks(w, x, out, Q6_K_BYTES, 16, 16, _q6_k_sub_block, _q6_k_code)


@njit(nogil=True, cache=True)
def dequant_rows_q2_k(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q2_K rows."""
    dequant_blocks(w, r0, out, Q2_K_BYTES, 16, 16, _q2_k_sub_block, _q2_k_code)


@njit(nogil=True, cache=True)
def dequant_rows_q3_k(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q3_K rows."""
    dequant_blocks(w, r0, out, Q3_K_BYTES, 16, 16, _q3_k_sub_block, _q3_k_code)


@njit(nogil=True, cache=True)
def dequant_rows_q4_k(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q4_K rows."""
    dequant_blocks(w, r0, out, Q4_K_BYTES, 8, 32, _q45_k_sub_block, _q4_k_code)


@njit(nogil=True, cache=True)
def dequant_rows_q5_k(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q5_K rows."""
    dequant_blocks(w, r0, out, Q5_K_BYTES, 8, 32, _q45_k_sub_block, _q5_k_code)


@njit(nogil=True, cache=True)
def dequant_rows_q6_k(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for Q6_K rows."""
    dequant_blocks(w, r0, out, Q6_K_BYTES, 16, 16, _q6_k_sub_block, _q6_k_code)
