"""How many threads the kernels use, scoped to one call."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

from .numbers import checked


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings count once), like llama.cpp's default."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    try:
        for cpu in allowed:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores))


def clamp_threads(n: int) -> int:
    """n (which must be >= 1) limited to the threads numba started with."""
    import numba

    return min(checked(n, "threads (--threads/-t)", integer=True, lo=1), numba.config.NUMBA_NUM_THREADS)


@functools.cache
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finding the loaded BLAS libraries takes ~7 ms: once


@contextlib.contextmanager
def threads_for_call(n: int, blas: bool) -> Iterator[None]:
    """Run the block's numba kernels on n threads and, if `blas`, BLAS on one; restore both after.

    numba's thread count is per calling thread, so this touches no other
    thread's setting. BLAS is held to one thread while cpuinfer's own workers
    split its calls (see parallel.py); entering that limit costs ~70 us, so
    calls that use no BLAS (decoding a token) skip it.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with _blas().limit(limits=1, user_api="blas") if blas else contextlib.nullcontext():
            yield
    finally:
        numba.set_num_threads(previous)
