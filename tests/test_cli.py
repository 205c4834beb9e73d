"""The commands end to end: typer's CliRunner, and the chat REPL in a real pseudo-terminal."""

from __future__ import annotations

import json
import subprocess
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
        # "What is the capital of France?" alone is a near tie between "The" and "L" (logits 25.33 / 25.24 on the
        # float path, 24.66 / 24.76 on the integer path and in llama.cpp): this wording is not.
        child.sendline("What is the capital of France? Answer in one sentence.")
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


# --- every number, every text: one clear error line ------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--temp", "nan"], "temperature (--temp, /temp) must be a finite number >= 0, not nan"),
    (["--temp", "inf"], "temperature (--temp, /temp) must be a finite number >= 0, not inf"),
    (["--min-p", "2"], "min_p (--min-p, /min_p) must be a finite number in 0..1, not 2.0"),
    (["--min-p", "nan"], "min_p (--min-p, /min_p) must be a finite number in 0..1, not nan"),
    (["--top-p", "nan"], "top_p (--top-p, /top_p) must be a finite number in 0..1, not nan"),
    (["--repeat-penalty", "0"], "repeat_penalty (--repeat-penalty, /repeat_penalty) must be a finite number > 0"),
    (["--top-k", "-3"], "top_k (--top-k, /top_k) must be an integer >= 0, not -3"),
    (["--seed", "-9"], "seed (--seed, /seed) must be an integer in -1.."),
    (["-n", "-2"], "max_tokens (-n/--max-tokens) must be an integer >= -1, not -2"),
    (["--threads", "-2"], "threads (--threads/-t) must be an integer >= 1, not -2"),
    (["--ctx", "-5"], "the context must be 1..8192 tokens"),
])
def test_generate_refuses_out_of_range_numbers(smollm2, flags, message):
    assert_one_line_error(run("generate", smollm2, "hi", *flags), message)


@pytest.mark.parametrize("flags, message", [
    (["-p", "-1"], "-p/-n (prompt and generated lengths) must be an integer >= 0, not -1"),
    (["-n", "-5"], "-p/-n (prompt and generated lengths) must be an integer >= 0, not -5"),
    (["-r", "0"], "-r/--reps must be an integer >= 1, not 0"),
    (["-t", "0"], "-t/--threads must be an integer >= 1, not 0"),
])
def test_bench_refuses_out_of_range_numbers(smollm2, flags, message):
    assert_one_line_error(run("bench", smollm2, *flags), message)


def test_generate_n_zero_reads_the_prompt_and_generates_nothing(smollm2):
    r = run("generate", smollm2, "The capital of France is", "-n", "0", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["text"] == "" and out["generated_tokens"] == 0 and out["prompt_tokens"] == 5
    assert out["stop_reason"] == "max tokens"


def test_generate_n_minus_one_runs_until_the_context_is_full(converted):
    r = run("generate", converted("llama", "q8_0"), "Hello there", "-n", "-1", "--ctx", "12", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["stop_reason"] == "context full" and out["generated_tokens"] == 12 - out["prompt_tokens"] + 1


@pytest.mark.parametrize("ctx", ["1", "2"])
def test_a_tiny_context_is_reported_from_the_users_prompt(smollm2, ctx):
    """The warm-up while loading fits any context; the prompt that does not fit is what is reported."""
    assert_one_line_error(run("generate", smollm2, "The capital of France is", "--ctx", ctx),
                          f"the prompt has 5 tokens; the context holds {ctx}")
    r = run("chat", smollm2, "--ctx", ctx, "--no-color", input="Hello\n/exit\n")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "context full: the conversation needs" in r.output and f"tokens of {ctx}" in r.output


def test_text_that_is_not_utf8_is_refused_where_it_came_from(smollm2, tmp_path):
    """argv arrives with surrogate escapes of invalid bytes, stdin as bytes: both are refused, never guessed."""
    assert_one_line_error(run("generate", smollm2, "caf\udce9"),
                          "the prompt is not valid UTF-8 (byte 0xe9 at character 3); cpuinfer reads text as UTF-8")
    r = runner.invoke(app, ["generate", str(smollm2), "-"], input=b"caf\xe9 au lait")
    assert_one_line_error(r, "the prompt on stdin is not valid UTF-8 (byte 0xe9 at offset 3)")
    assert_one_line_error(run("generate", smollm2, "hi", "--chat", "--system", "\udcff"), "--system is not valid UTF-8")
    assert_one_line_error(run("generate", smollm2, "hi", "--stop", "a\udcff"), "--stop is not valid UTF-8")
    template = tmp_path / "latin1.jinja"
    template.write_bytes("{{ messages[0].content }} caf\xe9".encode("latin-1"))
    assert_one_line_error(run("generate", smollm2, "hi", "--chat", "--template", template),
                          f"--template {template} is not valid UTF-8 (byte 0xe9 at offset 29)")
    r = runner.invoke(app, ["generate", str(smollm2), "-", "-n", "2"], input="café ✓ 日本".encode())
    assert r.exit_code == 0, r.output


def test_chat_commands_check_their_numbers_and_files(smollm2, tmp_path):
    commands = ["/temp nan", "/min_p 2", "/repeat_penalty 0", "/top_k 1.5", "/top_p x", "/seed -5",
                f"/save {tmp_path}/missing/chat.json", "/temp 0.5", "/exit"]
    r = runner.invoke(app, ["chat", str(smollm2), "--no-color"], input="\n".join(commands) + "\n")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    for expected in ("error: temperature (--temp, /temp) must be a finite number >= 0, not nan",
                     "error: min_p (--min-p, /min_p) must be a finite number in 0..1, not 2.0",
                     "error: repeat_penalty (--repeat-penalty, /repeat_penalty) must be a finite number > 0",
                     "error: /top_k needs an integer", "error: /top_p needs a number",
                     "error: seed (--seed, /seed) must be an integer in -1..",
                     f"error: cannot save the conversation to {tmp_path}/missing/chat.json",
                     "temperature = 0.5"):
        assert expected in r.output, r.output


def test_a_line_that_is_not_utf8_is_not_sent(smollm2):
    r = runner.invoke(app, ["chat", str(smollm2), "--no-color"], input=b"caf\xe9\n/exit\n")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "error: the line is not valid UTF-8 (byte 0xe9 at offset 3); cpuinfer reads text as UTF-8; nothing was " \
        "sent" in r.output


def test_perplexity_error_comes_without_a_progress_line(converted, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("Too short for a window.")
    r = run("perplexity", converted("llama", "q8_0"), text, "--ctx", "64")
    assert_one_line_error(r, "fewer than one window of 64")
    assert r.output.strip().splitlines() == [line for line in r.output.strip().splitlines() if line.startswith("error")]


def test_info_on_metadata_of_the_wrong_type(converted, tmp_path):
    """A token list of integers once crashed `info`; model names with markup or control characters print as text."""
    from gguf.constants import GGUFValueType as VT
    from gguf_parts import Parts

    parts = Parts.read(converted("llama", "q8_0"))
    parts.set("tokenizer.ggml.tokens", list(range(32000)), VT.ARRAY, VT.INT32)
    parts.set("general.name", "[/bold] [red]x\x1b[2J\n", VT.STRING)
    r = run("info", parts.write(tmp_path / "odd.gguf"))
    assert r.exit_code == 0, r.output
    assert "tokens not an array of strings" in r.output
    assert "[/bold] [red]" in r.output and "\x1b" not in r.output



# --- start-up -------------------------------------------------------------------------------------

def test_a_cold_kernel_cache_is_announced_once_and_a_warm_one_not_at_all(smollm2):
    import numba
    import numpy as np
    from numba.core.event import install_listener

    from cpuinfer.cli.common import _SayOnceCompiling

    said = []
    with install_listener("numba:compile", _SayOnceCompiling(lambda: said.append(1))):
        for k in range(2):  # two kernels numba has never seen: each compiles
            numba.njit(lambda x, k=k: x + k)(np.float32(1))
    assert said == [1]
    command = [sys.executable, "-m", "cpuinfer", "generate", str(smollm2), "Hi", "-n", "1"]
    subprocess.run(command, capture_output=True, check=True)  # fills the cache if this test runs alone
    r = subprocess.run(command, capture_output=True, text=True)
    assert r.returncode == 0 and "compiling" not in r.stderr, r.stderr
