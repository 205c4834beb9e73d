"""The loops every block type shares; each type passes in how its blocks decode.

A block type is three things:
- `block_width`: array elements per block (bytes of a ggml block; for
  16-bit float rows, a run of values), holding `n_sub` sub-blocks of
  `sub_len` values (16 or 32);
- `sub_block(w, r, o, s) -> (scale, offset)`: sub-block s (values
  s*sub_len ... s*sub_len + sub_len - 1) of the block at column o of row r
  decodes to scale * code + offset;
- `code(w, r, o, s, j) -> float32`: its j-th code.
Both are small inline functions (see kquants.py, q5.py, iq4.py, floats.py);
the kernels that call these loops pass them as arguments, so numba compiles
one specialised kernel per type with the type's decoding inlined.

`matvec_blocks` is the decode kernel's loop. Four rows per iteration share
every activation load; each row keeps a vector of per-lane partial sums
(stack_zeros) across all its blocks, summed once at the end of the row; the
offset parts (ggml's mins) are offset * sum(x over the sub-block), with the
sub-block sums of x computed once per call; while a group reads a block, the
same block of the next group's rows is prefetched, every 64 bytes (see
llvm.py). Tail rows (rows % 4) take the one-row loop. Measured here, one
thread, 14336x4096: Q4_K 15-19.5 Gvalues/s against 21.7 for matvec.py's
Q4_1; taking two sub-blocks per inner loop (a constant s % 2) was no faster
and compiled 3x slower. matvec.py's Q8_0, Q4_1 and F16 kernels written on
this loop ran as fast as they do, its Q4_0 20% slower, so those stay.

`dequant_blocks` expands rows to float32 for the prompt path's BLAS tiles,
computing scale * code + offset in exactly the float32 operations of
ggml's `dequantize_row_*` (and gguf.quants), so tiles are bit-exact.
"""

from numba import njit, prange

from .llvm import prefetch, stack_zeros
from .matvec import U, _block_sums, _lane_sum, f32


@njit(inline="always")
def _one_row(w, r, x, xsum, block_width, n_sub, sub_len, sub_block, code):
    acc = stack_zeros(sub_len)
    c = f32(0)
    for b in range(w.shape[1] // block_width):
        o = b * block_width
        for s in range(n_sub):
            d, m = sub_block(w, r, o, s)
            xo = (b * n_sub + s) * sub_len
            for j in range(sub_len):
                acc[j] += d * (code(w, r, o, s, j) * x[U(xo + j)])
            c += m * xsum[U(b * n_sub + s)]
    return _lane_sum(acc) + c


@njit(inline="always")
def matvec_blocks(w, x, out, block_width, n_sub, sub_len, sub_block, code):
    """out[r] = sum_k dequant(w)[r, k] * x[k], in parallel over groups of four rows."""
    rows = w.shape[0]
    xsum = _block_sums(x, sub_len)
    for g in prange((rows + 3) // 4):
        r = g * 4
        if r + 4 > rows:
            for t in range(r, rows):
                out[U(t)] = _one_row(w, t, x, xsum, block_width, n_sub, sub_len, sub_block, code)
            continue
        a0 = stack_zeros(sub_len); a1 = stack_zeros(sub_len); a2 = stack_zeros(sub_len); a3 = stack_zeros(sub_len)
        c0 = f32(0); c1 = f32(0); c2 = f32(0); c3 = f32(0)
        for b in range(w.shape[1] // block_width):
            o = b * block_width
            for p in range(0, block_width, 64):
                for k in range(4):
                    prefetch(w, U(r + 4 + k), U(o + p))
            for s in range(n_sub):
                d0, m0 = sub_block(w, r, o, s); d1, m1 = sub_block(w, r + 1, o, s)
                d2, m2 = sub_block(w, r + 2, o, s); d3, m3 = sub_block(w, r + 3, o, s)
                xo = (b * n_sub + s) * sub_len
                for j in range(sub_len):
                    xv = x[U(xo + j)]
                    a0[j] += d0 * (code(w, r, o, s, j) * xv)
                    a1[j] += d1 * (code(w, r + 1, o, s, j) * xv)
                    a2[j] += d2 * (code(w, r + 2, o, s, j) * xv)
                    a3[j] += d3 * (code(w, r + 3, o, s, j) * xv)
                xs = xsum[U(b * n_sub + s)]
                c0 += m0 * xs; c1 += m1 * xs; c2 += m2 * xs; c3 += m3 * xs
        out[U(r)] = _lane_sum(a0) + c0; out[U(r + 1)] = _lane_sum(a1) + c1
        out[U(r + 2)] = _lane_sum(a2) + c2; out[U(r + 3)] = _lane_sum(a3) + c3


@njit(inline="always")
def dequant_blocks(w, r0, out, block_width, n_sub, sub_len, sub_block, code):
    """out[i, :] = dequant(w[r0 + i]) for i < out.shape[0]."""
    for i in range(out.shape[0]):
        r = r0 + i
        for b in range(w.shape[1] // block_width):
            o = b * block_width
            for s in range(n_sub):
                d, m = sub_block(w, r, o, s)
                k = (b * n_sub + s) * sub_len
                for j in range(sub_len):
                    out[U(i), U(k + j)] = d * code(w, r, o, s, j) + m
