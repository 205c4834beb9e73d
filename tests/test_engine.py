"""The inference engine end to end: cpuinfer.load(path).forward(ids, cache) against independent references.

* F32 files of the tiny reference checkpoints (mistral with a 16-token sliding
  window, mixtral with 4 experts / top-2, llama) against the committed
  transformers outputs: logits, greedy continuation, any chunking of the prompt.
* F16 / Q8_0 / Q4_0 / Q4_1 files against a float64 numpy forward pass over the
  weights of the *same file*, dequantized by gguf-py: the exact path keeps
  activations in float32, so quantization must not cost more than float32
  rounding; the integer path (int8 activations) within stated tolerances, and
  exactly as long as its roundings agree with ggml's.
* The rolling KV buffer, the context limit, the Mixtral expert counters.
  These tight comparisons use a float32 KV cache (kv_type="f32"); the default
  float16 cache and q8_0 are measured against it in test_kv_types.py.
* The default model (SmolLM2-135M Q4_1) against llama.cpp's logits; its memory
  mapping (resident memory after load) and thread count independence.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

import checkpoints
import cpuinfer
import numpy_forward
from gguf_oracle import dequantized_hf_weights

KINDS = ("mistral", "mixtral", "llama")
QUANT_TYPES = ("f16", "q8_0", "q4_0", "q4_1")
INT8_TYPES = ("q8_0", "q4_0", "q4_1")  # of these, the types with an integer path
REL_TOL = 1e-3  # max |diff| <= REL_TOL * max |logit|, per position
SAME_TOL = 1e-5  # the same computation split differently (chunks, threads)
WINDOW = checkpoints.SPECS["mistral"]["sliding_window"]
REPO = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------

def rel_err(logits: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row: max |logits - ref| / max |ref|."""
    logits, ref = np.atleast_2d(logits), np.atleast_2d(ref)
    return np.abs(logits.astype(np.float64) - ref).max(axis=1) / np.abs(ref).max(axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def greedy(model, cache, prompt, n: int) -> list[int]:
    """Argmax continuation, one token per forward call."""
    cache.reset()
    logits = model.forward(prompt, cache, all_logits=False)
    out = [int(logits[-1].argmax())]
    while len(out) < n:
        out.append(int(model.forward([out[-1]], cache)[-1].argmax()))
    return out


# --- fixtures --------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(converted):
    """model(kind, type, exact=True) -> the loaded GGUF (loaded once per module)."""
    loaded = {}

    def get(kind: str, type_name: str = "f32", exact: bool = True):
        key = (kind, type_name, exact)
        if key not in loaded:
            loaded[key] = cpuinfer.load(converted(kind, type_name), kv_type="f32", exact=exact)
        return loaded[key]

    return get


@pytest.fixture(scope="module")
def checkpoint_logits():
    """checkpoint_logits(kind) -> float64 numpy logits [96, vocab] of the original checkpoint weights."""
    cache = {}

    def get(kind: str, ids) -> np.ndarray:
        if kind not in cache:
            cache[kind] = numpy_forward.forward(checkpoints.make_weights(kind), checkpoints.SPECS[kind], ids)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def smollm2_models(smollm2):
    """smollm2_models(exact) -> the default model with a float32 KV cache, loaded once per path."""
    loaded = {}

    def get(exact: bool):
        if exact not in loaded:
            loaded[exact] = cpuinfer.load(smollm2, kv_type="f32", exact=exact)
        return loaded[exact]

    return get


# --- 1-3: F32 files against transformers -----------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_f32_logits_match_transformers(model, reference, kind, record_property):
    ref = reference(kind)
    m = model(kind)
    c = m.new_cache()
    logits = m.forward(ref["prompt_ids"], c)
    assert logits.shape == (96, 32000) and logits.dtype == np.float32
    err_cols = rel_err(logits[:, ref["cols"]], ref["logits_cols"])
    err_last = rel_err(logits[-1], ref["logits_last"])[0]
    record_property("max_rel_diff_cols", float(err_cols.max()))
    record_property("max_rel_diff_last", float(err_last))
    assert err_cols.max() <= REL_TOL, (int(err_cols.argmax()), float(err_cols.max()))
    assert err_last <= REL_TOL
    np.testing.assert_array_equal(logits.argmax(1), ref["argmax"])
    assert c.pos == 96


@pytest.mark.parametrize("kind", KINDS)
def test_f32_greedy_continuation_matches_transformers(model, reference, kind):
    ref = reference(kind)
    m = model(kind)
    c = m.new_cache()
    assert greedy(m, c, ref["prompt_ids"], len(ref["greedy_ids"])) == ref["greedy_ids"].tolist()
    assert c.pos == 96 + len(ref["greedy_ids"]) - 1


def chunked(m, c, ids, sizes) -> np.ndarray:
    """Logits of `ids` fed in consecutive chunks of the given sizes (cycled), from an empty cache."""
    c.reset()
    out, start, i = [], 0, 0
    while start < len(ids):
        n = sizes[i % len(sizes)]
        out.append(m.forward(ids[start:start + n], c))
        start, i = start + n, i + 1
    return np.concatenate(out)


@pytest.mark.parametrize("kind", KINDS)
def test_chunking_does_not_change_logits(model, reference, kind):
    ref = reference(kind)
    ids = ref["prompt_ids"]
    m = model(kind)
    c = m.new_cache()
    whole = m.forward(ids, c)
    scale = np.abs(whole).max(axis=1)
    splits = {
        "chunks of 7": [7],
        "chunks crossing the window": [WINDOW + 1, WINDOW - 3, 2 * WINDOW + 5],
        "chunks of exactly the window": [WINDOW],
        "mixed sizes incl. 1 and 2": [1, 2, 3, 30, 1, 64],
        "one token at a time": [1],
    }
    for name, sizes in splits.items():
        got = chunked(m, c, ids, sizes)
        err = np.abs(got - whole).max(axis=1) / scale
        assert err.max() <= SAME_TOL, (name, int(err.argmax()), float(err.max()))
        assert c.pos == len(ids)
    c.reset()
    assert c.pos == 0
    again = m.forward(ids, c)
    np.testing.assert_allclose(again, whole, rtol=0, atol=SAME_TOL * float(scale.min()))
    c.reset()
    last = m.forward(ids, c, all_logits=False)
    assert last.shape == (1, 32000)
    assert np.abs(last[0] - whole[-1]).max() <= SAME_TOL * scale[-1]


def test_rewind_recomputes_the_same_logits(model, reference):
    ids = reference("llama")["prompt_ids"]
    m = model("llama")
    c = m.new_cache()
    whole = m.forward(ids, c)
    assert c.rewind(40)
    assert c.pos == 40
    again = m.forward(ids[40:], c)
    assert rel_err(again, whole[40:]).max() <= SAME_TOL
    assert not c.rewind(97)  # beyond what is cached
    assert c.pos == 96


# --- 4: quantized files against float64 math on their own dequantized weights ----------------

@pytest.mark.parametrize("kind", ["mistral", "mixtral"])  # grouped-query attention; experts
def test_dequantized_f32_file_is_the_checkpoint(converted, kind):
    """The oracle's name mapping and q/k un-permutation give back the checkpoint exactly."""
    cfg = checkpoints.SPECS[kind]
    got = dequantized_hf_weights(converted(kind, "f32"), cfg)
    want = checkpoints.make_weights(kind)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        np.testing.assert_array_equal(got[name], w, err_msg=name)


@pytest.mark.parametrize("type_name", QUANT_TYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_matches_float64_on_its_dequantized_weights(converted, model, reference, checkpoint_logits,
                                                               kind, type_name, record_property):
    cfg = checkpoints.SPECS[kind]
    ids = reference(kind)["prompt_ids"]
    path = converted(kind, type_name)
    want = numpy_forward.forward(dequantized_hf_weights(path, cfg), cfg, ids)
    m = model(kind, type_name)
    got = m.forward(ids, m.new_cache())
    err = rel_err(got, want)
    cos = cosine(got, want)
    top1 = float((got.argmax(1) == want.argmax(1)).mean())
    # what quantization itself costs: against the original (float) checkpoint
    orig = checkpoint_logits(kind, ids)
    cos_orig = cosine(got, orig)
    top1_orig = float((got.argmax(1) == orig.argmax(1)).mean())
    numbers = {"max_rel_diff": float(err.max()), "median_cosine": float(np.median(cos)), "top1": top1,
               "median_cosine_vs_checkpoint": float(np.median(cos_orig)), "top1_vs_checkpoint": top1_orig}
    for k, v in numbers.items():
        record_property(k, v)
    print(f"{kind} {type_name}: {numbers}")
    assert err.max() <= REL_TOL, (int(err.argmax()), float(err.max()))
    assert top1 == 1.0
    assert np.median(cos) > 0.999999


# The integer path rounds every activation vector to int8 before a product. Until one rounding lands
# on the other side of a .5 boundary than in float64, it computes what a float64 forward over the
# same rounded activations computes; after that the difference spreads through attention to every
# later position at the size of the rounding itself (measured on these checkpoints: the first 11 to
# 29 positions agree to 3e-7; later ones differ by 1-4% of the largest logit, as from float math).
INT8_EXACT_POSITIONS = 8
INT8_MEDIAN_COSINE, INT8_MIN_COSINE, INT8_TOP1 = 0.9995, 0.998, 0.9  # measured: >= 0.99980, 0.9986, 0.9375


@pytest.mark.parametrize("type_name", INT8_TYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_int8_path_against_float64(converted, model, reference, kind, type_name, record_property):
    """The integer path against float64 forwards on the file's dequantized weights: with the activations
    rounded before every product as ggml's Q8_0 quantizer rounds them, and without."""
    cfg = checkpoints.SPECS[kind]
    ids = reference(kind)["prompt_ids"]
    weights = dequantized_hf_weights(converted(kind, type_name), cfg)
    rounded = numpy_forward.forward(weights, cfg, ids, act=numpy_forward.q8_activations)
    want = numpy_forward.forward(weights, cfg, ids)
    m = model(kind, type_name, exact=False)
    got = m.forward(ids, m.new_cache())
    err_rounded = rel_err(got, rounded)
    cos = cosine(got, want)
    top1 = float((got.argmax(1) == want.argmax(1)).mean())
    numbers = {"positions_matching_rounded_reference": int(np.argmax(err_rounded > SAME_TOL)),
               "max_rel_diff": float(rel_err(got, want).max()), "median_cosine": float(np.median(cos)),
               "min_cosine": float(cos.min()), "top1": top1}
    for k, v in numbers.items():
        record_property(k, v)
    print(f"{kind} {type_name} int8: {numbers}")
    assert err_rounded[:INT8_EXACT_POSITIONS].max() <= SAME_TOL
    assert np.median(cos) > INT8_MEDIAN_COSINE and cos.min() > INT8_MIN_COSINE
    assert top1 >= INT8_TOP1


# --- 5: the rolling buffer and the context limit -------------------------------------------

def test_sliding_window_cache_rolls_over(converted, reference):
    ref = reference("mistral")
    ids = ref["prompt_ids"]
    assert len(ids) >= 5 * WINDOW
    m = cpuinfer.load(converted("mistral", "f32"), n_ctx=100_000, kv_type="f32")
    c = m.new_cache()
    assert m.n_ctx == 100_000
    shape = c.k.shape
    assert shape[2] == WINDOW  # [layers, kv_heads, slots, head_dim]
    rows = [m.forward([t], c)[0] for t in ids]
    assert c.k.shape == shape and c.v.shape == shape
    assert c.pos == len(ids)
    logits = np.stack(rows)
    assert rel_err(logits[:, ref["cols"]], ref["logits_cols"]).max() <= REL_TOL
    assert rel_err(logits[-1], ref["logits_last"])[0] <= REL_TOL
    # one position back is recomputable; further back the buffer has lost what it needs
    assert c.rewind(len(ids) - 1)
    assert rel_err(m.forward(ids[-1:], c), logits[-1:])[0] <= SAME_TOL
    assert not c.rewind(len(ids) - 8)
    assert c.pos == len(ids)
    # still going long after the window: the greedy continuation matches too
    token = int(logits[-1].argmax())
    continuation = []
    for _ in range(len(ref["greedy_ids"])):
        continuation.append(token)
        token = int(m.forward([token], c)[0].argmax())
    assert continuation == ref["greedy_ids"].tolist()


def test_context_full_without_window(converted, reference):
    ref = reference("llama")
    ids = ref["prompt_ids"]
    m = cpuinfer.load(converted("llama", "f32"), n_ctx=32, kv_type="f32")
    c = m.new_cache()
    assert c.k.shape[2] == 32
    first = np.concatenate([m.forward(ids[:20], c), m.forward(ids[20:31], c), m.forward(ids[31:32], c)])
    assert c.pos == 32
    with pytest.raises(cpuinfer.ContextFullError, match="context full"):
        m.forward(ids[32:33], c)
    assert c.pos == 32
    c.reset()
    with pytest.raises(cpuinfer.ContextFullError):
        m.forward(ids[:33], c)  # too long in one call: refused before anything runs
    assert c.pos == 0
    again = m.forward(ids[:32], c)
    assert rel_err(again, first).max() <= SAME_TOL
    assert rel_err(again[:, ref["cols"]], ref["logits_cols"][:32]).max() <= REL_TOL
    assert issubclass(cpuinfer.ContextFullError, cpuinfer.CpuinferError)


# --- 6: Mixtral expert counters --------------------------------------------------------------

@pytest.fixture(scope="module")
def mixtral_routing(reference):
    """numpy's expert choices: choices[layer][position] = the 2 experts (softmax top-2 of router logits)."""
    cfg = checkpoints.SPECS["mixtral"]
    ids = reference("mixtral")["prompt_ids"]
    k = cfg["num_experts_per_tok"]
    picks: list[list[tuple[int, ...]]] = []
    original = numpy_forward._moe

    def recording(x, W, p, cfg_, *rest):
        logits = x @ W(p + "block_sparse_moe.gate.weight").T
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        picks.append([tuple(sorted(np.argsort(-row, kind="stable")[:k].tolist())) for row in probs])
        return original(x, W, p, cfg_, *rest)

    numpy_forward._moe = recording
    try:
        numpy_forward.forward(checkpoints.make_weights("mixtral"), cfg, ids)
    finally:
        numpy_forward._moe = original
    margins = numpy_forward.router_margins(checkpoints.make_weights("mixtral"), cfg, ids)
    assert margins.min() > 1e-3  # no near-ties: float32 must pick the same experts
    return picks


@pytest.fixture(scope="module")
def expert_bytes(converted):
    """expert_bytes[layer][e]: bytes of expert e's gate + up + down slabs, from gguf-py's tensor table."""
    sizes: dict[int, np.ndarray] = {}
    for t in GGUFReader(converted("mixtral", "f32")).tensors:
        parts = t.name.split(".")
        if parts[-2] in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            n_experts = t.data.shape[0]
            sizes.setdefault(int(parts[1]), np.zeros(n_experts, dtype=np.int64))
            sizes[int(parts[1])] += int(t.n_bytes) // n_experts
    return [sizes[i] for i in sorted(sizes)]


def snapshot(stats):
    return stats.counts.copy(), stats.bytes_read, stats.tokens


def test_mixtral_decode_reads_exactly_the_two_chosen_experts(model, reference, mixtral_routing, expert_bytes):
    ids = reference("mixtral")["prompt_ids"]
    m = model("mixtral")
    c = m.new_cache()
    stats = m.expert_stats
    assert stats is not None and stats.counts.shape == (2, 4)
    m.forward(ids[:88], c)
    for pos in range(88, 96):
        counts0, bytes0, tokens0 = snapshot(stats)
        m.forward(ids[pos:pos + 1], c)
        expected_counts = np.zeros_like(counts0)
        expected_bytes = 0
        for layer, choices in enumerate(mixtral_routing):
            chosen = choices[pos]
            assert len(set(chosen)) == 2
            expected_counts[layer, list(chosen)] = 1
            expected_bytes += int(expert_bytes[layer][list(chosen)].sum())
        np.testing.assert_array_equal(stats.counts - counts0, expected_counts, err_msg=f"position {pos}")
        assert (stats.counts - counts0).sum(axis=1).tolist() == [2] * len(mixtral_routing)
        assert stats.bytes_read - bytes0 == expected_bytes
        assert stats.tokens - tokens0 == 1


def expected_chunk(routing, expert_bytes, start, stop):
    """(counts delta, bytes read) of one forward chunk over positions start..stop-1: each chosen
    expert counted per token, read once per chunk."""
    counts = np.zeros((len(routing), len(expert_bytes[0])), dtype=np.int64)
    nbytes = 0
    for layer, choices in enumerate(routing):
        distinct = set()
        for chosen in choices[start:stop]:
            counts[layer, list(chosen)] += 1
            distinct.update(chosen)
        nbytes += int(expert_bytes[layer][sorted(distinct)].sum())
    return counts, nbytes


def test_mixtral_prefill_reads_each_chosen_expert_once_per_chunk(model, reference, mixtral_routing, expert_bytes):
    ids = reference("mixtral")["prompt_ids"]
    m = model("mixtral")
    c = m.new_cache()
    stats = m.expert_stats
    n_experts = len(expert_bytes[0])
    # a short chunk that leaves an expert unused in some layer, so "all experts" is told apart from "chosen"
    short = next((s, s + 3) for s in range(len(ids) - 3)
                 if any(len(set().union(*c[s:s + 3])) < n_experts for c in mixtral_routing))
    cases = [(0, 5), (5, 6), short, (40, 40 + min(50, m.batch))]
    for start, stop in cases:
        c.reset()
        if start:
            m.forward(ids[:start], c)
        counts0, bytes0, tokens0 = snapshot(stats)
        m.forward(ids[start:stop], c)
        counts, nbytes = expected_chunk(mixtral_routing, expert_bytes, start, stop)
        np.testing.assert_array_equal(stats.counts - counts0, counts, err_msg=f"chunk {start}:{stop}")
        assert stats.bytes_read - bytes0 == nbytes, (start, stop)
        assert stats.tokens - tokens0 == stop - start
    # the whole prompt in one call: forward splits it into chunks of the engine's batch size
    c.reset()
    counts0, bytes0, tokens0 = snapshot(stats)
    m.forward(ids, c)
    batch = m.batch
    want_counts, want_bytes = np.zeros_like(counts0), 0
    for s in range(0, len(ids), batch):
        counts, nbytes = expected_chunk(mixtral_routing, expert_bytes, s, min(s + batch, len(ids)))
        want_counts, want_bytes = want_counts + counts, want_bytes + nbytes
    np.testing.assert_array_equal(stats.counts - counts0, want_counts)
    assert stats.bytes_read - bytes0 == want_bytes
    assert stats.tokens - tokens0 == len(ids)


# --- 7: the default model against llama.cpp -------------------------------------------------

# llama.cpp multiplies Q4_1 weights with activations quantized to 8 bits (Q8_1); cpuinfer's exact
# path keeps them in float32. That moves llama.cpp's logits by ~0.12 (median) from exact float math
# on the same weights (measured: the exact path equals a float64 numpy forward over the dequantized
# SmolLM2 weights to 5e-6 relative, and llama.cpp run on those weights stored as F32 agrees with
# its top-1 at 99.8% of positions). So a top-2 margin of 0.05 is inside llama.cpp's own noise; the
# >= 99% bound is asserted where llama.cpp's margin is clear of it. cpuinfer's integer path rounds
# the activations as llama.cpp does, but not at the same points (float32 differences upstream), so
# its noise adds to llama.cpp's (measured: median 0.13 at llama.cpp's top-10, top-1 96.3%).
CLEAR_MARGIN = 0.25
BRIEF_MARGIN = 0.05


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "int8"])
def test_smollm2_agrees_with_llamacpp(smollm2_models, exact, record_property):
    """Both paths: llama.cpp's rounding of the activations and ours (exact or int8) are independent."""
    ref = np.load(REPO / "tests/fixtures/reference/smollm2_llamacpp_logits.npz")
    ids, top_ids, top_logits = ref["ids"], ref["top_ids"], ref["top_logits"]
    m = smollm2_models(exact)
    c = m.new_cache()
    logits = m.forward(ids, c)
    assert logits.shape == (len(ids), m.config.n_vocab)
    assert np.isfinite(logits).all()
    mine = logits.argmax(1)
    agree = mine == top_ids[:, 0]
    margin = top_logits[:, 0] - top_logits[:, 1]
    rows = np.arange(len(ids))
    diff_top1 = np.abs(logits[rows, top_ids[:, 0]] - top_logits[:, 0])
    diff_top10 = np.abs(np.take_along_axis(logits, top_ids, 1) - top_logits)
    numbers = {
        "top1_all": float(agree.mean()),
        f"top1_margin_ge_{BRIEF_MARGIN}": float(agree[margin >= BRIEF_MARGIN].mean()),
        f"positions_margin_lt_{BRIEF_MARGIN}": int((margin < BRIEF_MARGIN).sum()),
        f"top1_margin_ge_{CLEAR_MARGIN}": float(agree[margin >= CLEAR_MARGIN].mean()),
        f"positions_margin_ge_{CLEAR_MARGIN}": int((margin >= CLEAR_MARGIN).sum()),
        "median_abs_diff_at_llamacpp_top1": float(np.median(diff_top1)),
        "max_abs_diff_at_llamacpp_top1": float(diff_top1.max()),
        "median_abs_diff_top10": float(np.median(diff_top10)),
        "max_abs_logit": float(np.abs(top_logits).max()),
    }
    for k, v in numbers.items():
        record_property(k, v)
    print(f"SmolLM2 vs llama.cpp: {numbers}")
    assert agree[margin >= CLEAR_MARGIN].mean() >= 0.99
    assert agree[margin >= BRIEF_MARGIN].mean() >= 0.95
    assert np.median(diff_top1) < 0.25
    assert np.median(diff_top10) < 0.25
    # where they disagree, each top-1 is near the top of the other's list
    in_top10 = (top_ids == mine[:, None]).any(1)
    assert in_top10.all()
    # and llama.cpp's margin there is small: below 0.5 on Zen 4; on an Intel Xeon host (with code that
    # passed on Zen 4 too) the int8 path's largest was 0.625, at a position where it picks llama.cpp's
    # second choice by 0.05 and its float path agrees with llama.cpp
    assert (margin[~agree] < 0.75).all()


def test_smollm2_matches_llamacpp_computing_in_float(smollm2_models, record_property):
    """llama.cpp on an F32 copy of the same weights (`--f32-copy` in make_llamacpp_reference.py):
    no 8-bit activations there, so the top-1 tokens agree at >= 99% of all 512 positions."""
    ref = np.load(REPO / "tests/fixtures/reference/smollm2_llamacpp_f32_logits.npz")
    m = smollm2_models(exact=True)
    c = m.new_cache()
    logits = m.forward(ref["ids"], c)
    agree = float((logits.argmax(1) == ref["top_ids"][:, 0]).mean())
    diff = np.abs(np.take_along_axis(logits, ref["top_ids"], 1) - ref["top_logits"])
    record_property("top1_vs_llamacpp_f32", agree)
    record_property("max_abs_diff_top10_vs_llamacpp_f32", float(diff.max()))
    assert agree >= 0.99
    assert np.median(diff) < 0.05


def test_int8_perplexity_within_half_a_percent_of_exact(smollm2_models, record_property):
    """What the default (integer) path costs on the default model: perplexity on the GPL text, as
    `cpuinfer perplexity` computes it (measured: 18.377 against 18.300, +0.42%; llama.cpp on the
    same file: 18.354, +0.30%; at --ctx 256: +0.04% against llama.cpp's +0.28%)."""
    from cpuinfer.perplexity import perplexity

    text = (REPO / "tests/fixtures/text/GPL-3.txt").read_text()
    exact = perplexity(smollm2_models(True), text, ctx=512).ppl[0]
    int8 = perplexity(smollm2_models(False), text, ctx=512).ppl[0]
    record_property("ppl_exact", exact)
    record_property("ppl_int8", int8)
    assert abs(exact - 18.30) < 0.01  # llama-perplexity on the F16 file: 18.30
    assert abs(int8 / exact - 1) < 0.005


# --- 8: memory mapping -------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import cpuinfer.model  # numba and the kernels: importing them is not what load() costs

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def mapped_rss(path):
        # resident bytes of the file's own mapping(s), from /proc/self/smaps
        total, inside = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):
                    inside = line.rstrip().endswith(path)
                elif inside and first == "Rss:":
                    total += int(line.split()[1]) * 1024
        return total

    path = os.path.realpath(sys.argv[1])
    before = rss()
    model = cpuinfer.load(path)
    cache = model.new_cache()
    after = rss()
    print(json.dumps({"before": before, "after": after, "file_size": os.path.getsize(path),
                      "mapped_rss": mapped_rss(path), "kv_cache_bytes": cache.nbytes}))
""")


def test_load_maps_the_file_instead_of_reading_it(smollm2, tmp_path, record_property):
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(smollm2)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = r["after"] - r["before"]
    numbers = {"rss_increase_mb": grown / 1e6, "file_size_mb": r["file_size"] / 1e6,
               "fraction_of_file": grown / r["file_size"], "mapped_rss_mb": r["mapped_rss"] / 1e6,
               "kv_cache_mb": r["kv_cache_bytes"] / 1e6}
    for k, v in numbers.items():
        record_property(k, v)
    print(f"RSS after load: {numbers}")
    assert r["file_size"] > 90e6
    assert r["kv_cache_bytes"] > 10e6  # allocated (188 MB at n_ctx 4096), yet untouched: not resident
    assert grown < 0.5 * r["file_size"]
    assert r["mapped_rss"] < 0.25 * r["file_size"]  # only the header's pages were touched


# --- 9: threads -----------------------------------------------------------------------------

@pytest.mark.parametrize("exact", [True, False], ids=["exact", "int8"])
def test_thread_count_does_not_change_logits(smollm2, exact):
    ids = np.load(REPO / "tests/fixtures/reference/smollm2_llamacpp_logits.npz")["ids"][:40]
    results = {}
    for threads in (1, 2):
        m = cpuinfer.load(smollm2, threads=threads, kv_type="f32", exact=exact)
        c = m.new_cache()
        assert m.threads <= threads
        prefill = m.forward(ids[:37], c)  # batched path: worker threads + BLAS / the int8 gemm
        decode = np.concatenate([m.forward(ids[i:i + 1], c) for i in range(37, 40)])  # numba matvec kernels
        results[threads] = np.concatenate([prefill, decode])
    one, two = results[1], results[2]
    err = np.abs(one - two).max(axis=1) / np.abs(one).max(axis=1)
    assert err.max() <= SAME_TOL, (int(err.argmax()), float(err.max()))


# --- 8: one model, many sequences ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mistral", "mixtral"])
def test_interleaved_conversations_keep_their_own_state(model, reference, kind):
    """Two caches on one model, fed alternately, give exactly what each gives alone."""
    ids = reference(kind)["prompt_ids"]
    m = model(kind, "q8_0")
    alone = m.forward(ids, m.new_cache())
    a, b = m.new_cache(), m.new_cache()
    got_a, got_b = [], []
    for start in range(0, len(ids), 8):
        got_a.append(m.forward(ids[start:start + 8], a))
        got_b.append(m.forward(ids[b.pos:b.pos + 5], b))  # b lags behind a, at other positions
    got_b.append(m.forward(ids[b.pos:], b))
    assert a.pos == b.pos == len(ids)
    assert rel_err(np.concatenate(got_a), alone).max() <= SAME_TOL
    assert rel_err(np.concatenate(got_b), alone).max() <= SAME_TOL


@pytest.mark.parametrize("kind", ["mistral", "mixtral", "llama"])
def test_forward_batch_equals_one_sequence_at_a_time(model, reference, kind):
    """A batched step over sequences at different positions (decode for a server) changes no logits."""
    ids = reference(kind)["prompt_ids"]
    m = model(kind, "f32")
    prefixes = [40, 7, 23, 1]  # tokens already in each sequence's cache
    caches = [m.new_cache() for _ in prefixes]
    for cache, n in zip(caches, prefixes):
        m.forward(ids[:n], cache)
    steps = [ids[n:n + 1] for n in prefixes[:3]] + [ids[1:4]]  # three decodes and a 3-token chunk
    got = m.forward_batch(list(zip(steps, caches)))
    for cache, n, step, logits in zip(caches, prefixes, steps, got):
        alone = m.forward(ids[:n + len(step)], m.new_cache())[-1]
        assert cache.pos == n + len(step)
        assert logits.shape == (m.config.n_vocab,)
        assert rel_err(logits, alone)[0] <= SAME_TOL
    with pytest.raises(cpuinfer.CpuinferError, match="same cache"):
        m.forward_batch([([1], caches[0]), ([2], caches[0])])


def test_a_call_leaves_the_callers_thread_setting_alone(smollm2):
    import numba

    m = cpuinfer.load(smollm2, threads=1)
    before = numba.get_num_threads()
    m.forward([1, 2, 3], m.new_cache())
    m.forward([1], m.new_cache(), threads=2)
    assert numba.get_num_threads() == before
