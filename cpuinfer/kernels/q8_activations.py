"""Activations quantized to int8 once per matrix product, for the integer kernels.

As ggml's Q8_0 (and Q8_1's block sum), bit for bit with its reference
quantizer (gguf.quants checks it): per block of 32 values, d = max|x| / 127,
q = round(x / d) half away from zero, in -127..127, and s = d * sum(q); d is
kept in float32 (ggml rounds it to float16). Values are stored contiguously,
[tokens, K] int8, with d and s in [tokens, K/32] float32 beside them, so a
kernel loads 32 activations with one instruction. The sums carry each weight
block's constant term (Q4_0's -8, Q4_1's minimum):
sum_j (d_w*u_j + m)(d*q_j) = d_w*d*dot(u, q) + m*s.

One block is one intrinsic of vector instructions: as a numba loop, the max
reduction stayed scalar (0.4 G values/s here; this runs at several G/s).
No fast-math flags but `nnan` on the max: they would turn x / d into
x * (1/d) and change roundings.
"""

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .int8_dot import F32, I8, I32, call, is_contiguous, pointer, splat, vec

QK = 32  # values per activation block


def _round_half_away(builder, v):
    """C's roundf, exactly (gguf's np_roundf): floor(|v|) + floor(2 * frac(|v|)), with v's sign."""
    t = v.type
    a = call(builder, f"llvm.fabs.v{QK}f32", t, [v])
    whole = call(builder, f"llvm.floor.v{QK}f32", t, [a])
    frac2 = builder.fmul(builder.fsub(a, whole), ir.Constant(t, [2.0] * QK))
    rounded = builder.fadd(whole, call(builder, f"llvm.floor.v{QK}f32", t, [frac2]))
    return call(builder, f"llvm.copysign.v{QK}f32", t, [rounded, v])


@intrinsic
def _quantize_block(typingctx, x, xq, xd, xs, t, b):
    """Block b of the float32 vector x into xq[t, 32b:32b+32], xd[t, b], xs[t, b]."""
    if not (is_contiguous(x) and x.ndim == 1 and x.dtype == types.float32 and is_contiguous(xq)
            and xq.ndim == 2 and xq.dtype == types.int8 and is_contiguous(xd) and is_contiguous(xs)):
        return None

    def codegen(context, builder, signature, args):
        x, xq, xd, xs, t, b = args
        tx, tq, td, ts = signature.args[:4]
        start = builder.mul(b, ir.Constant(b.type, QK))
        v = builder.load(pointer(context, builder, tx, x, [start], vec(F32, QK)), align=4)
        amax = call(builder, f"llvm.vector.reduce.fmax.v{QK}f32", F32,
                    [call(builder, f"llvm.fabs.v{QK}f32", v.type, [v])],
                    fastmath=("nnan",))  # a tree of vmaxps instead of a serial NaN-checking chain
        d = builder.fdiv(amax, ir.Constant(F32, 127.0))
        zero = ir.Constant(F32, 0.0)
        inv = builder.select(builder.fcmp_ordered("==", d, zero), zero, builder.fdiv(ir.Constant(F32, 1.0), d))
        q = builder.fptosi(_round_half_away(builder, builder.fmul(v, splat(builder, inv, QK))), vec(I8, QK))
        builder.store(q, pointer(context, builder, tq, xq, [t, start], vec(I8, QK)), align=1)
        total = call(builder, f"llvm.vector.reduce.add.v{QK}i32", I32, [builder.sext(q, vec(I32, QK))])
        builder.store(d, pointer(context, builder, td, xd, [t, b], F32))
        builder.store(builder.fmul(d, builder.sitofp(total, F32)), pointer(context, builder, ts, xs, [t, b], F32))
        return context.get_dummy_value()

    return types.none(x, xq, xd, xs, t, b), codegen


@njit(nogil=True, cache=True)
def quantize_row(x, xq, xd, xs, t):
    """Quantize the float32 vector x (length a multiple of 32) into row t of xq [T, K] int8 and of
    xd, xs [T, K/32] float32."""
    for b in range(x.shape[0] // QK):
        _quantize_block(x, xq, xd, xs, t, b)


@njit(nogil=True, cache=True)
def quantize_rows(x, t0, t1, xq, xd, xs):
    """Rows t0..t1-1 of x [T, K] float32 into xq, xd, xs (see quantize_row)."""
    for t in range(t0, t1):
        quantize_row(x[t], xq, xd, xs, t)
