"""Matrix-vector products straight from ggml blocks: out[r] = dot(W[r], x).

One kernel per block type. Each walks four rows at a time so that every
activation load feeds four rows, keeps one float32 partial sum per row and
block (the inner 16/32-element loop vectorizes), and scales the partial sum by
the block's f16 scale once per block. Tail rows go through the one-row helper.
Parallel over groups of rows.

Block layouts (ggml):
  Q8_0: f16 d | 32 x int8 q                      value = d * q
  Q4_0: f16 d | 16 bytes, lo nibble = element j,  value = d * (q - 8)
              hi nibble = element j + 16
  Q4_1: f16 d | f16 m | 16 bytes as Q4_0          value = d * q + m
"""

import numpy as np
from numba import njit, prange

U = np.uintp
f32 = np.float32
i32 = np.int32
LO, SHIFT = np.uint8(15), np.uint8(4)
Q8_0_BYTES, Q4_0_BYTES, Q4_1_BYTES = 34, 18, 20


@njit(inline="always")
def _f16(w, r, o, f16):
    """The f16 stored at bytes o, o+1 of row r, as float32."""
    return f16[U(w[U(r), U(o)] | (i32(w[U(r), U(o + 1)]) << 8))]


@njit(inline="always")
def _block_sums(x):
    nb = x.shape[0] // 32
    s = np.zeros(nb, dtype=np.float32)
    for b in range(nb):
        acc = f32(0)
        for j in range(32):
            acc += x[U(b * 32 + j)]
        s[U(b)] = acc
    return s


# --- Q8_0 -------------------------------------------------------------------

@njit(inline="always")
def _row_q8_0(w, r, x, f16):
    acc = f32(0)
    for b in range(w.shape[1] // Q8_0_BYTES):
        o = b * Q8_0_BYTES
        s = f32(0)
        for j in range(32):
            s += f32(np.int8(w[U(r), U(o + 2 + j)])) * x[U(b * 32 + j)]
        acc += _f16(w, r, o, f16) * s
    return acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q8_0(w, x, out, f16):
    """out[r] = sum_k dequant(w)[r, k] * x[k] for Q8_0 rows `w` (uint8 [rows, K/32*34])."""
    rows = w.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for t in range(r, rows):
                out[U(t)] = _row_q8_0(w, t, x, f16)
            continue
        a0 = f32(0); a1 = f32(0); a2 = f32(0); a3 = f32(0)
        for b in range(w.shape[1] // Q8_0_BYTES):
            o = b * Q8_0_BYTES
            s0 = f32(0); s1 = f32(0); s2 = f32(0); s3 = f32(0)
            for j in range(32):
                xv = x[U(b * 32 + j)]
                s0 += f32(np.int8(w[U(r), U(o + 2 + j)])) * xv
                s1 += f32(np.int8(w[U(r + 1), U(o + 2 + j)])) * xv
                s2 += f32(np.int8(w[U(r + 2), U(o + 2 + j)])) * xv
                s3 += f32(np.int8(w[U(r + 3), U(o + 2 + j)])) * xv
            a0 += _f16(w, r, o, f16) * s0
            a1 += _f16(w, r + 1, o, f16) * s1
            a2 += _f16(w, r + 2, o, f16) * s2
            a3 += _f16(w, r + 3, o, f16) * s3
        out[U(r)] = a0; out[U(r + 1)] = a1; out[U(r + 2)] = a2; out[U(r + 3)] = a3


# --- Q4_0 / Q4_1 ------------------------------------------------------------
# sum_j d*(q_j - 8)*x_j = d*(sum_j q_j*x_j - 8*sum_j x_j), and for Q4_1
# sum_j (d*q_j + m)*x_j = d*sum_j q_j*x_j + m*sum_j x_j: the block sums of x
# are computed once per call, the inner loop is the same nibble dot product.

@njit(inline="always")
def _lo(v):
    # np.bitwise_and keeps uint8 (the & operator widens to int64, and 64-bit lanes vectorize 4x worse)
    return f32(np.bitwise_and(v, LO))


@njit(inline="always")
def _hi(v):
    return f32(np.right_shift(v, SHIFT))


@njit(inline="always")
def _nibble_dot(w, r, o, x, xo):
    s = f32(0)
    for j in range(16):
        v = w[U(r), U(o + j)]
        s += _lo(v) * x[U(xo + j)] + _hi(v) * x[U(xo + j + 16)]
    return s


@njit(inline="always")
def _row_q4(w, r, x, xsum, f16, block_bytes):
    acc = f32(0)
    for b in range(w.shape[1] // block_bytes):
        o = b * block_bytes
        s = _nibble_dot(w, r, o + block_bytes - 16, x, b * 32)
        if block_bytes == Q4_0_BYTES:
            acc += _f16(w, r, o, f16) * (s - f32(8) * xsum[U(b)])
        else:
            acc += _f16(w, r, o, f16) * s + _f16(w, r, o + 2, f16) * xsum[U(b)]
    return acc


@njit(inline="always")
def _matvec_q4(w, x, out, f16, block_bytes):
    rows = w.shape[0]
    xsum = _block_sums(x)
    q = block_bytes - 16  # offset of the nibbles inside a block
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for t in range(r, rows):
                out[U(t)] = _row_q4(w, t, x, xsum, f16, block_bytes)
            continue
        a0 = f32(0); a1 = f32(0); a2 = f32(0); a3 = f32(0)
        for b in range(w.shape[1] // block_bytes):
            o = b * block_bytes
            xo = b * 32
            s0 = f32(0); s1 = f32(0); s2 = f32(0); s3 = f32(0)
            for j in range(16):
                xl = x[U(xo + j)]
                xh = x[U(xo + j + 16)]
                v = w[U(r), U(o + q + j)]; s0 += _lo(v) * xl + _hi(v) * xh
                v = w[U(r + 1), U(o + q + j)]; s1 += _lo(v) * xl + _hi(v) * xh
                v = w[U(r + 2), U(o + q + j)]; s2 += _lo(v) * xl + _hi(v) * xh
                v = w[U(r + 3), U(o + q + j)]; s3 += _lo(v) * xl + _hi(v) * xh
            xs = xsum[U(b)]
            if block_bytes == Q4_0_BYTES:
                xs8 = f32(8) * xs
                a0 += _f16(w, r, o, f16) * (s0 - xs8)
                a1 += _f16(w, r + 1, o, f16) * (s1 - xs8)
                a2 += _f16(w, r + 2, o, f16) * (s2 - xs8)
                a3 += _f16(w, r + 3, o, f16) * (s3 - xs8)
            else:
                a0 += _f16(w, r, o, f16) * s0 + _f16(w, r, o + 2, f16) * xs
                a1 += _f16(w, r + 1, o, f16) * s1 + _f16(w, r + 1, o + 2, f16) * xs
                a2 += _f16(w, r + 2, o, f16) * s2 + _f16(w, r + 2, o + 2, f16) * xs
                a3 += _f16(w, r + 3, o, f16) * s3 + _f16(w, r + 3, o + 2, f16) * xs
        out[U(r)] = a0; out[U(r + 1)] = a1; out[U(r + 2)] = a2; out[U(r + 3)] = a3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_0(w, x, out, f16):
    """out = dequant(w) @ x for Q4_0 rows `w` (uint8 [rows, K/32*18])."""
    _matvec_q4(w, x, out, f16, Q4_0_BYTES)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_1(w, x, out, f16):
    """out = dequant(w) @ x for Q4_1 rows `w` (uint8 [rows, K/32*20])."""
    _matvec_q4(w, x, out, f16, Q4_1_BYTES)


# --- float weights ----------------------------------------------------------

@njit(parallel=True, fastmath=True, cache=True)
def matvec_f16(w, x, out, f16):
    """out = w @ x for float16 `w` given as its uint16 bits [rows, K]."""
    for r in prange(w.shape[0]):
        acc = f32(0)
        for k in range(w.shape[1]):
            acc += f16[U(w[U(r), U(k)])] * x[U(k)]
        out[U(r)] = acc
