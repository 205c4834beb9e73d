"""Activations quantized to int8 once per matrix product, for the integer kernels.

Two forms, as ggml's Q8_0 and Q8_K:
- `quantize_rows`: per block of 32 values, d = max|x| / 127 and
  q = round(x / d) half away from zero, in -127..127: bit for bit ggml's
  Q8_0 reference quantizer (gguf.quants checks it), but with d kept in float32
  (ggml rounds it to float16). Beside q [tokens, K] int8: d [tokens, K/32]
  and s [tokens, K/16] = d * sum(q) over each 16 values, float32. The sums
  carry each weight block's constant term: sum_j (d_w*u_j + m)(d*q_j) =
  d_w*d*dot(u, q) + m*s. For the 32-value block types, and for every type in
  the prompt GEMM.
- `quantize_rows_k`: the same rounding with one d per 256 values, and the
  integer sums of q per 16 values as int16 [tokens, K/16], for the K-quant
  matvec (integer sums over a whole super-block, see int8_kquants.py).
Values are stored contiguously, so a kernel loads 32 or 64 activations with
one instruction.

One block is one intrinsic of vector instructions: as a numba loop, the max
reduction stayed scalar (0.4 G values/s here; this runs at several G/s).
No fast-math flags but `nnan` on the max, even in a fastmath caller
(see EXACT): they would turn x / d into x * (1/d) and change roundings.
"""

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .int8_dot import F32, I8, I16, I32, call, const, is_contiguous, pointer, shuffle, splat, vec

QK = 32  # values per activation block (Q8_0)
QK_K = 256  # values per activation block for the K-quants (Q8_K)
# The flag of every rounding step. Numba compiles these functions with their caller's fastmath
# (Flags.inherit_if_not_set), and its pass gives fast flags only to instructions that have none; nsz changes
# nothing here (d >= +0). Without it, inside the fastmath matvec d = max * (1/127) and inv = 127 / max: one ulp
# off, and ties such as -2202.1177 / (2228.4377 / 127) = -125.5 rounded to -126.
EXACT = ("nsz",)


def _round_half_away(builder, v):
    """C's roundf, exactly (gguf's np_roundf): floor(|v|) + floor(2 * frac(|v|)), with v's sign."""
    t, n = v.type, v.type.count
    a = call(builder, f"llvm.fabs.v{n}f32", t, [v])
    whole = call(builder, f"llvm.floor.v{n}f32", t, [a])
    frac2 = builder.fmul(builder.fsub(a, whole, flags=EXACT), const(F32, [2.0] * n), flags=EXACT)
    rounded = builder.fadd(whole, call(builder, f"llvm.floor.v{n}f32", t, [frac2]), flags=EXACT)
    return call(builder, f"llvm.copysign.v{n}f32", t, [rounded, v])


def _sums_of_16(builder, q):
    """<n x i32> -> <n/16 x i32>: the sums of each 16 consecutive values (four rounds of adding pairs)."""
    for _ in range(4):
        n = q.type.count
        q = builder.add(shuffle(builder, q, None, range(0, n, 2)), shuffle(builder, q, None, range(1, n, 2)))
    return q


@intrinsic
def _quantize_block(typingctx, x, xq, xd, xs, t, b, n):
    """Values b*n ... b*n+n-1 of the float32 vector x into row t of xq, and d into xd[t, b]; the sums
    of each 16 q into xs[t, b*n/16 ...]: times d if xs is float32, as int16 if it is int16."""
    if not (isinstance(n, types.IntegerLiteral) and is_contiguous(x) and x.ndim == 1 and x.dtype == types.float32
            and is_contiguous(xq) and xq.ndim == 2 and xq.dtype == types.int8 and is_contiguous(xd)
            and is_contiguous(xs) and xs.dtype in (types.float32, types.int16)):
        return None
    size = n.literal_value
    scaled_sums = xs.dtype == types.float32

    def codegen(context, builder, signature, args):
        x, xq, xd, xs, t, b, _ = args
        tx, tq, td, ts = signature.args[:4]
        start = builder.mul(b, ir.Constant(b.type, size))
        v = builder.load(pointer(context, builder, tx, x, [start], vec(F32, size)), align=4)
        amax = call(builder, f"llvm.vector.reduce.fmax.v{size}f32", F32,
                    [call(builder, f"llvm.fabs.v{size}f32", v.type, [v])],
                    fastmath=("nnan",))  # a tree of vmaxps instead of a serial NaN-checking chain
        d = builder.fdiv(amax, ir.Constant(F32, 127.0), flags=EXACT)
        zero = ir.Constant(F32, 0.0)
        inv = builder.select(builder.fcmp_ordered("==", d, zero), zero, builder.fdiv(ir.Constant(F32, 1.0), d, flags=EXACT))
        q = builder.fptosi(_round_half_away(builder, builder.fmul(v, splat(builder, inv, size), flags=EXACT)), vec(I8, size))
        builder.store(q, pointer(context, builder, tq, xq, [t, start], vec(I8, size)), align=1)
        builder.store(d, pointer(context, builder, td, xd, [t, b], F32))
        sums = _sums_of_16(builder, builder.sext(q, vec(I32, size)))
        first = builder.mul(b, ir.Constant(b.type, size // 16))
        if scaled_sums:
            out = builder.fmul(builder.sitofp(sums, vec(F32, size // 16)), splat(builder, d, size // 16), flags=EXACT)
            builder.store(out, pointer(context, builder, ts, xs, [t, first], vec(F32, size // 16)), align=4)
        else:
            builder.store(builder.trunc(sums, vec(I16, size // 16)),
                          pointer(context, builder, ts, xs, [t, first], vec(I16, size // 16)), align=2)
        return context.get_dummy_value()

    return types.none(x, xq, xd, xs, t, b, n), codegen


@njit(nogil=True, cache=True)
def quantize_rows(x, t0, t1, xq, xd, xs):
    """Rows t0..t1-1 of x [T, K] float32 (K a multiple of 32) into xq [T, K] int8, xd [T, K/32] and
    xs [T, K/16] float32 (Q8_0 form, see the module docstring)."""
    for t in range(t0, t1):
        for b in range(x.shape[1] // QK):
            _quantize_block(x[t], xq, xd, xs, t, b, 32)


@njit(nogil=True, cache=True)
def quantize_rows_k(x, t0, t1, xq, xd, xs):
    """Rows t0..t1-1 of x [T, K] float32 (K a multiple of 256) into xq [T, K] int8, xd [T, K/256]
    float32 and xs [T, K/16] int16 (Q8_K form, see the module docstring)."""
    for t in range(t0, t1):
        for b in range(x.shape[1] // QK_K):
            _quantize_block(x[t], xq, xd, xs, t, b, 256)
