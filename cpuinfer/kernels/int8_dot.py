"""Integer dot products for the int8 kernels: SIMD vectors in numba, and the instructions that multiply them.

numba widens integer arithmetic to 64 bits, so an int8 dot product written as
a loop stays scalar. These intrinsics hand LLVM vector values directly: a
kernel holds `int8x32` / `int32x8` / `float32x8` values in local variables and
combines them with the functions below; LLVM keeps them in registers.

The one instruction that matters, u8 x s8 -> int32 in groups of four, is
chosen by the instruction set numba compiles for (`ISA`), the host's unless
NUMBA_CPU_NAME/NUMBA_CPU_FEATURES say otherwise (numba's cache is keyed by
them too):
- "avx512vnni": vpdpbusd on 512-bit registers (and 256-bit ones),
- "avxvnni": vpdpbusd on 256-bit registers (AVX-VNNI, or AVX-512 VNNI without BW),
- "avx2": vpmaddubsw + vpmaddwd,
- None: no integer path; the float kernels run instead (cpuinfer.linear).
Explicit x86 intrinsics rather than portable IR: LLVM 22 turns a full
reduce.add(mul(zext, sext)) into vpdpbusd, but neither the four-lane partial
sums the kernels accumulate (it emits vpmovzxbd + vpmaddwd, 2x the
instructions) nor, on AVX2, vpmaddubsw; and an explicit intrinsic cannot
silently fall back to scalar code.

Exactness contract of `dot_u8s8(acc, u, x, wide)`: it returns acc + the exact
sum of u[j] * x[j] over each group of four bytes, for u in 0..255 and x in
-127..127. vpmaddubsw saturates its 16-bit pair sums, which only u > 127 can
reach: a caller whose u may exceed 127 passes wide=True, and on AVX2 the
product is then computed as |u-128| * sign(x, u-128) + 128 * x (ggml's
sign trick), which never saturates.
"""

from __future__ import annotations

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model


def compile_features() -> frozenset[str]:
    """The ISA extensions numba compiles for: NUMBA_CPU_FEATURES if set, else the host's (as numba's codegen)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else ll.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


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


int8x32 = Vector(types.int8, 32)
int32x8 = Vector(types.int32, 8)
float32x8 = Vector(types.float32, 8)

I8, I16, I32, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
FAST = ("fast",)


def vec(element: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(element, n)


def splat(builder, value, n: int):
    """<n x value>."""
    v = builder.insert_element(ir.Constant(vec(value.type, n), None), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), [0] * n))


def call(builder, name: str, ret: ir.Type, args: list, fastmath=()):
    """Call the LLVM intrinsic `name` (declared on first use)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args, fastmath=fastmath)


def pointer(context, builder, array_type, array, indices, element: ir.Type):
    """Address of array[indices], as a pointer to `element` (no bounds or wraparound checks)."""
    ary = context.make_array(array_type)(context, builder, array)
    ptr = cgutils.get_item_pointer(context, builder, array_type, ary, indices, wraparound=False, boundscheck=False)
    return builder.bitcast(ptr, element.as_pointer())


def is_contiguous(array) -> bool:
    return isinstance(array, types.Array) and array.layout == "C"


# --- the dot product: vectors of bytes, int32 lanes -------------------------------------------

def _half(builder, v, which: int):
    """The lower (0) or upper (1) half of an LLVM vector."""
    n = v.type.count // 2
    return builder.shuffle_vector(v, v, ir.Constant(vec(I32, n), list(range(which * n, (which + 1) * n))))


def _concat(builder, lo, hi):
    n = lo.type.count
    return builder.shuffle_vector(lo, hi, ir.Constant(vec(I32, 2 * n), list(range(2 * n))))


def _maddubs(builder, u, x):
    """AVX2: 8 int32 lanes of sums of four u8 x s8 products (pair sums must not saturate)."""
    pairs = call(builder, "llvm.x86.avx2.pmadd.ub.sw", vec(I16, 16), [u, x])
    return call(builder, "llvm.x86.avx2.pmadd.wd", vec(I32, 8), [pairs, ir.Constant(vec(I16, 16), [1] * 16)])


def emit_dot(builder, acc, u, x, wide: bool):
    """IR for acc + sums of four u[j] * x[j] (u unsigned, x signed bytes); see the module docstring.

    acc is <n/4 x i32>, u and x <n x i8> for n = 32 or 64; 64 bytes are split in two
    256-bit halves where the ISA has no 512-bit instruction.
    """
    if ISA == "avx512vnni" and u.type.count == 64:
        return call(builder, "llvm.x86.avx512.vpdpbusd.512", vec(I32, 16),
                    [acc, builder.bitcast(u, vec(I32, 16)), builder.bitcast(x, vec(I32, 16))])
    if u.type.count > 32:
        halves = [emit_dot(builder, _half(builder, acc, i), _half(builder, u, i), _half(builder, x, i), wide)
                  for i in (0, 1)]
        return _concat(builder, *halves)
    if ISA in ("avx512vnni", "avxvnni"):
        return call(builder, "llvm.x86.avx512.vpdpbusd.256", vec(I32, 8),
                    [acc, builder.bitcast(u, vec(I32, 8)), builder.bitcast(x, vec(I32, 8))])
    if ISA != "avx2":
        raise TypeError(f"no integer dot-product instructions on this CPU target (ISA {ISA})")
    if not wide:
        return builder.add(acc, _maddubs(builder, u, x))
    s = builder.xor(u, ir.Constant(vec(I8, 32), [-128] * 32))  # u - 128, as signed bytes
    magnitude = call(builder, "llvm.abs.v32i8", vec(I8, 32), [s, ir.Constant(ir.IntType(1), 0)])
    signed_x = call(builder, "llvm.x86.avx2.psign.b", vec(I8, 32), [x, s])
    offset = _maddubs(builder, ir.Constant(vec(I8, 32), [-128] * 32), x)  # 128 * x, summed in fours
    return builder.add(acc, builder.add(_maddubs(builder, magnitude, signed_x), offset))


@intrinsic
def dot_u8s8(typingctx, acc, u, x, wide):
    """acc + per group of four bytes the sum of u[j] * x[j]: u unsigned, x in -127..127 (int32x8);
    `wide` (a literal bool) must be True when u may exceed 127."""
    if not (acc == int32x8 and u == int8x32 and x == int8x32 and isinstance(wide, types.BooleanLiteral)):
        return None
    is_wide = wide.literal_value

    def codegen(context, builder, signature, args):
        return emit_dot(builder, args[0], args[1], args[2], is_wide)

    return int32x8(acc, u, x, wide), codegen


# --- loads and the nibble unpack ---------------------------------------------------------

@intrinsic
def load_bytes(typingctx, array, row, col):
    """The 32 bytes array[row, col:col+32] of a C-contiguous 2-D uint8/int8 array, as int8x32."""
    if not (is_contiguous(array) and array.ndim == 2 and array.dtype in (types.uint8, types.int8)):
        return None

    def codegen(context, builder, signature, args):
        ptr = pointer(context, builder, signature.args[0], args[0], args[1:], vec(I8, 32))
        return builder.load(ptr, align=1)

    return int8x32(array, row, col), codegen


@intrinsic
def load_nibbles(typingctx, array, row, col):
    """The 16 bytes at array[row, col:col+16] as 32 values 0..15: the low nibbles, then the high ones
    (ggml's Q4 order: element j in the low nibble of byte j, element j+16 in its high nibble)."""
    if not (is_contiguous(array) and array.ndim == 2 and array.dtype == types.uint8):
        return None

    def codegen(context, builder, signature, args):
        v = builder.load(pointer(context, builder, signature.args[0], args[0], args[1:], vec(I8, 16)), align=1)
        lo = builder.and_(v, ir.Constant(vec(I8, 16), [15] * 16))
        hi = builder.lshr(v, ir.Constant(vec(I8, 16), [4] * 16))
        return builder.shuffle_vector(lo, hi, ir.Constant(vec(I32, 32), list(range(32))))

    return int8x32(array, row, col), codegen


@intrinsic
def flip_sign_bits(typingctx, v):
    """v xor 0x80 per byte: signed bytes q as the unsigned bytes q + 128."""
    if v != int8x32:
        return None

    def codegen(context, builder, signature, args):
        return builder.xor(args[0], ir.Constant(vec(I8, 32), [-128] * 32))

    return int8x32(v), codegen


# --- float accumulation ------------------------------------------------------------------

@intrinsic
def zeros_int32x8(typingctx):
    """int32x8 of zeros."""
    def codegen(context, builder, signature, args):
        return ir.Constant(vec(I32, 8), [0] * 8)

    return int32x8(), codegen


@intrinsic
def zeros_float32x8(typingctx):
    """float32x8 of zeros."""
    def codegen(context, builder, signature, args):
        return ir.Constant(vec(F32, 8), [0.0] * 8)

    return float32x8(), codegen


@intrinsic
def add_scaled(typingctx, acc, dots, scale):
    """acc + float(dots) * scale, lane by lane (float32x8)."""
    if not (acc == float32x8 and dots == int32x8 and isinstance(scale, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        acc, dots, scale = args
        if scale.type != F32:
            scale = builder.fptrunc(scale, F32)
        products = builder.fmul(builder.sitofp(dots, vec(F32, 8)), splat(builder, scale, 8), flags=FAST)
        return builder.fadd(acc, products, flags=FAST)

    return float32x8(acc, dots, scale), codegen


@intrinsic
def lane_sum(typingctx, v):
    """The sum of the 8 lanes of a float32x8 (in any order)."""
    if v != float32x8:
        return None

    def codegen(context, builder, signature, args):
        return call(builder, "llvm.vector.reduce.fadd.v8f32", F32, [ir.Constant(F32, -0.0), args[0]],
                    fastmath=("reassoc",))

    return types.float32(v), codegen
