"""Weight matrices in ggml blocks, and the products the model takes with them.

A `Linear` is a zero-copy view of a tensor in the mapped file. `matmul` picks
the kernel. On the integer path (`Linear.int8`, linear_int8.py) the
activations are quantized to int8 and multiplied with integer dot products.
On the float path, exact up to float32 rounding: one activation row goes
through the block-reading matvec kernels (numba prange); a batch of rows is
split across the workers, each expanding tiles of its weight rows to float32
and handing them to single-threaded BLAS, which is several times faster once a
tile is reused for many tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GGUFError
from .ggml_types import GGMLQuantizationType as QT
from .gguf_file import GGUFFile, TensorInfo
from . import linear_int8
from .kernels import dequant, floats, iq4, kquants, matvec, q5
from .parallel import Workers

SUPPORTED_TYPES = {t: t.name for t in (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
                                       QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS)}

_MATVEC = {QT.Q8_0: matvec.matvec_q8_0, QT.Q4_0: matvec.matvec_q4_0, QT.Q4_1: matvec.matvec_q4_1,
           QT.F16: matvec.matvec_f16, QT.BF16: floats.matvec_bf16,
           QT.Q5_0: q5.matvec_q5_0, QT.Q5_1: q5.matvec_q5_1,
           QT.Q2_K: kquants.matvec_q2_k, QT.Q3_K: kquants.matvec_q3_k, QT.Q4_K: kquants.matvec_q4_k,
           QT.Q5_K: kquants.matvec_q5_k, QT.Q6_K: kquants.matvec_q6_k,
           QT.IQ4_NL: iq4.matvec_iq4_nl, QT.IQ4_XS: iq4.matvec_iq4_xs}
_DEQUANT = {QT.Q8_0: dequant.dequant_rows_q8_0, QT.Q4_0: dequant.dequant_rows_q4_0,
            QT.Q4_1: dequant.dequant_rows_q4_1, QT.F16: dequant.dequant_rows_f16, QT.BF16: floats.dequant_rows_bf16,
            QT.Q5_0: q5.dequant_rows_q5_0, QT.Q5_1: q5.dequant_rows_q5_1,
            QT.Q2_K: kquants.dequant_rows_q2_k, QT.Q3_K: kquants.dequant_rows_q3_k,
            QT.Q4_K: kquants.dequant_rows_q4_k, QT.Q5_K: kquants.dequant_rows_q5_k,
            QT.Q6_K: kquants.dequant_rows_q6_k, QT.IQ4_NL: iq4.dequant_rows_iq4_nl,
            QT.IQ4_XS: iq4.dequant_rows_iq4_xs}

# Batches up to this many rows run as repeated matvecs: below it, expanding a
# weight tile to float32 costs more memory traffic than it saves.
MATVEC_MAX_ROWS = 2


@dataclass(frozen=True)
class Linear:
    """A [rows, cols] weight matrix read in place: float32, uint16 (f16/bf16 bits) or uint8 blocks."""

    name: str
    ggml_type: int
    rows: int
    cols: int
    data: np.ndarray
    int8: bool = False  # multiplied by int8-quantized activations (integer path), else float32 ones

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def linear_views(gguf: GGUFFile, info: TensorInfo, int8: bool = False) -> list[Linear]:
    """Views of a 2-D tensor (one Linear) or a 3-D expert tensor (one Linear per expert); with `int8`,
    on the integer path where the CPU and the type have one."""
    if info.ggml_type not in SUPPORTED_TYPES:
        raise GGUFError(
            f"tensor {info.name} is {info.type_name}; cpuinfer computes with "
            f"{', '.join(SUPPORTED_TYPES.values())}. Convert the file first, e.g. "
            f"`cpuinfer quantize {gguf.path} -o model-q8_0.gguf --type q8_0`")
    raw = gguf.raw(info)
    *lead, rows, cols = info.shape
    if info.ggml_type == QT.BF16 and cols % floats.RUN:
        raise GGUFError(f"tensor {info.name} is BF16 with rows of {cols} values; cpuinfer needs a multiple of "
                        f"{floats.RUN}. Convert the file first, e.g. `cpuinfer quantize {gguf.path} "
                        f"-o model-f16.gguf --type f16`")
    if info.ggml_type == QT.F32:
        data = raw.view(np.float32).reshape(*lead, rows, cols)
    elif info.ggml_type in (QT.F16, QT.BF16):
        data = raw.view(np.uint16).reshape(*lead, rows, cols)
    else:
        data = raw.reshape(*lead, rows, -1)
    int8 = int8 and linear_int8.AVAILABLE and info.ggml_type in linear_int8.TYPES
    if not lead:
        return [Linear(info.name, info.ggml_type, rows, cols, data, int8)]
    return [Linear(f"{info.name}[{e}]", info.ggml_type, rows, cols, data[e], int8) for e in range(lead[0])]


def matmul(w: Linear, x: np.ndarray, out: np.ndarray, workers: Workers) -> np.ndarray:
    """out[t] = W @ x[t] for every row t of x [T, cols]; out is [T, rows]."""
    if w.int8:
        return linear_int8.matmul_int8(w, x, out, workers)
    if x.shape[0] <= MATVEC_MAX_ROWS and w.ggml_type != QT.F32:
        kernel = _MATVEC[w.ggml_type]
        for t in range(x.shape[0]):
            kernel(w.data, x[t], out[t])
        return out

    def rows(tile: np.ndarray, start: int, stop: int) -> None:
        if w.ggml_type == QT.F32:  # BLAS reads float32 weights in place
            np.matmul(x, w.data[start:stop].T, out=out[:, start:stop])
            return
        if tile.size < w.cols:  # the shared tile must hold at least one row
            tile = np.empty(w.cols, dtype=np.float32)
        step = tile.size // w.cols
        for r0 in range(start, stop, step):
            n = min(step, stop - r0)
            dense = tile[: n * w.cols].reshape(n, w.cols)
            _DEQUANT[w.ggml_type](w.data, r0, dense)
            np.matmul(x, dense.T, out=out[:, r0:r0 + n])

    workers.run(rows, w.rows)
    return out


def dequantize_rows(w: Linear, r0: int, r1: int) -> np.ndarray:
    """Rows r0 ... r1 - 1 of W as float32 [r1 - r0, cols]."""
    if not 0 <= r0 <= r1 <= w.rows:
        raise ValueError(f"rows {r0}:{r1} of {w.name}, which has {w.rows}")
    if w.ggml_type == QT.F32:
        return np.array(w.data[r0:r1])
    out = np.empty((r1 - r0, w.cols), dtype=np.float32)
    _DEQUANT[w.ggml_type](w.data, r0, out)
    return out


def embed(w: Linear, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[t] = row ids[t] of W, dequantized."""
    if w.ggml_type == QT.F32:
        np.take(w.data, ids, axis=0, out=out)
        return out
    for t, i in enumerate(ids):
        _DEQUANT[w.ggml_type](w.data, int(i), out[t:t + 1])
    return out
