"""Write a GGUF file tensor by tensor, atomically.

The header and tensor table come from `gguf.GGUFWriter`; tensor data is then
streamed in row chunks, so no more than one chunk of one tensor is in memory.
Everything goes to a hidden temporary file beside the output, renamed into
place only when complete: an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType as QT

from cpuinfer.errors import CpuinferError
from cpuinfer.gguf_file import tensor_nbytes

from .quants import quantize_rows
from .source import Source, SourceTensor

CHUNK_VALUES = 1 << 22  # float32 values converted at a time (16 MiB)
ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class Planned:
    tensor: SourceTensor
    qtype: int

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.qtype, self.tensor.shape)


def estimated_size(plan: list[Planned]) -> int:
    return sum(-(-p.nbytes // ALIGNMENT) * ALIGNMENT for p in plan) + (16 << 20)  # + generous header room


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed to `out` if the block succeeds, deleted otherwise."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CpuinferError(f"no room left on the disk holding {out}; nothing was written") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_disk_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise CpuinferError(f"no room on the disk for {out}: about {needed / 1e9:.2f} GB needed, "
                            f"{free / 1e9:.2f} GB free")


def write_gguf(path: Path, source: Source, plan: list[Planned], progress=None) -> None:
    """Write `source`'s metadata and the planned tensors to `path`; `progress(nbytes)` after each chunk."""
    writer = gguf.GGUFWriter(path, source.metadata["general.architecture"][0])
    for key, (value, vtype, item_type) in source.metadata.items():
        if isinstance(value, np.ndarray):  # GGUFWriter packs arrays from Python sequences
            value = value.tolist()
        if key != "general.architecture" and not (vtype == gguf.GGUFValueType.ARRAY and len(value) == 0):
            writer.add_key_value(key, value, vtype, sub_type=item_type)
    for p in plan:
        writer.add_tensor_info(p.tensor.name, p.tensor.shape, np.dtype(np.float32), p.nbytes, raw_dtype=QT(p.qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    out = writer.fout[0]
    try:
        for p in plan:
            _pad(out, out.tell())
            written = 0
            for chunk in _converted_chunks(p):
                out.write(memoryview(chunk).cast("B"))
                written += chunk.nbytes
                if progress:
                    progress(chunk.nbytes)
            if written != p.nbytes:
                raise AssertionError(f"{p.tensor.name}: wrote {written} bytes, planned {p.nbytes}")
            _pad(out, written)
        out.flush()
        os.fsync(out.fileno())
    finally:
        writer.close()


def _converted_chunks(p: Planned) -> Iterator[np.ndarray]:
    for part in p.tensor.parts:
        step = max(1, CHUNK_VALUES // part.cols)
        for r0 in range(0, part.rows, step):
            r1 = min(part.rows, r0 + step)
            rows = part.read(r0, r1)
            yield np.ascontiguousarray(quantize_rows(rows, p.qtype))


def _pad(f, n: int) -> None:
    pad = -n % ALIGNMENT
    if pad:
        f.write(b"\0" * pad)
