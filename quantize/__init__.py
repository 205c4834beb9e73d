"""`cpuinfer quantize`: checkpoints (Hugging Face, Mistral consolidated) or GGUF -> a quantized GGUF.

Streams tensor by tensor (and row chunk by row chunk), so memory stays a small
multiple of one tensor whatever the model's size.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT

from cpuinfer import metadata
from cpuinfer.errors import CpuinferError, GGUFError

from .checkpoint import open_consolidated, open_hf
from .gguf_source import open_gguf
from .imatrix import Imatrix, read_imatrix
from .mixes import MIXES, Model, quantized, tensor_type
from .quants import quantize_rows
from .source import Source, SourceTensor
from .writer import OutTensor, atomic_output, check_disk_space, check_output, estimated_size, write_gguf

TYPES = list(MIXES)  # what --type accepts
ROUNDINGS = ("search", "reference")
CHUNK_VALUES = 1 << 22  # float32 values converted at a time (16 MiB)
# Types whose search, with unit importances, lowers each block's squared error but not the model's quality: they
# round as ggml's reference does unless an importance matrix is given. Measured on SmolLM2 Q4_K_M (GPL-3 text,
# ctx 512, KL vs F16): the search on the Q5_0/Q5_1 tensors 19.29 PPL / KL 0.0617, reference on them 19.01 / 0.0606
# (llama.cpp's file 19.05 / 0.0615); the search on the K-quant tensors helped (0.0646 -> 0.0606).
PLAIN_REFERENCE = frozenset({QT.Q5_0, QT.Q5_1})

__all__ = ["ROUNDINGS", "TYPES", "convert", "open_source", "plan_types"]


def open_source(src: Path) -> Source:
    """Detect the input format and check it fully (files, shapes, tokenizer) before anything is written."""
    if not src.exists():
        raise CpuinferError(f"{src}: no such file or folder")
    if src.is_file():
        return open_gguf(src)
    if (src / "config.json").exists():
        return open_hf(src)
    if (src / "params.json").exists():
        return open_consolidated(src)
    raise CpuinferError(f"{src}: not a GGUF file, nor a folder with config.json (Hugging Face) "
                        "or params.json (Mistral consolidated)")


def model_shape(source: Source, imatrix: bool) -> Model:
    """What llama.cpp's type rules need from the metadata."""
    md = {key: value for key, (value, _, _) in source.metadata.items()}
    try:
        arch = metadata.text(md, "general.architecture", "llama")
        n_head = metadata.integer(md, f"{arch}.attention.head_count", 0, lo=0)
        return Model(n_layer=metadata.integer(md, f"{arch}.block_count", 0, lo=0), n_head=n_head,
                     n_head_kv=metadata.integer(md, f"{arch}.attention.head_count_kv", n_head, lo=0),
                     n_expert=metadata.integer(md, f"{arch}.expert_count", 0, lo=0),
                     tied_embeddings=all(t.name != "output.weight" for t in source.tensors), imatrix=imatrix)
    except GGUFError as e:
        raise CpuinferError(f"{source.description}: {e}") from None


def plan_types(source: Source, type_name: str, imatrix: Imatrix | None = None,
               rounding: str = "search") -> list[OutTensor]:
    """The type of every output tensor, as llama.cpp chooses them (mixes.py), and how to compute its bytes.

    Norms and other 1-D tensors and the Mixtral router stay F32. A GGUF source's
    tensor that keeps its type is copied as it is (as llama-quantize does: quantizing
    again could only lose). With an importance matrix, each tensor's entry weights
    the quantization error of its columns.
    """
    model = model_shape(source, imatrix is not None)
    plan = []
    for t in source.tensors:
        chosen = tensor_type(t.name, t.cols, type_name, model) if quantized(t.name, t.shape) else QT.F32
        if t.stored is not None and t.stored[0] == chosen:
            chunks = functools.partial(copied_chunks, t.stored[1])
        else:
            importance = _importance(imatrix, t) if imatrix is not None else None
            chunks = functools.partial(converted_chunks, t, chosen, importance, rounding)
        plan.append(OutTensor(t.name, t.shape, chosen, _releasing(chunks, t.release)))
    return plan


def _releasing(chunks, release):
    """chunks(), then release() once the last chunk is taken: the source's bytes leave memory as it is written."""
    if release is None:
        return chunks

    def run():
        yield from chunks()
        release()
    return run


def _importance(imatrix: Imatrix, t: SourceTensor) -> np.ndarray | None:
    """The tensor's importances [experts, columns], or None if the matrix has no entry for it."""
    entry = imatrix.entries.get(t.name)
    if entry is None or len(t.shape) == 1:
        return None
    values = entry.importance().reshape(-1)
    if values.size != t.cols * len(t.parts):
        raise CpuinferError(f"the importance matrix has {values.size} values for {t.name}, which needs "
                            f"{t.cols * len(t.parts)} ({len(t.parts)} x {t.cols}); was it made for another model?")
    return values.reshape(len(t.parts), t.cols)


def copied_chunks(rows: np.ndarray):
    """A tensor's stored bytes [rows, row bytes], a bounded number of rows at a time."""
    step = max(1, 4 * CHUNK_VALUES // rows.shape[1])
    for r0 in range(0, rows.shape[0], step):
        yield rows[r0:r0 + step]


def converted_chunks(t: SourceTensor, qtype: int, importance: np.ndarray | None, rounding: str):
    """The tensor's bytes in `qtype`, a bounded number of rows at a time."""
    for k, part in enumerate(t.parts):
        step = max(1, CHUNK_VALUES // part.cols)
        for r0 in range(0, part.rows, step):
            yield quantize_rows(part.read(r0, min(part.rows, r0 + step)), qtype,
                                None if importance is None else importance[k],
                                reference=rounding == "reference" or (importance is None and qtype in PLAIN_REFERENCE))


def convert(src: str | Path, out: str | Path, type_name: str, force: bool = False,
            progress: Callable[[int, int], Callable[[int], None]] | None = None, rounding: str = "search",
            imatrix: str | Path | None = None) -> Path:
    """Convert `src` to a GGUF of `type_name` (a llama.cpp file type: q4_k_m, q8_0, ...) at `out` (atomically).

    `rounding` "search" (the default) minimises each block's error, "reference" writes
    ggml's reference bytes; `imatrix` (a llama.cpp importance-matrix file) weights the
    error of each column. `progress(total_bytes, n_tensors)` may return a callback that
    gets the byte count of every written chunk. Returns `out`.
    """
    src, out = Path(src), Path(out)
    type_name = type_name.lower()
    if type_name not in MIXES:
        raise CpuinferError(f"unknown type {type_name!r}; choose one of {', '.join(MIXES)}")
    if rounding not in ROUNDINGS:
        raise CpuinferError(f"unknown rounding {rounding!r}; choose {' or '.join(ROUNDINGS)}")
    if imatrix is not None and rounding == "reference":
        raise CpuinferError("--imatrix weights the error search; it cannot be combined with the reference rounding")
    check_output(out, force)
    if src.resolve() == out.resolve():
        raise CpuinferError("the output must not be the input file")
    matrix = read_imatrix(imatrix) if imatrix is not None else None
    source = open_source(src)
    plan = plan_types(source, type_name, matrix, rounding)
    source.set("general.file_type", int(MIXES[type_name].file_type), VT.UINT32)
    source.set("general.quantization_version", 2, VT.UINT32)
    if matrix is not None:  # the keys llama-quantize writes
        source.set("quantize.imatrix.file", str(imatrix), VT.STRING)
        if matrix.datasets:
            source.set("quantize.imatrix.dataset", matrix.datasets[0], VT.STRING)
        source.set("quantize.imatrix.entries_count", len(matrix.entries), VT.UINT32)
        if matrix.chunk_count > 0:
            source.set("quantize.imatrix.chunks_count", matrix.chunk_count, VT.UINT32)
    check_disk_space(out, estimated_size(plan))
    on_bytes = progress(sum(p.nbytes for p in plan), len(plan)) if progress else None
    with atomic_output(out) as tmp:
        write_gguf(tmp, source.metadata, plan, on_bytes)
    return out
