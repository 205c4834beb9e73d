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
from gguf.constants import GGMLQuantizationType as QT

from .errors import GGUFError
from .gguf_file import GGUFFile, TensorInfo
from .kernels import dequant, matvec
from . import linear_int8
from .parallel import Workers

SUPPORTED_TYPES = {QT.F32: "F32", QT.F16: "F16", QT.Q8_0: "Q8_0", QT.Q4_0: "Q4_0", QT.Q4_1: "Q4_1"}

_MATVEC = {QT.Q8_0: matvec.matvec_q8_0, QT.Q4_0: matvec.matvec_q4_0, QT.Q4_1: matvec.matvec_q4_1,
           QT.F16: matvec.matvec_f16}
_DEQUANT = {QT.Q8_0: dequant.dequant_rows_q8_0, QT.Q4_0: dequant.dequant_rows_q4_0,
            QT.Q4_1: dequant.dequant_rows_q4_1, QT.F16: dequant.dequant_rows_f16}

# Batches up to this many rows run as repeated matvecs: below it, expanding a
# weight tile to float32 costs more memory traffic than it saves.
MATVEC_MAX_ROWS = 2


@dataclass(frozen=True)
class Linear:
    """A [rows, cols] weight matrix read in place: float32, uint16 (f16 bits) or uint8 blocks."""

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
    if info.ggml_type == QT.F32:
        data = raw.view(np.float32).reshape(*lead, rows, cols)
    elif info.ggml_type == QT.F16:
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


def embed(w: Linear, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[t] = row ids[t] of W, dequantized."""
    if w.ggml_type == QT.F32:
        np.take(w.data, ids, axis=0, out=out)
        return out
    for t, i in enumerate(ids):
        _DEQUANT[w.ggml_type](w.data, int(i), out[t:t + 1])
    return out
