"""`cpuinfer bench`: prompt processing (pp) and token generation (tg) speed, like llama-bench.

pp{N}: a prompt of N random tokens from an empty cache. tg{N}: N tokens
decoded one at a time from an empty cache. Each test runs once to warm up
(that run's extra time over the steady state is reported as JIT/warm-up time),
then `reps` times; tokens/s is reported as mean ± stddev. For decode, the
weight bytes each token reads times tokens/s, as a share of the memory
bandwidth measured in the same run (after the peak memory is read, so its
buffer does not count), says how close decode is to the roofline.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit, prange

from .threads import clamp_threads, threads_for_call


_CHUNK = 1 << 14


@njit(parallel=True, fastmath=True, cache=True)
def _stream_sum(a):
    # Independent float32 sums over 64 KiB chunks: vectorized, several loads in flight per thread.
    total = 0.0
    for c in prange(a.shape[0] // _CHUNK):
        s = np.float32(0)
        for i in range(c * _CHUNK, (c + 1) * _CHUNK):
            s += a[np.uintp(i)]
        total += s
    return total


def memory_bandwidth(threads: int, nbytes: int = 1 << 29, reps: int = 5) -> float:
    """Read bandwidth in GB/s on `threads` threads: a parallel numba sum over `nbytes` of float32 (best of reps)."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    best = float("inf")
    with threads_for_call(clamp_threads(threads), blas=False):
        _stream_sum(a)
        for _ in range(reps):
            t = time.perf_counter()
            _stream_sum(a)
            best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoded token reads (for MoE: the dense part plus the measured expert bytes)."""
    w = model.weights
    total = w.output.nbytes
    for layer in w.layers:
        total += sum(m.nbytes for m in (layer.wq, layer.wk, layer.wv, layer.wo))
        if layer.ffn is not None:
            total += layer.ffn.nbytes
        else:
            total += layer.router.nbytes
    stats = model.expert_stats
    if stats is not None:
        total += int(stats.bytes_per_token)
    return total


@dataclass
class BenchResult:
    test: str  # "pp512" / "tg128"
    threads: int
    tokens_per_second: list[float] = field(default_factory=list)
    warmup_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.tokens_per_second))

    @property
    def std(self) -> float:
        return float(np.std(self.tokens_per_second, ddof=1)) if len(self.tokens_per_second) > 1 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_prompt(model, n: int, reps: int, rng: np.random.Generator, threads: int | None = None) -> BenchResult:
    """ppN: a prompt of n random tokens into an empty cache, `reps` times after a warm-up."""
    cache = model.new_cache(max(n, 1))
    threads = threads or model.threads

    def run():
        cache.reset()
        model.forward(rng.integers(0, model.config.n_vocab, n), cache, all_logits=False, threads=threads)

    warm = _timed(run)
    times = [_timed(run) for _ in range(reps)]
    return BenchResult(f"pp{n}", threads, [n / t for t in times], max(0.0, warm - min(times)),
                       {"time_to_first_token_s": float(np.mean(times))})


def bench_decode(model, n: int, reps: int, rng: np.random.Generator, threads: int | None = None) -> BenchResult:
    """tgN: n tokens decoded one at a time from an empty cache, `reps` times after a warm-up."""
    stats = model.expert_stats
    cache = model.new_cache(max(n, 1))
    threads = threads or model.threads

    def run():
        cache.reset()
        token = int(rng.integers(0, model.config.n_vocab))
        for _ in range(n):
            token = int(model.forward([token], cache, all_logits=False, threads=threads)[-1].argmax())

    warm = _timed(run)
    if stats is not None:  # count expert traffic over the measured runs only
        stats.clear()
    times = [_timed(run) for _ in range(reps)]
    result = BenchResult(f"tg{n}", threads, [n / t for t in times], max(0.0, warm - min(times)))
    per_token = weight_bytes_per_token(model)
    result.extra["weight_bytes_per_token"] = per_token
    result.extra["weight_gb_per_s"] = per_token * result.mean / 1e9
    if stats is not None:
        result.extra.update(expert_bytes_per_token=stats.bytes_per_token, expert_reuse_rate=stats.reuse_rate,
                            expert_histogram=stats.counts.sum(axis=0).tolist())
    return result


def add_bandwidth_share(result: BenchResult, bandwidth: float) -> None:
    """Record the machine's measured bandwidth and the share of it that decode's weight reads use."""
    result.extra["machine_bandwidth_gb_per_s"] = bandwidth
    result.extra["bandwidth_share"] = result.extra["weight_gb_per_s"] / bandwidth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
