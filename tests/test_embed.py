"""Embeddings (model.embed, `cpuinfer embed`) against float64 numpy and transformers' last hidden state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize
from typer.testing import CliRunner

import checkpoints
import cpuinfer
import numpy_forward
from cpuinfer.cli import app
from cpuinfer.embeddings import embed_tokens
from gguf_oracle import dequantized_hf_weights

TOL = 1e-5  # float32 rounding of a float64 computation, relative to the vector's largest entry


def close(a, b, tol=TOL) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.abs(a - b).max() / np.abs(b).max())
    assert err <= tol, err
    return err


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def loaded(converted):
    made = {}

    def get(kind, type_name):
        if (kind, type_name) not in made:
            made[kind, type_name] = cpuinfer.load(converted(kind, type_name), exact=True)
        return made[kind, type_name]

    return get


@pytest.mark.parametrize("kind", ["mistral", "mixtral", "llama"])
def test_f32_embeddings_match_transformers_last_hidden_state(loaded, reference, kind):
    ref = reference(kind)
    m = loaded(kind, "f32")
    ids = ref["prompt_ids"].tolist()
    last, mean = embed_tokens(m, [ids, ids], "last", normalize=False), embed_tokens(m, [ids], "mean", normalize=False)
    assert last.shape == (2, 64) and last.dtype == np.float32
    close(last[0], ref["hidden_last"], 1e-4)
    close(mean[0], ref["hidden_mean"], 1e-4)
    close(embed_tokens(m, [ids], "last")[0], unit(ref["hidden_last"]), 1e-4)


@pytest.mark.parametrize("pooling", ["last", "mean", "cls", "none"])
@pytest.mark.parametrize("kind", ["mistral", "mixtral"])
def test_quantized_embeddings_match_float64_on_the_same_weights(loaded, converted, reference, kind, pooling):
    cfg = checkpoints.SPECS[kind]
    ids = reference(kind)["prompt_ids"].tolist()
    texts = [ids[:5], ids, ids[:40], ids[7:9]]  # mixed lengths: packed into shared steps
    weights = dequantized_hf_weights(converted(kind, "q8_0"), cfg)
    got = embed_tokens(loaded(kind, "q8_0"), texts, pooling)
    for t, vec in zip(texts, got):
        h = numpy_forward.hidden_states(weights, cfg, t)
        want = {"last": h[-1], "mean": h.mean(axis=0), "cls": h[0], "none": h}[pooling]
        close(vec, unit(want))


def test_batching_and_long_texts_do_not_change_embeddings(loaded, reference):
    """Packed steps, one text per call, and texts longer than a step (chunked) give the same vectors."""
    ids = reference("mistral")["prompt_ids"].tolist()
    m = loaded("mistral", "f32")
    m.batch, batch = 32, m.batch  # so the 96-token text runs in 3 chunks through a 16-slot sliding window
    try:
        texts = [ids, ids[:3], ids[:31], ids[50:], ids[:33]]
        for pooling in ("last", "mean", "cls"):
            together = embed_tokens(m, texts, pooling)
            for t, vec in zip(texts, together):
                close(vec, embed_tokens(m, [t], pooling)[0])
                m.batch = 4096
                close(vec, embed_tokens(m, [t], pooling)[0])
                m.batch = 32
    finally:
        m.batch = batch


def test_model_embed_tokenizes_with_bos_and_eos(loaded, reference):
    m = loaded("llama", "f32")
    text = "The keeper of the lighthouse"
    ids = m.tokenizer.encode(text, bos=True)
    assert ids[0] == m.tokenizer.bos_id
    np.testing.assert_array_equal(m.embed([text]), embed_tokens(m, [ids]))
    m.tokenizer.add_eos = True
    try:
        np.testing.assert_array_equal(m.embed([text]), embed_tokens(m, [ids + [m.tokenizer.eos_id]]))
    finally:
        m.tokenizer.add_eos = False
    assert m.embed([]).shape == (0, 64)
    with pytest.raises(cpuinfer.CpuinferError, match="pooling"):
        m.embed([text], pooling="max")
    with pytest.raises(cpuinfer.CpuinferError, match="list of texts"):
        m.embed(text)


# --- the command ---------------------------------------------------------------------------

runner = CliRunner()


def test_embed_json_is_openais_shape(smollm2):
    result = runner.invoke(app, ["embed", str(smollm2), "Hello world", "Paris is in France.", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["object"] == "list" and body["model"] == smollm2.name
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 576)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4


def test_embed_file_lines_and_jsonl(smollm2, tmp_path):
    f = tmp_path / "texts.jsonl"
    f.write_text('first text\n\n{"text": "second, from JSON"}\nthird\n', encoding="utf-8")
    result = runner.invoke(app, ["embed", str(smollm2), "--file", str(f), "--no-normalize", "--pooling", "mean"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 576 for line in lines)
    m = cpuinfer.load(smollm2)
    want = m.embed(["first text", "second, from JSON", "third"], pooling="mean", normalize=False)
    got = np.array([[float(v) for v in line.split()] for line in lines])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("args, message", [
    ([], "nothing to embed"),
    (["a", "--file", "x.txt"], "not both"),
    (["a", "--pooling", "max"], "--pooling"),
    (["--file", "/nonexistent/t.txt"], "cannot read"),
])
def test_embed_bad_arguments(smollm2, args, message):
    result = runner.invoke(app, ["embed", str(smollm2), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_default_pooling_comes_from_the_file(converted, reference, tmp_path):
    from gguf.constants import GGUFValueType as VT
    from gguf_parts import Parts

    ids = reference("mistral")["prompt_ids"].tolist()[:20]
    parts = Parts.read(converted("mistral", "q8_0"))
    mean_file = parts.copy().set("llama.pooling_type", 1, VT.UINT32).write(tmp_path / "mean.gguf")
    m = cpuinfer.load(mean_file)
    np.testing.assert_array_equal(embed_tokens(m, [ids]), embed_tokens(m, [ids], "mean"))
    assert not np.allclose(embed_tokens(m, [ids]), embed_tokens(m, [ids], "last"))
    bad = cpuinfer.load(parts.copy().set("llama.pooling_type", 4, VT.UINT32).write(tmp_path / "rank.gguf"))
    with pytest.raises(cpuinfer.CpuinferError, match="pooling_type"):
        embed_tokens(bad, [ids])
