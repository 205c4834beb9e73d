"""The commands end to end: typer's CliRunner, and the chat REPL in a real pseudo-terminal."""

from __future__ import annotations

import json
import sys

import pexpect
import pytest
from typer.testing import CliRunner

from cpuinfer.cli import app

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and pattern in errors[0], result.output


# --- generate ---------------------------------------------------------------------

def test_generate_raw_greedy(smollm2):
    r = run("generate", smollm2, "The capital of France is", "-n", "6", "--temp", "0")
    assert r.exit_code == 0 and "Paris" in r.output


def test_generate_chat_json_from_stdin(smollm2):
    r = run("generate", smollm2, "-", "--chat", "--json", "-n", "12", "--seed", "1",
            input="What is the capital of France?")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["text"] and out["prompt_tokens"] > 20 and 0 < out["generated_tokens"] <= 12
    assert out["stop_reason"] in ("eos", "max tokens") and out["generation_tokens_per_second"] > 0


def test_generate_seed_is_reproducible(smollm2):
    args = ("generate", smollm2, "Once upon a time", "-n", "10", "--seed", "42", "--json")
    texts = {json.loads(run(*args).output.strip().splitlines()[-1])["text"] for _ in range(2)}
    assert len(texts) == 1


def test_generate_bad_inputs(smollm2, tmp_path):
    assert_one_line_error(run("generate", tmp_path / "missing.gguf", "hi"), "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert_one_line_error(run("generate", text, "hi"), "not a GGUF file")
    assert_one_line_error(run("generate", smollm2, "   "), "empty prompt")
    assert_one_line_error(run("generate", smollm2, "word " * 100, "--ctx", "32"), "context holds 32")
    assert_one_line_error(run("generate", smollm2, "hi", "--ctx", "100000"), "trained for")
    template = tmp_path / "bad.jinja"
    template.write_text("{{ raise_exception('no system messages') }}")
    assert_one_line_error(run("generate", smollm2, "hi", "--chat", "--template", template), "no system messages")


# --- info, models, bench, perplexity -----------------------------------------------

def test_info(smollm2):
    r = run("info", smollm2)
    assert r.exit_code == 0
    for expected in ("llama", "134.5 M", "8192", "gpt2", "Q4_1", "Q8_0", "chat template"):
        assert expected in r.output


def test_models_lists_the_cache(smollm2, monkeypatch):
    monkeypatch.setenv("CPUINFER_HOME", str(smollm2.parent.parent))
    r = run("models")
    assert r.exit_code == 0 and smollm2.name[:20] in r.output


def test_bench_json(smollm2):
    r = run("bench", smollm2, "-p", "16", "-n", "4", "-r", "1", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    tests = {row["test"]: row for row in out["results"]}
    assert set(tests) == {"pp16", "tg4"} and tests["tg4"]["mean"] > 0
    assert 0 < tests["tg4"]["extra"]["bandwidth_share"] and out["peak_rss_mb"] > 0


def test_perplexity_json(converted, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    model = converted("llama", "q8_0")
    r = run("perplexity", model, text, "--ctx", "64", "--json", "--kl-base", model)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["windows"] >= 3 and out["tokens"] == out["windows"] * 31
    assert out["mean_kl"] == pytest.approx(0, abs=1e-6) and out["top1_agreement"] == 1.0
    assert_one_line_error(run("perplexity", model, text, "--ctx", "100000"), "the context must be 1..4096 tokens")


# --- chat, in a pseudo-terminal --------------------------------------------------

def test_chat_repl_in_a_terminal(smollm2):
    child = pexpect.spawn(sys.executable, ["-m", "cpuinfer", "chat", str(smollm2), "--temp", "0", "--no-color",
                                           "--ctx", "1024"], encoding="utf-8", timeout=300, dimensions=(40, 120))
    try:
        child.expect(">>> ")
        child.sendline("What is the capital of France?")
        child.expect("Paris")
        child.expect(r"t/s · prompt \d+ tokens")
        child.expect(">>> ")
        child.sendline("/reset")  # a fresh context: the next reply is known to run past 400 tokens
        child.expect(">>> ")
        child.sendline("Tell me a very long story about a dragon and a knight, with many details.")
        child.expect(r"details\.\r\n")  # the echo of the line typed
        child.expect(r"\w+ \w+ \w+ \w+")  # some words of the reply (400+ tokens at temperature 0)
        child.sendintr()
        child.expect(r"\(stopped\)")
        child.expect(">>> ")
        child.sendline("/stats")
        child.expect("context: \\d+ of 1024 tokens")
        child.expect(">>> ")
        child.sendline("/reset")
        child.expect("new conversation")
        child.expect(">>> ")
        child.sendline("first line \\")
        child.expect(r"\.\.\. ")
        child.sendline("second line")
        child.expect(r"second line\r\n\w+")  # a reply to the joined lines (a long one: stop it)
        child.sendintr()
        child.expect(r"\(stopped\)")
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
