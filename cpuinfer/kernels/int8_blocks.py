"""Each block type as the integer kernels read it: 32 unsigned bytes u, a scale d and an offset m.

Weight j of the block is d * u[j] + m, for every type, so one matvec
(matvec_int8.py) and one GEMM (gemm_int8.py) serve them all; a type is one
reader `block_<type>(w, r, b) -> (u, d, m)` for block b of row r, and whether
its u may exceed 127 (`<TYPE>_WIDE`, see int8_dot.dot_u8s8). Q8_0's signed values q
become u = q + 128 with m = -128 * d.

Adding a type: write its reader here (a K-quant returns sub-block b of its
super-block, with that sub-block's scale and minimum as d and m), and list it
in cpuinfer.linear's integer tables.
"""

from numba import njit

from .int8_dot import flip_sign_bits, load_bytes, load_nibbles
from .matvec import Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES, _f16, f32

Q8_0_WIDE, Q4_0_WIDE, Q4_1_WIDE = True, False, False


@njit(inline="always")
def block_q8_0(w, r, b):
    o = b * Q8_0_BYTES
    d = _f16(w, r, o)
    return flip_sign_bits(load_bytes(w, r, o + 2)), d, f32(-128) * d


@njit(inline="always")
def block_q4_0(w, r, b):
    o = b * Q4_0_BYTES
    d = _f16(w, r, o)
    return load_nibbles(w, r, o + 2), d, f32(-8) * d


@njit(inline="always")
def block_q4_1(w, r, b):
    o = b * Q4_1_BYTES
    return load_nibbles(w, r, o + 4), _f16(w, r, o), _f16(w, r, o + 2)
