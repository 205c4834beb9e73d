"""Matrix-vector products on the integer path: out[t, r] = dot(W[r], x[t]) with x quantized to int8, for
one token or a few (a decode step of several sequences).

x is quantized once per call (q8_activations.py); then, in parallel over
groups of four rows sharing every activation load, one of two steps runs over
the row, the type's decoding (int8_blocks.py, int8_kquants.py) inlined:
- 32-value block types, BLOCKS_PER_STEP blocks per step (2 in a 256-bit
  register on AVX2, 4 in a 512-bit one), for up to four tokens at once: each
  row's blocks decode once per step for all of them (a 7B-shape Q4_0 decode
  step of 4 sequences, 2 threads: 402 ms with the tokens one after the other,
  the group's bytes from L1 for all but the first, 253 ms so; one sequence
  takes 117-130). Per block and token: the codes of values 0-15 of every
  block and those of values 16-31 (for 4-bit types the low and high nibbles
  where they lie, int8_blocks.Blocks.halves), against the activations
  shuffled to that order once per step for all four rows; two int8 dot
  products into 4 int32 lanes per block, plus c * sum(x) in int32 where the
  type's offset is a constant c (m = c * d), converted to float and scaled by
  d_w * d_x per block (plus m * s_x for Q4_1/Q5_1). Measured on AVX2 (Zen 4,
  one thread, 1536x576 Q4_0 from L2), against one block pair per step with the
  nibbles reordered and 16 float lanes per row: 49 against 78 us;
- super-block types, one per step, for up to four tokens at once as above, against activations quantized per 256
  (Q8_K): per 64 values, vpmaddubsw and then vpdpwssd with the integer
  sub-block scales (vpdpbusd and a multiply for `wide` types), so a whole
  super-block sums in int32 and converts to float once; the mins term is one
  vpmaddwd of the mins with the activations' per-16 sums.
Each row keeps, per token, one register of LANES float32 partial sums, summed once at the end.
A group's four rows are contiguous bytes, and each step prefetches its share
of them PREFETCH_AHEAD bytes further on, one line at a time, so one linear sweep
runs ahead of the reads and covers every byte, the tail blocks included.
Measured on Zen 4 (one thread, matrices streamed from DRAM), against
prefetching the next group's rows at the step's own columns (which left the
tail blocks of every row to a demand miss): Q8_0 1536x576 8 -> 21-28 GB/s,
14336x4096 16 -> 18-20; Q4_0 15 -> 17-23; SmolLM2 Q8_0 decode 53 -> 108
tokens/s. 8 KiB ahead: on the 7B shape (one thread, Q4_0) 4.6 t/s against
3.5-3.7 for 4 KiB and 4.5 for 16; on SmolLM2 the three were within the noise,
and min(8 KiB, the group's bytes) cost Q8_0 decode 104-120 -> 80-82 t/s.
Rows of PER_ROW_PREFETCH values or more (the 7B shape's down projection,
14336) prefetch instead in one stream per row, 2 KiB ahead of each. Measured
(Zen 4, two threads, four copies streamed from DRAM, best of 15, one process):
4096x14336 Q4_0 28 -> 35 GB/s, Q6_K 27 -> 34, Q4_K 27 -> 32, Q8_0 30 -> 33,
4096-value rows unchanged; a sweep far enough ahead to cover the group's last
row from the start did not help (a pure read of the same pattern gained, the
kernel did not). Per-row streams lose on 4096-value rows (Q4_0 14336x4096 44
-> 28 GB/s) and did not win on 5760-value Q8_0 rows (31 -> 29). On Intel
(a Xeon with AVX-512 VNNI) it is the other way round, so there every row has
its own stream: 7B-shape matrices streamed from DRAM, Q4_0 14336x4096 one
thread 9.0 -> 12.7 GB/s, two 16.6 -> 23.9 (a sweep 16 KiB ahead: 10.2, 19.6);
Q4_K 7.9 -> 10.6, 14.2 -> 20.4; Q6_K 4096x4096 two threads 19.8 -> 24.5;
SmolLM2's 1536x576 Q8_0 8.3 -> 11.4, 14.3 -> 18.0.
Measured on AVX-512 (Zen 5), 14336x4096, one thread: Q4_0 28-29 GB/s against
16-19 for one block per step with 8 float lanes.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import int8_blocks as blocks
from . import int8_kquants as kquants
from .int8_dot import (F32, FAST, I8, I16, I32, WIDEST, Vector, compile_cpu, concat, const, emit_dot, emit_madd16,
                       emit_pair_sums, emit_signed_dot, emit_two_dots, hsum, is_contiguous, part, pointer, shuffle,
                       splat, vec, widen)
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
# Values per row from which each row has its own prefetch stream: AMD's long rows only, every row elsewhere (see
# the module docstring).
PER_ROW_PREFETCH = 8192 if compile_cpu().startswith(("znver", "bdver", "btver")) else 0


def _literals(*values) -> bool:
    return all(isinstance(v, (types.IntegerLiteral, types.StringLiteral)) for v in values)


@intrinsic
def _zeros(typingctx, nrows, ntok):
    """The partial sums of `nrows` rows for each of `ntok` tokens (token after token), zero."""
    if not _literals(nrows, ntok):
        return None
    acc = Vector(types.float32, LANES * nrows.literal_value * ntok.literal_value)

    def codegen(context, builder, signature, args):
        return ir.Constant(vec(F32, acc.count), None)

    return acc(nrows, ntok), codegen


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
def _blocks_step(typingctx, acc, w, r, b, xq, xd, t, kind, n, ntok):
    """acc + blocks b ... b+n-1 (n = 1, 2 or 4) of rows r, r+1, ... times the quantized x of tokens t ... t+ntok-1:
    each row's blocks decode once for all the tokens."""
    if not (_literals(kind, n, ntok) and isinstance(acc, Vector) and is_contiguous(w) and is_contiguous(xq)):
        return None
    fmt, n_blocks, tokens = KINDS[kind.literal_value], n.literal_value, ntok.literal_value
    nrows = acc.count // (LANES * tokens)
    width = max(n_blocks, 2)  # blocks per vector: a lone block is paired with zero activations

    def codegen(context, builder, signature, args):
        acc, w, r, b, xq, xd, t = args[:7]
        tw, tq, td = (signature.args[i] for i in (1, 4, 5))
        intp = r.type
        lanes = 4 * width  # int32 lanes of a step: 4 per block, each the sum of 8 products
        per_lane = [lane // 4 for lane in range(lanes)]
        activations = []
        for k in range(tokens):
            tk = builder.add(t, ir.Constant(intp, k))
            x = builder.load(pointer(context, builder, tq, xq, [tk, builder.mul(b, ir.Constant(intp, QK))],
                                     vec(I8, QK * n_blocks)), align=1)
            dx = builder.load(pointer(context, builder, td, xd, [tk, b], vec(F32, n_blocks)), align=4)
            x, dx = widen(builder, x, QK * width), shuffle(builder, widen(builder, dx, width), None, per_lane)
            # The activations in the order of the codes' halves: values 0-15 of every block, then 16-31.
            x_lo = shuffle(builder, x, None, [QK * (j // 16) + j % 16 for j in range(16 * width)])
            x_hi = shuffle(builder, x, None, [QK * (j // 16) + 16 + j % 16 for j in range(16 * width)])
            extra = None
            if fmt.offset != 0:  # the sums of x per lane, for c * sum(x) or m * s_x
                ones = const(I8, [1] * 16 * width)
                sums = emit_two_dots(builder, ir.Constant(vec(I32, lanes), None), ones, x_lo, ones, x_hi)
                if fmt.offset:  # c * sum(x), added to every row's integer dot products
                    extra = builder.mul(sums, const(I32, [fmt.offset] * lanes))
                else:  # s_x per lane, times every row's m
                    extra = builder.fmul(builder.sitofp(sums, vec(F32, lanes)), dx, flags=FAST)
            activations.append((x_lo, x_hi, dx, extra))
        col = builder.mul(b, ir.Constant(intp, fmt.bytes))
        sums = [None] * (tokens * nrows)
        for i, p in enumerate(_row_pointers(context, builder, tw, w, r, col, nrows)):
            ps = [builder.gep(p, [ir.Constant(I32, k * fmt.bytes)]) for k in range(n_blocks)] * (width // n_blocks)
            lo, hi = fmt.halves(builder, ps)
            dm = fmt.scales(builder, ps)  # d0 m0 d1 m1 ...
            dw = shuffle(builder, dm, None, [2 * block for block in per_lane])
            if fmt.offset is None:
                m = shuffle(builder, dm, None, [2 * block + 1 for block in per_lane])
            for k, (x_lo, x_hi, dx, extra) in enumerate(activations):
                # c * sum(x) starts the integer sums: the dot products add to it
                start = extra if fmt.offset else ir.Constant(vec(I32, lanes), None)
                if fmt.signed:
                    dots = emit_signed_dot(builder, emit_signed_dot(builder, start, lo, x_lo), hi, x_hi)
                else:
                    dots = emit_two_dots(builder, start, lo, x_lo, hi, x_hi)
                row = builder.fmul(builder.sitofp(dots, vec(F32, lanes)), builder.fmul(dw, dx, flags=FAST),
                                   flags=FAST)
                if fmt.offset is None:
                    row = builder.fadd(row, builder.fmul(m, extra, flags=FAST), flags=FAST)
                sums[k * nrows + i] = _to_lanes(builder, row)
        return builder.fadd(acc, concat(builder, sums) if len(sums) > 1 else sums[0], flags=FAST)

    return acc(acc, w, r, b, xq, xd, t, kind, n, ntok), codegen


@intrinsic
def _superblock_step(typingctx, acc, w, r, c, xq, xd, xb, t, kind, ntok):
    """acc + super-block c of rows r, r+1, ... times the x of tokens t ... t+ntok-1 quantized per 256 values (xq,
    xd, sums xb): each row's super-block decodes once for all the tokens."""
    if not (_literals(kind, ntok) and isinstance(acc, Vector) and is_contiguous(w) and is_contiguous(xq)):
        return None
    fmt, tokens = KINDS[kind.literal_value], ntok.literal_value
    nrows = acc.count // (LANES * tokens)

    def codegen(context, builder, signature, args):
        acc, w, r, c, xq, xd, xb, t = args[:8]
        tw, tq, td, tb = (signature.args[i] for i in (1, 4, 5, 6))
        intp = r.type
        k0 = builder.mul(c, ir.Constant(intp, QK_K))
        activations = []
        for k in range(tokens):
            tk = builder.add(t, ir.Constant(intp, k))
            x = [builder.load(pointer(context, builder, tq, xq, [tk, builder.add(k0, ir.Constant(intp, 64 * g))],
                                      vec(I8, 64)), align=1) for g in range(4)]
            dx = builder.load(pointer(context, builder, td, xd, [tk, c], F32))
            sums = builder.load(pointer(context, builder, tb, xb, [tk, builder.mul(c, ir.Constant(intp, 16))],
                                        vec(I16, 16)), align=2)
            activations.append((x, dx, sums))
        out = [None] * (tokens * nrows)
        for i, p in enumerate(_row_pointers(context, builder, tw, w, r,
                                            builder.mul(c, ir.Constant(intp, fmt.bytes)), nrows)):
            sc, mn, d, dm = fmt.scales(builder, p)
            totals = [ir.Constant(vec(I32, 16), None)] * tokens
            for g in range(4):
                u = fmt.codes(builder, p, g)
                if fmt.wide:
                    lane_scales = builder.sext(shuffle(builder, sc, None, [4 * g + i // 4 for i in range(16)]),
                                               vec(I32, 16))
                else:
                    pair_scales = shuffle(builder, sc, None, [4 * g + i // 8 for i in range(32)])
                for k, (x, _, _) in enumerate(activations):
                    if fmt.wide:
                        dots = emit_dot(builder, ir.Constant(vec(I32, 16), None), u, x[g], True)
                        totals[k] = builder.add(totals[k], builder.mul(dots, lane_scales))
                    else:
                        totals[k] = emit_madd16(builder, totals[k], emit_pair_sums(builder, u, x[g]), pair_scales)
            for k, (_, dx, sums) in enumerate(activations):
                mins = emit_madd16(builder, ir.Constant(vec(I32, 8), None), mn, sums)
                products = builder.fmul(builder.sitofp(totals[k], vec(F32, 16)),
                                        splat(builder, builder.fmul(d, dx, flags=FAST), 16), flags=FAST)
                offsets = builder.fmul(builder.sitofp(mins, vec(F32, 8)),
                                       splat(builder, builder.fmul(dm, dx, flags=FAST), 8), flags=FAST)
                out[k * nrows + i] = _to_lanes(builder, builder.fadd(products, widen(builder, offsets, 16),
                                                                     flags=FAST))
        return builder.fadd(acc, concat(builder, out) if len(out) > 1 else out[0], flags=FAST)

    return acc(acc, w, r, c, xq, xd, xb, t, kind, ntok), codegen


@intrinsic
def _store_sums(typingctx, acc, out, t, r, nrows):
    """out[t + k, r + i] = the sum of the partial sums of row i and token k, for the `nrows` rows of acc."""
    if not (_literals(nrows) and isinstance(acc, Vector) and is_contiguous(out)):
        return None
    n = nrows.literal_value

    def codegen(context, builder, signature, args):
        acc, out, t, r = args[:4]
        for j in range(acc.type.count // LANES):
            k, i = divmod(j, n)
            at = [builder.add(t, ir.Constant(t.type, k)), builder.add(r, ir.Constant(r.type, i))]
            builder.store(hsum(builder, part(builder, acc, LANES * j, LANES)),
                          pointer(context, builder, signature.args[1], out, at, F32))
        return context.get_dummy_value()

    return types.none(acc, out, t, r, nrows), codegen


@njit(inline="always")
def _prefetch_group(w, r, c, steps):
    """Step c of `steps` over the group of rows r..r+3: prefetch its share of the group's bytes PREFETCH_AHEAD
    further on (the group's rows are contiguous, so one linear sweep covers every byte, the tail blocks too)."""
    span = -(-4 * w.shape[1] // steps)
    start = r * w.shape[1] + PREFETCH_AHEAD + c * span
    for p in range(0, span, 64):
        prefetch(w, U(0), U(start + p))


@njit(inline="always")
def _prefetch_rows(w, r, c, steps):
    """As _prefetch_group, in four streams, each a quarter of PREFETCH_AHEAD ahead of its row's reads and
    running on into the same row of the next group (rows shorter than that distance: of a later group)."""
    n = w.shape[1]
    span = -(-n // steps)
    p = (c * span + PREFETCH_AHEAD // 4 + 63) & ~63
    while p < (c + 1) * span + PREFETCH_AHEAD // 4:
        for i in range(4):
            prefetch(w, U(0), U((r + i) * n + p if p < n else (r + i + 3) * n + p))
        p += 64


@njit(inline="always")
def _block_steps(acc, w, r, xq, xd, t, kind, ntok, prefetch_ahead):
    nb = xd.shape[1]
    n = BLOCKS_PER_STEP
    for c in range(nb // n):
        prefetch_ahead(w, r, c, nb // n)
        acc = _blocks_step(acc, w, r, c * n, xq, xd, t, kind, BLOCKS_PER_STEP, ntok)
    b = nb - nb % n
    if n == 4 and nb - b >= 2:
        acc = _blocks_step(acc, w, r, b, xq, xd, t, kind, 2, ntok)
        b += 2
    if b < nb:
        acc = _blocks_step(acc, w, r, b, xq, xd, t, kind, 1, ntok)
    return acc


@njit(inline="always")
def _superblock_steps(acc, w, r, xq, xd, xb, t, kind, ntok, prefetch_ahead):
    for c in range(xd.shape[1]):
        prefetch_ahead(w, r, c, xd.shape[1])
        acc = _superblock_step(acc, w, r, c, xq, xd, xb, t, kind, ntok)
    return acc


# The loops differ only in their prefetch, chosen once per group: choosing per step (a loop over 1 or 4
# streams) cost Q4_K 14336x4096 36 -> 32 GB/s, 4096x4096 37 -> 32.
@njit(inline="always")
def _rows_of_blocks(w, r, xq, xd, xs, t, out, kind, nrows, ntok):
    # xs goes unused: the two families share _all_rows' signature
    acc = _zeros(nrows, ntok)
    if xq.shape[1] >= PER_ROW_PREFETCH:
        acc = _block_steps(acc, w, r, xq, xd, t, kind, ntok, _prefetch_rows)
    else:
        acc = _block_steps(acc, w, r, xq, xd, t, kind, ntok, _prefetch_group)
    _store_sums(acc, out, t, r, nrows)


@njit(inline="always")
def _rows_of_superblocks(w, r, xq, xd, xb, t, out, kind, nrows, ntok):
    acc = _zeros(nrows, ntok)
    if xq.shape[1] >= PER_ROW_PREFETCH:
        acc = _superblock_steps(acc, w, r, xq, xd, xb, t, kind, ntok, _prefetch_rows)
    else:
        acc = _superblock_steps(acc, w, r, xq, xd, xb, t, kind, ntok, _prefetch_group)
    _store_sums(acc, out, t, r, nrows)


@njit(inline="always")
def _all_rows(rows_of, w, xq, xd, xs, out, kind):
    """rows_of(...) for every group of four rows (in parallel) and up to four tokens at a time, and the tail rows
    one by one. Tokens are indices, not slices: a slice per group and token cost six atomic reference counts
    (13 of 78 us on a 1536x576 Q4_0 row)."""
    rows, tokens = w.shape[0], xq.shape[0]
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for i in range(r, rows):
                for t in range(tokens):
                    rows_of(w, i, xq, xd, xs, t, out, kind, 1, 1)
            continue
        t = 0
        while t < tokens:
            if tokens - t >= 4:
                rows_of(w, r, xq, xd, xs, t, out, kind, 4, 4)
                t += 4
            elif tokens - t >= 2:
                rows_of(w, r, xq, xd, xs, t, out, kind, 4, 2)
                t += 2
            else:
                rows_of(w, r, xq, xd, xs, t, out, kind, 4, 1)
                t += 1


@njit(inline="always")
def _matvec_blocks(w, x, out, kind):
    tokens, k = x.shape
    xq = np.empty((tokens, k), dtype=np.int8)
    xd = np.empty((tokens, k // QK), dtype=np.float32)
    xs = np.empty((tokens, k // 16), dtype=np.float32)
    quantize_rows(x, 0, tokens, xq, xd, xs)
    _all_rows(_rows_of_blocks, w, xq, xd, xs, out, kind)


@njit(inline="always")
def _matvec_superblocks(w, x, out, kind):
    tokens, k = x.shape
    xq = np.empty((tokens, k), dtype=np.int8)
    xd = np.empty((tokens, k // QK_K), dtype=np.float32)
    xb = np.empty((tokens, k // 16), dtype=np.int16)
    quantize_rows_k(x, 0, tokens, xq, xd, xb)
    _all_rows(_rows_of_superblocks, w, xq, xd, xb, out, kind)


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q8_0(w, x, out):
    """out[t] = dequant(w) @ x[t] for Q8_0 rows and each of a few tokens t, x [T, K] quantized to int8 (see the
    module docstring); out is [T, rows]."""
    _matvec_blocks(w, x, out, "q8_0")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_0(w, x, out):
    """As matvec_int8_q8_0, for Q4_0 rows."""
    _matvec_blocks(w, x, out, "q4_0")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_1(w, x, out):
    """As matvec_int8_q8_0, for Q4_1 rows."""
    _matvec_blocks(w, x, out, "q4_1")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q5_0(w, x, out):
    """As matvec_int8_q8_0, for Q5_0 rows."""
    _matvec_blocks(w, x, out, "q5_0")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q5_1(w, x, out):
    """As matvec_int8_q8_0, for Q5_1 rows."""
    _matvec_blocks(w, x, out, "q5_1")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_iq4_nl(w, x, out):
    """As matvec_int8_q8_0, for IQ4_NL rows."""
    _matvec_blocks(w, x, out, "iq4_nl")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q2_k(w, x, out):
    """out[t] = dequant(w) @ x[t] for Q2_K rows, x [T, K] quantized to int8 per 256 values (see the module
    docstring); out is [T, rows]."""
    _matvec_superblocks(w, x, out, "q2_k")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q3_k(w, x, out):
    """As matvec_int8_q2_k, for Q3_K rows."""
    _matvec_superblocks(w, x, out, "q3_k")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q4_k(w, x, out):
    """As matvec_int8_q2_k, for Q4_K rows."""
    _matvec_superblocks(w, x, out, "q4_k")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q5_k(w, x, out):
    """As matvec_int8_q2_k, for Q5_K rows."""
    _matvec_superblocks(w, x, out, "q5_k")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_q6_k(w, x, out):
    """As matvec_int8_q2_k, for Q6_K rows."""
    _matvec_superblocks(w, x, out, "q6_k")


@njit(parallel=True, fastmath=True, cache=True)
def matvec_int8_iq4_xs(w, x, out):
    """As matvec_int8_q2_k, for IQ4_XS rows."""
    _matvec_superblocks(w, x, out, "iq4_xs")
