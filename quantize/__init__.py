"""`cpuinfer quantize`: checkpoints (Hugging Face, Mistral consolidated) or GGUF -> a quantized GGUF.

Streams tensor by tensor (and row chunk by row chunk), so memory stays a small
multiple of one tensor whatever the model's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT

from cpuinfer.errors import CpuinferError

from .checkpoint import open_consolidated, open_hf
from .gguf_source import open_gguf
from .quants import QK, quantize_rows
from .source import Source, SourceTensor
from .writer import OutTensor, atomic_output, check_disk_space, check_output, estimated_size, write_gguf

TYPES = {"q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "f16": QT.F16, "f32": QT.F32}
# llama.cpp's general.file_type (llama_ftype) for each requested type
FILE_TYPES = {QT.F32: 0, QT.F16: 1, QT.Q4_0: 2, QT.Q4_1: 3, QT.Q8_0: 7}
CHUNK_VALUES = 1 << 22  # float32 values converted at a time (16 MiB)

__all__ = ["TYPES", "convert", "open_source", "plan_types"]


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


def plan_types(tensors: list[SourceTensor], qtype: int) -> list[OutTensor]:
    """The type of every output tensor, as llama.cpp chooses them.

    Norms and other 1-D tensors and the Mixtral router stay F32; with a 4-bit
    body the token embedding and output stay Q8_0; every other matrix gets
    `qtype` (its rows must be whole 32-value blocks).
    """
    plan = []
    for t in tensors:
        if len(t.shape) == 1 or t.name.endswith("ffn_gate_inp.weight"):
            chosen = QT.F32
        elif qtype in (QT.F32, QT.F16):
            chosen = qtype
        elif t.cols % QK:
            raise CpuinferError(f"tensor {t.name} has rows of {t.cols} values, not a multiple of the "
                                f"{QK}-value block of {QT(qtype).name}; choose f16 or f32")
        elif qtype in (QT.Q4_0, QT.Q4_1) and t.name in ("token_embd.weight", "output.weight"):
            chosen = QT.Q8_0
        else:
            chosen = qtype
        plan.append(OutTensor(t.name, t.shape, chosen, lambda t=t, chosen=chosen: converted_chunks(t, chosen)))
    return plan


def converted_chunks(t: SourceTensor, qtype: int):
    """The tensor's bytes in `qtype`, a bounded number of rows at a time."""
    for part in t.parts:
        step = max(1, CHUNK_VALUES // part.cols)
        for r0 in range(0, part.rows, step):
            yield quantize_rows(part.read(r0, min(part.rows, r0 + step)), qtype)


def convert(src: str | Path, out: str | Path, type_name: str, force: bool = False,
            progress: Callable[[int, int], Callable[[int], None]] | None = None) -> Path:
    """Convert `src` to a GGUF of `type_name` at `out` (atomically). Returns `out`.

    `progress(total_bytes, n_tensors)` may return a callback that gets the byte count of every written chunk.
    """
    src, out = Path(src), Path(out)
    qtype = TYPES.get(type_name.lower())
    if qtype is None:
        raise CpuinferError(f"unknown type {type_name!r}; choose one of {', '.join(TYPES)}")
    check_output(out, force)
    if src.resolve() == out.resolve():
        raise CpuinferError("the output must not be the input file")
    source = open_source(src)
    plan = plan_types(source.tensors, qtype)
    source.set("general.file_type", FILE_TYPES[qtype], VT.UINT32)
    source.set("general.quantization_version", 2, VT.UINT32)
    check_disk_space(out, estimated_size(plan))
    on_bytes = progress(sum(p.nbytes for p in plan), len(plan)) if progress else None
    with atomic_output(out) as tmp:
        write_gguf(tmp, source.metadata, plan, on_bytes)
    return out
