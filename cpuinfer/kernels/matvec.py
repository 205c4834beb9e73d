"""Matrix-vector products straight from ggml blocks: out[r] = dot(W[r], x).

One kernel per block type, parallel over groups of four rows. Each group
shares every activation load among its four rows and keeps, per row, a vector
of per-lane partial sums (stack_zeros) across all the row's blocks: each
block's products are scaled by the block's f16 scale and added lane by lane,
and the lanes are summed once at the end of the row. While a group reads
offset o of its rows, offset o of the next group's rows is prefetched (a
fixed distance of four rows works for short and long rows alike; prefetching
along the same row measured 3x slower on 576-wide Q8_0 rows). Tail rows
(rows % 4) take the one-row helpers.

Block layouts (ggml):
  Q8_0: f16 d | 32 x int8 q                      value = d * q
  Q4_0: f16 d | 16 bytes, lo nibble = element j,  value = d * (q - 8)
              hi nibble = element j + 16
  Q4_1: f16 d | f16 m | 16 bytes as Q4_0          value = d * q + m
For Q4_0 sum_j d*(q_j - 8)*x_j = d*sum_j q_j*x_j - 8*d*sum_j x_j, and for Q4_1
sum_j (d*q_j + m)*x_j = d*sum_j q_j*x_j + m*sum_j x_j: the block sums of x are
computed once per call.
"""

import numpy as np
from numba import njit, prange

from .llvm import half_to_float, prefetch, stack_zeros

U = np.uintp
f32 = np.float32
i32 = np.int32
LO, SHIFT = np.uint8(15), np.uint8(4)
Q8_0_BYTES, Q4_0_BYTES, Q4_1_BYTES = 34, 18, 20


@njit(inline="always")
def _f16(w, r, o):
    """The float16 stored little-endian at bytes o, o+1 of row r, as float32."""
    return half_to_float(w[U(r), U(o)] | (i32(w[U(r), U(o + 1)]) << 8))


@njit(inline="always")
def _lo(v):
    # np.bitwise_and keeps uint8 (the & operator widens to int64, and 64-bit lanes vectorize 4x worse)
    return f32(np.bitwise_and(v, LO))


@njit(inline="always")
def _hi(v):
    return f32(np.right_shift(v, SHIFT))


@njit(inline="always")
def _block_sums(x, n=32):
    """sum(x[b*n:(b+1)*n]) for every block b of n values."""
    nb = x.shape[0] // n
    s = np.zeros(nb, dtype=np.float32)
    for b in range(nb):
        acc = f32(0)
        for j in range(n):
            acc += x[U(b * n + j)]
        s[U(b)] = acc
    return s


@njit(inline="always")
def _lane_sum(acc):
    total = f32(0)
    for j in range(acc.shape[0]):
        total += acc[U(j)]
    return total


# --- Q8_0 -------------------------------------------------------------------

@njit(inline="always")
def _row_q8_0(w, r, x):
    acc = f32(0)
    for b in range(w.shape[1] // Q8_0_BYTES):
        o = b * Q8_0_BYTES
        s = f32(0)
        for j in range(32):
            s += f32(np.int8(w[U(r), U(o + 2 + j)])) * x[U(b * 32 + j)]
        acc += _f16(w, r, o) * s
    return acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q8_0(w, x, out):
    """out[r] = sum_k dequant(w)[r, k] * x[k] for Q8_0 rows `w` (uint8 [rows, K/32*34])."""
    rows = w.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for t in range(r, rows):
                out[U(t)] = _row_q8_0(w, t, x)
            continue
        a0 = stack_zeros(32); a1 = stack_zeros(32); a2 = stack_zeros(32); a3 = stack_zeros(32)
        for b in range(w.shape[1] // Q8_0_BYTES):
            o = b * Q8_0_BYTES
            for k in range(4):
                prefetch(w, U(r + 4 + k), U(o))
            d0 = _f16(w, r, o); d1 = _f16(w, r + 1, o)
            d2 = _f16(w, r + 2, o); d3 = _f16(w, r + 3, o)
            for j in range(32):
                xv = x[U(b * 32 + j)]
                a0[j] += d0 * (f32(np.int8(w[U(r), U(o + 2 + j)])) * xv)
                a1[j] += d1 * (f32(np.int8(w[U(r + 1), U(o + 2 + j)])) * xv)
                a2[j] += d2 * (f32(np.int8(w[U(r + 2), U(o + 2 + j)])) * xv)
                a3[j] += d3 * (f32(np.int8(w[U(r + 3), U(o + 2 + j)])) * xv)
        out[U(r)] = _lane_sum(a0); out[U(r + 1)] = _lane_sum(a1)
        out[U(r + 2)] = _lane_sum(a2); out[U(r + 3)] = _lane_sum(a3)


# --- Q4_0 / Q4_1 ------------------------------------------------------------

@njit(inline="always")
def _offset_part(w, r, o, xs, block_bytes):
    """The block's constant term: -8*d*sum(x) for Q4_0, m*sum(x) for Q4_1."""
    if block_bytes == Q4_0_BYTES:
        return f32(-8) * _f16(w, r, o) * xs
    return _f16(w, r, o + 2) * xs


@njit(inline="always")
def _row_q4(w, r, x, xsum, block_bytes):
    acc = f32(0)
    for b in range(w.shape[1] // block_bytes):
        o = b * block_bytes
        q = o + block_bytes - 16
        s = f32(0)
        for j in range(16):
            v = w[U(r), U(q + j)]
            s += _lo(v) * x[U(b * 32 + j)] + _hi(v) * x[U(b * 32 + j + 16)]
        acc += _f16(w, r, o) * s + _offset_part(w, r, o, xsum[U(b)], block_bytes)
    return acc


@njit(inline="always")
def _matvec_q4(w, x, out, block_bytes):
    rows = w.shape[0]
    xsum = _block_sums(x)
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for t in range(r, rows):
                out[U(t)] = _row_q4(w, t, x, xsum, block_bytes)
            continue
        a0 = stack_zeros(16); a1 = stack_zeros(16); a2 = stack_zeros(16); a3 = stack_zeros(16)
        c0 = f32(0); c1 = f32(0); c2 = f32(0); c3 = f32(0)
        for b in range(w.shape[1] // block_bytes):
            o = b * block_bytes
            q = o + block_bytes - 16  # the nibbles
            xo = b * 32
            for k in range(4):
                prefetch(w, U(r + 4 + k), U(o))
            d0 = _f16(w, r, o); d1 = _f16(w, r + 1, o)
            d2 = _f16(w, r + 2, o); d3 = _f16(w, r + 3, o)
            for j in range(16):
                xl = x[U(xo + j)]
                xh = x[U(xo + j + 16)]
                v = w[U(r), U(q + j)]; a0[j] += d0 * (_lo(v) * xl + _hi(v) * xh)
                v = w[U(r + 1), U(q + j)]; a1[j] += d1 * (_lo(v) * xl + _hi(v) * xh)
                v = w[U(r + 2), U(q + j)]; a2[j] += d2 * (_lo(v) * xl + _hi(v) * xh)
                v = w[U(r + 3), U(q + j)]; a3[j] += d3 * (_lo(v) * xl + _hi(v) * xh)
            xs = xsum[U(b)]
            c0 += _offset_part(w, r, o, xs, block_bytes)
            c1 += _offset_part(w, r + 1, o, xs, block_bytes)
            c2 += _offset_part(w, r + 2, o, xs, block_bytes)
            c3 += _offset_part(w, r + 3, o, xs, block_bytes)
        out[U(r)] = _lane_sum(a0) + c0; out[U(r + 1)] = _lane_sum(a1) + c1
        out[U(r + 2)] = _lane_sum(a2) + c2; out[U(r + 3)] = _lane_sum(a3) + c3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_0(w, x, out):
    """out = dequant(w) @ x for Q4_0 rows `w` (uint8 [rows, K/32*18])."""
    _matvec_q4(w, x, out, Q4_0_BYTES)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_q4_1(w, x, out):
    """out = dequant(w) @ x for Q4_1 rows `w` (uint8 [rows, K/32*20])."""
    _matvec_q4(w, x, out, Q4_1_BYTES)


# --- float16 weights --------------------------------------------------------

@njit(inline="always")
def _row_f16(w, r, x):
    acc = f32(0)
    for k in range(w.shape[1]):
        acc += half_to_float(w[U(r), U(k)]) * x[U(k)]
    return acc


@njit(parallel=True, fastmath=True, cache=True)
def matvec_f16(w, x, out):
    """out = w @ x for float16 `w` given as its uint16 bits [rows, K] (K a multiple of 16)."""
    rows = w.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows or w.shape[1] % 16:
            for t in range(r, min(r + 4, rows)):
                out[U(t)] = _row_f16(w, t, x)
            continue
        a0 = stack_zeros(16); a1 = stack_zeros(16); a2 = stack_zeros(16); a3 = stack_zeros(16)
        for c in range(w.shape[1] // 16):
            o = c * 16
            for k in range(4):
                prefetch(w, U(r + 4 + k), U(o))
            for j in range(16):
                xv = x[U(o + j)]
                a0[j] += half_to_float(w[U(r), U(o + j)]) * xv
                a1[j] += half_to_float(w[U(r + 1), U(o + j)]) * xv
                a2[j] += half_to_float(w[U(r + 2), U(o + j)]) * xv
                a3[j] += half_to_float(w[U(r + 3), U(o + j)]) * xv
        out[U(r)] = _lane_sum(a0); out[U(r + 1)] = _lane_sum(a1)
        out[U(r + 2)] = _lane_sum(a2); out[U(r + 3)] = _lane_sum(a3)
