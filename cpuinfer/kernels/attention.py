"""Causal grouped-query attention over a rolling KV buffer, with an optional sliding window.

This numba kernel serves decoded tokens (and any chunk); prompt chunks use the
BLAS formulation in batched_attention.py.

The buffer holds the keys/values of earlier positions p at slot p % S (RoPE is
applied before caching, so order inside the buffer does not matter), in any of
the cache types of kv_store.py. A chunk of
new tokens attends to the cached positions and to itself; it is written into
the buffer only afterwards, because its own positions may overwrite slots that
its earlier queries still need.
"""

import math

import numpy as np
from numba import njit, prange

from .kv_store import kv_get
from .matvec import U, f32


@njit(inline="always")
def _attend(q, k_new, v_new, k_cache, k_scales, v_cache, v_scales, p0, window, out, tg):
    """One (token, kv head) item: the queries of the heads sharing kv head g."""
    T, H, D = q.shape
    G = k_new.shape[1]
    S = k_cache.shape[1]
    group = H // G
    scale = f32(1.0 / math.sqrt(D))
    t = tg // G
    g = tg % G
    pos = p0 + t
    first = max(0, pos - window + 1)  # oldest visible position
    n = pos + 1 - first
    scores = np.empty((group, n), dtype=np.float32)
    for j in range(n):
        kp = first + j
        for a in range(group):
            h = g * group + a
            s = f32(0)
            if kp < p0:
                slot = kp % S
                for d in range(D):
                    s += q[U(t), U(h), U(d)] * kv_get(k_cache, k_scales, g, slot, d)
            else:
                for d in range(D):
                    s += q[U(t), U(h), U(d)] * k_new[U(kp - p0), U(g), U(d)]
            scores[U(a), U(j)] = s * scale
    for a in range(group):
        m = scores[U(a), 0]
        for j in range(1, n):
            m = max(m, scores[U(a), U(j)])
        total = f32(0)
        for j in range(n):
            e = math.exp(scores[U(a), U(j)] - m)
            scores[U(a), U(j)] = e
            total += e
        inv = f32(1) / total
        for j in range(n):
            scores[U(a), U(j)] *= inv
        for d in range(D):
            out[U(t), U(g * group + a), U(d)] = f32(0)
    for j in range(n):
        kp = first + j
        for a in range(group):
            h = g * group + a
            p = scores[U(a), U(j)]
            if kp < p0:
                slot = kp % S
                for d in range(D):
                    out[U(t), U(h), U(d)] += p * kv_get(v_cache, v_scales, g, slot, d)
            else:
                for d in range(D):
                    out[U(t), U(h), U(d)] += p * v_new[U(kp - p0), U(g), U(d)]


@njit(parallel=True, fastmath=True, cache=True, error_model="numpy")
def attention(q, k_new, v_new, k_cache, k_scales, v_cache, v_scales, p0, window, out):
    """Softmax attention for queries at positions p0 .. p0+T-1, parallel over (token, kv head).

    q [T, H, D] and k_new/v_new [T, G, D] belong to the new tokens; k_cache,
    v_cache [G, S, D] (with their scales, see kv_store.py) hold positions < p0. The query at position P sees key
    positions j with P - window < j <= P (window <= S). Query heads
    h = g*H/G .. (g+1)*H/G - 1 share KV head g, so each key is loaded once for
    the whole group. Writes out [T, H, D].
    """
    for tg in prange(q.shape[0] * k_new.shape[1]):
        _attend(q, k_new, v_new, k_cache, k_scales, v_cache, v_scales, p0, window, out, tg)
