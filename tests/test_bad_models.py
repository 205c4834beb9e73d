"""Bad model files get a clear `CpuinferError` from `cpuinfer.load`, never a crash.

Valid files converted from the tiny reference checkpoints are rewritten with
gguf-py's GGUFWriter, changing one thing at a time (metadata that disagrees with
the tensors, tensor types cpuinfer does not compute with, missing pieces), and
are corrupted byte by byte in a subprocess that must survive every case.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT
from gguf_parts import Parts, header_fields

import cpuinfer
from cpuinfer.errors import CpuinferError, GGUFError
from cpuinfer.gguf_file import GGUFFile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mistral_parts(converted):
    return Parts.read(converted("mistral", "q4_0"))


@pytest.fixture(scope="module")
def mixtral_parts(converted):
    return Parts.read(converted("mixtral", "q4_0"))


def load_error(path, **kwargs) -> str:
    """The message of the GGUFError that cpuinfer.load raises (fails if it loads or raises anything else)."""
    with pytest.raises(GGUFError) as info:
        cpuinfer.load(path, **kwargs)
    return str(info.value)


def test_rewriting_keeps_a_valid_file(mistral_parts, converted, tmp_path):
    """The rewriter itself: an unchanged rewrite loads and computes the same logits."""
    path = mistral_parts.copy().write(tmp_path / "same.gguf")
    ids = [1, 415, 2936, 9060, 285]
    ours, orig = (m.forward(ids, m.new_cache()) for m in (cpuinfer.load(path),
                                                          cpuinfer.load(converted("mistral", "q4_0"))))
    np.testing.assert_array_equal(ours, orig)


# --- metadata that disagrees with the tensors ---------------------------------------------

SHAPE = r"tensor (\S+) has shape \[.*\], the metadata implies \[.*\]"

MISTRAL_CASES = {
    "rope scaling": (lambda p: p.set("llama.rope.scaling.type", "yarn", VT.STRING), "RoPE scaling 'yarn'"),
    "embedding_length": (lambda p: p.set("llama.embedding_length", 128), SHAPE),
    "head_count doubled": (lambda p: p.set("llama.attention.head_count", 8),
                           "rope dimension 16 does not fit head dimension 8"),
    "head_count doubled, no rope dimension": (
        lambda p: p.set("llama.attention.head_count", 8).drop("llama.rope.dimension_count"),
        r"blk\.0\.attn_k\.weight has shape"),
    "head_count not dividing": (lambda p: p.set("llama.attention.head_count", 3), "inconsistent head counts"),
    "head_count zero": (lambda p: p.set("llama.attention.head_count", 0),
                        r"llama\.attention\.head_count holds 0 \(int\); expected an integer in 1\.\.64"),
    "head_count_kv": (lambda p: p.set("llama.attention.head_count_kv", 4), r"blk\.0\.attn_k\.weight has shape"),
    "head_count_kv not dividing": (lambda p: p.set("llama.attention.head_count_kv", 3), "inconsistent head counts"),
    "key_length": (lambda p: p.set("llama.attention.key_length", 32), r"attn_q\.weight has shape"),
    "feed_forward_length": (lambda p: p.set("llama.feed_forward_length", 256), r"ffn_gate\.weight has shape"),
    "block_count too high": (lambda p: p.set("llama.block_count", 3), r"missing tensor blk\.2\."),
    "block_count zero": (lambda p: p.set("llama.block_count", 0), "llama.block_count holds 0 .*an integer >= 1"),
    "block_count too low": (lambda p: p.set("llama.block_count", 1),
                            r"block_count is 1, but the file has tensors for layer 1 \(blk\.1\.\*\)"),
    "block_count a float": (lambda p: p.set("llama.block_count", 2.5, VT.FLOAT32),
                            r"llama\.block_count holds 2\.5 \(float\); expected an integer"),
    "context_length zero": (lambda p: p.set("llama.context_length", 0), "context_length holds 0 .*>= 1"),
    "rope dimension odd": (lambda p: p.set("llama.rope.dimension_count", 15), "rope dimension 15"),
    "rope dimension zero": (lambda p: p.set("llama.rope.dimension_count", 0),
                            "rope.dimension_count holds 0 .*an integer >= 2"),
    "rope dimension negative": (lambda p: p.set("llama.rope.dimension_count", -16, VT.INT32),
                                "rope.dimension_count holds -16 .*an integer >= 2"),
    "sliding window negative": (lambda p: p.set("llama.attention.sliding_window", -3, VT.INT32),
                                "sliding_window holds -3 .*an integer >= 0"),
    "rope dimension too big": (lambda p: p.set("llama.rope.dimension_count", 64), "rope dimension 64"),
    "experts on a dense file": (lambda p: p.set("llama.expert_count", 4), "expert_used_count 0 does not fit"),
    "missing block_count": (lambda p: p.drop("llama.block_count"), "missing metadata key llama.block_count"),
    "missing embedding_length": (lambda p: p.drop("llama.embedding_length"), "llama.embedding_length"),
    # tensor shapes that disagree with the metadata
    "attn_q reshaped": (lambda p: p.reshape("blk.0.attn_q.weight", (32, 128)),
                        r"blk\.0\.attn_q\.weight has shape \[32, 128\], the metadata implies \[64, 64\]"),
    "embedding one row short": (lambda p: p.reshape("token_embd.weight", (31999, 64)),
                                "tokenizer has 32000 tokens but the embedding has 31999 rows"),
    "norm reshaped": (lambda p: p.reshape("output_norm.weight", (32,)),
                      r"output_norm\.weight has shape \[32\]"),
    # missing pieces
    "missing attn_v": (lambda p: p.drop_tensor("blk.1.attn_v.weight"), r"missing tensor blk\.1\.attn_v\.weight"),
    "missing output_norm": (lambda p: p.drop_tensor("output_norm.weight"), r"missing tensor output_norm\.weight"),
    "missing token_embd": (lambda p: p.drop_tensor("token_embd.weight"), r"token_embd\.weight"),
    # architecture
    "architecture gpt2": (lambda p: p.set("general.architecture", "gpt2"), r"unsupported architecture 'gpt2'"),
    "no architecture": (lambda p: p.drop("general.architecture"), r"unsupported architecture"),
    # tokenizer
    "no tokenizer": (lambda p: p.drop("tokenizer."), "no tokenizer"),
    "no token list": (lambda p: p.drop("tokenizer.ggml.tokens"), "no tokenizer"),
    "unknown tokenizer model": (lambda p: p.set("tokenizer.ggml.model", "bert"), "unsupported tokenizer.ggml.model"),
    "vocab shorter than the embedding": (
        lambda p: [p.set(k, p.metadata[k][0][:31000]) for k in
                   ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")],
        "tokenizer has 31000 tokens but the embedding has 32000 rows"),
    "token list alone shorter": (
        lambda p: p.set("tokenizer.ggml.tokens", p.metadata["tokenizer.ggml.tokens"][0][:31000]),
        r"token_type has 32000 entries for 31000 tokens"),
    "scores shorter": (lambda p: p.set("tokenizer.ggml.scores", p.metadata["tokenizer.ggml.scores"][0][:100]),
                       r"scores has 100 entries"),
    "bos outside the vocabulary": (lambda p: p.set("tokenizer.ggml.bos_token_id", 40000),
                                   r"bos_token_id = 40000 is outside the vocabulary"),
    "duplicate token": (lambda p: p.set_token(1000, "\u2581the"),
                        "not a valid SentencePiece model"),
    "empty token": (lambda p: p.set_token(1000, ""),
                    "not a valid SentencePiece model"),
    # metadata of the wrong type
    "embedding_length a string": (lambda p: p.set("llama.embedding_length", "sixty-four", VT.STRING),
                                  "llama.embedding_length holds 'sixty-four' \\(str\\); expected an integer"),
    "block_count an array": (lambda p: p.set("llama.block_count", [2, 2], VT.ARRAY, VT.UINT32),
                             r"llama\.block_count holds array\(\[2, 2\], dtype=uint32\) \(array\); expected"),
    "head_count a bool": (lambda p: p.set("llama.attention.head_count", True, VT.BOOL),
                          r"llama\.attention\.head_count holds True \(bool\); expected an integer"),
    "rope theta a string": (lambda p: p.set("llama.rope.freq_base", "1e4", VT.STRING),
                            "freq_base holds '1e4' .*a finite number > 0"),
    "rope theta NaN": (lambda p: p.set("llama.rope.freq_base", float("nan")), "freq_base holds nan .*a finite number"),
    "rope theta zero": (lambda p: p.set("llama.rope.freq_base", 0.0), "freq_base holds 0.0 .*a finite number > 0"),
    "norm epsilon negative": (lambda p: p.set("llama.attention.layer_norm_rms_epsilon", -1.0),
                              "epsilon holds -1.0 .*a finite number >= 0"),
    "sliding window a string": (lambda p: p.set("llama.attention.sliding_window", "16", VT.STRING),
                                "sliding_window holds '16' .*an integer"),
    "tokens a number": (lambda p: p.set("tokenizer.ggml.tokens", 5, VT.UINT32),
                        r"tokenizer\.ggml\.tokens holds 5 \(int\); expected an array of strings"),
    "tokens numbers": (lambda p: p.set("tokenizer.ggml.tokens", list(range(32000)), VT.ARRAY, VT.INT32),
                       r"tokenizer\.ggml\.tokens holds array\(\[ *0, *1, .*\(array\); expected an array of strings"),
    "scores strings": (lambda p: p.set("tokenizer.ggml.scores", ["0"] * 32000, VT.ARRAY, VT.STRING),
                       "scores holds \\['0', '0', .*… \\(array\\); expected an array of 32000 numbers"),
    "scores NaN": (lambda p: p.set("tokenizer.ggml.scores", np.full(32000, np.nan, np.float32)),
                   "scores holds a value that is not a finite number"),
    "token types floats": (lambda p: p.set("tokenizer.ggml.token_type", np.ones(32000), VT.ARRAY, VT.FLOAT32),
                           "token_type holds .*expected an array of 32000 integers"),
    "token ids a string": (lambda p: p.set("tokenizer.ggml.eos_token_id", "2", VT.STRING),
                           "eos_token_id holds '2' .*an integer"),
    "add_bos a string": (lambda p: p.set("tokenizer.ggml.add_bos_token", "false", VT.STRING),
                         "add_bos_token holds 'false' .*a boolean"),
    "chat template a number": (lambda p: p.set("tokenizer.chat_template", 7, VT.UINT32),
                               r"tokenizer\.chat_template holds 7 \(int\); expected a string"),
    "name an array": (lambda p: p.set("general.name", [1, 2], VT.ARRAY, VT.INT32), "general.name holds"),
}


MIXTRAL_CASES = {
    "expert_count lower": (lambda p: p.set("llama.expert_count", 3), r"ffn_gate_inp\.weight has shape \[4, 64\]"),
    "expert_count higher": (lambda p: p.set("llama.expert_count", 8), r"ffn_gate_inp\.weight has shape \[4, 64\]"),
    "expert_used_count zero": (lambda p: p.set("llama.expert_used_count", 0), "expert_used_count 0 does not fit"),
    "expert_used_count above expert_count": (lambda p: p.set("llama.expert_used_count", 5),
                                             "expert_used_count 5 does not fit expert_count 4"),
    "missing expert tensor": (lambda p: p.drop_tensor("blk.1.ffn_up_exps.weight"),
                              r"missing tensor blk\.1\.ffn_up_exps\.weight"),
    "experts as a dense file": (lambda p: p.drop("llama.expert_count").drop("llama.expert_used_count"),
                                r"missing tensor blk\.0\.ffn_gate\.weight"),
    "expert tensor reshaped": (lambda p: p.reshape("blk.0.ffn_down_exps.weight", (2, 128, 128)),
                               r"ffn_down_exps\.weight has shape \[2, 128, 128\]"),
}


INCONSISTENT = [("mistral_parts", c, MISTRAL_CASES[c]) for c in MISTRAL_CASES] + \
               [("mixtral_parts", c, MIXTRAL_CASES[c]) for c in MIXTRAL_CASES]


@pytest.mark.parametrize("parts_fixture, case, change_and_message", INCONSISTENT, ids=[c[1] for c in INCONSISTENT])
def test_inconsistent_file_is_refused_with_a_clear_message(request, tmp_path, parts_fixture, case,
                                                           change_and_message):
    change, message = change_and_message
    parts = request.getfixturevalue(parts_fixture).copy()
    change(parts)
    msg = load_error(parts.write(tmp_path / "bad.gguf"))
    assert re.search(message, msg), msg


# --- tensor types cpuinfer does not compute with ---------------------------------------------

@pytest.mark.parametrize("qtype", [QT.I8, QT.I32, QT.F64, QT.MXFP4])
def test_unsupported_weight_type_names_the_tensor_and_suggests_quantize(mistral_parts, tmp_path, qtype):
    parts = mistral_parts.copy().retype("blk.1.attn_output.weight", qtype)
    msg = load_error(parts.write(tmp_path / "bad.gguf"))
    assert "blk.1.attn_output.weight" in msg and qtype.name in msg, msg
    assert "cpuinfer quantize" in msg, msg


@pytest.mark.parametrize("qtype", [QT.IQ2_XXS, QT.IQ3_S, QT.IQ1_M, QT.TQ1_0])
def test_unsupported_256_value_type_names_the_tensor_and_suggests_quantize(smollm2, tmp_path, qtype):
    """i-quants and ternary types in the default model's ffn_down (rows of 1536 values: whole super-blocks)."""
    parts = Parts.read(smollm2).retype("blk.3.ffn_down.weight", qtype)
    msg = load_error(parts.write(tmp_path / "iq.gguf"))
    assert "blk.3.ffn_down.weight" in msg and qtype.name in msg and "cpuinfer quantize" in msg, msg
    assert "\n" not in msg, msg


def test_k_quant_on_rows_that_do_not_fit_its_blocks(mistral_parts, tmp_path):
    """Q4_K rows must hold 256-value super-blocks: a 64-value row is refused by name."""
    parts = mistral_parts.copy()
    t = parts.tensor("blk.0.attn_q.weight")
    t[1], t[3] = QT.Q4_K, bytes(64 * 64 // 256 * 144)  # the right byte count for 4096 values
    msg = load_error(parts.write(tmp_path / "bad.gguf"))
    assert "blk.0.attn_q.weight" in msg and "256" in msg, msg


def test_quantized_norm_is_refused(mistral_parts, tmp_path):
    parts = mistral_parts.copy().retype("blk.0.ffn_norm.weight", QT.Q8_0)
    msg = load_error(parts.write(tmp_path / "bad.gguf"))
    assert "blk.0.ffn_norm.weight" in msg and "Q8_0" in msg, msg


# --- truncated files, bad arguments ---------------------------------------------------------

@pytest.mark.parametrize("keep", [0.999, 0.9, 0.5, 0.2, 0.1, 0.01])
def test_truncated_file(converted, tmp_path, keep):
    data = converted("mistral", "q4_0").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    msg = load_error(path)
    assert "truncated" in msg or "corrupt" in msg, msg


def test_missing_file_and_bad_n_ctx(converted, tmp_path):
    assert "no such file" in load_error(tmp_path / "nothing.gguf")
    assert "is a folder" in load_error(tmp_path)
    for n_ctx in (0, -3):
        with pytest.raises(CpuinferError, match="the context must be"):
            cpuinfer.load(converted("mistral", "q4_0"), n_ctx=n_ctx)
    with pytest.raises(CpuinferError, match="trained for"):
        cpuinfer.load(converted("llama", "q4_0"), n_ctx=5000)  # no sliding window, trained for 4096


def test_token_ids_outside_the_vocabulary(converted):
    m = cpuinfer.load(converted("mistral", "q4_0"))
    c = m.new_cache()
    for ids in ([32000], [-1], [1, 2, 32000, 3], [2**40], []):
        with pytest.raises(CpuinferError):
            m.forward(ids, c)
        assert c.pos == 0  # nothing was run, nothing cached
    with pytest.raises(CpuinferError, match="outside the vocabulary"):
        m.forward([5, 99999], c)
    assert m.forward([1, 2, 31999], c).shape == (3, 32000)
    assert c.pos == 3


# --- no crash for any corruption --------------------------------------------------------------

def corruption_cases(data: bytes) -> list[dict]:
    """~40 truncations and ~70 overwrites of header fields (and a few data bytes), deterministic."""
    fields, header_end = header_fields(data)
    rng = np.random.default_rng(1234)
    size = len(data)
    cuts = sorted({0, 3, 4, 7, 8, 15, 16, 23, 24, 25, 40, 100, 1000, 10_000, 100_000,
                   header_end - 1, header_end, header_end + 1,
                   *(int(x) for x in np.linspace(header_end // 4, header_end - 2, 6)),
                   *(int(x) for x in np.linspace(header_end + 32, size - 1, 14)), size - 1})
    cases = [{"label": f"truncated at {n}", "truncate": n} for n in cuts]

    def patch(label, offset, new: bytes):
        cases.append({"label": label, "offset": offset, "bytes": new.hex()})

    wide = [0, 1, 2**64 - 1, 2**63, 2**32 + 1, 2**40, 7]
    narrow = [0, 1, 2**32 - 1, 2**31, 9, 13, 30, 1000]
    top = fields[:3]
    tensor_fields = [f for f in fields if f[0].startswith(("blk.", "token_embd", "output"))
                     or f[0] == "tensor name length"]
    kv_fields = [f for f in fields if f not in top and f not in tensor_fields]
    picked = top + [kv_fields[i] for i in rng.choice(len(kv_fields), 24, replace=False)] \
        + [tensor_fields[i] for i in rng.choice(len(tensor_fields), 36, replace=False)]
    for label, offset, width in picked:
        old = int.from_bytes(data[offset:offset + width], "little")
        choices = wide if width == 8 else narrow if width == 4 else [0, 255]
        value = int(rng.choice([*choices, old + 1, max(old - 1, 0), old * 2])) % 2**(8 * width)
        patch(f"{label} {old} -> {value}", offset, value.to_bytes(width, "little"))
        if rng.random() < 0.3:  # and a single flipped byte in the same field
            k = int(rng.integers(width))
            patch(f"{label} byte {k} flipped", offset + k, bytes([data[offset + k] ^ 0xFF]))
    # vocabulary text: a duplicate piece, an empty piece, a broken byte piece
    for i in range(3):
        start = int(rng.integers(header_end // 3, header_end * 2 // 3))
        patch(f"vocab byte {start}", start, b"\x00")
    # tensor data: NaN / infinite block scales, runs of 0xff
    for i in range(6):
        start = int(rng.integers(header_end + 32, size - 64))
        patch(f"data at {start}", start, [b"\x00\x7e", b"\x00\x7c", b"\xff" * 64][i % 3])
    return cases


FUZZ_SCRIPT = textwrap.dedent("""
    import json, sys, traceback
    import numpy as np
    import cpuinfer
    from cpuinfer.errors import CpuinferError

    base = open(sys.argv[1], "rb").read()
    cases = json.load(open(sys.argv[2]))
    work = sys.argv[3]
    results = []
    for case in cases:
        data = bytearray(base)
        if "truncate" in case:
            del data[case["truncate"]:]
        else:
            new = bytes.fromhex(case["bytes"])
            data[case["offset"]:case["offset"] + len(new)] = new
        with open(work, "wb") as f:
            f.write(data)
        try:
            model = cpuinfer.load(work, n_ctx=64)
            with np.errstate(all="ignore"):
                cache = model.new_cache()
                model.forward([1, 2, 3], cache)
                model.forward([4], cache)
            outcome = "ok"
        except CpuinferError as e:
            outcome = "CpuinferError: " + str(e).replace(work, "FILE")
        except Exception as e:
            outcome = "OTHER " + type(e).__name__ + ": " + str(e)[:300] + " | " + traceback.format_exc()[-600:]
        results.append([case["label"], outcome])
        print(json.dumps(results[-1]), flush=True)
""")


def test_no_corruption_crashes_the_process(converted, tmp_path):
    base = converted("mistral", "q4_0")
    cases = corruption_cases(base.read_bytes())
    assert len(cases) >= 100
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "fuzz.py").write_text(FUZZ_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(tmp_path / "fuzz.py"), str(base), str(tmp_path / "cases.json"),
         str(tmp_path / "corrupt.gguf")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    done = len(results)
    assert proc.returncode == 0, (f"the process died (code {proc.returncode}) on case "
                                  f"{cases[done]['label'] if done < len(cases) else '?'}: {proc.stderr[-3000:]}")
    assert done == len(cases)
    others = [(label, outcome) for label, outcome in results if outcome.startswith("OTHER")]
    assert not others, "\n".join(f"{label}: {outcome}" for label, outcome in others)
    errors = sum(outcome.startswith("CpuinferError") for _, outcome in results)
    print(f"{len(results)} corruptions: {errors} CpuinferError, {len(results) - errors} loaded and ran")
    assert errors >= len(cases) // 2  # most corruptions are detected, not run


def test_bf16_rows_that_are_not_whole_runs_are_refused(tmp_path):
    """The BF16 decode kernel reads rows in runs of 32 values: other row lengths are refused before it runs."""
    from cpuinfer.linear import linear_views

    path = tmp_path / "bf16.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("w", np.zeros((3, 48), dtype=np.uint16), raw_dtype=QT.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = GGUFFile(path)
    with pytest.raises(GGUFError, match="BF16 with rows of 48"):
        linear_views(g, g.tensors["w"])
