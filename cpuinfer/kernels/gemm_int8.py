"""Matrix products for prompt chunks on the integer path: out[t] = W @ x[t] for every token t.

The activations arrive quantized per 32 values (q8_activations.quantize_rows),
for every weight type. The weights are read a microtile of ROWS rows at a time
and converted, once per call, into an interleaved tile that every token of the
chunk then reuses (16 rows at a time, transposed in registers: _pack_panel):
(K/32) groups of 1280 bytes (1536 for types with 16-value sub-blocks),
160-192 KiB at K = 4096, so the tile stays in L2 and nothing the size of
the model is ever copied. Per 32 values of the K axis the tile holds,
for each of the type's 1 or 2 sub-blocks,
  d[ROWS] float32 | m[ROWS] float32,
then 8 steps x PANELS x 64 bytes of u, where step s of panel p holds bytes
4s..4s+3 of u for its 16 rows, so one vpdpbusd multiplies 4 weights of 16
rows by 4 activations of one token (broadcast from memory) into 16 int32
lanes, one per row. The microkernel (`_multiply_group`) keeps PANELS x TOKENS
such products in registers and then applies, per row and token and
sub-block, d * d_x * dot + m * s_x in float32. A type's decoding
(int8_blocks.py, int8_kquants.py) is inlined into the packing.

On AVX-512 the 512-bit vectors are native; on AVX2/AVX-VNNI LLVM splits them in
two (int8_dot.emit_dot does the same for the dot product).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .int8_dot import (F32, FAST, I8, I32, ISA, Vector, concat, const, emit_dot, emit_signed_dot, is_contiguous, part,
                       pointer, shuffle, splat, vec)
from .int8_kquants import SuperBlocks
from .matvec import U
from .matvec_int8 import KINDS
from .q8_activations import QK

LANES = 16  # rows per panel: int32 lanes of a 512-bit register
PANELS = 2  # panels per microtile
TOKENS = 4  # tokens per microkernel call
ROWS = LANES * PANELS
STEPS = QK // 4  # vpdpbusd steps per 32 values
CODE_BYTES = QK * ROWS

float32x16 = Vector(types.float32, LANES)
Accumulators = types.UniTuple(float32x16, PANELS * TOKENS)  # [panel * TOKENS + token]


def sub_blocks(kind: str) -> int:
    """Scale pairs (d, m) per 32 values of a type: 1, or 2 for 16-value sub-blocks."""
    return QK // KINDS[kind].sub_len


def group_bytes(kind: str) -> int:
    """Tile bytes per 32 values of the K axis."""
    return 8 * ROWS * sub_blocks(kind) + CODE_BYTES


def tile_bytes(cols: int, kind: str) -> int:
    """Bytes of the scratch tile the gemm kernels need for rows of `cols` weights of a type."""
    return cols // QK * group_bytes(kind)


def padded_tokens(n_tokens: int) -> int:
    """Rows the quantized activations need: the microkernel reads TOKENS tokens at a time."""
    return -(-n_tokens // TOKENS) * TOKENS


# --- packing ---------------------------------------------------------------------------------

def _signed(fmt) -> bool:
    """Whether the tile holds the type's signed codes q (and m = 0) instead of u = q + 128: on AVX2, where
    |q| * sign(x, q) takes one vpmaddubsw per product and u would need the sign trick and a 128 * x term
    (int8_dot.emit_dot); VNNI's vpdpbusd wants the unsigned u. Measured on AVX2 (Zen 4), SmolLM2 Q8_0 pp512
    on one thread, side by side: 108-111 t/s with u, 125-127 with q."""
    return ISA == "avx2" and getattr(fmt, "signed", False)


def _tile_pointer(context, builder, tile_type, tile, offset, element):
    return pointer(context, builder, tile_type, tile, [offset], element)


def _decoded(builder, fmt, p, groups: int):
    """Chunk p of a row as the tile wants it: per group, its codes (<8 x i32>, 4 per step) and its (d, m) per
    sub-block; super-blocks give d and m of all 16 sub-blocks as <16 x float> too."""
    if groups > 1:
        sc, mn, d, dm = fmt.scales(builder, p)
        fd = builder.fmul(builder.sitofp(sc, vec(F32, 16)), splat(builder, d, 16), flags=FAST)
        fm = builder.fmul(builder.sitofp(mn, vec(F32, 16)), splat(builder, dm, 16), flags=FAST)
        codes = [builder.bitcast(fmt.codes(builder, p, g), vec(I32, 2 * STEPS)) for g in range(groups // 2)]
        return [part(builder, codes[g // 2], STEPS * (g % 2), STEPS) for g in range(groups)], (fd, fm)
    dm = fmt.scales(builder, [p])
    codes, m = fmt.codes(builder, [p]), builder.extract_element(dm, ir.Constant(I32, 1))
    if _signed(fmt):
        codes, m = builder.xor(codes, const(I8, [-128] * QK)), ir.Constant(F32, 0.0)
    return [builder.bitcast(codes, vec(I32, STEPS))], (builder.extract_element(dm, ir.Constant(I32, 0)), m)


def _transpose(builder, rows: list) -> list:
    """LANES vectors of n elements (n = 8 or 16) -> n vectors of LANES: element s of vector r becomes element
    r of vector s. In log2(n) rounds of two-vector shuffles (vpermt2d), each pairing vectors whose elements
    differ in one bit of s, instead of one insert per element."""
    n = rows[0].type.count
    k = LANES // n  # rows per vector to start with
    vecs = [concat(builder, [rows[j + n * i] for i in range(k)]) if k > 1 else rows[j] for j in range(n)]
    labels = [[(j + n * i, s) for i in range(k) for s in range(n)] for j in range(n)]
    for bit in range(n.bit_length() - 1):
        new_vecs, new_labels = list(vecs), list(labels)
        for i in range(n):
            if i >> bit & 1:
                continue
            j = i | 1 << bit
            both = labels[i] + labels[j]
            for out, value in ((i, 0), (j, 1)):
                picked = sorted((q for q, (_, s) in enumerate(both) if s >> bit & 1 == value), key=lambda q: both[q])
                new_vecs[out] = shuffle(builder, vecs[i], vecs[j], picked)
                new_labels[out] = [both[q] for q in picked]
        vecs, labels = new_vecs, new_labels
    return vecs


def _gather(builder, values: list):
    """Scalars as one vector."""
    v = ir.Constant(vec(values[0].type, len(values)), None)
    for i, x in enumerate(values):
        v = builder.insert_element(v, x, ir.Constant(I32, i))
    return v


def _layout(kind: str) -> tuple:
    """(format, sub-blocks per group, tile bytes per group, groups per chunk) of a type's packing."""
    fmt = KINDS[kind]
    return fmt, sub_blocks(kind), group_bytes(kind), 8 if isinstance(fmt, SuperBlocks) else 1


@intrinsic
def _pack(typingctx, tile, w, row, i, c, kind):
    """Chunk c of weight row `row` (one block, or one super-block of 8 groups) as row i of the tile."""
    if not (isinstance(kind, types.StringLiteral) and is_contiguous(tile) and is_contiguous(w)):
        return None
    fmt, nsub, gbytes, groups = _layout(kind.literal_value)

    def codegen(context, builder, signature, args):
        tile, w, row, i, c = args[:5]
        tt, tw = signature.args[:2]
        intp = row.type
        p = pointer(context, builder, tw, w, [row, builder.mul(c, ir.Constant(intp, fmt.bytes))], I8)
        first = builder.mul(c, ir.Constant(intp, groups * gbytes))  # tile offset of the chunk's first group
        lane = builder.add(builder.mul(builder.udiv(i, ir.Constant(intp, LANES)), ir.Constant(intp, 64)),
                           builder.mul(builder.urem(i, ir.Constant(intp, LANES)), ir.Constant(intp, 4)))
        codes, scales = _decoded(builder, fmt, p, groups)
        for g in range(groups):
            base = builder.add(first, ir.Constant(intp, g * gbytes))
            for s in range(nsub):
                for k in range(2):
                    value = builder.extract_element(scales[k], ir.Constant(I32, 2 * g + s)) if groups > 1 \
                        else scales[k]
                    at = builder.add(base, builder.add(ir.Constant(intp, (2 * s + k) * 4 * ROWS),
                                                       builder.mul(i, ir.Constant(intp, 4))))
                    builder.store(value, _tile_pointer(context, builder, tt, tile, at, F32), align=4)
            for step in range(STEPS):
                at = builder.add(base, builder.add(lane, ir.Constant(intp, 8 * ROWS * nsub + step * 64 * PANELS)))
                builder.store(builder.extract_element(codes[g], ir.Constant(I32, step)),
                              _tile_pointer(context, builder, tt, tile, at, I32), align=1)
        return context.get_dummy_value()

    return types.none(tile, w, row, i, c, kind), codegen


@intrinsic
def _pack_panel(typingctx, tile, w, row, panel, c, kind):
    """As _pack for the LANES rows row ... row+LANES-1 as panel `panel` of the tile, transposed in registers
    so that every store is a whole 64-byte line. Measured against packing one row at a time (a 4-byte store
    per step, ten cache lines touched per block), Xeon with AVX-512 VNNI (480 MB L3), three copies of a
    14336x4096 Q4_0 matrix in turn, 2 threads: a call of 4 tokens 13.7 -> 3.9 ms, of 128 tokens 29.7 -> 18.8
    ms (one thread: 27.8 -> 8.4, 57.7 -> 41.3).
    The rows of a microtile past the matrix's end keep _pack."""
    if not (isinstance(kind, types.StringLiteral) and is_contiguous(tile) and is_contiguous(w)):
        return None
    fmt, nsub, gbytes, groups = _layout(kind.literal_value)

    def codegen(context, builder, signature, args):
        tile, w, row, panel, c = args[:5]
        tt, tw = signature.args[:2]
        intp = row.type
        col = builder.mul(c, ir.Constant(intp, fmt.bytes))
        rows = [_decoded(builder, fmt, pointer(context, builder, tw, w, [builder.add(row, ir.Constant(intp, r)), col],
                                               I8), groups) for r in range(LANES)]
        first = builder.mul(c, ir.Constant(intp, groups * gbytes))
        lanes = builder.mul(panel, ir.Constant(intp, 64))  # byte offset of the panel's 16 rows

        def store(value, offset: int):
            at = builder.add(builder.add(first, lanes), ir.Constant(intp, offset))
            builder.store(value, _tile_pointer(context, builder, tt, tile, at, value.type), align=4)

        if groups > 1:
            per_sub = [_transpose(builder, [scales[k] for _, scales in rows]) for k in range(2)]  # [k][sub-block]
        for g in range(groups):
            for s in range(nsub):
                for k in range(2):
                    value = per_sub[k][2 * g + s] if groups > 1 else _gather(builder, [sc[k] for _, sc in rows])
                    store(value, g * gbytes + (2 * s + k) * 4 * ROWS)
        for g in range(0, groups, 2 if groups > 1 else 1):
            both = [codes[g] if groups == 1 else concat(builder, [codes[g], codes[g + 1]]) for codes, _ in rows]
            for k, steps in enumerate(_transpose(builder, both)):  # k: step, or 8 * (second group) + step
                store(steps, (g + k // STEPS) * gbytes + 8 * ROWS * nsub + (k % STEPS) * 64 * PANELS)
        return context.get_dummy_value()

    return types.none(tile, w, row, panel, c, kind), codegen


# --- the microkernel -------------------------------------------------------------------------

@intrinsic
def _zero_accumulators(typingctx):
    def codegen(context, builder, signature, args):
        zero = ir.Constant(vec(F32, LANES), None)
        return ir.Constant(context.get_value_type(Accumulators), [zero] * (PANELS * TOKENS))

    return Accumulators(), codegen


@intrinsic
def _multiply_group(typingctx, acc, tile, base, xq, xd, xs, t0, b, kind):
    """acc + the products of group b (values 32b ... 32b+31): tile bytes base... against tokens
    t0 ... t0+TOKENS-1 of (xq, xd, xs)."""
    if not (acc == Accumulators and is_contiguous(tile) and tile.dtype == types.uint8 and is_contiguous(xq)
            and isinstance(kind, types.StringLiteral)):
        return None
    wide, nsub = KINDS[kind.literal_value].wide, sub_blocks(kind.literal_value)
    signed = _signed(KINDS[kind.literal_value])

    def codegen(context, builder, signature, args):
        acc, tile, base, xq, xd, xs, t0, b, _ = args
        tt, tq, td, ts = signature.args[1], signature.args[3], signature.args[4], signature.args[5]
        intp = base.type

        def at(offset: int, element):
            return _tile_pointer(context, builder, tt, tile, builder.add(base, ir.Constant(intp, offset)), element)

        tokens = [builder.add(t0, ir.Constant(t0.type, c)) for c in range(TOKENS)]
        col = builder.mul(b, ir.Constant(b.type, QK))
        dx = [splat(builder, builder.load(pointer(context, builder, td, xd, [t, b], F32)), LANES) for t in tokens]
        sums = [builder.load(pointer(context, builder, ts, xs, [t, builder.mul(b, ir.Constant(b.type, 2))],
                                     vec(F32, 2)), align=4) for t in tokens]
        steps = STEPS // nsub
        for s in range(nsub):
            d = [builder.load(at(4 * (2 * s * ROWS + LANES * p), vec(F32, LANES)), align=4) for p in range(PANELS)]
            m = [builder.load(at(4 * ((2 * s + 1) * ROWS + LANES * p), vec(F32, LANES)), align=4)
                 for p in range(PANELS)]
            zero = ir.Constant(vec(I32, LANES), None)
            dots = [[zero] * TOKENS for _ in range(PANELS)]
            for step in range(s * steps, (s + 1) * steps):
                u = [builder.load(at(8 * ROWS * nsub + step * 64 * PANELS + 64 * p, vec(I8, 64)), align=1)
                     for p in range(PANELS)]
                k = builder.add(col, ir.Constant(col.type, 4 * step))
                x = [builder.bitcast(splat(builder, builder.load(pointer(context, builder, tq, xq, [t, k], I32),
                                                                 align=1), LANES), vec(I8, 64)) for t in tokens]
                for p in range(PANELS):
                    for c in range(TOKENS):
                        if signed:
                            dots[p][c] = emit_signed_dot(builder, dots[p][c], u[p], x[c])
                        else:
                            dots[p][c] = emit_dot(builder, dots[p][c], u[p], x[c], wide)
            for c in range(TOKENS):
                if nsub == 2:
                    sx = builder.extract_element(sums[c], ir.Constant(I32, s))
                else:
                    sx = builder.fadd(builder.extract_element(sums[c], ir.Constant(I32, 0)),
                                      builder.extract_element(sums[c], ir.Constant(I32, 1)), flags=FAST)
                sx = splat(builder, sx, LANES)
                for p in range(PANELS):
                    i = p * TOKENS + c
                    scaled = builder.fmul(builder.sitofp(dots[p][c], vec(F32, LANES)),
                                          builder.fmul(d[p], dx[c], flags=FAST), flags=FAST)
                    total = builder.fadd(builder.fadd(builder.extract_value(acc, i), scaled, flags=FAST),
                                         builder.fmul(m[p], sx, flags=FAST), flags=FAST)
                    acc = builder.insert_value(acc, total, i)
        return acc

    return Accumulators(acc, tile, base, xq, xd, xs, t0, b, kind), codegen


@intrinsic
def _store_accumulators(typingctx, acc, out):
    """out[c, 16p:16p+16] = acc[p * TOKENS + c] for a float32 [TOKENS, ROWS] array."""
    if not (acc == Accumulators and is_contiguous(out) and out.ndim == 2 and out.dtype == types.float32):
        return None

    def codegen(context, builder, signature, args):
        acc, out = args
        intp = context.get_value_type(types.intp)
        for p in range(PANELS):
            for c in range(TOKENS):
                ptr = pointer(context, builder, signature.args[1], out,
                              [ir.Constant(intp, c), ir.Constant(intp, LANES * p)], vec(F32, LANES))
                builder.store(builder.extract_value(acc, p * TOKENS + c), ptr, align=4)
        return context.get_dummy_value()

    return types.none(acc, out), codegen


@njit(inline="always")
def _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, kind, nsub, chunk_values):
    groups = xq.shape[1] // QK
    gbytes = 8 * ROWS * nsub + CODE_BYTES
    tile = tile[: groups * gbytes]
    scales = tile.view(np.float32)
    part = np.empty((TOKENS, ROWS), dtype=np.float32)
    for m0 in range(r0, r1, ROWS):
        n = min(ROWS, r1 - m0)
        if n == ROWS:
            for c in range(xq.shape[1] // chunk_values):
                for panel in range(PANELS):
                    _pack_panel(tile, w, m0 + LANES * panel, panel, c, kind)
        else:
            for i in range(n):
                for c in range(xq.shape[1] // chunk_values):
                    _pack(tile, w, m0 + i, i, c, kind)
        for i in range(n, ROWS):  # rows past the matrix: d = m = 0, so they add nothing
            for b in range(groups):
                for k in range(2 * nsub):
                    scales[U(b * gbytes // 4 + k * ROWS + i)] = np.float32(0)
        for t0 in range(0, n_tokens, TOKENS):
            acc = _zero_accumulators()
            for b in range(groups):
                acc = _multiply_group(acc, tile, b * gbytes, xq, xd, xs, t0, b, kind)
            _store_accumulators(acc, part)
            for c in range(min(TOKENS, n_tokens - t0)):
                for i in range(n):
                    out[U(t0 + c), U(m0 + i)] = part[U(c), U(i)]


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q8_0(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """out[t, r] = dot(dequant(w)[r], x[t]) for rows r0 <= r < r1 and t < n_tokens, Q8_0 rows.

    xq, xd, xs: the activations from quantize_rows with padded_tokens(n_tokens) rows (the padding
    zero); tile: uint8 scratch of at least tile_bytes(K, "q8_0").
    """
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q8_0", 1, 32)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q4_0(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q4_0 rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q4_0", 1, 32)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q4_1(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q4_1 rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q4_1", 1, 32)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q5_0(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q5_0 rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q5_0", 1, 32)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q5_1(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q5_1 rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q5_1", 1, 32)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_iq4_nl(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for IQ4_NL rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "iq4_nl", 1, 32)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q2_k(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q2_K rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q2_k", 2, 256)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q3_k(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q3_K rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q3_k", 2, 256)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q4_k(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q4_K rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q4_k", 1, 256)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q5_k(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q5_K rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q5_k", 1, 256)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q6_k(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q6_K rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "q6_k", 2, 256)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_iq4_xs(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for IQ4_XS rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, "iq4_xs", 1, 256)
