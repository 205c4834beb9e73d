"""The integer path's kernels (int8 activations x ggml blocks) against gguf-py and float64 numpy.

The activations are rounded exactly as ggml's Q8_0 quantizer rounds them, so
the reference is float64 math on gguf's dequantized weights and gguf's
rounded activations: the kernels may differ from it only by float32
rounding. Every instruction set the kernels have is tested on this machine:
the AVX2 and AVX-VNNI paths by compiling them for other CPUs in a subprocess
(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize

from cpuinfer import linear_int8
from cpuinfer.kernels import int8_dot
from cpuinfer.kernels.gemm_int8 import ROWS
from cpuinfer.kernels.q8_activations import quantize_rows
from cpuinfer.linear import Linear, matmul
from cpuinfer.parallel import Workers
from numpy_forward import q8_activations
from test_kernels import assert_close_to_scale, dense, extreme_weights, weights

INT8_QTYPES = [QT.Q8_0, QT.Q4_0, QT.Q4_1]
REPO = Path(__file__).resolve().parents[1]


def activations(rng, shape) -> np.ndarray:
    """Random activations over six orders of magnitude, with an all-zero block and exact .5 ties."""
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(np.float32)
    flat = x.reshape(-1, 32)
    flat[0] = 0
    if flat.shape[0] > 1:  # max 127 -> scale 1: 2.5 and -4.5 round away from zero, to 3 and -5
        flat[1] = np.linspace(-100, 100, 32, dtype=np.float32).round()
        flat[1, :3] = [127.0, 2.5, -4.5]
    return x


def reference(w_dense: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W @ rounded x, |W| @ |rounded x|) in float64, per row of x."""
    xr = q8_activations(x)
    w64 = w_dense.astype(np.float64)
    return xr @ w64.T, np.abs(xr) @ np.abs(w64).T


def int8_linear(qtype, w: np.ndarray) -> Linear:
    return Linear("w", qtype, w.shape[0], w.shape[1] // {QT.Q8_0: 34, QT.Q4_0: 18, QT.Q4_1: 20}[qtype] * 32, w,
                  int8=True)


def test_quantize_rows_is_ggml_q8_0():
    rng = np.random.default_rng(3)
    x = activations(rng, (5, 256))
    xq = np.zeros((5, 256), np.int8)
    xd, xs = np.zeros((5, 8), np.float32), np.zeros((5, 8), np.float32)
    quantize_rows(x, 0, 5, xq, xd, xs)
    blocks = quantize(x, QT.Q8_0).reshape(5, 8, 34)
    assert np.array_equal(xq, blocks[:, :, 2:].view(np.int8).reshape(5, 256))
    assert xq[0, 32:35].tolist() == [127, 3, -5]
    d = np.abs(x.reshape(5, 8, 32)).max(axis=2) / np.float32(127)
    assert np.array_equal(xd, d)  # float32, not rounded to float16 as in ggml's blocks
    np.testing.assert_allclose(xs, d * xq.reshape(5, 8, 32).sum(axis=2), rtol=1e-6)
    assert xd[0, 0] == 0 and xs[0, 0] == 0 and not xq[0, :32].any()


@pytest.mark.parametrize("make", [weights, extreme_weights], ids=["random", "extreme"])
@pytest.mark.parametrize("qtype", INT8_QTYPES, ids=lambda q: q.name)
def test_matvec_int8(qtype, make):
    rng = np.random.default_rng(17)
    kernel = linear_int8.MATVEC[qtype]
    for rows in (1, 3, 5, 33):
        for k in (32, 96, 576):
            w = make(qtype, rows, k, rng)
            x = activations(rng, (1, k))
            out = np.full(rows, np.nan, dtype=np.float32)
            kernel(w, x[0], out)
            ref, scale = reference(dense(qtype, w), x)
            assert_close_to_scale(out, ref[0], scale[0])


@pytest.mark.parametrize("make", [weights, extreme_weights], ids=["random", "extreme"])
@pytest.mark.parametrize("qtype", INT8_QTYPES, ids=lambda q: q.name)
def test_matmul_int8(qtype, make):
    """Batches through linear.matmul: matvecs for 1-2 tokens, the tiled gemm above; row counts that
    leave partial microtiles; scratch tiles too small to use."""
    rng = np.random.default_rng(23)
    for rows, k, tile_floats in ((13, 96, 1 << 16), (2 * ROWS + 7, 576, 1 << 16), (ROWS, 64, 8)):
        w = make(qtype, rows, k, rng)
        lin = int8_linear(qtype, w)
        workers = Workers(2, widest_row=1, tile_floats=2 * tile_floats)
        for T in (1, 2, 3, 4, 5, 17):
            x = activations(rng, (T, k))
            out = np.full((T, rows), np.nan, dtype=np.float32)
            assert matmul(lin, x, out, workers) is out
            ref, scale = reference(dense(qtype, w), x)
            for t in range(T):
                assert_close_to_scale(out[t], ref[t], scale[t])


def test_isa_choice():
    base = frozenset({"avx", "avx2", "fma", "f16c"})
    assert int8_dot.choose_isa(base | {"avx512f", "avx512bw", "avx512vl", "avx512vnni"}) == "avx512vnni"
    assert int8_dot.choose_isa(base | {"avxvnni"}) == "avxvnni"
    assert int8_dot.choose_isa(base | {"avx512f", "avx512vl", "avx512vnni"}) == "avxvnni"
    assert int8_dot.choose_isa(base) == "avx2"
    assert int8_dot.choose_isa(frozenset({"sse4.2", "avx"})) is None


def test_no_integer_path_without_avx2(monkeypatch, converted):
    """On a CPU without AVX2 every matrix stays on the float path, whatever load() was asked."""
    import cpuinfer

    monkeypatch.setattr(linear_int8, "AVAILABLE", False)
    m = cpuinfer.load(converted("llama", "q4_0"))
    assert not any(w.int8 for w in (m.transformer.weights.output, m.transformer.weights.layers[0].wq))


HASWELL = "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3"


@pytest.mark.skipif(int8_dot.ISA not in ("avx512vnni", "avxvnni"), reason="needs a CPU with VNNI to emulate")
@pytest.mark.parametrize("cpu, features, isa", [("haswell", HASWELL, "avx2"),
                                                ("alderlake", HASWELL + ",+avxvnni", "avxvnni")])
def test_other_instruction_sets(tmp_path, cpu, features, isa):
    """This file's kernel tests again, with the kernels compiled for an AVX2 / AVX-VNNI CPU."""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    probe = subprocess.run([sys.executable, "-c", "from cpuinfer.kernels.int8_dot import ISA; print(ISA)"],
                           env=env, capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.strip() == isa, probe.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "matvec_int8 or matmul_int8 or quantize_rows"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
