"""The integer path of `cpuinfer.linear.matmul`: int8 activations times the file's blocks.

Up to MATVEC_MAX_ROWS rows (a decode step of one or a few sequences) go
through the parallel matvec kernels (matvec_int8.py), which quantize their
activation rows themselves and read each weight byte from memory once. A batch is quantized once
(q8_activations.py) and split into microtiles of rows across the workers
(parallel.py), each packing its rows into its own scratch tile and
multiplying every token of the batch with it (gemm_int8.py).

A type has the integer path when it is in TYPES; AVAILABLE is False on CPUs
without AVX2 (int8_dot.ISA), where everything stays on the float path.
"""

from __future__ import annotations

import numpy as np

from .ggml_types import GGMLQuantizationType as QT
from .kernels import gemm_int8, int8_dot, matvec_int8
from .kernels.q8_activations import QK, quantize_rows
from .parallel import Workers

AVAILABLE = int8_dot.ISA is not None

KIND = {t: t.name.lower() for t in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.IQ4_NL, QT.Q2_K, QT.Q3_K,
                                    QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_XS)}
MATVEC = {t: getattr(matvec_int8, f"matvec_int8_{k}") for t, k in KIND.items()}
GEMM = {t: getattr(gemm_int8, f"gemm_int8_{k}") for t, k in KIND.items()}
TYPES = frozenset(KIND)

# Batches up to this many rows run through the matvec kernels, whose cost grows with the rows, while the gemm
# repacks every weight block into its tile once per call. Measured side by side (Xeon, AVX-512 VNNI, 2 threads,
# copies of each matrix in turn, 100-200 MB, which its 480 MB L3 holds), matvec vs gemm, ms: 7B-shape
# 14336x4096 Q4_0 4 rows 1.7 vs 3.8, 8 rows 3.1 vs 4.4, 12 rows 4.5 vs 4.4; Q4_K 2.3 vs 3.5, 4.4 vs 3.9;
# Q8_0 3.3 vs 3.9, 5.0 vs 4.1.
MATVEC_MAX_ROWS = 4


def quantized(x: np.ndarray, workers: Workers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] float32 as int8 blocks (xq, xd, xs) padded with zero rows to what the gemm reads."""
    T, K = x.shape
    rows = gemm_int8.padded_tokens(T)
    xq = np.empty((rows, K), dtype=np.int8)
    xd = np.empty((rows, K // QK), dtype=np.float32)
    xs = np.empty((rows, K // 16), dtype=np.float32)
    xq[T:], xd[T:], xs[T:] = 0, 0, 0
    workers.run(lambda _, start, stop: quantize_rows(x, start, stop, xq, xd, xs), T)
    return xq, xd, xs


def matmul_int8(w, x: np.ndarray, out: np.ndarray, workers: Workers) -> np.ndarray:
    """out[t] = W @ x[t] for a Linear `w` of a type in TYPES, x [T, cols] float32."""
    x = np.ascontiguousarray(x)
    T = x.shape[0]
    if T <= MATVEC_MAX_ROWS:
        MATVEC[w.ggml_type](w.data, x, out)
        return out
    xq, xd, xs = quantized(x, workers)
    kernel = GEMM[w.ggml_type]
    need = gemm_int8.tile_bytes(w.cols, KIND[w.ggml_type])
    rows = gemm_int8.ROWS

    def microtiles(scratch: np.ndarray, start: int, stop: int) -> None:
        tile = scratch.view(np.uint8) if scratch.nbytes >= need else np.empty(need, dtype=np.uint8)
        kernel(w.data, start * rows, min(stop * rows, w.rows), xq, xd, xs, T, out, tile)

    workers.run(microtiles, -(-w.rows // rows))
    return out
