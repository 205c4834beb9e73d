"""Matrix products for prompt chunks on the integer path: out[t] = W @ x[t] for every token t.

The activations arrive quantized (q8_activations.quantize_rows). The weights
are read a microtile of ROWS rows at a time and converted, once per call, into
an interleaved tile that every token of the chunk then reuses (the tile is
(K/32) * 40 * ROWS bytes: 160 KiB at K = 4096, so it stays in L2; nothing the
size of the model is ever copied). Per 32-wide block of the K axis the tile
holds
  d[ROWS] float32 | m[ROWS] float32 | 8 steps x PANELS x 64 bytes of u,
where step s of panel p holds bytes 4s..4s+3 of u for its 16 rows, so one
vpdpbusd multiplies 4 weights of 16 rows by 4 activations of one token
(broadcast from memory) into 16 int32 lanes, one per row. The microkernel
(`_multiply_block`) keeps PANELS x TOKENS such products in registers and then
applies, per row and token, d * d_x * dot + m * s_x in float32.

On AVX-512 the 512-bit vectors are native; on AVX2/AVX-VNNI LLVM splits them in
two (int8_dot.emit_dot does the same for the dot product).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .int8_blocks import Q4_0_WIDE, Q4_1_WIDE, Q8_0_WIDE, block_q4_0, block_q4_1, block_q8_0
from .int8_dot import F32, I8, I32, FAST, Vector, emit_dot, is_contiguous, pointer, splat, vec
from .matvec import U, f32
from .q8_activations import QK

LANES = 16  # rows per panel: int32 lanes of a 512-bit register
PANELS = 2  # panels per microtile
TOKENS = 4  # tokens per microkernel call
ROWS = LANES * PANELS
STEPS = QK // 4  # vpdpbusd steps per block
BLOCK_BYTES = 8 * ROWS + QK * ROWS  # d and m as float32, then the u bytes

float32x16 = Vector(types.float32, LANES)
Accumulators = types.UniTuple(float32x16, PANELS * TOKENS)  # [panel * TOKENS + token]


@intrinsic
def _zero_accumulators(typingctx):
    def codegen(context, builder, signature, args):
        zero = ir.Constant(vec(F32, LANES), [0.0] * LANES)
        return ir.Constant(context.get_value_type(Accumulators), [zero] * (PANELS * TOKENS))

    return Accumulators(), codegen


@intrinsic
def _multiply_block(typingctx, acc, tile, base, xq, xd, xs, t0, b, wide):
    """acc + the products of block b: tile bytes base.. against tokens t0..t0+TOKENS-1 of (xq, xd, xs)."""
    if not (acc == Accumulators and is_contiguous(tile) and tile.dtype == types.uint8 and is_contiguous(xq)
            and isinstance(wide, types.BooleanLiteral)):
        return None
    is_wide = wide.literal_value

    def codegen(context, builder, signature, args):
        acc, tile, base, xq, xd, xs, t0, b, _ = args
        tt, tq, td, ts = signature.args[1], signature.args[3], signature.args[4], signature.args[5]
        intp = base.type

        def at(offset: int, element):
            index = builder.add(base, ir.Constant(intp, offset))
            return pointer(context, builder, tt, tile, [index], element)

        d = [builder.load(at(4 * LANES * p, vec(F32, LANES)), align=4) for p in range(PANELS)]
        m = [builder.load(at(4 * ROWS + 4 * LANES * p, vec(F32, LANES)), align=4) for p in range(PANELS)]
        tokens = [builder.add(t0, ir.Constant(t0.type, c)) for c in range(TOKENS)]
        col = builder.mul(b, ir.Constant(b.type, QK))
        zero = ir.Constant(vec(I32, LANES), [0] * LANES)
        dots = [[zero] * TOKENS for _ in range(PANELS)]
        for s in range(STEPS):
            u = [builder.load(at(8 * ROWS + s * 64 * PANELS + 64 * p, vec(I8, 64)), align=1) for p in range(PANELS)]
            k = builder.add(col, ir.Constant(col.type, 4 * s))
            x = [builder.bitcast(splat(builder, builder.load(pointer(context, builder, tq, xq, [t, k], I32), align=1),
                                       LANES), vec(I8, 64)) for t in tokens]
            for p in range(PANELS):
                for c in range(TOKENS):
                    dots[p][c] = emit_dot(builder, dots[p][c], u[p], x[c], is_wide)
        for c, t in enumerate(tokens):
            dx = splat(builder, builder.load(pointer(context, builder, td, xd, [t, b], F32)), LANES)
            sx = splat(builder, builder.load(pointer(context, builder, ts, xs, [t, b], F32)), LANES)
            for p in range(PANELS):
                i = p * TOKENS + c
                scaled = builder.fmul(builder.sitofp(dots[p][c], vec(F32, LANES)), builder.fmul(d[p], dx, flags=FAST),
                                      flags=FAST)
                total = builder.fadd(builder.fadd(builder.extract_value(acc, i), scaled, flags=FAST),
                                     builder.fmul(m[p], sx, flags=FAST), flags=FAST)
                acc = builder.insert_value(acc, total, i)
        return acc

    return Accumulators(acc, tile, base, xq, xd, xs, t0, b, wide), codegen


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


@intrinsic
def _store_steps(typingctx, tile, offset, u):
    """Bytes 4s..4s+3 of u at tile[offset + s * 64 * PANELS], for each step s."""
    if not (is_contiguous(tile) and tile.dtype == types.uint8 and u.count == QK):
        return None

    def codegen(context, builder, signature, args):
        tile, offset, u = args
        words = builder.bitcast(u, vec(I32, STEPS))
        for s in range(STEPS):
            index = builder.add(offset, ir.Constant(offset.type, s * 64 * PANELS))
            ptr = pointer(context, builder, signature.args[0], tile, [index], I32)
            builder.store(builder.extract_element(words, ir.Constant(I32, s)), ptr, align=1)
        return context.get_dummy_value()

    return types.none(tile, offset, u), codegen


@njit(inline="always")
def _pack(w, r0, n, tile, scales, block):
    """Rows r0..r0+n-1 of w into the tile; rows n..ROWS-1 get d = m = 0, so they add nothing."""
    for b in range(tile.shape[0] // BLOCK_BYTES):
        base = b * BLOCK_BYTES
        for i in range(n):
            u, d, m = block(w, r0 + i, b)
            scales[U(base // 4 + i)] = d
            scales[U(base // 4 + ROWS + i)] = m
            _store_steps(tile, base + 8 * ROWS + (i // LANES) * 64 + (i % LANES) * 4, u)
        for i in range(n, ROWS):
            scales[U(base // 4 + i)] = f32(0)
            scales[U(base // 4 + ROWS + i)] = f32(0)


@njit(inline="always")
def _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, block, wide):
    nb = xd.shape[1]
    tile = tile[: nb * BLOCK_BYTES]
    scales = tile.view(np.float32)
    part = np.empty((TOKENS, ROWS), dtype=np.float32)
    for m0 in range(r0, r1, ROWS):
        n = min(ROWS, r1 - m0)
        _pack(w, m0, n, tile, scales, block)
        for t0 in range(0, n_tokens, TOKENS):
            acc = _zero_accumulators()
            for b in range(nb):
                acc = _multiply_block(acc, tile, b * BLOCK_BYTES, xq, xd, xs, t0, b, wide)
            _store_accumulators(acc, part)
            for c in range(min(TOKENS, n_tokens - t0)):
                for i in range(n):
                    out[U(t0 + c), U(m0 + i)] = part[U(c), U(i)]


def tile_bytes(cols: int) -> int:
    """Bytes of the scratch tile the gemm kernels need for rows of `cols` weights."""
    return cols // QK * BLOCK_BYTES


def padded_tokens(n_tokens: int) -> int:
    """Rows the quantized activations need: the microkernel reads TOKENS tokens at a time."""
    return -(-n_tokens // TOKENS) * TOKENS


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q8_0(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """out[t, r] = dot(dequant(w)[r], x[t]) for rows r0 <= r < r1 and t < n_tokens, Q8_0 rows.

    xq, xd, xs: the activations from quantize_rows with padded_tokens(n_tokens) rows (the padding
    zero); tile: uint8 scratch of at least tile_bytes(K).
    """
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, block_q8_0, Q8_0_WIDE)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q4_0(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q4_0 rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, block_q4_0, Q4_0_WIDE)


@njit(nogil=True, fastmath=True, cache=True)
def gemm_int8_q4_1(w, r0, r1, xq, xd, xs, n_tokens, out, tile):
    """As gemm_int8_q8_0, for Q4_1 rows."""
    _gemm(w, r0, r1, xq, xd, xs, n_tokens, out, tile, block_q4_1, Q4_1_WIDE)
