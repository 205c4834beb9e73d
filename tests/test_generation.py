"""Sampling, stop strings, generation and the chat session, on the default model."""

from __future__ import annotations

import numpy as np
import pytest

import cpuinfer
from cpuinfer.errors import ContextFullError
from cpuinfer.generation import Reply, StopStrings
from cpuinfer.sampler import Sampler, SamplerSettings
from cpuinfer.session import ChatSession

GREEDY = SamplerSettings(temperature=0)


@pytest.fixture(scope="module")
def model(smollm2):
    return cpuinfer.load(smollm2, n_ctx=512)


@pytest.fixture
def cache(model):
    """An empty KV cache of its own for each test."""
    return model.new_cache()


# --- sampler ----------------------------------------------------------------------

def test_greedy_is_argmax():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert Sampler(GREEDY)(logits) == int(logits.argmax())


def test_a_seed_reproduces_and_different_seeds_differ():
    logits = np.random.default_rng(1).standard_normal(1000) * 0.1

    def run(seed):
        s = Sampler(SamplerSettings(seed=seed, top_k=0, top_p=1, min_p=0))
        return [s(logits) for _ in range(20)]

    assert run(7) == run(7) and run(7) != run(8)


def test_top_k_top_p_min_p_limit_the_candidates():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))

    def support(**kw):
        s = Sampler(SamplerSettings(seed=0, temperature=1.0, **{"top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw}))
        return {s(logits) for _ in range(400)}

    assert support() == {0, 1, 2, 3, 4}
    assert support(top_k=2) == {0, 1}
    assert support(top_p=0.7) == {0, 1}  # 0.5 + 0.25 reaches 0.7
    assert support(min_p=0.2) == {0, 1, 2}  # >= 0.2 * 0.5


def test_repetition_penalty_pushes_recent_tokens_down():
    logits = np.array([2.0, 1.9, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    s = Sampler(SamplerSettings(temperature=0, repeat_penalty=1.5, repeat_last_n=4))
    assert s(logits, history=[5, 0]) == 1  # 2.0 / 1.5 < 1.9
    assert s(logits, history=[0, 5, 6, 7, 8]) == 0  # token 0 is no longer among the last 4


# --- stop strings -----------------------------------------------------------------

def test_stop_strings_hold_back_a_possible_start_and_cut_at_a_match():
    s = StopStrings(["</answer>"])
    assert s.feed("The result is 4</") == "The result is 4"
    assert s.feed("ans") == ""
    assert s.feed("wer> and more") == "" and s.hit
    s = StopStrings(["###"])
    assert s.feed("a#b") == "a#b" and s.feed("#") == "" and s.flush() == "#"


# --- generation -------------------------------------------------------------------

def test_greedy_completion_and_timings(model, cache):
    ids = model.tokenizer.encode("The capital of France is")
    reply = Reply(model, cache, ids, Sampler(GREEDY), max_tokens=8)
    text = "".join(reply)
    assert text == reply.text and "Paris" in text
    t = reply.timings
    assert t.prompt_tokens == len(ids) and t.generated_tokens == 8 and t.stop_reason == "max tokens"
    assert t.prompt_tps > 0 and t.generation_tps > 0
    assert cache.pos == len(ids) + 7  # the last token is sampled but not fed


def test_generation_stops_at_eos(model, cache):
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": "Say just: yes"}])
    reply = Reply(model, cache, ids, Sampler(GREEDY), max_tokens=64)
    list(reply)
    assert reply.timings.stop_reason == "eos" and reply.ids[-1] in model.tokenizer.stop_ids
    assert "<|im_end|>" not in reply.text


def test_stop_string_cuts_the_reply(model, cache):
    reply = Reply(model, cache, model.tokenizer.encode("1, 2, 3, 4,"), Sampler(GREEDY), max_tokens=32, stop=[" 7"])
    text = "".join(reply)
    assert reply.timings.stop_reason == "stop string" and text.rstrip().endswith("6,") and " 7" not in text


def test_generate_api_yields_ids(model, cache):
    ids = model.tokenizer.encode("Once upon a time")
    out = list(model.generate(ids, cache, Sampler(SamplerSettings(seed=3)), max_tokens=5))
    cache.reset()
    again = list(model.generate(ids, cache, Sampler(SamplerSettings(seed=3)), max_tokens=5))
    assert len(out) == 5 and out == again


# --- chat session -----------------------------------------------------------------

def test_a_second_turn_prefills_only_its_new_tokens(model):
    s = ChatSession(model, settings=GREEDY, max_tokens=24)
    first = "".join(s.send("What is the capital of France?"))
    assert "Paris" in first
    before = s.cache.pos
    list(s.send("And of Italy?"))
    full = model.tokenizer.apply_chat_template(s.conversation()[:-1], add_generation_prompt=True)
    assert s.last.timings.prompt_tokens == len(full) - before
    # the cache holds exactly the conversation so far, token for token
    assert s.cached == (full + s.last.ids)[:s.cache.pos]
    rendered = model.tokenizer.apply_chat_template(s.conversation(), add_generation_prompt=False)
    assert rendered[:len(s.cached)] == s.cached


def test_an_interrupted_reply_keeps_the_session(model):
    s = ChatSession(model, settings=GREEDY, max_tokens=64)
    stream = s.send("Tell me a long story about a dragon.")
    for _ in range(3):
        next(stream)
    stream.close()  # what Ctrl-C does to the generator: its cleanup runs
    assert s.messages[-1]["role"] == "assistant" and s.messages[-1]["content"]
    text = "".join(s.send("Thanks. Now just say hello."))
    assert text and s.cached == (model.tokenizer.apply_chat_template(s.conversation()[:-1]) + s.last.ids)[:s.cache.pos]


def test_interrupt_during_the_prompt_drops_the_turn(model):
    s = ChatSession(model, settings=GREEDY, max_tokens=8)
    list(s.send("Hi"))
    messages = list(s.messages)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(s.send("A question that gets interrupted", on_prefill=interrupt))
    assert s.messages == messages
    assert s.cached == s.cached[:s.cache.pos] and len(s.cached) == s.cache.pos
    assert "".join(s.send("Say hi again"))


def test_context_full_is_an_error_with_a_way_out(smollm2):
    small = cpuinfer.load(smollm2, n_ctx=64)
    s = ChatSession(small, settings=GREEDY, max_tokens=8)
    list(s.send("Hi"))
    with pytest.raises(ContextFullError, match="/reset"):
        list(s.send("word " * 80))
    while s.drop_oldest():
        pass
    assert "".join(s.send("Hello"))


def test_save_and_load(model, tmp_path):
    s = ChatSession(model, system="Be brief.", settings=GREEDY, max_tokens=8)
    list(s.send("Hi"))
    s.save(tmp_path / "c.json")
    t = ChatSession(model, settings=GREEDY, max_tokens=8)
    t.load(tmp_path / "c.json")
    assert t.system == "Be brief." and [m["content"] for m in t.messages] == [m["content"] for m in s.messages]
    assert "".join(t.send("Bye"))
