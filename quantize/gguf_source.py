"""An existing GGUF file as a conversion source (re-quantization).

Metadata is copied with its original types; tensors are dequantized a row
range at a time with `gguf.quants` (which reads every ggml type, K-quants
included), so any GGUF llama.cpp wrote can become Q8_0/Q4_0/Q4_1/F16/F32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT
from gguf.quants import dequantize

from cpuinfer.errors import CpuinferError, GGUFError
from cpuinfer.gguf_file import GGUFFile, TensorInfo

from .source import Matrix, Source, SourceTensor

# Keys that describe the file, not the model: the writer sets them anew.
_FILE_KEYS = ("GGUF.", "general.file_type", "general.quantization_version", "general.alignment")


def open_gguf(path: Path) -> Source:
    try:
        g = GGUFFile(path)
    except GGUFError as e:
        raise CpuinferError(str(e)) from None
    source = Source(f"GGUF file {path} ({g.architecture or 'unknown architecture'})")
    for key, value in g.metadata.items():
        if key.startswith(_FILE_KEYS):
            continue
        vtype, item_type = g.value_types[key]
        source.set(key, value, VT(vtype), VT(item_type) if item_type is not None else None)
    for info in g.tensors.values():
        source.tensors.append(_tensor(g, info))
    return source


def _tensor(g: GGUFFile, info: TensorInfo) -> SourceTensor:
    qtype = QT(info.ggml_type)
    blocks = g.blocks(info)  # [..., rows, row_bytes]
    if len(info.shape) > 3:
        raise CpuinferError(f"{g.path}: tensor {info.name} has {len(info.shape)} dimensions")
    if len(info.shape) == 1:
        blocks = blocks.reshape(1, -1)
    stacks = blocks.reshape(-1, *blocks.shape[-2:])
    cols = info.shape[-1]

    def part(rows_bytes: np.ndarray) -> Matrix:
        def read(r0: int, r1: int) -> np.ndarray:
            try:
                return dequantize(np.ascontiguousarray(rows_bytes[r0:r1]), qtype).reshape(r1 - r0, cols)
            except NotImplementedError:
                raise CpuinferError(f"{g.path}: cannot read {qtype.name} tensor {info.name}") from None
        return Matrix(rows_bytes.shape[0], cols, read)

    return SourceTensor(info.name, info.shape, [part(s) for s in stacks], (qtype, stacks.reshape(-1, stacks.shape[-1])))
