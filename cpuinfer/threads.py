"""How many threads the kernels use."""

from __future__ import annotations

import os


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


def set_threads(n: int) -> int:
    """Use n threads in numba kernels; BLAS gets one (cpuinfer's workers split its calls, see parallel.py)."""
    import numba
    from threadpoolctl import threadpool_limits

    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    threadpool_limits(1, user_api="blas")
    return n
