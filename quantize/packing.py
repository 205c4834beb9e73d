"""Writing block fields into a row of output bytes, in ggml's layouts (ggml-common.h).

`out` is one row of the output (uint8) and `o` the byte offset of a field.
Codes come in the searches' lane layout (search.py): L[i, g] is value i of
block g, a float32 integer.
"""

from __future__ import annotations

import numpy as np

from cpuinfer.kernels.llvm import float_to_half, half_to_float

from .search import jit


@jit(inline="always")
def put_f16(out, o, value):
    """Store `value` as a little-endian float16 at out[o:o+2]; return the float32 it was rounded to."""
    bits = float_to_half(value)
    out[o] = bits & 0xFF
    out[o + 1] = bits >> 8
    return half_to_float(bits)


@jit(inline="always")
def code(L, g, i):
    return np.int64(L[i, g])


@jit(inline="always")
def put_nibbles(out, o, L, g):
    """16 bytes for the 32 codes of block g: code j in the low nibble, code j + 16 in the high one."""
    for j in range(16):
        out[o + j] = (code(L, g, j) & 0xF) | ((code(L, g, j + 16) & 0xF) << 4)


@jit(inline="always")
def put_fifth_bits(out, o, L, g):
    """Q5_0/Q5_1's qh: bit j of a little-endian uint32 is bit 4 of code j of block g."""
    for k in range(4):
        byte = 0
        for j in range(8):
            byte |= ((code(L, g, 8 * k + j) >> 4) & 1) << j
        out[o + k] = byte


@jit(inline="always")
def super_code(L, s, p):
    """Code p (0..255) of super-block s, whose sub-blocks of n = L.shape[0] (16 or 32) codes are lanes
    s * 256 / n ...; shifts, not divisions: an integer division per code took half of Q4_K's time."""
    shift = 5 if L.shape[0] == 32 else 4
    return code(L, (s << (8 - shift)) + (p >> shift), p & (L.shape[0] - 1))


@jit(cache=True)
def put_2bit_planes(out, o, L, s):
    """Q2_K/Q3_K's qs: per 128 codes of super-block s, byte l holds codes l, l+32, l+64, l+96 (2 bits each)."""
    for h in range(2):
        for k in range(32):
            p = 128 * h + k
            out[o + 32 * h + k] = ((super_code(L, s, p) & 3) | ((super_code(L, s, p + 32) & 3) << 2)
                                   | ((super_code(L, s, p + 64) & 3) << 4) | ((super_code(L, s, p + 96) & 3) << 6))


@jit(cache=True)
def put_k4_scales(out, o, Ls, Lm, s):
    """Q4_K/Q5_K's 12 bytes of super-block s's eight 6-bit sub-block scales Ls[:, s] and mins Lm[:, s]."""
    for j in range(4):
        out[o + j] = code(Ls, s, j)
        out[o + j + 4] = code(Lm, s, j)
    for j in range(4, 8):
        ls, lm = code(Ls, s, j) & 0xFF, code(Lm, s, j) & 0xFF
        out[o + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
        out[o + j - 4] |= (ls >> 4) << 6
        out[o + j] |= (lm >> 4) << 6


@jit(inline="always")
def k4_scale_min(out, o, j):
    """Sub-block j's 6-bit (scale, min) back from the 12 bytes put_k4_scales wrote (ggml's get_scale_min_k4)."""
    if j < 4:
        return np.int64(out[o + j]) & 63, np.int64(out[o + j + 4]) & 63
    return ((np.int64(out[o + j + 4]) & 0xF) | ((np.int64(out[o + j - 4]) >> 6) << 4),
            (np.int64(out[o + j + 4]) >> 4) | ((np.int64(out[o + j]) >> 6) << 4))
