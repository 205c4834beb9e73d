"""The integer path of `cpuinfer.linear.matmul`: int8 activations times the file's blocks.

The activations are quantized once per product (q8_activations.py). One or
two rows go through the parallel matvec kernels (matvec_int8.py); a batch is
split into microtiles of rows across the workers (parallel.py), each packing
its rows into its own scratch tile and multiplying every token of the batch
with it (gemm_int8.py).

A type has the integer path when it is in both tables; AVAILABLE is False on
CPUs without AVX2 (int8_dot.ISA), where everything stays on the float path.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType as QT

from .kernels import gemm_int8, int8_dot, matvec_int8
from .kernels.q8_activations import QK, quantize_rows
from .parallel import Workers

AVAILABLE = int8_dot.ISA is not None

MATVEC = {QT.Q8_0: matvec_int8.matvec_int8_q8_0, QT.Q4_0: matvec_int8.matvec_int8_q4_0,
          QT.Q4_1: matvec_int8.matvec_int8_q4_1}
GEMM = {QT.Q8_0: gemm_int8.gemm_int8_q8_0, QT.Q4_0: gemm_int8.gemm_int8_q4_0, QT.Q4_1: gemm_int8.gemm_int8_q4_1}
TYPES = frozenset(MATVEC) & frozenset(GEMM)

# Batches up to this many rows run as repeated matvecs.
MATVEC_MAX_ROWS = 2


def quantized(x: np.ndarray, workers: Workers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] float32 as int8 blocks (xq, xd, xs) padded with zero rows to what the gemm reads."""
    T, K = x.shape
    rows = gemm_int8.padded_tokens(T)
    xq = np.empty((rows, K), dtype=np.int8)
    xd = np.empty((rows, K // QK), dtype=np.float32)
    xs = np.empty((rows, K // QK), dtype=np.float32)
    xq[T:], xd[T:], xs[T:] = 0, 0, 0
    workers.run(lambda _, start, stop: quantize_rows(x, start, stop, xq, xd, xs), T)
    return xq, xd, xs


def matmul_int8(w, x: np.ndarray, out: np.ndarray, workers: Workers) -> np.ndarray:
    """out[t] = W @ x[t] for a Linear `w` of a type in TYPES, x [T, cols] float32."""
    x = np.ascontiguousarray(x)
    T = x.shape[0]
    if T <= MATVEC_MAX_ROWS:
        kernel = MATVEC[w.ggml_type]
        for t in range(T):
            kernel(w.data, x[t], out[t])
        return out
    xq, xd, xs = quantized(x, workers)
    kernel = GEMM[w.ggml_type]
    need = gemm_int8.tile_bytes(w.cols)
    rows = gemm_int8.ROWS

    def microtiles(scratch: np.ndarray, start: int, stop: int) -> None:
        tile = scratch.view(np.uint8) if scratch.nbytes >= need else np.empty(need, dtype=np.uint8)
        kernel(w.data, start * rows, min(stop * rows, w.rows), xq, xd, xs, T, out, tile)

    workers.run(microtiles, -(-w.rows // rows))
    return out
