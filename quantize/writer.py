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
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType as QT

from cpuinfer.errors import CpuinferError
from cpuinfer.gguf_file import tensor_nbytes
from cpuinfer.interrupts import termination_raises

ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: its name, shape (numpy order), type, and its bytes as a stream of chunks."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    chunks: Callable[[], Iterator[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.qtype, self.shape)


def estimated_size(plan: list[OutTensor]) -> int:
    return sum(-(-p.nbytes // ALIGNMENT) * ALIGNMENT for p in plan) + (16 << 20)  # + generous header room


def check_output(out: Path, force: bool) -> None:
    """Refuse, before any work, an output that cannot be written or must not be replaced."""
    if out.is_dir():
        raise CpuinferError(f"{out} is a folder; give the output file name")
    if os.path.lexists(out):
        if not force:
            raise CpuinferError(f"{out} already exists (use --force to overwrite it)")
        kind = _file_kind(out)
        if kind:  # as root, `-o /dev/null --force` would otherwise replace /dev/null with a regular file
            raise CpuinferError(f"{out} is {kind}; --force replaces only regular files")
    folder = out.parent
    if not folder.exists():
        raise CpuinferError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise CpuinferError(f"{folder} is not a folder")
    fs = os.statvfs(folder)
    if fs.f_flag & os.ST_RDONLY:
        raise CpuinferError(f"{folder} is on a read-only file system")
    if fs.f_blocks == 0:  # what /proc and /sys report: they hold no files of ours
        raise CpuinferError(f"{folder} is on a virtual file system (like /proc or /sys), not a disk")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CpuinferError(f"no permission to write in {folder}")


def _file_kind(path: Path) -> str | None:
    """What a non-regular file at `path` is (following a symlink), or None for a regular file or none."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # a dangling symlink: os.replace replaces the link itself
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _write_error(e: OSError, out: Path) -> CpuinferError:
    """The user's view of an OSError met while writing `out` (reading errors are CpuinferErrors already)."""
    reason = {
        errno.ENOSPC: f"no room left on the disk holding {out}",
        errno.EDQUOT: f"the disk quota for {out.parent} is used up",
        errno.EFBIG: f"{out} would be larger than this file system or `ulimit -f` allows "
                     "(FAT32 stops at 4 GB)",
        errno.EROFS: f"{out.parent} is on a read-only file system",
        errno.EACCES: f"no permission to write {out}",
        errno.EPERM: f"no permission to write {out}",
    }.get(e.errno, f"cannot write {out} ({e.strerror or e})")
    return CpuinferError(f"{reason}; nothing was written")


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed to `out` if the block succeeds, deleted otherwise: also on
    Ctrl-C, SIGTERM and SIGHUP, which raise where the writing is."""
    with termination_raises():
        try:
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
        except OSError as e:
            raise _write_error(e, out) from None
        try:
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the output gets an ordinary file's mode
            yield Path(tmp)
            os.replace(tmp, out)
        except OSError as e:
            raise _write_error(e, out) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def check_disk_space(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < needed:
        raise CpuinferError(f"no room on the disk for {out}: about {needed / 1e9:.2f} GB needed, "
                            f"{free / 1e9:.2f} GB free")


def write_gguf(path: Path, metadata: dict[str, tuple[Any, Any, Any]], tensors: list[OutTensor],
               progress: Callable[[int], None] | None = None) -> None:
    """Write metadata {key: (value, GGUF type, array item type)} and the tensors to `path`;
    `progress(nbytes)` after each chunk."""
    writer = gguf.GGUFWriter(path, metadata["general.architecture"][0])
    for key, (value, vtype, item_type) in metadata.items():
        if isinstance(value, np.ndarray):  # GGUFWriter packs arrays from Python sequences
            value = value.tolist()
        if key != "general.architecture" and not (vtype == gguf.GGUFValueType.ARRAY and len(value) == 0):
            writer.add_key_value(key, value, vtype, sub_type=item_type)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=QT(t.qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    out = writer.fout[0]
    try:
        for t in tensors:
            _pad(out, out.tell())
            written = 0
            for chunk in t.chunks():
                out.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                written += chunk.nbytes
                if progress:
                    progress(chunk.nbytes)
            if written != t.nbytes:
                raise AssertionError(f"{t.name}: wrote {written} bytes, planned {t.nbytes}")
            _pad(out, written)
        out.flush()
        os.fsync(out.fileno())
    finally:
        writer.close()


def _pad(f, n: int) -> None:
    pad = -n % ALIGNMENT
    if pad:
        f.write(b"\0" * pad)
