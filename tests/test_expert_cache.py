"""A Mixtral larger than its memory budget: whole experts in a cache, read from disk as the router picks them.

A small Mixtral-shape file (8 experts, top-2, 3 layers, 1.8 MB experts: 145
pages per matrix) is written with bench/synthetic.py, and again in the layout
of Mixtral files before April 2024 (one 2-D tensor per expert). With a budget that holds
3 experts, the logits must equal those of the plain mapping, the file's expert
pages must stay out of memory (mincore on the mapping, after dropping the
file from the page cache), and the counters and the slabs must respect the budget.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil

import numpy as np
import pytest

import cpuinfer
import cpuinfer.slabs as slabs
from bench.synthetic import write_synthetic
from cpuinfer.cache_policy import LFU, LRU
from cpuinfer.gguf_file import GGUFFile
from cpuinfer.memory import parse_size, resident_bytes
from cpuinfer.moe import ExpertStats
from gguf_parts import Parts
from quantize.checkpoint import Hparams

SHAPE = Hparams(name="tiny Mixtral 8x", n_layers=3, dim=512, ffn_dim=2048, n_heads=8, n_kv_heads=2, head_dim=64,
                n_vocab=32000, rope_theta=1e6, norm_eps=1e-5, context_length=4096, sliding_window=None,
                n_experts=8, n_experts_used=2)
PROMPT = list(range(100, 140))
DECODED = [7, 11, 13, 17, 19, 23]
PAGE = mmap.PAGESIZE
SLOTS = 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident_pages(address: int, length: int) -> np.ndarray:
    """mincore: 1 for each page of [address, address + length) in memory (pages the range covers fully)."""
    start, stop = -(-address // PAGE) * PAGE, (address + length) // PAGE * PAGE
    if stop <= start:
        return np.zeros(0, dtype=np.uint8)
    vec = (ctypes.c_ubyte * ((stop - start) // PAGE))()
    if _libc.mincore(start, stop - start, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return np.frombuffer(vec, dtype=np.uint8) & 1


def drop_from_page_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(the file for the plain mapping, a copy for the budgeted model, the copy with one tensor per expert):
    page-cache state of one never leaks into another."""
    folder = tmp_path_factory.mktemp("moe8")
    plain = write_synthetic(SHAPE, "q4_0", folder / "mixtral8.gguf", quiet=True)
    legacy = Parts.read(plain).split_experts().write(folder / "mixtral8-per-expert.gguf")
    return plain, shutil.copy(plain, folder / "mixtral8-copy.gguf"), legacy


@pytest.fixture(scope="module")
def reference(files):
    """The plain mapping's logits for the prompt and each decoded token, and its memory plan."""
    m = cpuinfer.load(files[0])
    assert m.expert_cache is None
    cache = m.new_cache()
    logits = [m.forward(PROMPT, cache)] + [m.forward([t], cache) for t in DECODED]
    return logits, m.memory


def budget_for(plan, slots: float) -> int:
    """A budget that leaves room for `slots` experts beside what this process holds now."""
    return resident_bytes() + plan.runtime + plan.dense + plan.kv + int(slots * plan.expert_bytes)


def expert_pages(m) -> dict[tuple[int, int], np.ndarray]:
    """Resident pages of each (layer, expert)'s matrices in the model's mapping of the file."""
    base = m.file.data.ctypes.data
    out = {}
    for i, layer in enumerate(m.weights.layers):
        for e, expert in enumerate(layer.experts):
            out[(i, e)] = np.concatenate([resident_pages(x.data.ctypes.data, x.nbytes)
                                          for x in (expert.gate, expert.up, expert.down)])
            assert all(base <= x.data.ctypes.data < base + m.file.data.size for x in (expert.gate, expert.down))
    return out


def expert_nbytes(m) -> int:
    return m.weights.layers[0].experts[0].nbytes  # every expert of this file has the same size


@pytest.mark.parametrize("policy,direct,layout", [("lru", True, "3-D"), ("lfu", True, "3-D"), ("lru", False, "3-D"),
                                                 ("lru", True, "per expert")])
def test_budgeted_mixtral_reads_whole_experts_and_computes_the_same_logits(files, reference, policy, direct, layout,
                                                                          monkeypatch):
    logits, plan = reference
    if not direct:  # a file system that refuses O_DIRECT: buffered reads, dropped from the page cache after
        def refuse(path):
            raise OSError(errno.EINVAL, "no direct I/O")
        monkeypatch.setattr(slabs, "_open_direct", refuse)
    path = files[1] if layout == "3-D" else files[2]
    assert ("blk.0.ffn_up.1.weight" in GGUFFile(path).tensors) == (layout == "per expert")
    budget = budget_for(plan, SLOTS + 0.5)
    m = cpuinfer.load(path, max_memory=budget, expert_cache=policy)
    cache, stats, size = m.expert_cache, m.expert_stats, expert_nbytes(m)
    assert cache is not None and cache.slots == SLOTS and cache.reader.direct == direct
    kv = m.new_cache()
    np.testing.assert_array_equal(m.forward(PROMPT, kv), logits[0])  # chunks that choose more experts than fit

    for t, want in zip(DECODED, logits[1:]):
        drop_from_page_cache(path)
        before = dict(hits=stats.hits, misses=stats.misses, disk=stats.disk_bytes, counts=stats.counts.copy(),
                      guesses=stats.guesses)
        np.testing.assert_array_equal(m.forward([t], kv), want)
        chosen = {(i, int(e)) for i, e in zip(*np.nonzero(stats.counts - before["counts"]))}
        assert len(chosen) == 2 * SHAPE.n_layers
        misses = stats.misses - before["misses"]
        assert stats.hits - before["hits"] + misses == len(chosen)
        # Whole experts are read (with their aligned edges): every miss, and at most the guesses made.
        read = stats.disk_bytes - before["disk"]
        assert misses * size <= read <= (misses + stats.guesses - before["guesses"]) * cache.slab_bytes

        # No expert's pages are in memory through the mapping: chosen ones live in slabs, the rest were not read.
        pages = expert_pages(m)
        assert sum(int(p.sum()) for p in pages.values()) == 0, {k: int(p.sum()) for k, p in pages.items() if p.any()}
        held = cache.resident()
        assert len(held) <= SLOTS
        assert {k for k in chosen if k[0] == SHAPE.n_layers - 1} <= set(held)  # nothing evicted after the last layer

    # The slabs: at most SLOTS of them hold pages, and the process stays within its budget.
    arena = resident_pages(cache._bytes.ctypes.data, cache._bytes.size)
    assert arena.sum() * PAGE <= SLOTS * cache.slab_bytes
    assert resident_bytes() <= budget
    assert stats.guesses > 0 and 0 <= stats.guesses_right <= stats.guesses


def test_guessing_can_be_turned_off(files, reference):
    logits, plan = reference
    m = cpuinfer.load(files[1], max_memory=budget_for(plan, SLOTS + 0.5), guess_next=False)
    kv = m.new_cache()
    m.forward(PROMPT, kv)
    m.expert_stats.clear()
    for t, want in zip(DECODED, logits[1:]):
        np.testing.assert_array_equal(m.forward([t], kv), want)
    s = m.expert_stats
    assert s.guesses == 0 and s.as_dict()["guess_accuracy"] is None and s.misses > 0
    # only the misses are read, each with at most a block of alignment at either end of its 3 matrices
    assert s.misses * expert_nbytes(m) <= s.disk_bytes <= s.misses * (expert_nbytes(m) + 3 * 2 * 4096)


def test_kv_caches_beyond_the_default_one_take_the_experts_room(files, reference):
    _, plan = reference
    # Room for the default cache and SLOTS experts, plus a little: a second full cache does not fit.
    m = cpuinfer.load(files[1], max_memory=budget_for(plan, SLOTS + 0.5))
    first = m.new_cache()
    with pytest.raises(cpuinfer.CpuinferError, match="no room for another KV cache"):
        m.new_cache()
    small = m.new_cache(n_ctx=64)  # 0.2 MB: fits beside the experts
    assert m.expert_cache.capacity == SLOTS
    del first, small
    m.new_cache()  # the first cache's room came back


def test_budget_too_small_is_refused_with_what_it_needs(files, reference):
    _, plan = reference
    with pytest.raises(cpuinfer.CpuinferError, match=r"needs at least \d+(\.\d)?[MG] .*2 experts"):
        cpuinfer.load(files[1], max_memory=budget_for(plan, 1.5))
    assert cpuinfer.load(files[1], max_memory=budget_for(plan, 2.5)).expert_cache.slots == 2
    with pytest.raises(cpuinfer.CpuinferError, match="bad memory size"):
        cpuinfer.load(files[1], max_memory="12 apples")
    with pytest.raises(cpuinfer.CpuinferError, match="unknown expert cache policy"):
        cpuinfer.load(files[1], expert_cache="fifo")


def test_a_dense_model_larger_than_the_budget_is_refused(smollm2):
    from test_cli import assert_one_line_error, run

    assert_one_line_error(run("generate", smollm2, "hi", "--max-memory", "100M"), "the model needs")


def test_parse_size():
    assert parse_size("12G") == 12 << 30 and parse_size("800M") == 800 << 20 and parse_size("1.5g") == 3 << 29
    assert parse_size("512MiB") == 512 << 20 and parse_size("2GB") == 2 << 30 and parse_size(1000) == 1000
    for bad in ("", "G", "-1G", "0", "12 apples"):
        with pytest.raises(cpuinfer.CpuinferError):
            parse_size(bad)


def test_policies_name_the_victim():
    lru, lfu = LRU(), LFU()
    for p in (lru, lfu):
        for key in "abc":
            p.picked(key)
            p.added(key)
        for key in "aab":  # a picked 3 times, b twice, c once; the least recent is c
            p.picked(key)
    assert lru.victim(lambda k: True) == "c" and lfu.victim(lambda k: True) == "c"
    lru.picked("c"), lfu.picked("c")  # c is now the most recent, and picked twice
    assert lru.victim(lambda k: True) == "a"  # a was picked longest ago
    assert lfu.victim(lambda k: True) == "b"  # b and c were picked twice; b less recently
    assert lfu.victim(lambda k: k != "b") == "c" and lru.victim(lambda k: False) is None
    for p in (lru, lfu):  # an unconfirmed guess goes first among equals
        p.added("d")
        p.demoted("d")
    assert lru.victim(lambda k: True) == "d" and lfu.victim(lambda k: True) == "d"


def test_reuse_is_counted_per_layer():
    class Sequence:
        expert_picks = [None, None]

    s, seq = ExpertStats(2, 4), Sequence()
    for layer0, layer1 in (([0, 1], [3, 2]), ([1, 2], [2, 3])):  # layer 0 reuses 1 pick of 2, layer 1 both
        s.record(0, np.array([layer0]), 0, [(seq, 1)])
        s.record(1, np.array([layer1]), 0, [(seq, 1)])
    assert s.reuse_per_layer == [0.5, 1.0] and s.reuse_rate == 0.75 and s.tokens == 2


def test_bench_reports_the_expert_cache_counters(files, reference):
    import json

    from test_cli import run

    _, plan = reference
    budget = str(budget_for(plan, SLOTS + 0.5))  # with the reference's context, 4096 tokens
    r = run("bench", files[1], "-p", "0", "-n", "3", "-r", "1", "-t", "1", "--ctx", "4096", "--json",
            "--max-memory", budget)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    # about SLOTS: what this process holds moves by a few MB between here and the load
    assert 2 <= out["expert_cache"]["slots"] < SHAPE.n_layers * SHAPE.n_experts
    assert out["expert_cache"]["policy"] == "lru"
    assert out["max_memory_mb"] == int(budget) / 1e6 and out["peak_rss_mb"] > 0
    tg = out["results"][0]["extra"]
    picks = SHAPE.n_layers * SHAPE.n_experts_used
    assert tg["cache_hits_per_token"] + tg["cache_misses_per_token"] == pytest.approx(picks)
    assert tg["cache_misses_per_token"] > 0 and 0 <= tg["guess_accuracy"] <= 1
    assert tg["cache_read_bytes_per_token"] > 0 and len(tg["expert_reuse_per_layer"]) == SHAPE.n_layers
    budget = str(budget_for(plan, SLOTS + 0.5))  # this process holds more now
    table = run("bench", files[1], "-p", "0", "-n", "2", "-r", "1", "-t", "1", "--ctx", "4096", "--max-memory", budget)
    assert table.exit_code == 0, table.output
    assert "cache hits" in table.output and "expert cache " in table.output
