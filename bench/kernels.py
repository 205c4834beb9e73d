"""Kernel speed at Mistral-7B shapes, against the memory roofline and numpy's BLAS.

For each type and shape: the decode matvec (one activation vector) in GB/s of
weights read, and the batched matmul (64 prompt tokens) in GFLOP/s, on the
integer path (int8 activations, `int8`) and the float path (`float`); side by
side, in the same run, numpy float32 BLAS on the dequantized matrix (matvec
and matmul) and the machine's read bandwidth from a numba streaming kernel.

    python -m bench.kernels [--threads 2] [--reps 5] [--types Q4_0 ...] [--json bench/results/kernels.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize
from threadpoolctl import threadpool_limits

from bench.synthetic import random_blocks
from cpuinfer.bench import memory_bandwidth
from cpuinfer.kernels.int8_dot import ISA
from cpuinfer.linear import Linear, matmul
from cpuinfer.linear_int8 import TYPES as INT8_TYPES
from cpuinfer.parallel import Workers
from cpuinfer.threads import clamp_threads, threads_for_call

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (32000, 4096)]  # (rows, cols): wq, w1/w3, w2, output
TYPES = {t.name: t for t in (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K,
                             QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS, QT.F16, QT.BF16, QT.F32)}
BATCH = 64


def best_time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def weights(qtype: int, rows: int, cols: int, rng) -> dict[str, Linear]:
    """Random weights on each path their type has, {"float": ..., "int8": ...}: float rows, or ggml
    blocks of random codes and scales (bench/synthetic.py)."""
    if qtype in (QT.F32, QT.F16, QT.BF16):
        dense = rng.standard_normal((rows, cols), dtype=np.float32)
        data = dense if qtype == QT.F32 else dense.astype(np.float16).view(np.uint16) if qtype == QT.F16 \
            else quantize(dense, QT.BF16).view(np.uint16)
    else:
        data = random_blocks(rng, qtype, rows, cols)
    paths = {"float": Linear("bench", qtype, rows, cols, data)}
    if ISA is not None and qtype in INT8_TYPES:
        paths["int8"] = Linear("bench", qtype, rows, cols, data, int8=True)
    return paths


def run(threads: int, reps: int, types: list[str]) -> dict:
    threads = clamp_threads(threads)
    with threads_for_call(threads, blas=True):
        return _run(threads, reps, types)


def _run(threads: int, reps: int, types: list[str]) -> dict:
    workers = Workers(threads, widest_row=max(c for _, c in SHAPES))
    rng = np.random.default_rng(0)
    bandwidth = memory_bandwidth(threads)
    rows_out = []
    for rows, cols in SHAPES:
        x1 = rng.standard_normal((1, cols), dtype=np.float32)
        xb = rng.standard_normal((BATCH, cols), dtype=np.float32)
        out1, outb = np.empty((1, rows), np.float32), np.empty((BATCH, rows), np.float32)
        for name in types:
            for path, w in weights(TYPES[name], rows, cols, rng).items():
                t1 = best_time(lambda: matmul(w, x1, out1, workers), reps)
                tb = best_time(lambda: matmul(w, xb, outb, workers), max(1, reps // 2))
                rows_out.append(dict(shape=f"{rows}x{cols}", type=f"{name} {path}", weight_bytes=w.nbytes,
                                     matvec_gb_s=w.nbytes / t1 / 1e9,
                                     matmul_gflop_s=2 * BATCH * rows * cols / tb / 1e9))
        f32 = dequantize(weights(QT.Q8_0, rows, cols, rng)["float"].data, QT.Q8_0)  # a dequantized matrix, as BLAS would get
        with threadpool_limits(threads, user_api="blas"):
            t1 = best_time(lambda: np.matmul(x1, f32.T, out=out1), reps)
            tb = best_time(lambda: np.matmul(xb, f32.T, out=outb), max(1, reps // 2))
        rows_out.append(dict(shape=f"{rows}x{cols}", type="numpy float32 BLAS", weight_bytes=f32.nbytes,
                             matvec_gb_s=f32.nbytes / t1 / 1e9,
                             matmul_gflop_s=2 * BATCH * rows * cols / tb / 1e9))
    # the machine is shared: take the better of two readings, before and after
    bandwidth = max(bandwidth, memory_bandwidth(threads))
    for r in rows_out:
        r["matvec_roofline_share"] = r["matvec_gb_s"] / bandwidth
    return dict(threads=threads, isa=ISA, bandwidth_gb_s=bandwidth, batch=BATCH, results=rows_out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--types", nargs="+", choices=list(TYPES), default=list(TYPES))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    result = run(args.threads, args.reps, args.types)
    print(f"threads {result['threads']}, integer instructions {result['isa']}, "
          f"measured read bandwidth {result['bandwidth_gb_s']:.1f} GB/s")
    print(f"{'shape':<12} {'type':<26} {'matvec GB/s':>11} {'of roofline':>11} {'matmul GFLOP/s':>15}")
    for r in result["results"]:
        print(f"{r['shape']:<12} {r['type']:<26} {r['matvec_gb_s']:>11.1f} {r['matvec_roofline_share'] * 100:>10.0f}%"
              f" {r['matmul_gflop_s']:>15.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
