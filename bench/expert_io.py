"""How fast can one expert come from disk? Ways of reading a range of a file into memory, compared.

Each method reads `--mb` MB regions of FILE (e.g. a Mixtral GGUF, whose experts are ~99 MB each) from
a dropped page cache (posix_fadvise DONTNEED on the file), methods interleaved and each on its own
regions, several rounds; prints MB/s per method and round, and the median.

    python -m bench.expert_io FILE [--mb 96] [--rounds 4]

- preadv: buffered os.preadv calls of 8 MB into an anonymous buffer, readahead off (POSIX_FADV_RANDOM,
  so nothing past the range is read), then DONTNEED on the range (what expert_cache.py does)
- preadv+ra: the same with the kernel's readahead on (it reads past the range)
- direct: O_DIRECT preadv (bypasses the page cache; needs aligned offsets and buffers)
- willneed: madvise(MADV_SEQUENTIAL) + madvise(MADV_WILLNEED) on the mapped range, then touch every page
- faults: touch every page of the mapped range (page faults, with the kernel's readaround)
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time

import numpy as np

PIECE = 8 << 20
PAGE = mmap.PAGESIZE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--mb", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    size = os.path.getsize(args.file)
    region = args.mb << 20
    fd = os.open(args.file, os.O_RDONLY)
    fd_ra = os.open(args.file, os.O_RDONLY)
    fd_direct = os.open(args.file, os.O_RDONLY | os.O_DIRECT)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    pages = np.frombuffer(mapping, dtype=np.uint8)
    buf = mmap.mmap(-1, region)  # page-aligned, as O_DIRECT needs
    view = memoryview(buf)

    def pread(f: int, off: int) -> None:
        for start in range(0, region, PIECE):
            os.preadv(f, [view[start:start + PIECE]], off + start)
        os.posix_fadvise(f, off, region, os.POSIX_FADV_DONTNEED)

    def willneed(off: int) -> None:
        mapping.madvise(mmap.MADV_SEQUENTIAL, off, region)
        mapping.madvise(mmap.MADV_WILLNEED, off, region)
        pages[off:off + region:PAGE].sum()

    methods = {"preadv": lambda off: pread(fd, off), "preadv+ra": lambda off: pread(fd_ra, off),
               "direct": lambda off: pread(fd_direct, off), "willneed": willneed,
               "faults": lambda off: pages[off:off + region:PAGE].sum()}
    # Regions spread over the file, far apart, none read twice.
    n_regions = size // region - 1
    order = np.random.default_rng(0).permutation(n_regions)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    i = 0
    for _ in range(args.rounds):
        for name, read in methods.items():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            off = int(order[i % n_regions]) * region
            i += 1
            t = time.perf_counter()
            read(off)
            rates[name].append(region / (time.perf_counter() - t) / 1e6)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    for name, r in rates.items():
        print(f"{name:10s} median {statistics.median(r):6.0f} MB/s  rounds: " + " ".join(f"{x:.0f}" for x in r))


if __name__ == "__main__":
    main()
