"""Element-wise and per-row kernels: RMSNorm, rotary embedding, SwiGLU.

Serial: next to the matrix products they are cheap even for a whole prompt chunk.
"""

import math

import numpy as np
from numba import njit

from .matvec import U, f32


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def rms_norm(x, weight, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, per row t."""
    n = x.shape[1]
    for t in range(x.shape[0]):
        ss = f32(0)
        for i in range(n):
            ss += x[U(t), U(i)] * x[U(t), U(i)]
        scale = f32(1) / math.sqrt(ss / f32(n) + f32(eps))
        for i in range(n):
            out[U(t), U(i)] = x[U(t), U(i)] * scale * weight[U(i)]


def rope_tables(positions: np.ndarray, rope_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, rope_dim/2] of position * theta^(-2i/rope_dim), computed in float64."""
    inv_freq = theta ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)
    angles = np.outer(positions.astype(np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@njit(nogil=True, fastmath=True, cache=True)
def rope(x, cos, sin):
    """Rotate adjacent pairs (x[2i], x[2i+1]) of every head in place, as ggml does for `llama`.

    x is [T, heads, head_dim]; only the first 2 * cos.shape[1] dimensions rotate.
    """
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for i in range(cos.shape[1]):
                c = cos[U(t), U(i)]
                s = sin[U(t), U(i)]
                a = x[U(t), U(h), U(2 * i)]
                b = x[U(t), U(h), U(2 * i + 1)]
                x[U(t), U(h), U(2 * i)] = a * c - b * s
                x[U(t), U(h), U(2 * i + 1)] = a * s + b * c


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def silu_mul(gate, up):
    """gate = silu(gate) * up, in place (the SwiGLU activation)."""
    for t in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[U(t), U(i)]
            gate[U(t), U(i)] = g / (f32(1) + math.exp(-g)) * up[U(t), U(i)]
