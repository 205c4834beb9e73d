"""Matrix-vector products on the integer path: out[t, r] = dot(W[r], x[t]) with x quantized to int8, for
one token or a few (a decode step of several sequences).

x is quantized once per call (q8_activations.py); then, in parallel over
groups of four rows sharing every activation load, each token in turn (the
group's bytes, 9-32 KiB, are read from memory once and from L1 for the other
tokens), one of two steps runs over the row, the type's decoding (int8_blocks.py, int8_kquants.py) inlined:
- 32-value block types, BLOCKS_PER_STEP blocks per step (2 in a 256-bit
  register on AVX2, 4 in a 512-bit one): the codes of values 0-15 of every
  block and those of values 16-31 (for 4-bit types the low and high nibbles
  where they lie, int8_blocks.Blocks.halves), against the activations
  shuffled to that order once per step for all four rows; two int8 dot
  products into 4 int32 lanes per block, plus c * sum(x) in int32 where the
  type's offset is a constant c (m = c * d), converted to float and scaled by
  d_w * d_x per block (plus m * s_x for Q4_1/Q5_1). Measured on AVX2 (Zen 4,
  one thread, 1536x576 Q4_0 from L2), against one block pair per step with the
  nibbles reordered and 16 float lanes per row: 49 against 78 us;
- super-block types, one per step, against activations quantized per 256
  (Q8_K): per 64 values, vpmaddubsw and then vpdpwssd with the integer
  sub-block scales (vpdpbusd and a multiply for `wide` types), so a whole
  super-block sums in int32 and converts to float once; the mins term is one
  vpmaddwd of the mins with the activations' per-16 sums.
Each row keeps one register of LANES float32 partial sums, summed once at the end.
A group's four rows are contiguous bytes, and each step prefetches its share
of them PREFETCH_AHEAD bytes further on, one line at a time, so one linear sweep
runs ahead of the reads and covers every byte, the tail blocks included.
Measured on Zen 4 (one thread, matrices streamed from DRAM), against
prefetching the next group's rows at the step's own columns (which left the
tail blocks of every row to a demand miss): Q8_0 1536x576 8 -> 21-28 GB/s,
14336x4096 16 -> 18-20; Q4_0 15 -> 17-23; SmolLM2 Q8_0 decode 53 -> 108
tokens/s. 8 KiB ahead beat 4 and 16 on the 7B shape and on SmolLM2.
Measured on AVX-512 (Zen 5), 14336x4096, one thread: Q4_0 28-29 GB/s against
16-19 for one block per step with 8 float lanes.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import int8_blocks as blocks
from . import int8_kquants as kquants
from .int8_dot import (F32, FAST, I8, I16, I32, WIDEST, Vector, concat, const, emit_dot, emit_madd16,
                       emit_pair_sums, emit_signed_dot, emit_two_dots, hsum, is_contiguous, part, pointer, shuffle, splat, vec, widen)
from .llvm import prefetch
from .matvec import U
from .q8_activations import QK, QK_K, quantize_rows, quantize_rows_k

KINDS = {"q8_0": blocks.Q8_0, "q4_0": blocks.Q4_0, "q4_1": blocks.Q4_1, "q5_0": blocks.Q5_0,
         "q5_1": blocks.Q5_1, "iq4_nl": blocks.IQ4_NL, "q2_k": kquants.Q2_K, "q3_k": kquants.Q3_K,
         "q4_k": kquants.Q4_K, "q5_k": kquants.Q5_K, "q6_k": kquants.Q6_K, "iq4_xs": kquants.IQ4_XS}
# Blocks per step of the 32-value types: one 256-bit register of codes on AVX2 (with 16 float partial sums per
# row, as on AVX-512, four rows' sums spilled to the stack every step), a 512-bit one on AVX-512.
BLOCKS_PER_STEP = 4 if WIDEST == 64 else 2
LANES = 4 * BLOCKS_PER_STEP  # float32 partial sums per row: a register
PREFETCH_AHEAD = 8192  # bytes; see the module docstring


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


def _to_lanes(builder, v):
    """A row's partial sums as LANES floats: halves added, or zeros appended."""
    while v.type.count > LANES:
        n = v.type.count // 2
        v = builder.fadd(part(builder, v, 0, n), part(builder, v, n, n), flags=FAST)
    return widen(builder, v, LANES)


@intrinsic
def _blocks_step(typingctx, acc, w, r, b, xq, xd, t, kind, n):
    """acc + blocks b ... b+n-1 (n = 1, 2 or 4) of rows r, r+1, ... times token t's quantized x."""
    if not (_literals(kind, n) and isinstance(acc, Vector) and is_contiguous(w) and is_contiguous(xq)):
        return None
    fmt, n_blocks, nrows = KINDS[kind.literal_value], n.literal_value, acc.count // LANES
    width = max(n_blocks, 2)  # blocks per vector: a lone block is paired with zero activations

    def codegen(context, builder, signature, args):
        acc, w, r, b, xq, xd, t = args[:7]
        tw, tq, td = (signature.args[i] for i in (1, 4, 5))
        intp = r.type
        x = builder.load(pointer(context, builder, tq, xq, [t, builder.mul(b, ir.Constant(intp, QK))],
                                 vec(I8, QK * n_blocks)), align=1)
        dx = builder.load(pointer(context, builder, td, xd, [t, b], vec(F32, n_blocks)), align=4)
        x, dx = widen(builder, x, QK * width), widen(builder, dx, width)
        # The activations in the order of the codes' halves: values 0-15 of every block, then 16-31.
        x_lo = shuffle(builder, x, None, [QK * (j // 16) + j % 16 for j in range(16 * width)])
        x_hi = shuffle(builder, x, None, [QK * (j // 16) + 16 + j % 16 for j in range(16 * width)])
        lanes = 4 * width  # int32 lanes of a step: 4 per block, each the sum of 8 products
        per_lane = [lane // 4 for lane in range(lanes)]
        if fmt.offset != 0:  # the sums of x per lane, for c * sum(x) or m * s_x
            ones = const(I8, [1] * 16 * width)
            sums = emit_two_dots(builder, ir.Constant(vec(I32, lanes), None), ones, x_lo, ones, x_hi)
        if fmt.offset:  # c * sum(x), added to every row's integer dot products
            bias = builder.mul(sums, const(I32, [fmt.offset] * lanes))
        elif fmt.offset is None:  # s_x per lane, times every row's m
            x_sums = builder.fmul(builder.sitofp(sums, vec(F32, lanes)), shuffle(builder, dx, None, per_lane),
                                  flags=FAST)
        col = builder.mul(b, ir.Constant(intp, fmt.bytes))
        rows = []
        for p in _row_pointers(context, builder, tw, w, r, col, nrows):
            ps = [builder.gep(p, [ir.Constant(I32, k * fmt.bytes)]) for k in range(n_blocks)] * (width // n_blocks)
            lo, hi = fmt.halves(builder, ps)
            zero = ir.Constant(vec(I32, lanes), None)
            if fmt.signed:
                dots = emit_signed_dot(builder, emit_signed_dot(builder, zero, lo, x_lo), hi, x_hi)
            else:
                dots = emit_two_dots(builder, zero, lo, x_lo, hi, x_hi)
            dm = fmt.scales(builder, ps)  # d0 m0 d1 m1 ...
            d = builder.fmul(shuffle(builder, dm, None, range(0, 2 * width, 2)), dx, flags=FAST)
            if fmt.offset:
                dots = builder.add(dots, bias)
            row = builder.fmul(builder.sitofp(dots, vec(F32, lanes)), shuffle(builder, d, None, per_lane),
                               flags=FAST)
            if fmt.offset is None:
                m = shuffle(builder, dm, None, [2 * (lane // 4) + 1 for lane in range(lanes)])
                row = builder.fadd(row, builder.fmul(m, x_sums, flags=FAST), flags=FAST)
            rows.append(_to_lanes(builder, row))
        return builder.fadd(acc, concat(builder, rows) if nrows > 1 else rows[0], flags=FAST)

    return acc(acc, w, r, b, xq, xd, t, kind, n), codegen


@intrinsic
def _superblock_step(typingctx, acc, w, r, c, xq, xd, xb, t, kind):
    """acc + super-block c of rows r, r+1, ... times token t's x quantized per 256 values (xq, xd, sums xb)."""
    if not (_literals(kind) and isinstance(acc, Vector) and is_contiguous(w) and is_contiguous(xq)):
        return None
    fmt, nrows = KINDS[kind.literal_value], acc.count // LANES

    def codegen(context, builder, signature, args):
        acc, w, r, c, xq, xd, xb, t = args[:8]
        tw, tq, td, tb = (signature.args[i] for i in (1, 4, 5, 6))
        intp = r.type
        k0 = builder.mul(c, ir.Constant(intp, QK_K))
        x = [builder.load(pointer(context, builder, tq, xq, [t, builder.add(k0, ir.Constant(intp, 64 * g))],
                                  vec(I8, 64)), align=1) for g in range(4)]
        dx = builder.load(pointer(context, builder, td, xd, [t, c], F32))
        sums = builder.load(pointer(context, builder, tb, xb, [t, builder.mul(c, ir.Constant(intp, 16))],
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
            rows.append(_to_lanes(builder, builder.fadd(products, widen(builder, offsets, 16), flags=FAST)))
        return builder.fadd(acc, concat(builder, rows) if nrows > 1 else rows[0], flags=FAST)

    return acc(acc, w, r, c, xq, xd, xb, t, kind), codegen


@intrinsic
def _store_sums(typingctx, acc, out, t, r):
    """out[t, r + i] = the sum of row i's partial sums."""
    if not (isinstance(acc, Vector) and is_contiguous(out)):
        return None
    nrows = acc.count // LANES

    def codegen(context, builder, signature, args):
        acc, out, t, r = args
        for i in range(nrows):
            ptr = pointer(context, builder, signature.args[1], out, [t, builder.add(r, ir.Constant(r.type, i))], F32)
            builder.store(hsum(builder, part(builder, acc, LANES * i, LANES)), ptr)
        return context.get_dummy_value()

    return types.none(acc, out, t, r), codegen


@njit(inline="always")
def _prefetch_ahead(w, r, c, steps):
    """Step c of `steps` over the group of rows r..r+3: prefetch its share of the bytes PREFETCH_AHEAD past the
    group's (the group's rows are contiguous, so the sweep covers every byte, the tail blocks too)."""
    span = -(-4 * w.shape[1] // steps)
    start = r * w.shape[1] + PREFETCH_AHEAD + c * span
    for p in range(0, span, 64):
        prefetch(w, U(0), U(start + p))


@njit(inline="always")
def _rows_of_blocks(w, r, xq, xd, t, out, kind, nrows, block_bytes):
    acc = _zeros(nrows)
    nb = xd.shape[1]
    n = BLOCKS_PER_STEP
    for c in range(nb // n):
        _prefetch_ahead(w, r, c, nb // n)
        acc = _blocks_step(acc, w, r, c * n, xq, xd, t, kind, BLOCKS_PER_STEP)
    b = nb - nb % n
    if n == 4 and nb - b >= 2:
        acc = _blocks_step(acc, w, r, b, xq, xd, t, kind, 2)
        b += 2
    if b < nb:
        acc = _blocks_step(acc, w, r, b, xq, xd, t, kind, 1)
    _store_sums(acc, out, t, r)


@njit(inline="always")
def _rows_of_superblocks(w, r, xq, xd, xb, t, out, kind, nrows, block_bytes):
    acc = _zeros(nrows)
    for c in range(xd.shape[1]):
        _prefetch_ahead(w, r, c, xd.shape[1])
        acc = _superblock_step(acc, w, r, c, xq, xd, xb, t, kind)
    _store_sums(acc, out, t, r)


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
        # The group's bytes come from L1 for every token after the first. Tokens are indices, not slices:
        # a slice per group and token cost six atomic reference counts (13 of 78 us on a 1536x576 Q4_0 row).
        for t in range(tokens):
            if r + 4 <= rows:
                _rows_of_blocks(w, r, xq, xd, t, out, kind, 4, block_bytes)
            else:
                for i in range(r, rows):
                    _rows_of_blocks(w, i, xq, xd, t, out, kind, 1, block_bytes)


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
                _rows_of_superblocks(w, r, xq, xd, xb, t, out, kind, 4, block_bytes)
            else:
                for i in range(r, rows):
                    _rows_of_superblocks(w, i, xq, xd, xb, t, out, kind, 1, block_bytes)


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
