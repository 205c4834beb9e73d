"""The SIMD building blocks of the integer kernels, emitted as LLVM IR, and the instructions they use.

numba widens integer arithmetic to 64 bits, so an int8 dot product written as
a loop stays scalar. The integer kernels are therefore numba loops around
small intrinsics whose bodies are straight-line LLVM vector IR built from the
helpers here: block types decode their bytes with them (int8_blocks.py,
int8_kquants.py), the kernels multiply with them (matvec_int8.py,
gemm_int8.py). Generic IR (and, shifts, shuffles, conversions) is left to
LLVM, which splits 512-bit values into 256-bit ones on CPUs without AVX-512;
the products are explicit x86 intrinsics, chosen by the instruction set numba
compiles for (`ISA`), the host's unless NUMBA_CPU_NAME/NUMBA_CPU_FEATURES say
otherwise (numba's cache is keyed by them too):
- "avx512vnni": vpdpbusd / vpdpwssd on 512-bit registers (AVX-512 BW, VL, VNNI),
- "avxvnni": the same on 256-bit registers (AVX-VNNI, or AVX-512 VNNI without BW),
- "avx2": vpmaddubsw + vpmaddwd,
- None: no integer path; the float kernels run instead (cpuinfer.linear).
Explicit intrinsics rather than portable IR: LLVM 22 turns a full
reduce.add(mul(zext, sext)) into vpdpbusd, but not the four-lane partial sums
the kernels accumulate (it emits vpmovzxbd + vpmaddwd, 2x the instructions),
nor, on AVX2, vpmaddubsw; and an explicit intrinsic cannot silently fall back
to scalar code.

Exactness contract of `emit_dot(acc, u, x, wide)`: acc + the exact sum of
u[j] * x[j] over each group of four bytes, for u in 0..255 and x in
-127..127. vpmaddubsw saturates its 16-bit pair sums, which only u > 127 can
reach: a caller whose u may exceed 127 passes wide=True, and on AVX2 the
product is then computed as |u-128| * sign(x, u-128) + 128 * x (ggml's sign
trick), which never saturates. `emit_pair_sums` is vpmaddubsw itself, for
u <= 127.
"""

from __future__ import annotations

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import models, register_model


def compile_features() -> frozenset[str]:
    """The ISA extensions numba compiles for: NUMBA_CPU_FEATURES if set, else the host's (as numba's codegen)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else ll.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


def compile_cpu() -> str:
    """The CPU numba compiles for: NUMBA_CPU_NAME if set, else the host's (LLVM's name: znver4, sapphirerapids...)."""
    return config.CPU_NAME or ll.get_host_cpu_name()


def choose_isa(features: frozenset[str]) -> str | None:
    """The best integer dot-product instructions among `features` (see the module docstring)."""
    if {"avx512vnni", "avx512bw", "avx512vl"} <= features:
        return "avx512vnni"
    if "avxvnni" in features or {"avx512vnni", "avx512vl"} <= features:
        return "avxvnni"
    if "avx2" in features:
        return "avx2"
    return None


ISA = choose_isa(compile_features())
WIDEST = 64 if ISA == "avx512vnni" else 32  # bytes in the widest register the products use


class Vector(types.Type):
    """A SIMD vector of `count` x `dtype`, held in registers (an LLVM vector value)."""

    def __init__(self, dtype: types.Type, count: int):
        self.dtype, self.count = dtype, count
        super().__init__(name=f"{dtype}x{count}")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


I1, I8, I16, I32 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32)
F16, F32 = ir.HalfType(), ir.FloatType()
FAST = ("fast",)


# --- IR helpers ----------------------------------------------------------------------------

def vec(element: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(element, n)


def const(element: ir.Type, values) -> ir.Constant:
    """A vector constant."""
    values = list(values)
    return ir.Constant(vec(element, len(values)), values)


def splat(builder, value, n: int):
    """<n x value>."""
    v = builder.insert_element(ir.Constant(vec(value.type, n), None), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), [0] * n))


def shuffle(builder, a, b, indices):
    """Elements of a (0 .. n-1) and b (n .. 2n-1) picked by `indices`; b may be None (then b = a)."""
    return builder.shuffle_vector(a, a if b is None else b, const(I32, indices))


def concat(builder, parts: list):
    """The vectors of `parts` (all of one type; a power of two of them) end to end."""
    while len(parts) > 1:
        n = parts[0].type.count
        parts = [shuffle(builder, parts[i], parts[i + 1], range(2 * n)) for i in range(0, len(parts), 2)]
    return parts[0]


def part(builder, v, start: int, n: int):
    """v[start:start + n]."""
    return shuffle(builder, v, None, range(start, start + n))


def widen(builder, v, n: int):
    """v followed by zeros, to n elements."""
    zero = ir.Constant(v.type, None)
    return shuffle(builder, v, zero, list(range(v.type.count)) + [v.type.count] * (n - v.type.count))


def call(builder, name: str, ret: ir.Type, args: list, fastmath=()):
    """Call the LLVM intrinsic `name` (declared on first use)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args, fastmath=fastmath)


def pointer(context, builder, array_type, array, indices, element: ir.Type):
    """Address of array[indices], as a pointer to `element` (no bounds or wraparound checks)."""
    ary = context.make_array(array_type)(context, builder, array)
    ptr = cgutils.get_item_pointer(context, builder, array_type, ary, indices, wraparound=False, boundscheck=False)
    return builder.bitcast(ptr, element.as_pointer())


def load(builder, p, offset: int, t: ir.Type):
    """The value of type t at byte p + offset (p an i8*), unaligned."""
    q = builder.gep(p, [ir.Constant(I32, offset)]) if offset else p
    return builder.load(builder.bitcast(q, t.as_pointer()), align=1)


def is_contiguous(array) -> bool:
    return isinstance(array, types.Array) and array.layout == "C"


def hsum(builder, v):
    """The sum of a float vector's elements (in any order)."""
    return call(builder, f"llvm.vector.reduce.fadd.v{v.type.count}f32", F32, [ir.Constant(F32, -0.0), v],
                fastmath=("reassoc",))


# --- byte unpacking ----------------------------------------------------------------------

def nibbles(builder, raw):
    """<16n x i8> of n runs of 16 packed bytes -> <32n x i8> of values 0..15: per run, the low
    nibbles, then the high ones (ggml's order: value j in the low nibble of byte j, j+16 in the high)."""
    n = raw.type.count
    lo = builder.and_(raw, const(I8, [15] * n))
    hi = builder.lshr(raw, const(I8, [4] * n))
    order = []
    for run in range(0, n, 16):
        order += list(range(run, run + 16)) + list(range(n + run, n + run + 16))
    return shuffle(builder, lo, hi, order)


def bits_to_bytes(builder, word, value: int):
    """An i32 (or i64) word -> <32 (64) x i8>: `value` where bit j of the word is set, else 0."""
    n = word.type.width
    if ISA == "avx512vnni":
        mask = builder.bitcast(word, vec(I1, n))  # one kmov into a mask register
    else:
        # Without mask registers LLVM expands the <n x i1> bitcast bit by bit: Q5_0 matvec ran at 1.7 GB/s
        # (AVX2, Zen 4). Byte j takes the word's byte j/8 (vpshufb), then tests its bit j%8 (vpand, vpcmpeqb).
        spread = shuffle(builder, builder.bitcast(word, vec(I8, n // 8)), None, [j // 8 for j in range(n)])
        bit = const(I8, [(1 << (j % 8)) - 256 if j % 8 == 7 else 1 << (j % 8) for j in range(n)])
        mask = builder.icmp_unsigned("==", builder.and_(spread, bit), bit)
    return builder.select(mask, const(I8, [value] * n), ir.Constant(vec(I8, n), None))


def lookup(builder, table: list[int], index):
    """table[index] per byte, for a 16-entry byte table and index <n x i8> in 0..15 (vpshufb)."""
    n = index.type.count
    width = min(n, WIDEST)
    name = "llvm.x86.avx512.pshuf.b.512" if width == 64 else "llvm.x86.avx2.pshuf.b"
    lut = const(I8, [t - 256 if t > 127 else t for t in table] * (width // 16))
    out = [call(builder, name, vec(I8, width), [lut, part(builder, index, s, width)]) for s in range(0, n, width)]
    return concat(builder, out)


# --- integer products ----------------------------------------------------------------------

def _pieces(builder, v, width: int):
    return [part(builder, v, s, width) for s in range(0, v.type.count, width)]


def _maddubs(builder, u, x):
    """vpmaddubsw at u's width (32 or 64 bytes): 16-bit sums of pairs of u8 x s8 products."""
    n = u.type.count
    name = "llvm.x86.avx512.pmaddubs.w.512" if n == 64 else "llvm.x86.avx2.pmadd.ub.sw"
    return call(builder, name, vec(I16, n // 2), [u, x])


def _pmaddwd(builder, a, b):
    n = a.type.count
    name = "llvm.x86.avx512.pmaddw.d.512" if n == 32 else "llvm.x86.avx2.pmadd.wd"
    return call(builder, name, vec(I32, n // 2), [a, b])


def emit_pair_sums(builder, u, x):
    """<n x i8> u (0..127), x -> <n/2 x i16> of u[2i]*x[2i] + u[2i+1]*x[2i+1] (vpmaddubsw)."""
    width = min(u.type.count, WIDEST)
    return concat(builder, [_maddubs(builder, a, b) for a, b in zip(_pieces(builder, u, width),
                                                                    _pieces(builder, x, width))])


def emit_madd16(builder, acc, a, s):
    """acc + sums of pairs a[2i]*s[2i] + a[2i+1]*s[2i+1]: <n x i16> a, s, <n/2 x i32> acc (vpdpwssd)."""
    width = min(a.type.count, WIDEST // 2)
    out = []
    for c, x, y in zip(_pieces(builder, acc, width // 2), _pieces(builder, a, width), _pieces(builder, s, width)):
        if ISA in ("avx512vnni", "avxvnni"):
            out.append(call(builder, f"llvm.x86.avx512.vpdpwssd.{16 * width}", c.type,
                            [c, builder.bitcast(x, c.type), builder.bitcast(y, c.type)]))
        else:
            out.append(builder.add(c, _pmaddwd(builder, x, y)))
    return concat(builder, out)


def emit_dot(builder, acc, u, x, wide: bool):
    """acc + sums of four u[j] * x[j]: <n x i8> u (unsigned), x (signed), <n/4 x i32> acc; see the
    module docstring for `wide`."""
    width = min(u.type.count, WIDEST)
    out = []
    for c, a, b in zip(_pieces(builder, acc, width // 4), _pieces(builder, u, width), _pieces(builder, x, width)):
        out.append(_dot(builder, c, a, b, wide))
    return concat(builder, out)


def emit_two_dots(builder, acc, u1, x1, u2, x2):
    """acc + sums of four u1[j] * x1[j] + u2[j] * x2[j], for u1, u2 in 0..31 (<n x i8>), <n/4 x i32> acc.
    AVX2: the two vpmaddubsw pair sums add up in int16 (4 * 31 * 127 < 2^15) before one vpmaddwd;
    VNNI: two vpdpbusd."""
    if ISA in ("avx512vnni", "avxvnni"):
        return emit_dot(builder, emit_dot(builder, acc, u1, x1, False), u2, x2, False)
    pairs = builder.add(emit_pair_sums(builder, u1, x1), emit_pair_sums(builder, u2, x2))
    return builder.add(acc, _pmaddwd_chunks(builder, pairs))


def _pmaddwd_chunks(builder, pairs):
    """<n x i16> -> <n/2 x i32>: sums of adjacent pairs (vpmaddwd with ones)."""
    width = min(pairs.type.count, WIDEST // 2)
    return concat(builder, [_pmaddwd(builder, c, const(I16, [1] * width)) for c in _pieces(builder, pairs, width)])


def emit_signed_dot(builder, acc, q, x):
    """acc + sums of four q[j] * x[j]: <n x i8> q (signed, any value), x (-127..127), <n/4 x i32> acc.
    AVX2: |q| * sign(x, q) by vpmaddubsw, which cannot saturate (2 * 128 * 127 < 2^15); VNNI:
    vpdpbusd of q + 128, less 128 * x."""
    if ISA in ("avx512vnni", "avxvnni"):
        offset = const(I8, [-128] * q.type.count)
        return builder.sub(emit_dot(builder, acc, builder.xor(q, offset), x, False),
                           emit_dot(builder, ir.Constant(acc.type, None), offset, x, False))
    return concat(builder, [_avx2_signed_dot(builder, c, a, b) for c, a, b in
                            zip(_pieces(builder, acc, 8), _pieces(builder, q, 32), _pieces(builder, x, 32))])


def _avx2_signed_dot(builder, acc, q, x):
    """acc + sums of four q[j] * x[j] for 32 signed bytes q, x: |q| * sign(x, q) by vpmaddubsw."""
    magnitude = call(builder, "llvm.abs.v32i8", vec(I8, 32), [q, ir.Constant(I1, 0)])
    signed_x = call(builder, "llvm.x86.avx2.psign.b", vec(I8, 32), [x, q])
    return builder.add(acc, _pmaddwd_chunks(builder, _maddubs(builder, magnitude, signed_x)))


def _dot(builder, acc, u, x, wide: bool):
    if ISA in ("avx512vnni", "avxvnni"):
        bits = 8 * u.type.count
        return call(builder, f"llvm.x86.avx512.vpdpbusd.{bits}", acc.type,
                    [acc, builder.bitcast(u, acc.type), builder.bitcast(x, acc.type)])
    if ISA != "avx2":
        raise TypeError(f"no integer dot-product instructions on this CPU target (ISA {ISA})")
    ones = const(I16, [1] * 16)
    if not wide:
        return builder.add(acc, _pmaddwd(builder, _maddubs(builder, u, x), ones))
    s = builder.xor(u, const(I8, [-128] * 32))  # u - 128, as signed bytes
    offset = _pmaddwd(builder, _maddubs(builder, const(I8, [-128] * 32), x), ones)  # 128 * x, in fours
    return builder.add(_avx2_signed_dot(builder, acc, s, x), offset)
