"""cpuinfer.tokenizer: tokenizers rebuilt from GGUF metadata, against llama.cpp and sentencepiece."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece
from conftest import REFERENCE, TEXT

from cpuinfer.errors import GGUFError
from cpuinfer.gguf_file import GGUFFile
from cpuinfer.tokenizer import from_gguf_metadata

SMOLLM2_REF = json.loads((REFERENCE / "smollm2_llamacpp.json").read_text(encoding="utf-8"))
MISTRAL_REF = json.loads((REFERENCE / "mistral_llamacpp.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smol(smollm2):
    return from_gguf_metadata(GGUFFile(smollm2).metadata)


@pytest.fixture(scope="module")
def mistral():
    """The real Mistral vocabulary in a GGUF written by llama.cpp's own converter."""
    return from_gguf_metadata(GGUFFile(REFERENCE / "mistral-vocab-llamacpp.gguf").metadata)


@pytest.fixture(scope="module")
def mistral_cpuinfer(converted):
    """The same vocabulary in a GGUF written by `cpuinfer quantize`."""
    return from_gguf_metadata(GGUFFile(converted("mistral", "q8_0")).metadata)


BOTH_WRITERS = pytest.mark.parametrize("writer", ["mistral", "mistral_cpuinfer"])


@pytest.fixture(scope="module")
def sp(mistral_tokenizer_model):
    return sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_model))


def generated_text(seed: int, n_chars: int = 4000) -> str:
    """Deterministic mixed text: words of mixed.txt, characters of many scripts and emoji, odd spacing."""
    rng = np.random.default_rng(seed)
    words = (TEXT / "mixed.txt").read_text(encoding="utf-8").split()
    ranges = [(0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x391, 0x3C9), (0x410, 0x44F), (0x5D0, 0x5EA),
              (0x627, 0x64A), (0x905, 0x939), (0x3041, 0x3096), (0x4E00, 0x4FFF), (0xAC00, 0xAD00),
              (0xFF01, 0xFF5E), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF)]
    spaces = [" ", "  ", "\n", "\n\n", "\t", " \n", "   ", "\u00a0", "\u200d", "\r\n"]
    parts: list[str] = []
    while sum(map(len, parts)) < n_chars:
        kind = rng.integers(4)
        if kind == 0:
            parts.append(str(rng.choice(words)))
        elif kind == 1:
            lo, hi = ranges[rng.integers(len(ranges))]
            parts.append("".join(chr(c) for c in rng.integers(lo, hi + 1, size=rng.integers(1, 6))))
        elif kind == 2:
            parts.append(str(rng.integers(0, 10**rng.integers(1, 12))))
        else:
            parts.append(str(rng.choice(spaces)))
    return "".join(parts)


def reference_cases(ref: dict) -> list:
    """(name, text, llama.cpp ids) of every text in a reference JSON, with the name as test id."""
    return [pytest.param(name, e["text"], e["ids"], id=name) for name, e in ref["texts"].items()]


# --- SmolLM2: byte-level BPE, pre-tokenizer "smollm" --------------------------------

@pytest.mark.parametrize("name, text, ids", reference_cases(SMOLLM2_REF))
def test_smollm2_ids_equal_llamacpp(smol, name, text, ids):
    assert smol.encode(text) == ids
    assert smol.decode(ids) == text


def test_smollm2_metadata(smol):
    assert (smol.bos_id, smol.eos_id, smol.add_bos, smol.vocab_size) == (1, 2, False, 49152)
    assert smol.tokens[1] == "<|im_start|>" and 2 in smol.stop_ids


def test_smollm2_generated_text_round_trips(smol):
    for seed in range(3):
        text = generated_text(seed)
        assert smol.decode(smol.encode(text)) == text


# --- Mistral: SentencePiece BPE with byte fallback -----------------------------------

@BOTH_WRITERS
@pytest.mark.parametrize("name, text, ids", reference_cases(MISTRAL_REF))
def test_mistral_ids_equal_sentencepiece_and_llamacpp(request, writer, sp, name, text, ids):
    mistral = request.getfixturevalue(writer)
    ours = mistral.encode(text)
    assert ours == sp.encode(text)
    assert ours == MISTRAL_REF["texts"][name].get("sentencepiece_ids", ids)
    assert ours == ids
    assert mistral.decode(ours) == sp.decode(ours)


@BOTH_WRITERS
@pytest.mark.parametrize("seed", range(4))
def test_mistral_generated_text_equals_sentencepiece(request, writer, sp, seed):
    mistral = request.getfixturevalue(writer)
    text = generated_text(seed)
    ours = mistral.encode(text)
    assert ours == sp.encode(text)
    assert mistral.decode(ours) == sp.decode(ours)


def test_mistral_metadata(mistral):
    assert (mistral.bos_id, mistral.eos_id, mistral.add_bos, mistral.vocab_size) == (1, 2, True, 32000)
    assert (mistral.bos_token, mistral.eos_token) == ("<s>", "</s>")


# --- special tokens and bos ----------------------------------------------------------

@pytest.mark.parametrize("which, text, special, rest", [
    ("mistral", "<s>[INST] hi", "<s>", "[INST] hi"),
    ("smol", "<|im_start|>user\nhi", "<|im_start|>", "user\nhi"),
])
def test_special_token_text_stays_text(request, which, text, special, rest):
    tok = request.getfixturevalue(which)
    special_id = tok.special_ids[special]
    plain = tok.encode(text)
    assert special_id not in plain
    assert tok.decode(plain).lstrip() == text
    with_specials = tok.encode_with_specials(text)
    assert with_specials == [special_id] + tok.encode(rest)


def test_encode_with_specials_maps_every_control_token(smol):
    ids = smol.encode_with_specials("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(1) == 2 and ids.count(2) == 1 and ids[0] == 1
    assert smol.decode(ids) == "user\nhi\nassistant\n"  # control tokens print as nothing


@pytest.mark.parametrize("which", ["mistral", "smol"])
def test_bos(request, which):
    tok = request.getfixturevalue(which)
    assert tok.encode("hello world", bos=True) == [tok.bos_id] + tok.encode("hello world")
    assert tok.encode("", bos=True) == [tok.bos_id] and tok.encode("") == []
    assert tok.decode(tok.encode("hello world", bos=True)) == tok.decode(tok.encode("hello world"))


# --- streaming decode ------------------------------------------------------------------

STREAM_TEXTS = [
    "Emoji: 😀 😂 🤖 👩🏿‍💻 🇫🇷 ✨🔥💯",
    "我们今天去北京大学看看。東京は日本の首都です。안녕하세요",
    "café crème brûlée, naïve façade, cœur. Größe Straße Übermut",
    "e\u0301te\u0301 ＡＢＣ１２３ ﬁne \u00a0 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "  leading spaces\n\n\ttabs and a trailing one ",
    "a literal \ufffd replacement character, then more: 😀",
]


def stream_deltas(tok, ids) -> list[str]:
    s = tok.stream()
    return [s.push(i) for i in ids] + [s.flush()]


@pytest.mark.parametrize("which", ["mistral", "smol"])
@pytest.mark.parametrize("text", STREAM_TEXTS + [generated_text(7, 1500), SMOLLM2_REF["texts"]["mixed"]["text"]],
                         ids=lambda t: t[:12])
def test_stream_concatenates_to_decode(request, which, text):
    tok = request.getfixturevalue(which)
    ids = tok.encode(text, bos=True)
    full = tok.decode(ids)
    deltas = stream_deltas(tok, ids)
    assert "".join(deltas) == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("which", ["mistral", "smol"])
def test_stream_holds_back_split_characters(request, which):
    tok = request.getfixturevalue(which)
    ids = tok.encode("😀")
    assert len(ids) > 1  # byte-fallback / byte-level pieces
    deltas = stream_deltas(tok, ids)
    assert "😀" in deltas and "".join(deltas).strip() == "😀"


def test_stream_flush_emits_an_incomplete_tail(smol):
    ids = smol.encode("😀")
    s = smol.stream()
    assert [s.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert s.flush() == smol.decode(ids[:-1])


# --- metadata that does not describe a usable tokenizer ---------------------------------

TINY_BPE = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab", "<|end|>"],
            "tokenizer.ggml.token_type": np.array([1, 1, 1, 3], dtype=np.int32),
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.eos_token_id": 3}


def test_tiny_bpe_from_metadata():
    tok = from_gguf_metadata(TINY_BPE)
    assert tok.encode("abab") == [2, 2] and tok.encode_with_specials("ab<|end|>") == [2, 3]
    assert tok.stop_ids == {3} and tok.bos_id is None and tok.encode("a", bos=True) == [0]


@pytest.mark.parametrize("change, message", [
    ({"tokenizer.ggml.model": None}, "no tokenizer"),
    ({"tokenizer.ggml.tokens": []}, "no tokenizer"),
    ({"tokenizer.ggml.model": "bert"}, "unsupported tokenizer.ggml.model 'bert'"),
    ({"tokenizer.ggml.merges": None}, "needs tokenizer.ggml.merges"),
    ({"tokenizer.ggml.pre": "qwen9"}, "unsupported tokenizer.ggml.pre 'qwen9'"),
    ({"tokenizer.ggml.eos_token_id": 4}, "outside the vocabulary"),
    ({"tokenizer.ggml.bos_token_id": -1}, "outside the vocabulary"),
    ({"tokenizer.ggml.token_type": np.array([1, 1], dtype=np.int32)}, "2 entries for 4 tokens"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": np.zeros(3)}, "3 entries for 4 tokens"),
])
def test_bad_tokenizer_metadata(change, message):
    md = {k: v for k, v in {**TINY_BPE, **change}.items() if v is not None}
    with pytest.raises(GGUFError, match=message):
        from_gguf_metadata(md)
