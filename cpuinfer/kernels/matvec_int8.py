"""Matrix-vector products on the integer path: out[t, r] = dot(W[r], x[t]) with x quantized to int8, for
one token or a few (a decode step of several sequences).

x is quantized once per call (q8_activations.py); then, in parallel over
groups of four rows sharing every activation load, each token in turn (the
group's bytes, 9-32 KiB, are read from memory once and from L1 for the other
tokens), one of two steps runs over the row, the type's decoding (int8_blocks.py, int8_kquants.py) inlined:
- 32-value block types, two blocks per step: u of both blocks in one 512-bit
  register, one int8 dot product (int8_dot.emit_dot) into 16 int32 lanes,
  converted to float and scaled per block by d_w * d_x, plus m * s_x;
- super-block types, one per step, against activations quantized per 256
  (Q8_K): per 64 values, vpmaddubsw and then vpdpwssd with the integer
  sub-block scales (vpdpbusd and a multiply for `wide` types), so a whole
  super-block sums in int32 and converts to float once; the mins term is one
  vpmaddwd of the mins with the activations' per-16 sums.
Each row keeps one vector of 16 float32 partial sums, summed once at the end.
While a group reads a step's bytes, the same bytes of the next group's rows
are prefetched, every 64 bytes (as in blocks.py; with one prefetch per two
Q8_0 blocks, 68 bytes, matvec ran at 28-31 GB/s instead of 46-50 here).
Measured here, 14336x4096, one thread, side by side: Q4_0 28-29 GB/s against
16-19 for one block per step with 8 float lanes.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import int8_blocks as blocks
from . import int8_kquants as kquants
from .int8_dot import (F32, FAST, I8, I16, I32, Vector, concat, emit_dot, emit_madd16, emit_pair_sums, hsum,
                       is_contiguous, part, pointer, shuffle, splat, vec, widen)
from .llvm import prefetch
from .matvec import U
from .q8_activations import QK, QK_K, quantize_rows, quantize_rows_k

KINDS = {"q8_0": blocks.Q8_0, "q4_0": blocks.Q4_0, "q4_1": blocks.Q4_1, "q5_0": blocks.Q5_0,
         "q5_1": blocks.Q5_1, "iq4_nl": blocks.IQ4_NL, "q2_k": kquants.Q2_K, "q3_k": kquants.Q3_K,
         "q4_k": kquants.Q4_K, "q5_k": kquants.Q5_K, "q6_k": kquants.Q6_K, "iq4_xs": kquants.IQ4_XS}
LANES = 16  # float32 partial sums per row


def _literals(*values) -> bool:
    return all(isinstance(v, (types.IntegerLiteral, types.StringLiteral)) for v in values)


@intrinsic
def _zeros(typingctx, nrows):
    """The partial sums of `nrows` rows, zero."""
    if not _literals(nrows):
        return None
    acc = Vector(types.float32, LANES * nrows.literal_value)

    def codegen(context, builder, signature, args):
        return ir.Constant(vec(F32, acc.count), None)

    return acc(nrows), codegen


def _row_pointers(context, builder, array_type, w, r, col, nrows):
    intp = r.type
    return [pointer(context, builder, array_type, w, [builder.add(r, ir.Constant(intp, i)), col], I8)
            for i in range(nrows)]


@intrinsic
def _blocks_step(typingctx, acc, w, r, c, xq, xd, xs, kind, n):
    """acc + blocks n*c ... n*c+n-1 (n = 1 or 2) of rows r, r+1, ... times the quantized x."""
    if not (_literals(kind, n) and isinstance(acc, Vector) and is_contiguous(w) and is_contiguous(xq)):
        return None
    fmt, n_blocks, nrows = KINDS[kind.literal_value], n.literal_value, acc.count // LANES

    def codegen(context, builder, signature, args):
        acc, w, r, c, xq, xd, xs = args[:7]
        tw, tq, td, ts = (signature.args[i] for i in (1, 4, 5, 6))
        intp = r.type
        first = builder.mul(c, ir.Constant(intp, n_blocks))  # the first block
        zero = ir.Constant(intp, 0)
        x = builder.load(pointer(context, builder, tq, xq, [zero, builder.mul(first, ir.Constant(intp, QK))],
                                 vec(I8, QK * n_blocks)), align=1)
        dx = builder.load(pointer(context, builder, td, xd, [zero, first], vec(F32, n_blocks)), align=4)
        s16 = builder.load(pointer(context, builder, ts, xs, [zero, builder.mul(first, ir.Constant(intp, 2))],
                                   vec(F32, 2 * n_blocks)), align=4)
        sx = builder.fadd(shuffle(builder, s16, None, range(0, 2 * n_blocks, 2)),
                          shuffle(builder, s16, None, range(1, 2 * n_blocks, 2)), flags=FAST)
        x_scales = shuffle(builder, dx, sx, [i // 2 + (i % 2) * n_blocks for i in range(2 * n_blocks)])  # dx0 sx0 ..
        col = builder.mul(first, ir.Constant(intp, fmt.bytes))
        rows = []
        for p in _row_pointers(context, builder, tw, w, r, col, nrows):
            ps = [builder.gep(p, [ir.Constant(I32, k * fmt.bytes)]) for k in range(n_blocks)]
            dots = emit_dot(builder, ir.Constant(vec(I32, 8 * n_blocks), None), fmt.codes(builder, ps), x, fmt.wide)
            f = builder.fmul(fmt.scales(builder, ps), x_scales, flags=FAST)  # d*dx, m*sx per block
            scale = shuffle(builder, f, None, [2 * (lane // 8) for lane in range(8 * n_blocks)])
            products = widen(builder, builder.fmul(builder.sitofp(dots, scale.type), scale, flags=FAST), LANES)
            offsets = widen(builder, shuffle(builder, f, None, range(1, 2 * n_blocks, 2)), LANES)
            rows.append(builder.fadd(products, offsets, flags=FAST))
        return builder.fadd(acc, concat(builder, rows) if nrows > 1 else rows[0], flags=FAST)

    return acc(acc, w, r, c, xq, xd, xs, kind, n), codegen


@intrinsic
def _superblock_step(typingctx, acc, w, r, c, xq, xd, xb, kind):
    """acc + super-block c of rows r, r+1, ... times x quantized per 256 values (xq, xd, sums xb)."""
    if not (_literals(kind) and isinstance(acc, Vector) and is_contiguous(w) and is_contiguous(xq)):
        return None
    fmt, nrows = KINDS[kind.literal_value], acc.count // LANES

    def codegen(context, builder, signature, args):
        acc, w, r, c, xq, xd, xb = args[:7]
        tw, tq, td, tb = (signature.args[i] for i in (1, 4, 5, 6))
        intp = r.type
        zero = ir.Constant(intp, 0)
        k0 = builder.mul(c, ir.Constant(intp, QK_K))
        x = [builder.load(pointer(context, builder, tq, xq, [zero, builder.add(k0, ir.Constant(intp, 64 * g))],
                                  vec(I8, 64)), align=1) for g in range(4)]
        dx = builder.load(pointer(context, builder, td, xd, [zero, c], F32))
        sums = builder.load(pointer(context, builder, tb, xb, [zero, builder.mul(c, ir.Constant(intp, 16))],
                                    vec(I16, 16)), align=2)
        rows = []
        for p in _row_pointers(context, builder, tw, w, r, builder.mul(c, ir.Constant(intp, fmt.bytes)), nrows):
            sc, mn, d, dm = fmt.scales(builder, p)
            total = ir.Constant(vec(I32, 16), None)
            for g in range(4):
                u = fmt.codes(builder, p, g)
                if fmt.wide:
                    dots = emit_dot(builder, ir.Constant(vec(I32, 16), None), u, x[g], True)
                    lane_scales = builder.sext(shuffle(builder, sc, None, [4 * g + i // 4 for i in range(16)]),
                                               vec(I32, 16))
                    total = builder.add(total, builder.mul(dots, lane_scales))
                else:
                    pair_scales = shuffle(builder, sc, None, [4 * g + i // 8 for i in range(32)])
                    total = emit_madd16(builder, total, emit_pair_sums(builder, u, x[g]), pair_scales)
            mins = emit_madd16(builder, ir.Constant(vec(I32, 8), None), mn, sums)
            products = builder.fmul(builder.sitofp(total, vec(F32, 16)),
                                    splat(builder, builder.fmul(d, dx, flags=FAST), 16), flags=FAST)
            offsets = builder.fmul(builder.sitofp(mins, vec(F32, 8)),
                                   splat(builder, builder.fmul(dm, dx, flags=FAST), 8), flags=FAST)
            rows.append(builder.fadd(products, widen(builder, offsets, LANES), flags=FAST))
        return builder.fadd(acc, concat(builder, rows) if nrows > 1 else rows[0], flags=FAST)

    return acc(acc, w, r, c, xq, xd, xb, kind), codegen


@intrinsic
def _store_sums(typingctx, acc, out, r):
    """out[r + i] = the sum of row i's partial sums."""
    if not (isinstance(acc, Vector) and is_contiguous(out)):
        return None
    nrows = acc.count // LANES

    def codegen(context, builder, signature, args):
        acc, out, r = args
        for i in range(nrows):
            ptr = pointer(context, builder, signature.args[1], out, [builder.add(r, ir.Constant(r.type, i))], F32)
            builder.store(hsum(builder, part(builder, acc, LANES * i, LANES)), ptr)
        return context.get_dummy_value()

    return types.none(acc, out, r), codegen


@njit(inline="always")
def _rows_of_blocks(w, r, xq, xd, xs, out, kind, nrows, block_bytes):
    acc = _zeros(nrows)
    nb = xd.shape[1]
    for c in range(nb // 2):
        for p in range(0, 2 * block_bytes, 64):
            for k in range(4):
                prefetch(w, U(r + 4 + k), U(c * 2 * block_bytes + p))
        acc = _blocks_step(acc, w, r, c, xq, xd, xs, kind, 2)
    if nb % 2:
        acc = _blocks_step(acc, w, r, nb - 1, xq, xd, xs, kind, 1)
    _store_sums(acc, out, r)


@njit(inline="always")
def _rows_of_superblocks(w, r, xq, xd, xb, out, kind, nrows, block_bytes):
    acc = _zeros(nrows)
    for c in range(xd.shape[1]):
        for p in range(0, block_bytes, 64):
            for k in range(4):
                prefetch(w, U(r + 4 + k), U(c * block_bytes + p))
        acc = _superblock_step(acc, w, r, c, xq, xd, xb, kind)
    _store_sums(acc, out, r)


@njit(inline="always")
def _matvec_blocks(w, x, out, kind, block_bytes):
    tokens, k = x.shape
    xq = np.empty((tokens, k), dtype=np.int8)
    xd = np.empty((tokens, k // QK), dtype=np.float32)
    xs = np.empty((tokens, k // 16), dtype=np.float32)
    quantize_rows(x, 0, tokens, xq, xd, xs)
    rows = w.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        for t in range(tokens):  # the group's bytes come from L1 for every token after the first
            if r + 4 <= rows:
                _rows_of_blocks(w, r, xq[t:t + 1], xd[t:t + 1], xs[t:t + 1], out[t], kind, 4, block_bytes)
            else:
                for i in range(r, rows):
                    _rows_of_blocks(w, i, xq[t:t + 1], xd[t:t + 1], xs[t:t + 1], out[t], kind, 1, block_bytes)


@njit(inline="always")
def _matvec_superblocks(w, x, out, kind, block_bytes):
    tokens, k = x.shape
    xq = np.empty((tokens, k), dtype=np.int8)
    xd = np.empty((tokens, k // QK_K), dtype=np.float32)
    xb = np.empty((tokens, k // 16), dtype=np.int16)
    quantize_rows_k(x, 0, tokens, xq, xd, xb)
    rows = w.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        for t in range(tokens):
            if r + 4 <= rows:
                _rows_of_superblocks(w, r, xq[t:t + 1], xd[t:t + 1], xb[t:t + 1], out[t], kind, 4, block_bytes)
            else:
                for i in range(r, rows):
                    _rows_of_superblocks(w, i, xq[t:t + 1], xd[t:t + 1], xb[t:t + 1], out[t], kind, 1,
                                         block_bytes)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q8_0(w, x, out):
    """out[t] = dequant(w) @ x[t] for Q8_0 rows and each of a few tokens t, x [T, K] quantized to int8 (see the
    module docstring); out is [T, rows]."""
    _matvec_blocks(w, x, out, "q8_0", 34)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_0(w, x, out):
    """As matvec_int8_q8_0, for Q4_0 rows."""
    _matvec_blocks(w, x, out, "q4_0", 18)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_1(w, x, out):
    """As matvec_int8_q8_0, for Q4_1 rows."""
    _matvec_blocks(w, x, out, "q4_1", 20)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q5_0(w, x, out):
    """As matvec_int8_q8_0, for Q5_0 rows."""
    _matvec_blocks(w, x, out, "q5_0", 22)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q5_1(w, x, out):
    """As matvec_int8_q8_0, for Q5_1 rows."""
    _matvec_blocks(w, x, out, "q5_1", 24)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_iq4_nl(w, x, out):
    """As matvec_int8_q8_0, for IQ4_NL rows."""
    _matvec_blocks(w, x, out, "iq4_nl", 18)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q2_k(w, x, out):
    """out[t] = dequant(w) @ x[t] for Q2_K rows, x [T, K] quantized to int8 per 256 values (see the module
    docstring); out is [T, rows]."""
    _matvec_superblocks(w, x, out, "q2_k", 84)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q3_k(w, x, out):
    """As matvec_int8_q2_k, for Q3_K rows."""
    _matvec_superblocks(w, x, out, "q3_k", 110)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_k(w, x, out):
    """As matvec_int8_q2_k, for Q4_K rows."""
    _matvec_superblocks(w, x, out, "q4_k", 144)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q5_k(w, x, out):
    """As matvec_int8_q2_k, for Q5_K rows."""
    _matvec_superblocks(w, x, out, "q5_k", 176)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q6_k(w, x, out):
    """As matvec_int8_q2_k, for Q6_K rows."""
    _matvec_superblocks(w, x, out, "q6_k", 210)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_iq4_xs(w, x, out):
    """As matvec_int8_q2_k, for IQ4_XS rows."""
    _matvec_superblocks(w, x, out, "iq4_xs", 136)
