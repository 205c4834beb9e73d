"""The scale searches behind ggml's quantizers (ggml-quants.c), shared by every block type.

Each function quantizes groups of values to integer codes, choosing per group
the scale (and min) that minimises the weighted squared error
sum(w (x - scale L)^2), as llama.cpp's `make_qx_quants` & co do, in the same
float32 operations in the same order: a quantizer built from them writes
ggml's bytes exactly. Every literal and integer is cast to float32 before it
meets a float32 (numba would otherwise compute in float64), and nothing is
compiled with fastmath (which would reorder the sums).

Lanes: the groups are the columns of x [n, lanes] (n values per group), so
the innermost loops run across groups, each lane doing one group's
sequential arithmetic. That is the only order LLVM can vectorize without
reassociating a sum; it made the Q4_K search 3.3-3.6x faster than one group
at a time (one thread, 128 lanes, measured side by side). Codes are kept as
float32 integers so a lane never leaves the float registers; branches of the
C code become per-lane selects.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

f32 = np.float32
# Division by zero gives inf/nan as in C: numba's default raises ZeroDivisionError instead, which inside a
# parallel loop silently leaves the rest of a thread's rows unwritten.
jit = functools.partial(njit, error_model="numpy")
GROUP_MAX_EPS = f32(1e-15)
# IQ4_NL's 16 code values
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
IQ4_FLOATS = IQ4_VALUES.astype(np.float32)


@jit(inline="always")
def nearest_int(v):
    """ggml's nearest_int (round half to even) as a float32 integer; + 0 turns -0 into 0 as C's int does."""
    return np.rint(v) + f32(0)


@jit(inline="always")
def clamp(v, lo, hi):
    return min(hi, max(lo, v))


@jit(inline="always")
def wrap_u8(q):
    """The value a C uint8_t holds after `= q` (the searches store negative codes only in odd corners)."""
    return q - f32(256) * np.floor(q / f32(256))


@jit(cache=True)
def make_qx_quants(x, w, L, nmax, scale):
    """Symmetric codes L = q + nmax, q in [-nmax, nmax - 1], x ~ scale * q (ggml's rmse_type 1 with weights w).

    Starts from the scale that maps the value of largest magnitude to -nmax,
    then tries 18 nearby ones; for each the optimal scale given the codes is
    sum(w x q) / sum(w q^2). x, w, L: [n, lanes]; scale: [lanes] (output).
    """
    n, lanes = x.shape
    fmax = f32(nmax)
    state = np.zeros((7, lanes), np.float32)  # one row per per-lane variable
    vmax, amax, iscale, sumlx, suml2, best, code_iscale = (state[0], state[1], state[2], state[3], state[4], state[5],
                                                           state[6])
    for i in range(n):
        for g in range(lanes):
            a = abs(x[i, g])
            vmax[g] = x[i, g] if a > amax[g] else vmax[g]
            amax[g] = a if a > amax[g] else amax[g]
    for k in range(19):
        # first ggml's initial rounding (step 0), which sets the scale unconditionally, then steps -9..-1, 1..9
        step = 0 if k == 0 else k - 10 if k < 10 else k - 9
        for g in range(lanes):
            iscale[g] = -(fmax + f32(0.1) * f32(step)) / vmax[g] if step != 0 else -fmax / vmax[g]
            sumlx[g] = f32(0)
            suml2[g] = f32(0)
        for i in range(n):
            for g in range(lanes):
                q = clamp(nearest_int(iscale[g] * x[i, g]), -fmax, fmax - f32(1))
                sumlx[g] += w[i, g] * x[i, g] * q
                suml2[g] += w[i, g] * q * q
        for g in range(lanes):
            if step == 0:
                scale[g] = sumlx[g] / suml2[g] if suml2[g] != 0 else f32(0)
                best[g] = scale[g] * sumlx[g]
                code_iscale[g] = iscale[g]
            else:
                better = (suml2[g] > 0) & (sumlx[g] * sumlx[g] > best[g] * suml2[g])
                scale[g] = sumlx[g] / suml2[g] if better else scale[g]
                best[g] = scale[g] * sumlx[g] if better else best[g]
                code_iscale[g] = iscale[g] if better else code_iscale[g]
    for i in range(n):
        for g in range(lanes):
            q = clamp(nearest_int(code_iscale[g] * x[i, g]), -fmax, fmax - f32(1))
            L[i, g] = q + fmax if amax[g] >= GROUP_MAX_EPS else f32(0)
    for g in range(lanes):
        scale[g] = scale[g] if amax[g] >= GROUP_MAX_EPS else f32(0)


@jit(cache=True)
def make_q3_quants(x, L, nmax, scale):
    """Q3_K's symmetric codes (weights x^2): a first rounding, then 5 passes moving single codes.

    (ggml stops early once a pass changes nothing; the passes after that would
    change nothing either, so running all 5 gives the same codes.)"""
    n, lanes = x.shape
    fmax = f32(nmax)
    state = np.zeros((5, lanes), np.float32)  # one row per per-lane variable
    vmax, amax, iscale, sumlx, suml2 = state[0], state[1], state[2], state[3], state[4]
    for i in range(n):
        for g in range(lanes):
            a = abs(x[i, g])
            vmax[g] = x[i, g] if a > amax[g] else vmax[g]
            amax[g] = a if a > amax[g] else amax[g]
    for g in range(lanes):
        iscale[g] = -fmax / vmax[g]
    for i in range(n):
        for g in range(lanes):
            q = clamp(nearest_int(iscale[g] * x[i, g]), -fmax, fmax - f32(1))
            L[i, g] = q
            w = x[i, g] * x[i, g]
            sumlx[g] += w * x[i, g] * q
            suml2[g] += w * q * q
    for _ in range(5):
        for i in range(n):
            for g in range(lanes):
                w = x[i, g] * x[i, g]
                slx = sumlx[g] - w * x[i, g] * L[i, g]
                sl2 = suml2[g] - w * L[i, g] * L[i, g]
                q = clamp(nearest_int(x[i, g] * sl2 / slx), -fmax, fmax - f32(1))
                take = (slx > 0) & (q != L[i, g])
                slx += w * x[i, g] * q
                sl2 += w * q * q
                take = take & (sl2 > 0) & (slx * slx * suml2[g] > sumlx[g] * sumlx[g] * sl2)
                L[i, g] = q if take else L[i, g]
                sumlx[g] = slx if take else sumlx[g]
                suml2[g] = sl2 if take else suml2[g]
    for i in range(n):
        for g in range(lanes):
            L[i, g] = L[i, g] + fmax if amax[g] >= GROUP_MAX_EPS else f32(0)
    for g in range(lanes):
        ok = amax[g] >= GROUP_MAX_EPS
        scale[g] = (sumlx[g] / suml2[g] if suml2[g] > 0 else f32(0)) if ok else f32(0)


@jit(cache=True)
def make_qkx_quants(x, w, L, nmax, rmin, rdelta, nstep, use_mad, scale, the_min):
    """Asymmetric codes L in [0, nmax], x ~ scale * L - min (ggml's make_qkx2_quants, = make_qkx3 with weights).

    Tries nstep + 1 scales (nmax + rmin + rdelta k) / (max - min); for each, the
    least-squares scale and min given the codes. x, w, L: [n, lanes];
    scale, the_min: [lanes] outputs (the_min >= 0).
    """
    n, lanes = x.shape
    fmax = f32(nmax)
    rmin, rdelta = f32(rmin), f32(rdelta)
    state = np.empty((15, lanes), np.float32)  # one row per per-lane variable
    lo, hi, sum_w, sum_x, best, iscale, sum_l, sum_l2 = (state[0], state[1], state[2], state[3], state[4], state[5],
                                                         state[6], state[7])
    sum_xl, this_scale, this_min, error, flat, code_iscale, code_lo = (state[8], state[9], state[10], state[11],
                                                                       state[12], state[13], state[14])
    Laux = np.empty_like(L)
    for g in range(lanes):
        lo[g] = x[0, g]
        hi[g] = x[0, g]
        sum_w[g] = w[0, g]
        sum_x[g] = w[0, g] * x[0, g]
    for i in range(1, n):
        for g in range(lanes):
            lo[g] = x[i, g] if x[i, g] < lo[g] else lo[g]
            hi[g] = x[i, g] if x[i, g] > hi[g] else hi[g]
            sum_w[g] += w[i, g]
            sum_x[g] += w[i, g] * x[i, g]
    for g in range(lanes):
        lo[g] = f32(0) if lo[g] > 0 else lo[g]
        flat[g] = f32(1) if hi[g] == lo[g] else f32(0)
        iscale[g] = fmax / (hi[g] - lo[g])
        scale[g] = f32(1) / iscale[g]
        best[g] = f32(0)
        code_iscale[g] = iscale[g]
        code_lo[g] = lo[g]
    for i in range(n):
        for g in range(lanes):
            q = clamp(nearest_int(iscale[g] * (x[i, g] - lo[g])), f32(0), fmax)
            diff = scale[g] * q + lo[g] - x[i, g]
            best[g] += w[i, g] * (abs(diff) if use_mad else diff * diff)
    for step in range(nstep + 1):
        for g in range(lanes):
            iscale[g] = (rmin + rdelta * f32(step) + fmax) / (hi[g] - lo[g])
            sum_l[g] = f32(0)
            sum_l2[g] = f32(0)
            sum_xl[g] = f32(0)
        for i in range(n):
            for g in range(lanes):
                q = clamp(nearest_int(iscale[g] * (x[i, g] - lo[g])), f32(0), fmax)
                Laux[i, g] = q
                sum_l[g] += w[i, g] * q
                sum_l2[g] += w[i, g] * q * q
                sum_xl[g] += w[i, g] * q * x[i, g]
        for g in range(lanes):
            D = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g]
            s = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / D
            m = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / D
            this_scale[g] = sum_xl[g] / sum_l2[g] if m > 0 else s
            this_min[g] = f32(0) if m > 0 else m
            error[g] = f32(0) if D > 0 else np.inf
        for i in range(n):
            for g in range(lanes):
                diff = this_scale[g] * Laux[i, g] + this_min[g] - x[i, g]
                error[g] += w[i, g] * (abs(diff) if use_mad else diff * diff)
        for g in range(lanes):
            # ggml keeps the codes of the best step; remembering how they were rounded is cheaper than copying
            better = error[g] < best[g]
            best[g] = error[g] if better else best[g]
            scale[g] = this_scale[g] if better else scale[g]
            code_iscale[g] = iscale[g] if better else code_iscale[g]
            code_lo[g] = lo[g] if better else code_lo[g]
            lo[g] = this_min[g] if better else lo[g]
    for i in range(n):
        for g in range(lanes):
            q = clamp(nearest_int(code_iscale[g] * (x[i, g] - code_lo[g])), f32(0), fmax)
            L[i, g] = q if flat[g] == 0 else f32(0)
    for g in range(lanes):
        scale[g] = scale[g] if flat[g] == 0 else f32(0)
        the_min[g] = -lo[g]


@jit(cache=True)
def make_qp_quants(x, L, nmax, w, scale):
    """Codes L in [0, nmax] for non-negative x (a super-block's sub-scales or mins), x ~ scale * L.

    Tries 9 scales around nmax / max, keeps the least weighted error, then 5
    passes moving single codes while that lowers the error. x, w, L: [n, lanes];
    scale: [lanes] (output). L holds what ggml's uint8_t codes hold.
    """
    n, lanes = x.shape
    fmax = f32(nmax)
    state = np.zeros((8, lanes), np.float32)  # one row per per-lane variable
    vmax, iscale, best_mse, mse = state[0], state[1], state[2], state[3]
    iscale_step, scale_step, sumlx, suml2 = state[4], state[5], state[6], state[7]
    for i in range(n):
        for g in range(lanes):
            vmax[g] = x[i, g] if x[i, g] > vmax[g] else vmax[g]
    for g in range(lanes):
        iscale[g] = fmax / vmax[g]
        scale[g] = f32(1) / iscale[g]
    for i in range(n):
        for g in range(lanes):
            diff = x[i, g] - scale[g] * wrap_u8(nearest_int(iscale[g] * x[i, g]))
            best_mse[g] += w[i, g] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        for g in range(lanes):
            iscale_step[g] = (f32(0.1) * f32(step) + fmax) / vmax[g]
            scale_step[g] = f32(1) / iscale_step[g]
            mse[g] = f32(0)
        for i in range(n):
            for g in range(lanes):
                diff = x[i, g] - scale_step[g] * min(fmax, nearest_int(iscale_step[g] * x[i, g]))
                mse[g] += w[i, g] * diff * diff
        for g in range(lanes):
            better = mse[g] < best_mse[g]
            best_mse[g] = mse[g] if better else best_mse[g]
            iscale[g] = iscale_step[g] if better else iscale[g]
    for i in range(n):
        for g in range(lanes):
            q = min(fmax, nearest_int(iscale[g] * x[i, g]))
            L[i, g] = wrap_u8(q)
            sumlx[g] += w[i, g] * x[i, g] * q
            suml2[g] += w[i, g] * q * q
    for _ in range(5):
        for i in range(n):
            for g in range(lanes):
                slx = sumlx[g] - w[i, g] * x[i, g] * L[i, g]
                sl2 = suml2[g] - w[i, g] * L[i, g] * L[i, g]
                q = min(fmax, nearest_int(x[i, g] * sl2 / slx))
                take = (slx > 0) & (sl2 > 0) & (q != L[i, g])
                slx += w[i, g] * x[i, g] * q
                sl2 += w[i, g] * q * q
                take = take & (slx * slx * suml2[g] > sumlx[g] * sumlx[g] * sl2)
                L[i, g] = wrap_u8(q) if take else L[i, g]
                sumlx[g] = slx if take else sumlx[g]
                suml2[g] = sl2 if take else suml2[g]
    for i in range(n):
        for g in range(lanes):
            L[i, g] = L[i, g] if vmax[g] >= GROUP_MAX_EPS else f32(0)
    for g in range(lanes):
        ok = vmax[g] >= GROUP_MAX_EPS
        scale[g] = (sumlx[g] / suml2[g] if suml2[g] > 0 else f32(0)) if ok else f32(0)


@jit(inline="always")
def best_index_iq4(v):
    """Index of the IQ4_NL code value nearest to v, ties to the upper one (ggml's best_index_int8), branch-free:
    the number of code values <= v is the index of the first one above v."""
    above = 0
    for k in range(16):
        above += 1 if IQ4_FLOATS[k] <= v else 0
    above = min(15, max(1, above))
    return above - 1 if v - IQ4_FLOATS[above - 1] < IQ4_FLOATS[above] - v else above


@jit(cache=True)
def importance_weights(xt, importance, sigma2, per_group):
    """ggml's error weights with an importance matrix, in lanes: w = importance * sqrt(sigma2 + x^2).

    xt [n, lanes] holds groups of n consecutive values of a row whose importances
    are `importance`; sigma2 (a mean square of the surrounding values, which
    keeps small values from being ignored) is per lane // per_group."""
    n, lanes = xt.shape
    w = np.empty((n, lanes), np.float32)
    for g in range(lanes):
        for i in range(n):
            w[i, g] = importance[n * g + i] * np.sqrt(sigma2[g // per_group] + xt[i, g] * xt[i, g])
    return w


@jit(cache=True)
def to_lanes(v, n):
    """v [n * lanes] as [n, lanes]: group g (v[n g : n g + n]) becomes column g."""
    lanes = v.shape[0] // n
    out = np.empty((n, lanes), np.float32)
    for g in range(lanes):
        for i in range(n):
            out[i, g] = v[n * g + i]
    return out


@jit(cache=True)
def column_sums(w):
    """Each lane's sum of its n values, in order."""
    s = np.zeros(w.shape[1], np.float32)
    for i in range(w.shape[0]):
        for g in range(w.shape[1]):
            s[g] += w[i, g]
    return s


@jit(cache=True)
def mean_squares(row, size):
    """sum(x^2) / size of each `size` consecutive values of row, summed in order."""
    out = np.empty(row.shape[0] // size, np.float32)
    for s in range(out.shape[0]):
        total = f32(0)
        for i in range(size * s, size * s + size):
            total += row[i] * row[i]
        out[s] = total / f32(size)
    return out
