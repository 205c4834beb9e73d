"""numba kernels: small pure functions over arrays.

Conventions (they keep the hot loops vectorized, see bench/kernels.py):
- indices are cast to `np.uintp` before indexing, so numba emits no
  negative-index wraparound and LLVM sees contiguous loads;
- constants are typed float32/int32, so nothing silently widens to float64;
- weights arrive as uint8 rows of ggml blocks, read in place from the mapping.
"""
