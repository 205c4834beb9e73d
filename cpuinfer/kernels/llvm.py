"""Things numba does not expose, as small LLVM intrinsics for the kernels.

- `half_to_float(bits)`: an IEEE float16, given as its 16 bits, to float32.
  numba has no float16 type on the CPU; LLVM's `fpext half` is exact and
  becomes the F16C instruction vcvtph2ps, vectorized (F16 matvec went from
  ~4 to ~28 GB/s per thread against a 65536-entry table lookup).
  `float_to_half(x)` is the other way (`fptrunc`, round to nearest even), for
  the float16 KV cache.
- `bfloat_to_float(bits)`: a bfloat16 to float32, i.e. its bits shifted into
  the high half of a float32 (a bitcast numba cannot write).
- `stack_zeros(n)`: a float32 array of n elements on the stack. Kernels keep
  per-lane partial sums in it across all blocks of a row; since the inner
  loops index it with constants once unrolled, LLVM promotes it to vector
  registers, so the horizontal sum happens once per row instead of once per
  block (a numpy array lives on the heap and stays in memory).
- `prefetch(w, row, col)`: a software prefetch of w[row, col]. The kernels'
  dependency chains keep too few loads in flight to stream from DRAM at full
  speed; prefetching the next rows lifted 14336x4096 Q4_1 matvec from ~8 to ~20
  GB/s per thread here. x86 prefetches never fault, so the address may run past
  the array's end.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_ARRAY_F32 = types.Array(types.float32, 1, "C")


@intrinsic
def half_to_float(typingctx, bits):
    """float32 of the float16 whose bit pattern is the low 16 bits of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth != 16:
            value = builder.trunc(value, ir.IntType(16))
        return builder.fpext(builder.bitcast(value, ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def bfloat_to_float(typingctx, bits):
    """float32 of the bfloat16 whose bit pattern is the low 16 bits of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        value = builder.zext(builder.trunc(args[0], ir.IntType(16)), i32) if bits.bitwidth != 16 else \
            builder.zext(args[0], i32)
        return builder.bitcast(builder.shl(value, ir.Constant(i32, 16)), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def stack_zeros(typingctx, n):
    """float32[n] on the stack, zeroed; `n` must be a compile-time constant."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = n.literal_value

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        data = cgutils.alloca_once(builder, context.get_value_type(types.float32), size=size)
        builder.store(ir.Constant(ir.ArrayType(ir.FloatType(), size), None),
                      builder.bitcast(data, ir.PointerType(ir.ArrayType(ir.FloatType(), size))))
        array = context.make_array(_ARRAY_F32)(context, builder)
        context.populate_array(array, data=data, shape=[ir.Constant(intp, size)], strides=[ir.Constant(intp, 4)],
                               itemsize=ir.Constant(intp, 4), meminfo=None)
        return array._getvalue()

    return _ARRAY_F32(n), codegen


@intrinsic
def prefetch(typingctx, array, row, col):
    """Hint the CPU to load the cache line holding array[row, col] (2-D arrays)."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, array, [args[1], args[2]],
                                       wraparound=False, boundscheck=False)
        i8p, i32 = ir.PointerType(ir.IntType(8)), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        # read, keep in all cache levels, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, row, col), codegen


@intrinsic
def float_to_half(typingctx, value):
    """The float16 bit pattern (uint16) nearest to a float32 (round to nearest even, as F16C's vcvtps2ph)."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if value.bitwidth != 32:
            v = builder.fptrunc(v, ir.FloatType())
        return builder.bitcast(builder.fptrunc(v, ir.HalfType()), ir.IntType(16))

    return types.uint16(value), codegen
