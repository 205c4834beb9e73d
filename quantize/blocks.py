"""Quantizers for ggml's 32-value block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Two roundings of the same block format, each writing exactly ggml's bytes:

- reference (`*_reference`): ggml's `quantize_row_*_ref`, what llama-quantize
  writes without an importance matrix. Q8_0/Q4_0/Q5_0: d = (value of largest
  magnitude) / -2^(bits-1), q = round(x/d); Q4_1/Q5_1: d = (max - min) / (2^bits - 1),
  m = min. The extreme value is exact, every other one may be off by d/2.
- search (`*_search`): ggml's `quantize_row_*_impl`, the error-minimising scale
  search llama-quantize runs with an importance matrix: each block's scale (and
  min) minimises sum(w (x - x')^2) with w = importance * sqrt(sigma2 + x^2),
  sigma2 the row's mean square (search.py). With unit importances this is
  cpuinfer's default rounding; the SmolLM2 Q4_0 measurement is in bench/quality.py.

Each kernel fills out[r] (uint8, the row's blocks) from x[r] (float32).
"""

from __future__ import annotations

import math

import numpy as np

from .packing import put_f16, put_fifth_bits, put_nibbles
from .search import importance_weights, jit, make_qkx_quants, make_qx_quants, mean_squares, to_lanes

f32 = np.float32
QK = 32
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}


@jit(nogil=True, cache=True)
def q8_0_reference(x, out):
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK):
            xb, o = x[r, b * QK:(b + 1) * QK], b * 34
            amax = f32(0)
            for j in range(QK):
                amax = max(amax, abs(xb[j]))
            d = amax / f32(127)
            inv = f32(1) / d if d != 0 else f32(0)
            put_f16(out[r], o, d)
            for j in range(QK):
                v = xb[j] * inv
                # roundf: |v| - floor(|v|) is exact; floor(|v| + 0.5) would round 0.49999997 up to 1
                a = abs(v)
                n = math.floor(a)
                if a - n >= f32(0.5):
                    n += 1
                out[r, o + 2 + j] = np.uint8(np.int8(math.copysign(n, v)))


@jit(inline="always")
def _symmetric_reference(xb, L, nmax):
    """Q4_0/Q5_0: d = (value of largest magnitude) / -nmax, codes min(2 nmax - 1, trunc(x/d + nmax + 0.5))."""
    amax = f32(0)
    vmax = f32(0)
    for j in range(QK):
        if abs(xb[j]) > amax:
            amax = abs(xb[j])
            vmax = xb[j]
    d = vmax / f32(-nmax)
    inv = f32(1) / d if d != 0 else f32(0)
    for j in range(QK):
        L[j, 0] = min(2 * nmax - 1, np.uint8(xb[j] * inv + f32(nmax + 0.5)))
    return d


@jit(inline="always")
def _asymmetric_reference(xb, L, nmax):
    """Q4_1/Q5_1: d = (max - min) / nmax, m = min, codes trunc((x - m)/d + 0.5) (at most 15 for Q4_1)."""
    lo = xb[0]
    hi = xb[0]
    for j in range(1, QK):
        lo = min(lo, xb[j])
        hi = max(hi, xb[j])
    d = (hi - lo) / f32(nmax)
    inv = f32(1) / d if d != 0 else f32(0)
    for j in range(QK):
        q = np.uint8((xb[j] - lo) * inv + f32(0.5))
        L[j, 0] = min(15, q) if nmax == 15 else q
    return d, lo


@jit(nogil=True, cache=True)
def q4_0_reference(x, out):
    for r in range(x.shape[0]):
        L = np.empty((QK, 1), np.float32)
        for b in range(x.shape[1] // QK):
            put_f16(out[r], b * 18, _symmetric_reference(x[r, b * QK:(b + 1) * QK], L, 8))
            put_nibbles(out[r], b * 18 + 2, L, 0)


@jit(nogil=True, cache=True)
def q5_0_reference(x, out):
    for r in range(x.shape[0]):
        L = np.empty((QK, 1), np.float32)
        for b in range(x.shape[1] // QK):
            put_f16(out[r], b * 22, _symmetric_reference(x[r, b * QK:(b + 1) * QK], L, 16))
            put_fifth_bits(out[r], b * 22 + 2, L, 0)
            put_nibbles(out[r], b * 22 + 6, L, 0)


@jit(nogil=True, cache=True)
def q4_1_reference(x, out):
    for r in range(x.shape[0]):
        L = np.empty((QK, 1), np.float32)
        for b in range(x.shape[1] // QK):
            d, m = _asymmetric_reference(x[r, b * QK:(b + 1) * QK], L, 15)
            put_f16(out[r], b * 20, d)
            put_f16(out[r], b * 20 + 2, m)
            put_nibbles(out[r], b * 20 + 4, L, 0)


@jit(nogil=True, cache=True)
def q5_1_reference(x, out):
    for r in range(x.shape[0]):
        L = np.empty((QK, 1), np.float32)
        for b in range(x.shape[1] // QK):
            d, m = _asymmetric_reference(x[r, b * QK:(b + 1) * QK], L, 31)
            put_f16(out[r], b * 24, d)
            put_f16(out[r], b * 24 + 2, m)
            put_fifth_bits(out[r], b * 24 + 4, L, 0)
            put_nibbles(out[r], b * 24 + 8, L, 0)


@jit(cache=True)
def _row_lanes(x, importance, r):
    """Row r's blocks as lanes, and their error weights (sigma2: the row's mean square)."""
    xt = to_lanes(x[r], QK)
    return xt, importance_weights(xt, importance, mean_squares(x[r], x.shape[1]), xt.shape[1])


@jit(nogil=True, cache=True)
def q4_0_search(x, importance, out):
    for r in range(x.shape[0]):
        xt, w = _row_lanes(x, importance, r)
        L, d = np.empty_like(xt), np.empty(xt.shape[1], np.float32)
        make_qx_quants(xt, w, L, 8, d)
        for b in range(xt.shape[1]):
            put_f16(out[r], b * 18, d[b])
            put_nibbles(out[r], b * 18 + 2, L, b)


@jit(nogil=True, cache=True)
def q5_0_search(x, importance, out):
    for r in range(x.shape[0]):
        xt, w = _row_lanes(x, importance, r)
        L, d = np.empty_like(xt), np.empty(xt.shape[1], np.float32)
        make_qx_quants(xt, w, L, 16, d)
        for b in range(xt.shape[1]):
            put_f16(out[r], b * 22, d[b])
            put_fifth_bits(out[r], b * 22 + 2, L, b)
            put_nibbles(out[r], b * 22 + 6, L, b)


@jit(cache=True)
def _asymmetric_search(x, importance, out, r, nmax, block_bytes):
    xt, w = _row_lanes(x, importance, r)
    L, d, m = np.empty_like(xt), np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
    make_qkx_quants(xt, w, L, nmax, -0.9, 0.05, 36, False, d, m)
    for b in range(xt.shape[1]):
        put_f16(out[r], b * block_bytes, d[b])
        put_f16(out[r], b * block_bytes + 2, -m[b])
        if nmax == 31:
            put_fifth_bits(out[r], b * block_bytes + 4, L, b)
        put_nibbles(out[r], (b + 1) * block_bytes - 16, L, b)


@jit(nogil=True, cache=True)
def q4_1_search(x, importance, out):
    for r in range(x.shape[0]):
        _asymmetric_search(x, importance, out, r, 15, 20)


@jit(nogil=True, cache=True)
def q5_1_search(x, importance, out):
    for r in range(x.shape[0]):
        _asymmetric_search(x, importance, out, r, 31, 24)
