"""Attention for a prompt chunk through BLAS: one kv head's queries at a time.

For a chunk of T tokens the score matrix of a kv head is (T * group) x n
keys; as two sgemm calls (Q K^T, then P V) it runs several times faster than
the per-key numba loop, which remains for single decoded tokens. Same
semantics as kernels/attention.py: the query at position P sees key positions
j with P - window < j <= P, and cached positions are read from the rolling
buffer (slot j % S) before the chunk's own keys are stored.
"""

from __future__ import annotations

import math

import numpy as np

from .kernels.kv_store import rows_as_float32

def cached_in_order(values_g: np.ndarray, scales_g: np.ndarray, first: int, p0: int) -> np.ndarray:
    """float32 rows of one kv head's rolling buffer [S, D] holding positions first .. p0-1, in time order."""
    S = values_g.shape[0]
    slots = np.arange(first, max(first, p0)) % S
    return rows_as_float32(values_g, scales_g, slots)


def attend_kv_head(q, k_new, v_new, k_cache, k_scales, v_cache, v_scales, p0: int, window: int, out,
                   g: int) -> None:
    """out[:, heads of kv head g] = softmax(mask(Q K^T / sqrt(D))) V for the chunk at positions p0 ..."""
    T, H, D = q.shape
    group = H // k_new.shape[1]
    heads = slice(g * group, (g + 1) * group)
    first = max(0, p0 - window + 1)  # oldest position the chunk's first query sees
    keys = np.concatenate([cached_in_order(k_cache[g], k_scales[g], first, p0), k_new[:, g]])
    values = np.concatenate([cached_in_order(v_cache[g], v_scales[g], first, p0), v_new[:, g]])
    positions = np.arange(first, p0 + T)
    queries = q[:, heads].reshape(T * group, D)  # row t * group + a: token t, head a of the group
    scores = (queries @ keys.T).reshape(T, group, -1)
    scores *= np.float32(1.0 / math.sqrt(D))
    query_pos = (p0 + np.arange(T))[:, None]
    hidden = (positions[None, :] > query_pos) | (positions[None, :] <= query_pos - window)
    scores[np.broadcast_to(hidden[:, None, :], scores.shape)] = -np.inf
    scores -= scores.max(axis=2, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=2, keepdims=True)
    out[:, heads] = (scores.reshape(T * group, -1) @ values).reshape(T, group, D)
