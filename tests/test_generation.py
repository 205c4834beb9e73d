"""Sampling, stop strings, generation and the chat session, on the default model."""

from __future__ import annotations

import numpy as np
import pytest

import cpuinfer
from cpuinfer.errors import ContextFullError, CpuinferError
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


@pytest.mark.parametrize("field, value, message", [
    ("temperature", float("nan"), r"temperature \(--temp, /temp\) must be a finite number >= 0, not nan"),
    ("temperature", float("inf"), "temperature .* not inf"),
    ("temperature", -0.5, "temperature .* not -0.5"),
    ("top_p", float("nan"), r"top_p \(--top-p, /top_p\) must be a finite number in 0\.\.1, not nan"),
    ("top_p", 1.5, "top_p .* not 1.5"),
    ("min_p", 2, r"min_p \(--min-p, /min_p\) must be a finite number in 0\.\.1, not 2"),
    ("min_p", float("nan"), "min_p .* not nan"),
    ("repeat_penalty", 0, r"repeat_penalty \(--repeat-penalty, /repeat_penalty\) must be a finite number > 0"),
    ("repeat_penalty", float("inf"), "repeat_penalty .* not inf"),
    ("top_k", -1, r"top_k \(--top-k, /top_k\) must be an integer >= 0, not -1"),
    ("top_k", 2.5, "top_k .* must be an integer"),
    ("top_k", True, "top_k .* must be an integer"),
    ("repeat_last_n", -2, "repeat_last_n .* >= -1"),
    ("seed", -2, r"seed \(--seed, /seed\) must be an integer in -1\.\.18446744073709551615"),
    ("seed", "7", "seed .* not '7'"),
])
def test_sampler_settings_refuse_out_of_range_values(field, value, message):
    """One check for the CLI flags, the REPL's /commands and the Python API."""
    with pytest.raises(CpuinferError, match=message):
        SamplerSettings(**{field: value})
    with pytest.raises(CpuinferError, match=message):
        SamplerSettings().with_(**{field: value})


def test_sampler_settings_edges_are_accepted():
    for kw in ({"temperature": 0}, {"top_p": 0}, {"top_p": 1}, {"min_p": 1}, {"top_k": 0}, {"repeat_last_n": -1},
               {"repeat_penalty": 1e-300}, {"seed": 2**64 - 1}):
        SamplerSettings(**kw)
    assert SamplerSettings(seed=-1).seed is None  # llama.cpp's -1: a random seed


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_a_clear_error(bad):
    logits = np.random.default_rng(0).standard_normal(100)
    logits[37] = bad
    for settings in (GREEDY, SamplerSettings(seed=1)):
        with pytest.raises(CpuinferError, match=r"1 NaN or infinite logits of 100 at position 12"):
            Sampler(settings)(logits, [1, 2], position=12)
    with pytest.raises(CpuinferError, match="no token can be chosen"):
        Sampler(GREEDY)(np.full(10, -np.inf))


def test_minus_infinity_rules_a_token_out():
    logits = np.array([-np.inf, 0.0, 1.0, -np.inf])
    s = Sampler(SamplerSettings(seed=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1e-300))
    assert {s(logits, history=[1, 2]) for _ in range(100)} <= {1, 2}


def test_a_nan_in_the_weights_stops_generation_with_the_position(tmp_path, converted):
    """A NaN in output_norm.weight once made the sampler fail with an IndexError."""
    from gguf_parts import Parts

    parts = Parts.read(converted("llama", "q8_0"))
    norm = parts.tensor("output_norm.weight")
    norm[3] = np.full(64, np.nan, np.float32).tobytes()
    m = cpuinfer.load(parts.write(tmp_path / "nan.gguf"), n_ctx=64)
    with pytest.raises(CpuinferError, match="at position 2, so no token can be chosen"):
        list(m.generate([1, 2, 3], m.new_cache(), Sampler(SamplerSettings(seed=1))))


@pytest.mark.parametrize("max_tokens, expected", [(0, 0), (3, 3), (-1, None)])
def test_max_tokens_as_llama_cpp_reads_n(converted, max_tokens, expected):
    """-n 0: the prompt is read, nothing generated; -1: no cap (until end of text or a full context)."""
    model = cpuinfer.load(converted("llama", "q8_0"), n_ctx=16)  # random weights: an end-of-text is unlikely
    ids = [1, 415, 2936, 9060]
    cache = model.new_cache()
    reply = Reply(model, cache, ids, Sampler(SamplerSettings(seed=3)), max_tokens=max_tokens)
    text = "".join(reply)
    if expected is None:
        assert len(reply.ids) == 16 - len(ids) + 1 and reply.timings.stop_reason == "context full"
    else:
        assert len(reply.ids) == expected and reply.timings.stop_reason == "max tokens"
        assert (text == "") == (expected == 0)
    assert cache.pos >= len(ids)  # the prompt was read in every case
    with pytest.raises(CpuinferError, match=r"max_tokens \(-n/--max-tokens\) must be an integer >= -1, not -2"):
        list(model.generate(ids, model.new_cache(), Sampler(GREEDY), max_tokens=-2))


def test_save_to_an_unwritable_path_is_a_clear_error(model, tmp_path):
    session = ChatSession(model)
    with pytest.raises(CpuinferError, match="cannot save the conversation to .*No such file or directory"):
        session.save(tmp_path / "missing-folder" / "chat.json")
    with pytest.raises(CpuinferError, match="cannot save the conversation to"):
        session.save(tmp_path)


@pytest.mark.parametrize("content", [b"[]", b"{\"messages\": 5}", b"[" * 100000, b"\xff", b'{"messages": [1]}'])
def test_loading_a_bad_conversation_is_a_clear_error(model, tmp_path, content):
    (tmp_path / "chat.json").write_bytes(content)
    with pytest.raises(CpuinferError, match="cannot load a conversation from"):
        ChatSession(model).load(tmp_path / "chat.json")


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
    first = "".join(s.send("What is the capital of France? Answer in one sentence."))
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
