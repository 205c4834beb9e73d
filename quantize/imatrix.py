"""llama.cpp's importance-matrix files: per-column mean squared activations of every matmul's input.

An importance matrix holds, for each weight tensor, the sum over many tokens
of the squared input activation of each of its columns, and how many rows of
activations were summed (per expert for Mixtral's 3-D expert stacks). The
quantizers weight each value's error by its column's mean; a collector only
has to accumulate the two and call `write_imatrix`.

Two formats, both read and written as llama.cpp's tools/imatrix/imatrix.cpp
and common/imatrix-loader.cpp do:

- GGUF (what llama-imatrix writes by default): key general.type = "imatrix",
  imatrix.datasets (strings), imatrix.chunk_count and imatrix.chunk_size
  (uint32); per weight tensor NAME two F32 tensors, NAME.in_sum2 [experts, columns]
  (the sums) and NAME.counts [experts, 1]; entries in name order.
- legacy `.dat` (llama-imatrix --output-format dat): int32 entry count; per
  entry int32 name length, name, int32 ncall, int32 nval, float32[nval] =
  (sum / count) * ncall; then int32 chunk count, int32 length and the dataset's name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from cpuinfer.errors import CpuinferError, GGUFError
from cpuinfer.gguf_file import GGUF_MAGIC, GGUFFile

SUMS, COUNTS = ".in_sum2", ".counts"


@dataclass
class Entry:
    """One weight tensor's statistics: sums [experts, columns] of squared activations, counts [experts]."""

    sums: np.ndarray
    counts: np.ndarray

    def importance(self) -> np.ndarray:
        """Mean squared activation of every column [experts, columns]; 1 where nothing was counted
        (an expert no calibration token was routed to), as llama-quantize does."""
        counts = self.counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = self.sums.astype(np.float32) / counts
        return np.where(counts > 0, mean, np.float32(1)).astype(np.float32)


@dataclass
class Imatrix:
    entries: dict[str, Entry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0  # calibration chunks (of chunk_size tokens) the sums cover
    chunk_size: int = 0


def read_imatrix(path: str | Path) -> Imatrix:
    """Read either format (told apart by the GGUF magic); bad files raise CpuinferError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CpuinferError(f"{path}: cannot read the importance matrix ({e.strerror})") from None
    imatrix = _read_gguf(path) if magic == GGUF_MAGIC else _read_legacy(path)
    if not imatrix.entries:
        raise CpuinferError(f"{path}: the importance matrix has no entries")
    for name, e in imatrix.entries.items():
        if not np.all(np.isfinite(e.sums)) or not np.all(np.isfinite(e.counts)):
            raise CpuinferError(f"{path}: entry {name} has non-finite values")
    return imatrix


def write_imatrix(path: str | Path, imatrix: Imatrix, legacy: bool = False) -> None:
    """Write `imatrix` in the GGUF format, or with `legacy` in the .dat one."""
    (_write_legacy if legacy else _write_gguf)(Path(path), imatrix)


def _read_gguf(path: Path) -> Imatrix:
    try:
        g = GGUFFile(path)
    except GGUFError as e:
        raise CpuinferError(str(e)) from None
    md = g.metadata
    if any(key not in md for key in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")):
        raise CpuinferError(f"{path}: a GGUF file, but not an importance matrix (no imatrix.* keys)")
    imatrix = Imatrix(datasets=[str(d) for d in md["imatrix.datasets"]], chunk_count=int(md["imatrix.chunk_count"]),
                      chunk_size=int(md["imatrix.chunk_size"]))
    names = sorted({n[:-len(s)] for n in g.tensors for s in (SUMS, COUNTS) if n.endswith(s)})
    for name in names:
        sums, counts = g.tensors.get(name + SUMS), g.tensors.get(name + COUNTS)
        if sums is None or counts is None:
            raise CpuinferError(f"{path}: entry {name} lacks its {SUMS if sums is None else COUNTS} tensor")
        if sums.ggml_type != gguf.GGMLQuantizationType.F32 or counts.ggml_type != gguf.GGMLQuantizationType.F32:
            raise CpuinferError(f"{path}: entry {name}: sums and counts must be F32")
        s = g.raw(sums).view(np.float32)
        c = g.raw(counts).view(np.float32)
        if c.size == 0 or s.size % c.size:
            raise CpuinferError(f"{path}: entry {name}: {s.size} sums do not split into {c.size} experts")
        imatrix.entries[name] = Entry(s.reshape(c.size, -1).copy(), np.rint(c).astype(np.int64))
    return imatrix


def _write_gguf(path: Path, imatrix: Imatrix) -> None:
    w = gguf.GGUFWriter(path, arch="")  # an empty name writes no general.architecture, as llama-imatrix does
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", imatrix.datasets)
    w.add_uint32("imatrix.chunk_count", imatrix.chunk_count)
    w.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        sums = np.ascontiguousarray(np.atleast_2d(e.sums), dtype=np.float32)
        w.add_tensor(name + SUMS, sums)
        w.add_tensor(name + COUNTS, np.asarray(e.counts, dtype=np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CpuinferError(f"{self.path}: truncated or corrupt importance matrix (reading {what})")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_legacy(path: Path) -> Imatrix:
    r = _Reader(path.read_bytes(), path)
    n_entries = r.i32("the entry count")
    if n_entries < 1 or n_entries > len(r.data) // 12:
        raise CpuinferError(f"{path}: not an importance matrix (neither GGUF nor llama.cpp's .dat format)")
    imatrix = Imatrix()
    for i in range(n_entries):
        name = r.take(r.i32(f"entry {i}'s name length"), f"entry {i}'s name").decode("utf-8", "replace")
        ncall, nval = r.i32(f"{name}'s call count"), r.i32(f"{name}'s value count")
        if nval < 1:
            raise CpuinferError(f"{path}: entry {name} has {nval} values")
        values = np.frombuffer(r.take(4 * nval, f"{name}'s values"), dtype="<f4").astype(np.float32)
        # (sum / count) * ncall over ncall calls: the same means as sums `values` over `ncall` rows
        # (llama-quantize takes the values as they are when ncall is 0)
        imatrix.entries[name] = Entry(values.reshape(1, -1), np.array([max(ncall, 1)], dtype=np.int64))
    if r.pos < len(r.data):  # optional trailer
        imatrix.chunk_count = r.i32("the chunk count")
        if r.pos < len(r.data):
            imatrix.datasets.append(r.take(r.i32("the dataset name length"), "the dataset name").decode("utf-8",
                                                                                                           "replace"))
    return imatrix


def _write_legacy(path: Path, imatrix: Imatrix) -> None:
    """As save_imatrix_legacy: per entry ncall = ceil(max count / chunk size), values (sum / count) * ncall,
    1 for experts without data; entries without any data are left out."""
    chunk = max(1, imatrix.chunk_size)
    out = []
    names = [n for n in sorted(imatrix.entries) if np.any(imatrix.entries[n].counts > 0)]
    out.append(struct.pack("<i", len(names)))
    for name in names:
        e = imatrix.entries[name]
        counts = np.asarray(e.counts, dtype=np.int64)
        ncall = int((counts.max() + chunk - 1) // chunk)
        sums = np.atleast_2d(np.asarray(e.sums, dtype=np.float32))
        count = counts.astype(np.float32)[:, None]
        values = np.where(count == 0, np.float32(1), sums) / np.where(count == 0, np.float32(1), count)
        values = (values * np.float32(ncall)).astype("<f4").reshape(-1)
        encoded = name.encode()
        out += [struct.pack("<i", len(encoded)), encoded, struct.pack("<ii", ncall, values.size), values.tobytes()]
    dataset = (imatrix.datasets[-1] if imatrix.datasets else "").encode()
    out += [struct.pack("<i", imatrix.chunk_count), struct.pack("<i", len(dataset)), dataset]
    path.write_bytes(b"".join(out))
