"""Block quantizers that write exactly the bytes of ggml's reference quantizers.

Each kernel computes the float32 scale and the integer codes of every 32-value
block in the same float32 operations as ggml-quants.c (`quantize_row_*_ref`):
Q8_0  d = amax/127, q = round-half-away(x/d)
Q4_0  d = (value of largest magnitude)/-8, q = min(15, trunc(x/d + 8.5))
Q4_1  d = (max-min)/15, m = min, q = min(15, trunc((x-m)/d + 0.5))
numba has no float16, so the kernels return float32 scales and numpy rounds
them to f16 (round-to-nearest-even, as the F16C instruction ggml uses does).
"""

from __future__ import annotations

import math

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from numba import njit, prange

f32 = np.float32
QK = 32


@njit(parallel=True, cache=True)
def _q8_0(x, d, q):
    for r in prange(x.shape[0]):
        for b in range(x.shape[1] // QK):
            amax = f32(0)
            for j in range(QK):
                amax = max(amax, abs(x[r, b * QK + j]))
            s = amax / f32(127)
            inv = f32(1) / s if s != 0 else f32(0)
            d[r, b] = s
            for j in range(QK):
                v = x[r, b * QK + j] * inv
                # roundf: |v| - floor(|v|) is exact; floor(|v| + 0.5) would round 0.49999997 up to 1
                a = abs(v)
                n = math.floor(a)
                if a - n >= f32(0.5):
                    n += 1
                q[r, b * QK + j] = np.int8(math.copysign(n, v))


@njit(parallel=True, cache=True)
def _q4_0(x, d, q):
    for r in prange(x.shape[0]):
        for b in range(x.shape[1] // QK):
            amax = f32(0)
            vmax = f32(0)
            for j in range(QK):
                v = x[r, b * QK + j]
                if abs(v) > amax:
                    amax = abs(v)
                    vmax = v
            s = vmax / f32(-8)
            inv = f32(1) / s if s != 0 else f32(0)
            d[r, b] = s
            for j in range(QK // 2):
                lo = min(15, np.uint8(x[r, b * QK + j] * inv + f32(8.5)))
                hi = min(15, np.uint8(x[r, b * QK + j + 16] * inv + f32(8.5)))
                q[r, b * 16 + j] = lo | (hi << 4)


@njit(parallel=True, cache=True)
def _q4_1(x, d, m, q):
    for r in prange(x.shape[0]):
        for b in range(x.shape[1] // QK):
            lo_v = x[r, b * QK]
            hi_v = x[r, b * QK]
            for j in range(1, QK):
                lo_v = min(lo_v, x[r, b * QK + j])
                hi_v = max(hi_v, x[r, b * QK + j])
            s = (hi_v - lo_v) / f32(15)
            inv = f32(1) / s if s != 0 else f32(0)
            d[r, b] = s
            m[r, b] = lo_v
            for j in range(QK // 2):
                lo = min(15, np.uint8((x[r, b * QK + j] - lo_v) * inv + f32(0.5)))
                hi = min(15, np.uint8((x[r, b * QK + j + 16] - lo_v) * inv + f32(0.5)))
                q[r, b * 16 + j] = lo | (hi << 4)


def _f16_bytes(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).view(np.uint8).reshape(*a.shape, 2)


def quantize_rows(x: np.ndarray, qtype: int) -> np.ndarray:
    """Rows of float32 values [n, K] in `qtype`'s file layout: float32/float16 [n, K] or uint8 block bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == QT.F32:
        return x
    if qtype == QT.F16:
        return x.astype(np.float16)
    n, k = x.shape
    nb = k // QK
    d = np.empty((n, nb), dtype=np.float32)
    if qtype == QT.Q8_0:
        q = np.empty((n, k), dtype=np.int8)
        _q8_0(x, d, q)
        return np.concatenate([_f16_bytes(d), q.view(np.uint8).reshape(n, nb, QK)], axis=2).reshape(n, -1)
    q = np.empty((n, k // 2), dtype=np.uint8)
    if qtype == QT.Q4_0:
        _q4_0(x, d, q)
        return np.concatenate([_f16_bytes(d), q.reshape(n, nb, 16)], axis=2).reshape(n, -1)
    if qtype == QT.Q4_1:
        m = np.empty((n, nb), dtype=np.float32)
        _q4_1(x, d, m, q)
        return np.concatenate([_f16_bytes(d), _f16_bytes(m), q.reshape(n, nb, 16)], axis=2).reshape(n, -1)
    raise ValueError(f"cannot quantize to {QT(qtype).name}")
