"""Quantizers for ggml's non-linear 4-bit types: IQ4_NL (32-value blocks) and IQ4_XS (256-value super-blocks).

Codes index a fixed table of 16 values (search.IQ4_VALUES), denser near zero
than a uniform grid, times a per-block scale found by trying 15 candidate
scales around (largest magnitude) / -127. IQ4_XS stores the eight block
scales as 6-bit integers against one float16 super-block scale. ggml has one
quantizer for each (`quantize_row_iq4_nl_impl`, with ntry 7 as llama-quantize
calls it): errors weighted by x^2 without an importance matrix (the reference
rounding), by importance * sqrt(sigma2 + x^2) with one (the search).

Layouts: IQ4_NL d, qs[16] (18 bytes per 32 values); IQ4_XS d, scales_h (uint16),
scales_l[4], qs[128] (136 bytes per 256 values).
"""

from __future__ import annotations

import numpy as np

from .packing import put_f16, put_nibbles
from .search import (GROUP_MAX_EPS, IQ4_FLOATS, best_index_iq4, clamp, column_sums, importance_weights, jit,
                     mean_squares, nearest_int, to_lanes)

f32 = np.float32
BLOCK_BYTES = {"iq4_nl": 18, "iq4_xs": 136}
NTRY = 7


@jit(cache=True)
def block_scales(xt, w, scale):
    """Each 32-value block's scale (0 for an all-zero block), in lanes: the best of 16 candidates."""
    lanes = xt.shape[1]
    state = np.zeros((6, lanes), np.float32)  # one row per per-lane variable
    vmax, amax, inv, sumqx, sumq2, best = state[0], state[1], state[2], state[3], state[4], state[5]
    for i in range(32):
        for g in range(lanes):
            a = abs(xt[i, g])
            vmax[g] = xt[i, g] if a > amax[g] else vmax[g]
            amax[g] = a if a > amax[g] else amax[g]
    for g in range(lanes):
        inv[g] = f32(1) / (-vmax[g] / IQ4_FLOATS[0])
    for i in range(32):
        for g in range(lanes):
            q = IQ4_FLOATS[best_index_iq4(inv[g] * xt[i, g])]
            sumqx[g] += w[i, g] * q * xt[i, g]
            sumq2[g] += w[i, g] * q * q
    for g in range(lanes):
        scale[g] = sumqx[g] / sumq2[g] if sumq2[g] > 0 else f32(0)
        best[g] = scale[g] * sumqx[g]
    for step in range(-NTRY, NTRY + 1):
        for g in range(lanes):
            inv[g] = f32(step + IQ4_FLOATS[0]) / vmax[g]
            sumqx[g] = f32(0)
            sumq2[g] = f32(0)
        for i in range(32):
            for g in range(lanes):
                q = IQ4_FLOATS[best_index_iq4(inv[g] * xt[i, g])]
                sumqx[g] += w[i, g] * q * xt[i, g]
                sumq2[g] += w[i, g] * q * q
        for g in range(lanes):
            better = (sumq2[g] > 0) & (sumqx[g] * sumqx[g] > best[g] * sumq2[g])
            scale[g] = sumqx[g] / sumq2[g] if better else scale[g]
            best[g] = scale[g] * sumqx[g] if better else best[g]
    for g in range(lanes):
        scale[g] = scale[g] if amax[g] >= GROUP_MAX_EPS else f32(0)


@jit(cache=True)
def _codes(xt, inv):
    """Each value's nearest code for its block's inverse scale inv[g]."""
    L = np.empty_like(xt)
    for i in range(32):
        for g in range(xt.shape[1]):
            L[i, g] = best_index_iq4(inv[g] * xt[i, g])
    return L


@jit(cache=True)
def _weights(x, importance, r, weighted, superblock):
    xt = to_lanes(x[r], 32)
    if not weighted:
        return xt, xt * xt
    sigma2 = mean_squares(x[r], superblock)
    for s in range(sigma2.shape[0]):
        sigma2[s] *= f32(2)
    return xt, importance_weights(xt, importance, sigma2, superblock // 32)


@jit(cache=True)
def _iq4_nl_row(x, importance, weighted, out, r):
    xt, w = _weights(x, importance, r, weighted, 32)
    scale = np.empty(xt.shape[1], np.float32)
    block_scales(xt, w, scale)
    for g in range(xt.shape[1]):
        put_f16(out[r], 18 * g, scale[g])
        scale[g] = f32(1) / scale[g] if scale[g] != 0 else f32(0)
    L = _codes(xt, scale)
    for g in range(xt.shape[1]):
        put_nibbles(out[r], 18 * g + 2, L, g)


@jit(cache=True)
def _iq4_xs_row(x, importance, weighted, out, r):
    xt, w = _weights(x, importance, r, weighted, 256)
    scale = np.empty(xt.shape[1], np.float32)
    block_scales(xt, w, scale)
    inv_dl = np.empty(xt.shape[1], np.float32)
    for s in range(xt.shape[1] // 8):
        o = 136 * s
        max_scale = f32(0)
        amax = f32(0)
        for b in range(8):
            if abs(scale[8 * s + b]) > amax:
                amax = abs(scale[8 * s + b])
                max_scale = scale[8 * s + b]
        d = -max_scale / f32(32)
        put_f16(out[r], o, d)
        inv = f32(1) / d if d != 0 else f32(0)
        scales_h = 0
        for b in range(8):
            q = clamp(nearest_int(inv * scale[8 * s + b]), f32(-32), f32(31))
            dl = d * q
            inv_dl[8 * s + b] = f32(1) / dl if dl != 0 else f32(0)
            q6 = np.int64(q) + 32
            if b % 2 == 0:
                out[r, o + 4 + b // 2] = q6 & 0xF
            else:
                out[r, o + 4 + b // 2] |= (q6 & 0xF) << 4
            scales_h |= (q6 >> 4) << (2 * b)
        out[r, o + 2] = scales_h & 0xFF
        out[r, o + 3] = scales_h >> 8
    L = _codes(xt, inv_dl)
    for g in range(xt.shape[1]):
        put_nibbles(out[r], 136 * (g // 8) + 8 + 16 * (g % 8), L, g)


@jit(nogil=True, cache=True)
def iq4_nl_reference(x, out):
    for r in range(x.shape[0]):
        _iq4_nl_row(x, x[0], False, out, r)


@jit(nogil=True, cache=True)
def iq4_nl_search(x, importance, out):
    for r in range(x.shape[0]):
        _iq4_nl_row(x, importance, True, out, r)


@jit(nogil=True, cache=True)
def iq4_xs_reference(x, out):
    for r in range(x.shape[0]):
        _iq4_xs_row(x, x[0], False, out, r)


@jit(nogil=True, cache=True)
def iq4_xs_search(x, importance, out):
    for r in range(x.shape[0]):
        _iq4_xs_row(x, importance, True, out, r)
