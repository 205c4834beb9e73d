"""Read rows of tensors from a .safetensors file without loading the file.

The `safetensors` library cannot hand bfloat16 to numpy, and checkpoints are
bf16; the format is an 8-byte header length, a JSON header and raw
little-endian data, so this reads the header, checks it against the file size,
and reads only the requested rows (bf16 -> float32 is a 16-bit shift).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from cpuinfer.errors import CpuinferError, quote

DTYPES = {"BF16": (np.uint16, 2), "F16": (np.float16, 2), "F32": (np.float32, 4), "F64": (np.float64, 8)}
MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class SafetensorsEntry:
    path: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte
    nbytes: int

    @property
    def row_bytes(self) -> int:
        return self.nbytes // max(self.shape[0], 1) if self.shape else self.nbytes

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0 .. r1-1 (the first axis) as float32, shaped [r1 - r0, rest...]."""
        np_dtype, size = DTYPES[self.dtype]
        rows = self.shape[0] if self.shape else 1
        if not 0 <= r0 <= r1 <= rows:
            raise ValueError(f"rows {r0}:{r1} out of range for {self.name} {self.shape}")
        per_row = self.row_bytes
        try:
            with open(self.path, "rb") as f:
                data = os.pread(f.fileno(), (r1 - r0) * per_row, self.start + r0 * per_row)
        except OSError as e:
            raise CpuinferError(f"{self.path}: cannot read {quote(self.name)} ({e.strerror})") from None
        if len(data) != (r1 - r0) * per_row:
            raise CpuinferError(f"{self.path}: truncated while reading {quote(self.name)}")
        raw = np.frombuffer(data, dtype=np_dtype)
        if self.dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        return out.reshape((r1 - r0, *self.shape[1:]) if self.shape else (1,))

    def read(self) -> np.ndarray:
        """The whole tensor as float32."""
        return self.read_rows(0, self.shape[0] if self.shape else 1).reshape(self.shape)


def read_header(path: str) -> dict[str, SafetensorsEntry]:
    """Entries of a safetensors file, validated against the file size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CpuinferError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise CpuinferError(f"{path}: corrupt or truncated safetensors header (length {n}, file {size} bytes)")
            header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CpuinferError(f"{path}: corrupt safetensors header ({quote(str(e), 120)})") from None
    except OSError as e:
        raise CpuinferError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(header, dict):
        raise CpuinferError(f"{path}: corrupt safetensors header")
    base = 8 + n
    entries = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        fields = spec if isinstance(spec, dict) else {}
        dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise CpuinferError(f"{path}: corrupt safetensors entry for {quote(name)}: {quote(spec, 120)}")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CpuinferError(f"{path}: tensor {quote(name)} has unsupported dtype {quote(dtype)} "
                                f"(cpuinfer reads {', '.join(DTYPES)})")
        shape, (begin, end) = tuple(shape), offsets
        if end - begin != math.prod(shape) * DTYPES[dtype][1]:
            raise CpuinferError(f"{path}: corrupt safetensors entry for {quote(name)} (offsets {begin}..{end}, "
                                f"shape {list(shape)})")
        if base + end > size:
            raise CpuinferError(f"{path}: truncated safetensors file: {quote(name)} ends at byte {base + end}, "
                                f"the file has {size}")
        entries[name] = SafetensorsEntry(path, name, dtype, shape, base + begin, end - begin)
    return entries


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
