"""How a KV cache holds keys and values: float32, float16 or 8-bit blocks.

Each layer's keys (and values) are two arrays: `values` [kv_heads, slots,
head_dim] of float32, uint16 (float16 bits) or int8, and for int8 a float32
scale per 32 values, `scales` [kv_heads, slots, head_dim / 32] (llama.cpp's
q8_0 cache type, with the scale kept in float32); the other types carry a dummy
scales array. Kernels read and write one element through `kv_get` / `kv_put`,
which numba compiles per dtype, so one attention kernel serves every type.

A new token's key is rounded to the cache's precision before it is used
(`round_to_cache`), so a token attends to the same numbers whether its key
comes from the chunk being computed or from the cache: chunking a prompt
differently does not change the logits.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from .llvm import float_to_half, half_to_float

U = np.uintp
f32 = np.float32
Q8_BLOCK = 32
KV_TYPES = {"f32": np.float32, "f16": np.uint16, "q8_0": np.int8}


def kv_get(values, scales, g, slot, d):
    """values[g, slot, d] as float32 (a stub: numba compiles the overload below)."""


def kv_put_row(values, scales, g, slot, row):
    """Store the float32 vector `row` [head_dim] at values[g, slot, :] (stub, see below)."""


@overload(kv_get, inline="always")
def _kv_get(values, scales, g, slot, d):
    if values.dtype == types.float32:
        return lambda values, scales, g, slot, d: values[U(g), U(slot), U(d)]
    if values.dtype == types.uint16:
        return lambda values, scales, g, slot, d: half_to_float(values[U(g), U(slot), U(d)])
    if values.dtype == types.int8:
        return lambda values, scales, g, slot, d: \
            f32(values[U(g), U(slot), U(d)]) * scales[U(g), U(slot), U(d // Q8_BLOCK)]
    return None


@njit
def _q8_block(row, b):
    amax = f32(0)
    for j in range(Q8_BLOCK):
        amax = max(amax, abs(row[U(b * Q8_BLOCK + j)]))
    return amax / f32(127)


@njit
def _q8_code(v, scale):
    return np.int8(round(v / scale)) if scale > 0 else np.int8(0)


@overload(kv_put_row, inline="always")
def _kv_put_row(values, scales, g, slot, row):
    if values.dtype == types.float32:
        def put(values, scales, g, slot, row):
            for d in range(row.shape[0]):
                values[U(g), U(slot), U(d)] = row[U(d)]
        return put
    if values.dtype == types.uint16:
        def put(values, scales, g, slot, row):
            for d in range(row.shape[0]):
                values[U(g), U(slot), U(d)] = float_to_half(row[U(d)])
        return put
    if values.dtype == types.int8:
        def put(values, scales, g, slot, row):
            for b in range(row.shape[0] // Q8_BLOCK):
                scale = _q8_block(row, b)
                scales[U(g), U(slot), U(b)] = scale
                for j in range(Q8_BLOCK):
                    d = b * Q8_BLOCK + j
                    values[U(g), U(slot), U(d)] = _q8_code(row[U(d)], scale)
        return put
    return None


@njit(cache=True)
def store_kv(k_values, k_scales, v_values, v_scales, k_new, v_new, p0):
    """Write the new tokens' keys/values [T, kv_heads, head_dim] at slots (p0 + t) % slots."""
    S = k_values.shape[1]
    for t in range(k_new.shape[0]):
        slot = (p0 + t) % S
        for g in range(k_new.shape[1]):
            kv_put_row(k_values, k_scales, g, slot, k_new[t, g])
            kv_put_row(v_values, v_scales, g, slot, v_new[t, g])


@njit(cache=True)
def round_to_cache(values_like, x):
    """Round x [T, kv_heads, head_dim] in place to what a cache of values_like's dtype stores."""
    scratch_scales = np.zeros((1, 1, x.shape[2] // Q8_BLOCK + 1), dtype=np.float32)
    scratch = np.zeros((1, 1, x.shape[2]), dtype=values_like.dtype)
    for t in range(x.shape[0]):
        for g in range(x.shape[1]):
            kv_put_row(scratch, scratch_scales, 0, 0, x[t, g])
            for d in range(x.shape[2]):
                x[U(t), U(g), U(d)] = kv_get(scratch, scratch_scales, 0, 0, d)


def rows_as_float32(values: np.ndarray, scales: np.ndarray, slots) -> np.ndarray:
    """values[slots] of one kv head ([slots, head_dim] as stored) as float32, for BLAS attention."""
    rows = values[slots]
    if values.dtype == np.float32:
        return rows
    if values.dtype == np.uint16:
        return rows.view(np.float16).astype(np.float32)
    blocks = rows.reshape(rows.shape[0], rows.shape[1] // Q8_BLOCK, Q8_BLOCK).astype(np.float32)
    return (blocks * scales[slots][:, :, None]).reshape(rows.shape)
