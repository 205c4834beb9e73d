"""KV cache types (f16 default, q8_0) against the float32 cache: what a user gives up is measured here."""

from __future__ import annotations

import numpy as np
import pytest

import cpuinfer
from cpuinfer.perplexity import perplexity
from conftest import TEXT


def rel_err(a, b) -> float:
    return float((np.abs(a.astype(np.float64) - b).max(axis=1) / np.abs(b).max(axis=1)).max())


def assert_close_to_f32(m, ids, kv_type, tol, agree):
    assert m.kernels == "float32"
    exact = m.forward(ids, m.new_cache(kv_type="f32"))
    for chunk in (len(ids), 1, 7):
        cache = m.new_cache(kv_type=kv_type)
        got = np.concatenate([m.forward(ids[s:s + chunk], cache) for s in range(0, len(ids), chunk)])
        assert rel_err(got, exact) <= tol
        assert (got.argmax(1) == exact.argmax(1)).mean() >= agree


def test_f16_cache_keeps_the_logits_through_a_rolling_window(converted, reference):
    """The tiny Mistral (window 16) decoded past its window many times, token by token and in chunks."""
    assert_close_to_f32(cpuinfer.load(converted("mistral", "q8_0"), exact=True), reference("mistral")["prompt_ids"],
                        "f16", 3e-3, 0.98)


# measured: worst position's max |diff| / max |logit| 3.6e-3 (f16), 4.7e-2 (q8_0); same top-1 100%, 94%
@pytest.mark.parametrize("kv_type, tol, agree", [("f16", 1e-2, 0.98), ("q8_0", 1e-1, 0.9)])
def test_smaller_caches_keep_the_logits(smollm2, kv_type, tol, agree):
    """SmolLM2 (head_dim 64: two q8_0 blocks per head) over 120 tokens of text, on the float path: the integer
    path's own rounding (2-3% of the largest logit between chunkings) would hide the cache's."""
    m = cpuinfer.load(smollm2, exact=True)
    ids = m.tokenizer.encode((TEXT / "GPL-3.txt").read_text()[:2000], bos=True)[:120]
    assert_close_to_f32(m, ids, kv_type, tol, agree)


def test_cache_memory(smollm2):
    m = cpuinfer.load(smollm2)
    sizes = {kv: m.new_cache(4096, kv).nbytes for kv in ("f32", "f16", "q8_0")}
    assert m.new_cache().kv_type == "f16"
    assert sizes["f16"] == pytest.approx(sizes["f32"] / 2, rel=1e-3)
    assert sizes["q8_0"] == pytest.approx(sizes["f32"] * (1 + 4 / 32) / 4, rel=1e-3)  # int8 + a float32 per 32


def test_perplexity_moves_less_than_half_a_percent(smollm2):
    """SmolLM2 on 2 windows of the GPL-3 text, float activations, so that only the cache's rounding differs.

    On the integer path a window's perplexity also moves with each activation's int8 rounding, which the
    cache's rounding shifts: on an AVX2 host these 2 windows gave f32 18.285, f16 18.419 (+0.73%), while
    over all 14 windows f16 moved +0.14% (f32 18.386, f16 18.411); with AVX-512 VNNI, over all 14:
    f32 18.3001, f16 18.2993, q8_0 18.2986."""
    text = (TEXT / "GPL-3.txt").read_text()[:12000]
    ppl = {kv: perplexity(cpuinfer.load(smollm2, kv_type=kv, exact=True), text, ctx=512).ppl[0]
           for kv in ("f32", "f16", "q8_0")}
    for kv in ("f16", "q8_0"):
        assert abs(ppl[kv] / ppl["f32"] - 1) < 0.005, ppl
