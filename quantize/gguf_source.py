"""An existing GGUF file as a conversion source (re-quantization).

Metadata is copied with its original types. Tensors are dequantized a row
range at a time by cpuinfer's own kernels for every type it computes with
(10-15x faster than `gguf.quants`, measured here: 2.2 against 0.15 Gvalues/s
for Q4_K), and by `gguf.quants` for the other ggml types it reads (i-quants,
ternary), so any GGUF llama.cpp wrote can become Q8_0/Q4_0/Q4_1/F16/F32.
Mixtral files written before April 2024 store each expert as its own 2-D
tensor (`blk.N.ffn_gate.E.weight`); they become the 3-D `*_exps` tensors
llama.cpp writes today.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT
from gguf.quants import dequantize

from cpuinfer import bus_error, metadata
from cpuinfer.errors import CpuinferError, GGUFError
from cpuinfer.gguf_file import GGUFFile, TensorInfo
from cpuinfer.linear import SUPPORTED_TYPES, dequantize_rows, linear_views

from .source import Matrix, Source, SourceTensor

# Keys that describe the file, not the model: the writer sets them anew.
_FILE_KEYS = ("GGUF.", "general.file_type", "general.quantization_version", "general.alignment")
_LEGACY_EXPERT = re.compile(r"(blk\.\d+\.ffn_(?:gate|up|down))\.(\d+)\.weight")


def open_gguf(path: Path) -> Source:
    try:
        g = GGUFFile(path)
    except GGUFError as e:
        raise CpuinferError(str(e)) from None
    try:
        arch = metadata.text(g.metadata, "general.architecture")  # the writer needs it
    except GGUFError as e:
        raise CpuinferError(f"{path}: {e}") from None
    bus_error.install()  # the tensors are read from the mapping
    source = Source(f"GGUF file {path} ({arch})")
    for key, value in g.metadata.items():
        if key.startswith(_FILE_KEYS):
            continue
        vtype, item_type = g.value_types[key]
        source.set(key, value, VT(vtype), VT(item_type) if item_type is not None else None)
    experts: dict[str, dict[int, TensorInfo]] = {}  # legacy Mixtral: prefix -> expert -> tensor
    order: list[SourceTensor | str] = []  # the stacked tensor takes the place of its first expert
    for info in g.tensors.values():
        legacy = _LEGACY_EXPERT.fullmatch(info.name)
        if legacy is None:
            order.append(_tensor(g, info))
            continue
        prefix = legacy.group(1)
        if prefix not in experts:
            experts[prefix] = {}
            order.append(prefix)
        experts[prefix][int(legacy.group(2))] = info
    source.tensors = [_stacked(g, t, experts[t]) if isinstance(t, str) else t for t in order]
    return source


def _stacked(g: GGUFFile, prefix: str, experts: dict[int, TensorInfo]) -> SourceTensor:
    """One 3-D tensor `prefix_exps.weight` [E, rows, cols] of the 2-D tensors of experts 0 ... E-1."""
    shapes = {t.shape for t in experts.values()}
    if sorted(experts) != list(range(len(experts))) or len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise CpuinferError(f"{g.path}: the per-expert tensors {prefix}.E.weight are not experts 0 ... "
                            f"{len(experts) - 1} of one 2-D shape (experts {sorted(experts)}, "
                            f"shapes {sorted(map(list, shapes))})")
    tensors = [_tensor(g, experts[e]) for e in range(len(experts))]

    def release() -> None:
        for t in tensors:
            t.release()

    return SourceTensor(prefix + "_exps.weight", (len(experts), *next(iter(shapes))), [t.parts[0] for t in tensors],
                        release=release)


def _tensor(g: GGUFFile, info: TensorInfo) -> SourceTensor:
    if len(info.shape) > 3:
        raise CpuinferError(f"{g.path}: tensor {info.name} has {len(info.shape)} dimensions")
    views = None
    if len(info.shape) > 1 and info.ggml_type in SUPPORTED_TYPES:
        try:
            views = linear_views(g, info)  # checks the shape against the type before any read
        except GGUFError as e:
            raise CpuinferError(str(e)) from None
    qtype = QT(info.ggml_type)
    blocks = g.blocks(info)  # [..., rows, row_bytes]
    if len(info.shape) == 1:
        blocks = blocks.reshape(1, -1)
    stacks = blocks.reshape(-1, *blocks.shape[-2:])
    stored = (qtype, stacks.reshape(-1, stacks.shape[-1]))  # copied as it is when the tensor keeps its type

    def release() -> None:  # from this process only: the page cache keeps the file for the next run
        g.release(info.offset, info.offset + info.nbytes, page_cache=False)

    if views is not None:
        return SourceTensor(info.name, info.shape, [
            Matrix(w.rows, w.cols, lambda r0, r1, w=w: dequantize_rows(w, r0, r1)) for w in views], stored, release)
    cols = info.shape[-1]

    def part(rows_bytes: np.ndarray) -> Matrix:
        def read(r0: int, r1: int) -> np.ndarray:
            try:
                return dequantize(np.ascontiguousarray(rows_bytes[r0:r1]), qtype).reshape(r1 - r0, cols)
            except NotImplementedError:
                raise CpuinferError(f"{g.path}: cannot read {qtype.name} tensor {info.name}") from None
        return Matrix(rows_bytes.shape[0], cols, read)

    return SourceTensor(info.name, info.shape, [part(s) for s in stacks], stored, release)
