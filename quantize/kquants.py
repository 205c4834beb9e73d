"""Quantizers for ggml's K-quants: 256-value super-blocks of 16- or 32-value sub-blocks.

Each sub-block gets its own scale (and min) from an error-minimising search
(search.py, all sub-blocks of a row at once as lanes); the sub-scales are then
quantized to 4, 6 or 8 bits against one float16 super-block scale, and every
value is re-rounded against the scales as stored. Two roundings, each writing
exactly ggml's bytes:

- reference (`*_reference`): `quantize_row_q*_K_ref`, what llama-quantize writes
  without an importance matrix; the sub-scales are rounded against their max.
- search (`*_search`): `quantize_row_q*_K_impl`, what it writes with one: the
  error of each value is weighted by importance * sqrt(sigma2 + x^2) (sigma2:
  the super-block's mean square), the searches try more scales, and the
  sub-scales are themselves fitted (make_qp_quants / make_qx_quants).

Layouts (bytes per 256 values): Q2_K 84, Q3_K 110, Q4_K 144, Q5_K 176, Q6_K 210.
"""

from __future__ import annotations

import numpy as np

from .packing import code, k4_scale_min, put_2bit_planes, put_f16, put_k4_scales, super_code
from .search import (GROUP_MAX_EPS, clamp, column_sums, importance_weights, jit, make_q3_quants, make_qkx_quants,
                     make_qp_quants, make_qx_quants, mean_squares, nearest_int, to_lanes, wrap_u8)

f32 = np.float32
QK_K = 256
BLOCK_BYTES = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}


@jit(cache=True)
def _search_weights(x, importance, r, n, sigma2_factor):
    """Row r as lanes of n values, with ggml's importance weights (sigma2 = factor * super-block mean square)."""
    xt = to_lanes(x[r], n)
    sigma2 = mean_squares(x[r], QK_K)
    for s in range(sigma2.shape[0]):
        sigma2[s] *= f32(sigma2_factor)
    return xt, importance_weights(xt, importance, sigma2, QK_K // n)


@jit(cache=True)
def _requantize(xt, L, dl, ml, lo, hi):
    """Codes clamp(round((x + ml) / dl), lo, hi) of every sub-block whose stored scale dl is not 0."""
    for i in range(xt.shape[0]):
        for g in range(xt.shape[1]):
            q = clamp(nearest_int((xt[i, g] + ml[g]) / dl[g]), f32(lo), f32(hi))
            L[i, g] = q if dl[g] != 0 else L[i, g]


@jit(inline="always")
def _max_of(v, s, n):
    """ggml's running max over v[n s : n s + n], from 0."""
    best = f32(0)
    for j in range(n * s, n * s + n):
        best = v[j] if v[j] > best else best
    return best


# --------------------------------------------------------------------------
# Q2_K: 16 x 16 values, 2-bit codes, 4-bit scales and mins; scales | mins << 4 [16], qs[64], d, dmin
# --------------------------------------------------------------------------


@jit(cache=True)
def _q2_k_finish(xt, L, out, d, dmin):
    """Re-round against the stored scales and mins (d, dmin: the super-block scales as stored), pack the codes."""
    dl, ml = np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
    for g in range(xt.shape[1]):
        s, sc = g // 16, np.int64(out[84 * (g // 16) + g % 16])
        dl[g] = d[s] * f32(sc & 0xF)
        ml[g] = dmin[s] * f32(sc >> 4)
    _requantize(xt, L, dl, ml, 0, 3)
    for s in range(xt.shape[1] // 16):
        put_2bit_planes(out, 84 * s + 16, L, s)


@jit(nogil=True, cache=True)
def q2_k_reference(x, out):
    for r in range(x.shape[0]):
        xt = to_lanes(x[r], 16)
        w = np.abs(xt)
        L, scales, mins = np.empty_like(xt), np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
        make_qkx_quants(xt, w, L, 3, -0.5, 0.1, 15, True, scales, mins)
        nsuper = xt.shape[1] // 16
        d, dmin = np.zeros(nsuper, np.float32), np.zeros(nsuper, np.float32)
        for s in range(nsuper):
            o = 84 * s
            max_scale, max_min = _max_of(scales, s, 16), _max_of(mins, s, 16)
            for j in range(16):
                out[r, o + j] = np.int64(nearest_int(f32(15) / max_scale * scales[16 * s + j])) if max_scale > 0 else 0
            d[s] = put_f16(out[r], o + 80, max_scale / f32(15) if max_scale > 0 else f32(0))
            if max_min > 0:
                for j in range(16):
                    out[r, o + j] |= np.int64(nearest_int(f32(15) / max_min * mins[16 * s + j])) << 4
            dmin[s] = put_f16(out[r], o + 82, max_min / f32(15) if max_min > 0 else f32(0))
        _q2_k_finish(xt, L, out[r], d, dmin)


@jit(nogil=True, cache=True)
def q2_k_search(x, importance, out):
    for r in range(x.shape[0]):
        xt, w = _search_weights(x, importance, r, 16, 1)
        L, scales, mins = np.empty_like(xt), np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
        make_qkx_quants(xt, w, L, 3, -0.9, 0.05, 36, False, scales, mins)
        sw = to_lanes(column_sums(w), 16)
        scales_t, mins_t = to_lanes(scales, 16), to_lanes(mins, 16)
        Ls, Lm = np.empty_like(scales_t), np.empty_like(mins_t)
        dm, mm = np.empty(sw.shape[1], np.float32), np.empty(sw.shape[1], np.float32)
        make_qp_quants(scales_t, Ls, 15, sw, dm)
        make_qp_quants(mins_t, Lm, 15, sw, mm)
        for s in range(sw.shape[1]):
            o = 84 * s
            dm[s] = put_f16(out[r], o + 80, dm[s])
            mm[s] = put_f16(out[r], o + 82, mm[s])
            for j in range(16):
                out[r, o + j] = code(Ls, s, j) | (code(Lm, s, j) << 4)
        _q2_k_finish(xt, L, out[r], dm, mm)


# --------------------------------------------------------------------------
# Q3_K: 16 x 16 values, 3-bit codes (2 low bits + a high-bit mask), 6-bit signed scales;
# hmask[32], qs[64], scales[12], d
# --------------------------------------------------------------------------


@jit(cache=True)
def _q3_k_put_scales(out, o, Ls, s):
    """Super-block s's sixteen 6-bit scales (offset by 32): low nibbles in bytes 0-7, high 2 bits in bytes 8-11."""
    for j in range(12):
        out[o + j] = 0
    for j in range(16):
        q = code(Ls, s, j)
        if j < 8:
            out[o + j] = q & 0xF
        else:
            out[o + j - 8] |= (q & 0xF) << 4
        out[o + 8 + j % 4] |= (q >> 4) << (2 * (j // 4))


@jit(cache=True)
def _q3_k_finish(xt, L, out, d):
    dl, zero = np.empty(xt.shape[1], np.float32), np.zeros(xt.shape[1], np.float32)
    for g in range(xt.shape[1]):
        o, j = 110 * (g // 16) + 96, g % 16
        low = np.int64(out[o + j]) & 0xF if j < 8 else np.int64(out[o + j - 8]) >> 4
        sc = (low | ((np.int64(out[o + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4) - 32
        dl[g] = d[g // 16] * f32(sc)
    L -= f32(4)  # _requantize's codes are signed; the search's are offset
    _requantize(xt, L, dl, zero, -4, 3)
    for s in range(xt.shape[1] // 16):
        o = 110 * s
        # the high bit of code p goes to bit p // 32 of hmask byte p % 32; the low 2 bits to qs
        for m in range(32):
            out[o + m] = 0
        for p in range(QK_K):
            g, i = 16 * s + p // 16, p % 16
            L[i, g] += f32(4)
            if L[i, g] > 3:
                out[o + p % 32] |= 1 << (p // 32)
        put_2bit_planes(out, o + 32, L, s)


@jit(nogil=True, cache=True)
def q3_k_reference(x, out):
    for r in range(x.shape[0]):
        xt = to_lanes(x[r], 16)
        L, scales = np.empty_like(xt), np.empty(xt.shape[1], np.float32)
        make_q3_quants(xt, L, 4, scales)
        nsuper = xt.shape[1] // 16
        Ls, d = np.zeros((16, nsuper), np.float32), np.zeros(nsuper, np.float32)
        for s in range(nsuper):
            max_scale = f32(0)
            amax = f32(0)
            for j in range(16):
                if abs(scales[16 * s + j]) > amax:
                    amax = abs(scales[16 * s + j])
                    max_scale = scales[16 * s + j]
            if max_scale != 0:
                iscale = f32(-32) / max_scale
                for j in range(16):
                    Ls[j, s] = clamp(nearest_int(iscale * scales[16 * s + j]), f32(-32), f32(31)) + f32(32)
                d[s] = put_f16(out[r], 110 * s + 108, f32(1) / iscale)
            else:
                d[s] = put_f16(out[r], 110 * s + 108, f32(0))
            _q3_k_put_scales(out[r], 110 * s + 96, Ls, s)
        _q3_k_finish(xt, L, out[r], d)


@jit(nogil=True, cache=True)
def q3_k_search(x, importance, out):
    for r in range(x.shape[0]):
        xt, w = _search_weights(x, importance, r, 16, 2)
        L, scales = np.empty_like(xt), np.empty(xt.shape[1], np.float32)
        make_qx_quants(xt, w, L, 4, scales)
        scales_t, sw = to_lanes(scales, 16), to_lanes(column_sums(w), 16)
        Ls, d = np.empty_like(scales_t), np.empty(sw.shape[1], np.float32)
        make_qx_quants(scales_t, sw, Ls, 32, d)
        for s in range(sw.shape[1]):
            _q3_k_put_scales(out[r], 110 * s + 96, Ls, s)
            d[s] = put_f16(out[r], 110 * s + 108, d[s])
        _q3_k_finish(xt, L, out[r], d)


# --------------------------------------------------------------------------
# Q4_K / Q5_K: 8 x 32 values, 4/5-bit codes, 6-bit scales and mins; d, dmin, scales[12], (qh[32]), qs[128]
# --------------------------------------------------------------------------


@jit(cache=True)
def _k4_finish(xt, L, out, Ls, Lm, d, dmin, nmax, block_bytes):
    """Store the super-block scales, re-round every value against them as stored, pack the codes."""
    dl, ml = np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
    for s in range(Ls.shape[1]):
        o = block_bytes * s
        put_k4_scales(out, o + 4, Ls, Lm, s)
        ds, dmins = put_f16(out, o, d[s]), put_f16(out, o + 2, dmin[s])
        for j in range(8):
            sc, m = k4_scale_min(out, o + 4, j)
            dl[8 * s + j] = ds * f32(sc)
            ml[8 * s + j] = dmins * f32(m)
    _requantize(xt, L, dl, ml, 0, nmax)
    for s in range(Ls.shape[1]):
        o = block_bytes * s + 16
        if nmax == 15:  # Q4_K: per 64 codes, code p in the low nibble of byte p, code p + 32 in its high one
            for p in range(0, QK_K, 64):
                for i in range(32):
                    out[o + p // 2 + i] = super_code(L, s, p + i) | (super_code(L, s, p + i + 32) << 4)
        else:  # Q5_K: the same nibbles after qh[32], whose bits 2k and 2k + 1 are bit 4 of codes 64 k + i (+ 32)
            for i in range(32):
                out[o + i] = 0
            for k in range(4):
                for i in range(32):
                    lo, hi = super_code(L, s, 64 * k + i), super_code(L, s, 64 * k + i + 32)
                    out[o + i] |= ((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1))
                    out[o + 32 + 32 * k + i] = (lo & 0xF) | ((hi & 0xF) << 4)


@jit(cache=True)
def _k4_reference(x, out, r, nmax, rmin, nstep, block_bytes):
    xt = to_lanes(x[r], 32)
    av_x = np.sqrt(column_sums(xt * xt) / f32(32))
    w = np.empty_like(xt)
    for i in range(32):
        for g in range(xt.shape[1]):
            w[i, g] = av_x[g] + abs(xt[i, g])
    L, scales, mins = np.empty_like(xt), np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
    make_qkx_quants(xt, w, L, nmax, rmin, 0.1, nstep, False, scales, mins)
    nsuper = xt.shape[1] // 8
    Ls, Lm = np.empty((8, nsuper), np.float32), np.empty((8, nsuper), np.float32)
    d, dmin = np.empty(nsuper, np.float32), np.empty(nsuper, np.float32)
    for s in range(nsuper):
        max_scale, max_min = _max_of(scales, s, 8), _max_of(mins, s, 8)
        inv_scale = f32(63) / max_scale if max_scale > 0 else f32(0)
        inv_min = f32(63) / max_min if max_min > 0 else f32(0)
        for j in range(8):
            Ls[j, s] = min(f32(63), wrap_u8(nearest_int(inv_scale * scales[8 * s + j])))
            Lm[j, s] = min(f32(63), wrap_u8(nearest_int(inv_min * mins[8 * s + j])))
        d[s] = max_scale / f32(63)
        dmin[s] = max_min / f32(63)
    _k4_finish(xt, L, out[r], Ls, Lm, d, dmin, nmax, block_bytes)


@jit(cache=True)
def _k4_search(x, importance, out, r, nmax, block_bytes):
    xt, w = _search_weights(x, importance, r, 32, 2)
    L, scales, mins = np.empty_like(xt), np.empty(xt.shape[1], np.float32), np.empty(xt.shape[1], np.float32)
    make_qkx_quants(xt, w, L, nmax, -0.9, 0.05, 36, False, scales, mins)
    scales_t, mins_t, sw = to_lanes(scales, 8), to_lanes(mins, 8), to_lanes(column_sums(w), 8)
    Ls, Lm = np.empty_like(scales_t), np.empty_like(mins_t)
    d, dmin = np.empty(sw.shape[1], np.float32), np.empty(sw.shape[1], np.float32)
    make_qp_quants(scales_t, Ls, 63, sw, d)
    make_qp_quants(mins_t, Lm, 63, sw, dmin)
    if nmax == 31:  # ggml's Q5_K clamps the fitted codes; Q4_K does not
        for j in range(8):
            for s in range(sw.shape[1]):
                Ls[j, s] = min(f32(63), Ls[j, s])
                Lm[j, s] = min(f32(63), Lm[j, s])
    _k4_finish(xt, L, out[r], Ls, Lm, d, dmin, nmax, block_bytes)


@jit(nogil=True, cache=True)
def q4_k_reference(x, out):
    for r in range(x.shape[0]):
        _k4_reference(x, out, r, 15, -1.0, 20, 144)


@jit(nogil=True, cache=True)
def q5_k_reference(x, out):
    for r in range(x.shape[0]):
        _k4_reference(x, out, r, 31, -0.5, 15, 176)


@jit(nogil=True, cache=True)
def q4_k_search(x, importance, out):
    for r in range(x.shape[0]):
        _k4_search(x, importance, out, r, 15, 144)


@jit(nogil=True, cache=True)
def q5_k_search(x, importance, out):
    for r in range(x.shape[0]):
        _k4_search(x, importance, out, r, 31, 176)


# --------------------------------------------------------------------------
# Q6_K: 16 x 16 values, 6-bit codes (4 low bits + 2 high bits), 8-bit signed scales; ql[128], qh[64], scales[16], d
# --------------------------------------------------------------------------


@jit(cache=True)
def _q6_k_row(xt, w, out):
    """One row as lanes; w: the error weights (x^2 for the reference rounding, the importances for the search)."""
    L, scales = np.empty_like(xt), np.empty(xt.shape[1], np.float32)
    make_qx_quants(xt, w, L, 32, scales)
    nsuper = xt.shape[1] // 16
    dl, zero_block = np.zeros(xt.shape[1], np.float32), np.zeros(nsuper, np.bool_)
    for s in range(nsuper):
        o = 210 * s
        max_scale = f32(0)
        max_abs = f32(0)
        for j in range(16):
            if abs(scales[16 * s + j]) > max_abs:
                max_abs = abs(scales[16 * s + j])
                max_scale = scales[16 * s + j]
        zero_block[s] = max_abs < GROUP_MAX_EPS  # all-zero bytes
        if zero_block[s]:
            out[o:o + 210] = 0
            continue
        iscale = f32(-128) / max_scale
        d = put_f16(out, o + 208, f32(1) / iscale)
        for j in range(16):
            sc = np.int8(np.int64(min(f32(127), nearest_int(iscale * scales[16 * s + j]))))
            out[o + 192 + j] = np.uint8(sc)
            dl[16 * s + j] = d * f32(sc)
    L -= f32(32)  # _requantize's codes are signed; the search's are offset
    _requantize(xt, L, dl, np.zeros(xt.shape[1], np.float32), -32, 31)
    for s in range(nsuper):
        if zero_block[s]:
            continue
        o = 210 * s
        for h in range(2):  # per 128 codes: ql[64] (codes l, l+32 | l+64, l+96 as nibbles), qh[32] (2 high bits)
            for i in range(32):
                p = 128 * h + i
                q1, q2 = super_code(L, s, p) + 32, super_code(L, s, p + 32) + 32
                q3, q4 = super_code(L, s, p + 64) + 32, super_code(L, s, p + 96) + 32
                out[o + 64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                out[o + 64 * h + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                out[o + 128 + 32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)


@jit(nogil=True, cache=True)
def q6_k_reference(x, out):
    for r in range(x.shape[0]):
        xt = to_lanes(x[r], 16)
        _q6_k_row(xt, xt * xt, out[r])


@jit(nogil=True, cache=True)
def q6_k_search(x, importance, out):
    # ggml weights Q6_K's error by the importances alone (no sqrt(sigma2 + x^2) factor)
    for r in range(x.shape[0]):
        _q6_k_row(to_lanes(x[r], 16), to_lanes(importance, 16), out[r])
