"""Matrix-vector products on the integer path: out[r] = dot(W[r], x) with x quantized to int8.

One template for every block type (int8_blocks.py reads the blocks): x is
quantized once per call (q8_activations.py), then, in parallel over groups
of four rows sharing each activation load, every block contributes
d_w * d_x * dot(u, q) + m * s_x. The dot products are int8 x int8 -> int32
(int8_dot.py); each block's float scale multiplies a vector of 8 partial
sums, and the 8 lanes are summed once per row. While a group reads block b,
block b of the next group's rows is prefetched (as in matvec.py).
"""

import numpy as np
from numba import njit, prange

from .int8_blocks import Q4_0_WIDE, Q4_1_WIDE, Q8_0_WIDE, block_q4_0, block_q4_1, block_q8_0
from .int8_dot import add_scaled, dot_u8s8, lane_sum, load_bytes, zeros_float32x8, zeros_int32x8
from .llvm import prefetch
from .matvec import U, f32
from .q8_activations import QK, quantize_row


@njit(inline="always")
def _block_dot(w, r, b, q, block, wide):
    u, d, m = block(w, r, b)
    return dot_u8s8(zeros_int32x8(), u, q, wide), d, m


@njit(inline="always")
def _row(w, r, xq, xd, xs, block, wide):
    acc = zeros_float32x8()
    c = f32(0)
    for b in range(xd.shape[1]):
        dots, d, m = _block_dot(w, r, b, load_bytes(xq, 0, b * QK), block, wide)
        acc = add_scaled(acc, dots, d * xd[0, U(b)])
        c += m * xs[0, U(b)]
    return lane_sum(acc) + c


@njit(inline="always")
def _matvec(w, x, out, block, wide):
    nb = x.shape[0] // QK
    xq = np.empty((1, x.shape[0]), dtype=np.int8)
    xd = np.empty((1, nb), dtype=np.float32)
    xs = np.empty((1, nb), dtype=np.float32)
    quantize_row(x, xq, xd, xs, 0)
    block_bytes = w.shape[1] // nb
    rows = w.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for t in range(r, rows):
                out[U(t)] = _row(w, t, xq, xd, xs, block, wide)
            continue
        a0 = zeros_float32x8(); a1 = zeros_float32x8(); a2 = zeros_float32x8(); a3 = zeros_float32x8()
        c0 = f32(0); c1 = f32(0); c2 = f32(0); c3 = f32(0)
        for b in range(nb):
            for k in range(4):
                prefetch(w, U(r + 4 + k), U(b * block_bytes))
            q = load_bytes(xq, 0, b * QK)
            dx = xd[0, U(b)]
            sx = xs[0, U(b)]
            dots, d, m = _block_dot(w, r, b, q, block, wide); a0 = add_scaled(a0, dots, d * dx); c0 += m * sx
            dots, d, m = _block_dot(w, r + 1, b, q, block, wide); a1 = add_scaled(a1, dots, d * dx); c1 += m * sx
            dots, d, m = _block_dot(w, r + 2, b, q, block, wide); a2 = add_scaled(a2, dots, d * dx); c2 += m * sx
            dots, d, m = _block_dot(w, r + 3, b, q, block, wide); a3 = add_scaled(a3, dots, d * dx); c3 += m * sx
        out[U(r)] = lane_sum(a0) + c0; out[U(r + 1)] = lane_sum(a1) + c1
        out[U(r + 2)] = lane_sum(a2) + c2; out[U(r + 3)] = lane_sum(a3) + c3


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q8_0(w, x, out):
    """out = dequant(w) @ x for Q8_0 rows, x quantized to int8 (see the module docstring)."""
    _matvec(w, x, out, block_q8_0, Q8_0_WIDE)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_0(w, x, out):
    """out = dequant(w) @ x for Q4_0 rows, x quantized to int8."""
    _matvec(w, x, out, block_q4_0, Q4_0_WIDE)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_1(w, x, out):
    """out = dequant(w) @ x for Q4_1 rows, x quantized to int8."""
    _matvec(w, x, out, block_q4_1, Q4_1_WIDE)
