"""The 32-value block types as the integer kernels read them: unsigned byte codes u, a scale d and an offset m.

Value j of a block is d * u[j] + m, for every type, so one matvec
(matvec_int8.py) and one GEMM (gemm_int8.py) serve them all. A type is its
block size in bytes, whether u may exceed 127 (`wide`, see
int8_dot.emit_dot), and two IR emitters over the blocks at byte pointers ps
(one or two consecutive blocks, so that two share 512-bit registers):
- codes(builder, ps) -> <32n x i8>: the blocks' u, block after block;
- halves(builder, ps) -> (<16n x i8>, <16n x i8>): the codes of values 0-15 of every block, then
  of values 16-31: the 4-bit types' low and high nibbles as they lie in the bytes, with no shuffle
  (the matvec shuffles the activations to match instead, once for all its rows); the signed q
  themselves for the `signed` types (Q8_0, IQ4_NL: value = d * q);
- scales(builder, ps) -> <2n x float>: d0, m0, d1, m1.
Signed codes q become u = q + 128 with m = -128 * d (Q8_0; IQ4_NL's levels).
Where m = c * d for a constant c (`offset`: all but Q4_1 and Q5_1), the matvec
adds c * sum(x) to the integer dot product instead of m * s_x to the float one
(c = 0 for the signed halves).

  Q8_0   34 bytes: f16 d | int8 q[32]                 value = d * q
  Q4_0   18 bytes: f16 d | qs[16]                     value = d * (q - 8)
  Q4_1   20 bytes: f16 d | f16 m | qs[16]             value = d * q + m
  Q5_0   22 bytes: f16 d | qh[4] | qs[16]             value = d * (q - 16)
  Q5_1   24 bytes: f16 d | f16 m | qh[4] | qs[16]     value = d * q + m
  IQ4_NL 18 bytes: f16 d | qs[16]                     value = d * LEVELS[q]
(4-bit codes: value j in the low nibble of qs[j], j + 16 in the high one; Q5's
fifth bit of value j is bit j of the little-endian word qh.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .int8_dot import F16, F32, I8, I32, bits_to_bytes, concat, const, load, lookup, nibbles, shuffle, vec
from .iq4 import LEVELS

UNSIGNED_LEVELS = [int(v) + 128 for v in LEVELS]
SIGNED_LEVELS = [int(v) & 255 for v in LEVELS]  # as bytes


@dataclass(frozen=True)
class Blocks:
    """How the integer kernels read one 32-value block type (see the module docstring)."""

    bytes: int
    wide: bool
    codes: Callable
    halves: Callable
    scales: Callable
    offset: int | None  # c where m = c * d, else None (m is stored)
    signed: bool = False  # halves are signed q
    sub_len: int = 32  # values per (d, m): the whole block


def _d_and_offset(builder, ps, offset: float):
    """(d, offset * d) of each block, d the f16 at the block's start."""
    d = concat(builder, [load(builder, p, 0, vec(F16, 1)) for p in ps])
    d = builder.fpext(shuffle(builder, d, None, [i // 2 for i in range(2 * len(ps))]), vec(F32, 2 * len(ps)))
    return builder.fmul(d, const(F32, [1.0, offset] * len(ps)))


def _d_and_m(builder, ps):
    """(d, m): the two f16 at the block's start."""
    return builder.fpext(concat(builder, [load(builder, p, 0, vec(F16, 2)) for p in ps]), vec(F32, 2 * len(ps)))


def _nibbles(builder, ps, at: int):
    return nibbles(builder, concat(builder, [load(builder, p, at, vec(I8, 16)) for p in ps]))


def _nibble_halves(builder, ps, at: int):
    raw = concat(builder, [load(builder, p, at, vec(I8, 16)) for p in ps])
    n = raw.type.count
    return builder.and_(raw, const(I8, [15] * n)), builder.lshr(raw, const(I8, [4] * n))


def _fifth_bits(builder, ps, at: int):
    return concat(builder, [bits_to_bytes(builder, load(builder, p, at, I32), 16) for p in ps])


def _fifth_bit_halves(builder, ps, at: int):
    bits = [bits_to_bytes(builder, load(builder, p, at, I32), 16) for p in ps]
    return (concat(builder, [shuffle(builder, b, None, range(16)) for b in bits]),
            concat(builder, [shuffle(builder, b, None, range(16, 32)) for b in bits]))


def _q5_halves(at_qh: int, at_qs: int):
    def halves(builder, ps):
        (lo, hi), (lo5, hi5) = _nibble_halves(builder, ps, at_qs), _fifth_bit_halves(builder, ps, at_qh)
        return builder.or_(lo, lo5), builder.or_(hi, hi5)
    return halves


def _q8_0_codes(builder, ps):
    q = concat(builder, [load(builder, p, 2, vec(I8, 32)) for p in ps])
    return builder.xor(q, const(I8, [-128] * q.type.count))


def _q8_0_halves(builder, ps):
    return tuple(concat(builder, [load(builder, p, at, vec(I8, 16)) for p in ps]) for at in (2, 18))


def _iq4_nl_halves(builder, ps):
    return tuple(lookup(builder, SIGNED_LEVELS, h) for h in _nibble_halves(builder, ps, 2))


Q8_0 = Blocks(34, True, _q8_0_codes, _q8_0_halves, lambda b, ps: _d_and_offset(b, ps, -128.0), 0, True)
Q4_0 = Blocks(18, False, lambda b, ps: _nibbles(b, ps, 2), lambda b, ps: _nibble_halves(b, ps, 2),
              lambda b, ps: _d_and_offset(b, ps, -8.0), -8)
Q4_1 = Blocks(20, False, lambda b, ps: _nibbles(b, ps, 4), lambda b, ps: _nibble_halves(b, ps, 4), _d_and_m, None)
Q5_0 = Blocks(22, False, lambda b, ps: b.or_(_nibbles(b, ps, 6), _fifth_bits(b, ps, 2)), _q5_halves(2, 6),
              lambda b, ps: _d_and_offset(b, ps, -16.0), -16)
Q5_1 = Blocks(24, False, lambda b, ps: b.or_(_nibbles(b, ps, 8), _fifth_bits(b, ps, 4)), _q5_halves(4, 8),
              _d_and_m, None)
IQ4_NL = Blocks(18, True, lambda b, ps: lookup(b, UNSIGNED_LEVELS, _nibbles(b, ps, 2)), _iq4_nl_halves,
                lambda b, ps: _d_and_offset(b, ps, -128.0), 0, True)
