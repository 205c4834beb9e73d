"""IQ4_NL and IQ4_XS: 4-bit indices into ggml's non-linear table of 16 int8 levels.

  IQ4_NL  18 bytes per 32 values: f16 d | qs[16]      value = d * LEVELS[q]
  IQ4_XS 136 bytes per 256 values: f16 d | u16 scales_h | scales_l[4] | qs[128]
         8 x 32 values: value = d * (ls - 32) * LEVELS[q], ls = 4 bits of
         scales_l (nibble s%2 of byte s/2) and 2 bits of scales_h (bits 2s, 2s+1)
As in Q4_0, a 32-value run of 16 bytes holds value j in the low nibble of
byte j and value j + 16 in its high nibble: two 16-value sub-blocks here.

The level is computed, not looked up: LEVELS[q] = round(p(q - 7.5)) for the
quartic p fitted to the 16 levels by least squares (every |p - level| < 0.48,
so the rounding lands exactly on the level; a test checks all 16). A table
lookup compiles to one scalar load per value (LLVM emits no gathers for
AMD CPUs): IQ4_NL matvec ran at 4 Gvalues/s per thread that way, 11 with
the polynomial.
"""

import numpy as np
from numba import njit

from .blocks import dequant_blocks, matvec_blocks
from .matvec import U, _f16, f32

IQ4_NL_BYTES, IQ4_XS_BYTES = 18, 136
LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113])  # kvalues_iq4nl
P4, P3, P2, P1, P0 = (f32(c) for c in np.polyfit(np.arange(16) - 7.5, LEVELS, 4))
FIFTEEN, FOUR = np.uint8(15), np.uint8(4)


@njit(inline="always")
def level(q):
    """LEVELS[q] for a 4-bit index q, as float32."""
    t = f32(q) - f32(7.5)
    return np.rint((((P4 * t + P3) * t + P2) * t + P1) * t + P0)


@njit(inline="always")
def _level(w, r, base, s, j):
    """The level of value j of sub-block s, the nibbles packed from byte `base` on."""
    v = w[U(r), U(base + 16 * (s >> 1) + j)]
    return level(np.right_shift(v, FOUR) if s & 1 else np.bitwise_and(v, FIFTEEN))


@njit(inline="always")
def _iq4_nl_sub_block(w, r, o, s):
    return _f16(w, r, o), f32(0)


@njit(inline="always")
def _iq4_nl_code(w, r, o, s, j):
    return _level(w, r, o + 2, s, j)


@njit(inline="always")
def _iq4_xs_sub_block(w, r, o, s):
    t = s >> 1  # the 32-value sub-block of the scale
    low = np.bitwise_and(np.right_shift(w[U(r), U(o + 4 + t // 2)], np.uint8(4 * (t % 2))), FIFTEEN)
    high_bits = np.uint32(w[U(r), U(o + 2)]) | np.left_shift(np.uint32(w[U(r), U(o + 3)]), np.uint32(8))
    high = np.bitwise_and(np.right_shift(high_bits, np.uint32(2 * t)), np.uint32(3))
    return _f16(w, r, o) * f32(np.int32(np.uint32(low) | np.left_shift(high, np.uint32(4))) - 32), f32(0)


@njit(inline="always")
def _iq4_xs_code(w, r, o, s, j):
    return _level(w, r, o + 8, s, j)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq4_nl(w, x, out):
    """out = dequant(w) @ x for IQ4_NL rows `w` (uint8 [rows, K/32*18])."""
    matvec_blocks(w, x, out, IQ4_NL_BYTES, 2, 16, _iq4_nl_sub_block, _iq4_nl_code)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_iq4_xs(w, x, out):
    """out = dequant(w) @ x for IQ4_XS rows `w` (uint8 [rows, K/256*136])."""
    matvec_blocks(w, x, out, IQ4_XS_BYTES, 16, 16, _iq4_xs_sub_block, _iq4_xs_code)


@njit(nogil=True, cache=True)
def dequant_rows_iq4_nl(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for IQ4_NL rows."""
    dequant_blocks(w, r0, out, IQ4_NL_BYTES, 2, 16, _iq4_nl_sub_block, _iq4_nl_code)


@njit(nogil=True, cache=True)
def dequant_rows_iq4_xs(w, r0, out):
    """out[i, :] = dequant(w[r0 + i]) for IQ4_XS rows."""
    dequant_blocks(w, r0, out, IQ4_XS_BYTES, 16, 16, _iq4_xs_sub_block, _iq4_xs_code)
