"""Parts of a file in anonymous memory ("slabs"), read with large preadv calls instead of page faults.

A model larger than its memory budget holds its dense weights in one slab and
its experts in an expert cache of slabs (expert_cache.py); the mapping of the
file then holds no pages at all, so what the process holds is exactly its
slabs, whatever the kernel's readahead or its page-cache folios would do.

How to read, measured here (bench/expert_io.py: 96 MB regions of the Mixtral
file from a dropped page cache, 10 rounds, median MB/s on a shared VM whose
readahead is 8 MB): O_DIRECT preadv 662-889, buffered preadv without
readahead 447-607, madvise(MADV_SEQUENTIAL + MADV_WILLNEED) then touching the
pages 636-777, plain page faults 828-921 (riding the 8 MB readahead, which
reads past the range too; with the common 128 KB they would be far slower).
O_DIRECT was the steadiest, reads nothing past the range and leaves the page
cache alone; where a file system refuses it, buffered reads with readahead
off are used, each range dropped from the page cache once read. preadv
releases the GIL, so a reader thread overlaps the compute.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .gguf_file import GGUFFile

ALIGN = 4096  # O_DIRECT reads whole aligned blocks into aligned memory
PIECE = 8 << 20  # bytes per preadv call, so a read can be abandoned between pieces


@dataclass(frozen=True)
class Extent:
    """One array of the mapped file and its place in a slab.

    The aligned blocks around it are read from file offset - lead into the
    slab at slab_offset, so the array itself starts at slab_offset + lead.
    """

    offset: int  # of the array in the file
    slab_offset: int
    mapped: np.ndarray  # its view of the mapping: dtype and shape

    @property
    def nbytes(self) -> int:
        return self.mapped.nbytes

    @property
    def lead(self) -> int:
        return self.offset % ALIGN

    @property
    def span(self) -> int:
        """Bytes read: the aligned blocks that hold the array."""
        return aligned(self.lead + self.nbytes)

    def view(self, slab: np.ndarray, base: int = 0) -> np.ndarray:
        """The array, as a read-only view of the slab whose byte `base` this extent's slab_offset counts from.

        Read-only as the mapping's views are, so the kernels run the same compiled specialization (numba
        compiles one per array type) on both: the logits of a budgeted model are those of the mapping.
        """
        start = base + self.slab_offset + self.lead
        view = slab[start:start + self.nbytes].view(self.mapped.dtype).reshape(self.mapped.shape)
        view.flags.writeable = False
        return view


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def lay_out(gguf: GGUFFile, arrays: list[np.ndarray]) -> tuple[list[Extent], int]:
    """Place arrays of the mapping one after another in a slab: their extents, and the slab's size."""
    base = gguf.data.ctypes.data
    extents, size = [], 0
    for a in arrays:  # views of the mapping's tensors are contiguous
        extents.append(Extent(a.ctypes.data - base, size, a))
        size += extents[-1].span
    return extents, size


def anonymous(nbytes: int) -> tuple[mmap.mmap, np.ndarray]:
    """Page-aligned anonymous memory, lazily backed (a page holds memory once written)."""
    memory = mmap.mmap(-1, max(nbytes, 1))
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)  # fewer TLB misses while the kernels stream a slab
    return memory, np.frombuffer(memory, dtype=np.uint8)


class FileReader:
    """Reads extents of one file into slabs: O_DIRECT where the file system allows it, else buffered
    reads with readahead off, each range dropped from the page cache once read."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd, self.direct = _open_direct(path), True
        except OSError:  # EINVAL: this file system takes no direct I/O
            self.fd, self.direct = os.open(path, os.O_RDONLY), False
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # read nothing past the range

    def read(self, extent: Extent, slab: memoryview, base: int = 0,
             abandon: Callable[[], bool] | None = None) -> tuple[bool, int]:
        """Read the extent into the slab (at base + its slab_offset): (finished, bytes read).

        Stops early, unfinished, once `abandon()` is true (checked between pieces).
        """
        start = extent.offset - extent.lead
        into = slab[base + extent.slab_offset:][:extent.span]
        total = 0
        for done in range(0, extent.span, PIECE):
            if abandon is not None and abandon():
                return False, total
            need = min(PIECE, extent.lead + extent.nbytes - done)  # the file may end inside the last block
            total += _read_at_least(self.fd, into[done:done + PIECE], start + done, need)
        if not self.direct:  # the slab holds the bytes now: keep the page cache from holding them twice
            os.posix_fadvise(self.fd, start, extent.span, os.POSIX_FADV_DONTNEED)
        return True, total

    def close(self) -> None:
        os.close(self.fd)


def _open_direct(path: str) -> int:
    """An O_DIRECT descriptor, checked with one aligned read (some file systems refuse only then)."""
    if not hasattr(os, "O_DIRECT"):
        raise OSError("no O_DIRECT here")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    probe = mmap.mmap(-1, ALIGN)
    try:
        os.preadv(fd, [probe], 0)
    except OSError:
        os.close(fd)
        raise
    finally:
        probe.close()
    return fd


def _read_at_least(fd: int, buf: memoryview, offset: int, need: int) -> int:
    """preadv into buf from offset until at least `need` bytes came (or buf is full); the bytes read."""
    got = 0
    while got < need:
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n <= 0:
            raise OSError(0, "the file ended early (was it truncated?)")
        got += n
    return got


def load_dense(gguf: GGUFFile, weights, reader: FileReader, skip: set[int]):
    """`weights` with every array that lies in the mapping, except those whose id() is in `skip` (the
    experts), copied into one slab; then the file's pages are dropped from the mapping and the page cache.

    Works on any tree of dataclasses, tuples and arrays, so it follows weights.py as it grows.
    """
    lo, hi = gguf.data.ctypes.data, gguf.data.ctypes.data + gguf.data.size
    arrays: dict[int, np.ndarray] = {}

    def dense(a) -> bool:
        return isinstance(a, np.ndarray) and lo <= a.ctypes.data < hi and id(a) not in skip

    def collect(node) -> None:
        if dense(node):
            arrays.setdefault(id(node), node)
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                collect(getattr(node, f.name))
        elif isinstance(node, tuple):
            for item in node:
                collect(item)

    collect(weights)
    extents, size = lay_out(gguf, list(arrays.values()))
    memory, slab = anonymous(size)
    view = memoryview(memory)
    moved = {}
    for key, extent in zip(arrays, extents):
        reader.read(extent, view)
        moved[key] = extent.view(slab)

    def rebuild(node):
        if dense(node):
            return moved[id(node)]
        if dataclasses.is_dataclass(node):
            return dataclasses.replace(node, **{f.name: rebuild(getattr(node, f.name))
                                                for f in dataclasses.fields(node)})
        if isinstance(node, tuple):
            return tuple(rebuild(item) for item in node)
        return node

    out = rebuild(weights)
    gguf.release(0, gguf.data.size)
    return out
