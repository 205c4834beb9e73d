"""The 256-value super-block types as the integer kernels read them: codes u and integer sub-block scales.

Value e of a super-block is d * sc[e // 16] * u[e] + dm * mn[e // 16] for
every type: integer scales sc and mins mn per 16 values (types with 32-value
sub-blocks repeat each twice) and two float factors d, dm. That is the form
ggml's K-quant dot products use with activations quantized per 256 values
(Q8_K): the integer products of a super-block are summed in integers, and
the floats apply once per super-block (matvec_int8.py). A type is its size,
whether u may exceed 127 (`wide`), `sub_len` (the values per scale in the
file, 16 or 32), and two IR emitters over the super-block at byte pointer p:
- codes(builder, p, g) -> <64 x i8>: u of values 64g ... 64g + 63;
- scales(builder, p) -> (sc <16 x i16>, mn <16 x i16>, d float, dm float).
Layouts (ggml-common.h; kquants.py and iq4.py describe them in full):
  Q2_K   84: scales[16] | qs[64] | f16 d | f16 dmin      sc = scales & 15, mn = scales >> 4, dm = -dmin
  Q3_K  110: hmask[32] | qs[64] | scales[12] | f16 d      sc 6-bit - 32, u = q | h << 2, mn = sc, dm = -4d
  Q4_K  144: f16 d | f16 dmin | scales[12] | qs[128]      6-bit sc and mn per 32 values, dm = -dmin
  Q5_K  176: f16 d | f16 dmin | scales[12] | qh[32] | qs[128]    as Q4_K, fifth bit of u from qh
  Q6_K  210: ql[128] | qh[64] | int8 scales[16] | f16 d   u = 4 + 2 bits, mn = sc, dm = -32d
  IQ4_XS 136: f16 d | u16 scales_h | scales_l[4] | qs[128]   u = LEVELS[q] + 128, sc = ls - 32, mn = sc,
                                                            dm = -128d (wide)
In 2-bit fields (Q2_K/Q3_K qs, Q6_K qh) value 128h + 32k + l is bits 2k, 2k+1
of byte 32h + l.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from .int8_blocks import UNSIGNED_LEVELS
from .int8_dot import F16, I8, I16, concat, const, load, lookup, nibbles, shuffle, vec


@dataclass(frozen=True)
class SuperBlocks:
    """How the integer kernels read one super-block type (see the module docstring)."""

    bytes: int
    wide: bool
    sub_len: int
    codes: Callable
    scales: Callable


def _f16(builder, p, at: int):
    return builder.fpext(load(builder, p, at, F16), ir.FloatType())


def _per_16(builder, v, signed: bool):
    """<16 x i8> -> <16 x i16>, or <8 x i8> (one per 32 values) -> each repeated twice."""
    if v.type.count == 8:
        v = shuffle(builder, v, None, [i // 2 for i in range(16)])
    return (builder.sext if signed else builder.zext)(v, vec(I16, 16))


def _fields(builder, v, shift: int, bits: int):
    return builder.and_(builder.lshr(v, const(I8, [shift] * v.type.count)), const(I8, [(1 << bits) - 1] * v.type.count))


def _shl(builder, v, n: int):
    return builder.shl(v, const(I8, [n] * v.type.count))


def _two_bit_codes(builder, qs, g: int):
    """Values 64g ... 64g+63 of 2-bit fields in the 32 bytes qs of their 128-value half."""
    k = 2 * (g & 1)
    return concat(builder, [_fields(builder, qs, 2 * k, 2), _fields(builder, qs, 2 * k + 2, 2)])


# --- Q2_K, Q3_K ------------------------------------------------------------------------------

def _q2_k_codes(builder, p, g):
    return _two_bit_codes(builder, load(builder, p, 16 + 32 * (g >> 1), vec(I8, 32)), g)


def _q2_k_scales(builder, p):
    v = load(builder, p, 0, vec(I8, 16))
    sc, mn = _fields(builder, v, 0, 4), _fields(builder, v, 4, 4)
    return _per_16(builder, sc, False), _per_16(builder, mn, False), _f16(builder, p, 80), \
        builder.fneg(_f16(builder, p, 82))


def _q3_k_codes(builder, p, g):
    low = _two_bit_codes(builder, load(builder, p, 32 + 32 * (g >> 1), vec(I8, 32)), g)
    hmask = load(builder, p, 0, vec(I8, 32))
    bit = 4 * (g >> 1) + 2 * (g & 1)
    high = concat(builder, [_fields(builder, hmask, bit, 1), _fields(builder, hmask, bit + 1, 1)])
    return builder.or_(low, _shl(builder, high, 2))


def _q3_k_scales(builder, p):
    low = load(builder, p, 96, vec(I8, 8))
    low = concat(builder, [_fields(builder, low, 0, 4), _fields(builder, low, 4, 4)])  # sub-blocks 0-7, 8-15
    high = shuffle(builder, load(builder, p, 104, vec(I8, 4)), None, [s & 3 for s in range(16)])
    high = builder.and_(builder.lshr(high, const(I8, [2 * (s >> 2) for s in range(16)])), const(I8, [3] * 16))
    sc = _per_16(builder, builder.sub(builder.or_(low, _shl(builder, high, 4)), const(I8, [32] * 16)), True)
    d = _f16(builder, p, 108)
    return sc, sc, d, builder.fmul(d, ir.Constant(ir.FloatType(), -4.0))


# --- Q4_K, Q5_K ----------------------------------------------------------------------------

def _scale_min_k4(builder, p, at: int):
    """The 8 6-bit scales and 8 mins packed in 12 bytes (ggml's get_scale_min_k4), as <8 x i8> each."""
    v = load(builder, p, at, vec(I8, 12))
    top = _shl(builder, builder.lshr(v, const(I8, [6] * 12)), 4)  # bits 6-7 of bytes 0-7, moved to bits 4-5
    zero = ir.Constant(v.type, None)
    masks = const(I8, [63] * 4 + [15] * 4)
    sc = builder.or_(builder.and_(shuffle(builder, v, None, [0, 1, 2, 3, 8, 9, 10, 11]), masks),
                     shuffle(builder, top, zero, [12] * 4 + [0, 1, 2, 3]))
    mn = builder.lshr(shuffle(builder, v, None, [4, 5, 6, 7, 8, 9, 10, 11]), const(I8, [0] * 4 + [4] * 4))
    mn = builder.or_(builder.and_(mn, masks), shuffle(builder, top, zero, [12] * 4 + [4, 5, 6, 7]))
    return sc, mn


def _q45_k_scales(builder, p):
    sc, mn = _scale_min_k4(builder, p, 4)
    return _per_16(builder, sc, False), _per_16(builder, mn, False), _f16(builder, p, 0), \
        builder.fneg(_f16(builder, p, 2))


def _nibbles32(builder, raw):
    """32 bytes -> their 32 low nibbles, then their 32 high ones (K-quants' 32-value sub-blocks)."""
    return concat(builder, [_fields(builder, raw, 0, 4), _fields(builder, raw, 4, 4)])


def _q4_k_codes(builder, p, g):
    return _nibbles32(builder, load(builder, p, 16 + 32 * g, vec(I8, 32)))


def _q5_k_codes(builder, p, g):
    qh = load(builder, p, 16, vec(I8, 32))
    high = concat(builder, [_fields(builder, qh, 2 * g, 1), _fields(builder, qh, 2 * g + 1, 1)])
    return builder.or_(_nibbles32(builder, load(builder, p, 48 + 32 * g, vec(I8, 32))), _shl(builder, high, 4))


# --- Q6_K ------------------------------------------------------------------------------------

def _q6_k_codes(builder, p, g):
    h, odd = g >> 1, g & 1
    ql = load(builder, p, 64 * h, vec(I8, 64))
    low = _fields(builder, ql, 4 * odd, 4)
    qh = load(builder, p, 128 + 32 * h, vec(I8, 32))
    high = concat(builder, [_fields(builder, qh, 4 * odd, 2), _fields(builder, qh, 4 * odd + 2, 2)])
    return builder.or_(low, _shl(builder, high, 4))


def _q6_k_scales(builder, p):
    sc = _per_16(builder, load(builder, p, 192, vec(I8, 16)), True)
    d = _f16(builder, p, 208)
    return sc, sc, d, builder.fmul(d, ir.Constant(ir.FloatType(), -32.0))


# --- IQ4_XS ----------------------------------------------------------------------------------

def _iq4_xs_codes(builder, p, g):
    return lookup(builder, UNSIGNED_LEVELS, nibbles(builder, load(builder, p, 8 + 32 * g, vec(I8, 32))))


def _iq4_xs_scales(builder, p):
    low = shuffle(builder, load(builder, p, 4, vec(I8, 4)), None, [t // 2 for t in range(8)])
    low = builder.zext(builder.and_(builder.lshr(low, const(I8, [0, 4] * 4)), const(I8, [15] * 8)), vec(I16, 8))
    high = builder.insert_element(ir.Constant(vec(I16, 1), None), load(builder, p, 2, I16), ir.Constant(ir.IntType(32), 0))
    high = shuffle(builder, high, None, [0] * 8)
    high = builder.and_(builder.lshr(high, const(I16, [2 * t for t in range(8)])), const(I16, [3] * 8))
    ls = builder.sub(builder.or_(low, builder.shl(high, const(I16, [4] * 8))), const(I16, [32] * 8))
    sc = shuffle(builder, ls, None, [i // 2 for i in range(16)])
    d = _f16(builder, p, 0)
    return sc, sc, d, builder.fmul(d, ir.Constant(ir.FloatType(), -128.0))


Q2_K = SuperBlocks(84, False, 16, _q2_k_codes, _q2_k_scales)
Q3_K = SuperBlocks(110, False, 16, _q3_k_codes, _q3_k_scales)
Q4_K = SuperBlocks(144, False, 32, _q4_k_codes, _q45_k_scales)
Q5_K = SuperBlocks(176, False, 32, _q5_k_codes, _q45_k_scales)
Q6_K = SuperBlocks(210, False, 16, _q6_k_codes, _q6_k_scales)
IQ4_XS = SuperBlocks(136, True, 32, _iq4_xs_codes, _iq4_xs_scales)
