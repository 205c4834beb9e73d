"""float16 -> float32 for ggml block scales.

numba has no float16 on the CPU, so kernels look scales up in an exact
65536-entry table (256 KiB, stays in L2) instead of converting the model.
"""

import numpy as np

F16_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
F16_TO_F32.setflags(write=False)
