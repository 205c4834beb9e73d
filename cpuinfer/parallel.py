"""Threads for batched (prompt) work.

Decoding one token runs numba `prange` kernels: OpenMP workers that spin
between kernels, which is what keeps per-kernel latency near a microsecond. A
prompt chunk is mostly BLAS sgemm; if BLAS ran its own spinning threads too,
the two pools would fight over the cores (measured here: 10x slower prefill).
So BLAS is held to one thread, and batched work is split into row ranges that
these plain threads run, each calling single-threaded BLAS and nogil kernels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

import numpy as np


TILE_FLOATS = 1 << 21  # 8 MiB of dequantized weights at a time, shared by the workers


class Workers:
    """`threads` workers (the caller is one of them), each with a float32 scratch tile that holds at
    least one row of `widest_row` values."""

    def __init__(self, threads: int, widest_row: int, tile_floats: int = TILE_FLOATS):
        self.threads = max(1, threads)
        size = max(tile_floats // self.threads, widest_row)
        self.tiles = [np.zeros(size, dtype=np.float32) for _ in range(self.threads)]
        self._executor = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def run(self, fn: Callable[[np.ndarray, int, int], None], n: int) -> None:
        """Split range(n) into one contiguous part per worker and call fn(tile, start, stop) on each."""
        k = min(self.threads, n)
        parts = [(n * i // k, n * (i + 1) // k) for i in range(k)]
        futures = [self._executor.submit(fn, self.tiles[i], *parts[i]) for i in range(1, k)]
        try:
            if k:
                fn(self.tiles[0], *parts[0])
            for f in futures:
                f.result()
        except BaseException:  # Ctrl-C: let the other parts finish before the buffers are reused
            wait(futures)
            raise
