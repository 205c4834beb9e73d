"""`cpuinfer serve`: the real server in a subprocess on a loopback port, driven by the official openai client.

Two servers per run: the main one (--parallel 4, --api-key) and a --parallel 1
one with a chat template that raises, for disconnects and shutdown.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from openai import APIStatusError, OpenAI

import cpuinfer
from cpuinfer.generation import Reply
from cpuinfer.sampler import Sampler, SamplerSettings
from cpuinfer.serve.json_mode import JsonState
from cpuinfer.serve.requests import GenerationRequest
from cpuinfer.serve.scheduler import GenerationJob, Scheduler

KEY = "test-key"
CTX = 1024
USER = [{"role": "user", "content": "What is the capital of France?"}]
# ChatML, as SmolLM2's own template, but refusing system prompts: a template that raises.
RAISING_TEMPLATE = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system prompts') }}"
                    "{% endif %}"
                    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class Served:
    def __init__(self, model, tmp_path, *args: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"server-{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "cpuinfer", "serve", str(model), "--port", str(self.port),
                                      "--ctx", str(CTX), *args], stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        for _ in range(600):  # model load + kernel warm-up; a crash ends the wait at once
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("the server did not come up:\n" + self.log.read_text())

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def post(self, path: str, body=None, content: bytes | None = None, key: str | None = KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, json=body, content=content, headers=headers, timeout=120)

    def client(self, key: str = KEY) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def model(smollm2):
    return cpuinfer.load(smollm2, n_ctx=CTX)


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    s = Served(smollm2, tmp_path_factory.mktemp("serve"), "--parallel", "4", "--api-key", KEY)
    yield s
    assert s.stop(signal.SIGINT) == 130, s.log.read_text()  # Ctrl-C: exit 130, no traceback
    assert "Traceback" not in s.log.read_text()


@pytest.fixture(scope="module")
def single(smollm2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve1")
    (tmp / "raising.jinja").write_text(RAISING_TEMPLATE)
    s = Served(smollm2, tmp, "--parallel", "1", "--template", str(tmp / "raising.jinja"))
    yield s
    s.stop(signal.SIGKILL)


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    health = server.health()
    assert health["status"] == "ok" and health["slots"]["parallel"] == 4


def test_chat_equals_the_local_reply_streamed_or_not(server, model):
    """temperature 0: the server's reply is cpuinfer's own greedy reply to the chat-templated prompt."""
    ids = model.tokenizer.apply_chat_template(USER, add_generation_prompt=True)
    local = Reply(model, model.new_cache(), ids, Sampler(SamplerSettings(temperature=0)), max_tokens=12)
    expected = "".join(local)
    client = server.client()
    whole = client.chat.completions.create(model="m", messages=USER, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == ("stop" if local.timings.stop_reason == "eos" else "length")
    assert whole.usage.prompt_tokens == len(ids) and whole.usage.completion_tokens == len(local.ids)
    chunks = list(client.chat.completions.create(model="m", messages=USER, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(local.ids)


def test_completion_and_stop_strings(server):
    client = server.client()
    c = client.completions.create(model="m", prompt="The capital of France is", max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 4 and c.choices[0].text
    word = c.choices[0].text.split()[0]
    cut = client.completions.create(model="m", prompt="The capital of France is", max_tokens=4, temperature=0,
                                    stop=[word])
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].text


def test_embeddings_of_a_list_equal_model_embed(server, model):
    texts = ["A lighthouse keeper", "Ships at night", "x"]
    got = server.client().embeddings.create(model="m", input=texts)  # the client asks for base64
    want = model.embed(texts)
    assert [d.index for d in got.data] == [0, 1, 2]
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-5)
    ids = model.tokenizer.encode("Ships at night", bos=model.tokenizer.add_bos)
    raw = server.post("/v1/embeddings", {"input": [ids], "encoding_format": "float"}).json()
    # alone, its 4 tokens take the decode kernels, whose int8 rounding differs from a batch's (~1e-2)
    np.testing.assert_allclose(raw["data"][0]["embedding"], model.embed(["Ships at night"])[0], atol=1e-5)
    assert raw["usage"]["prompt_tokens"] == len(ids)


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (0.8, 1), (0.8, 2)])
def test_json_mode_replies_parse(server, temperature, seed):
    reply = server.client().chat.completions.create(
        model="m", temperature=temperature, seed=seed, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with a name and an age."}])
    text = reply.choices[0].message.content
    if temperature and reply.choices[0].finish_reason == "length":
        # A sampled object may still be open at max_tokens (which seed does so moves with the CPU's kernels):
        # then it is an honest prefix of one, never closed by force.
        assert JsonState().feed(text) and not json_object(text), text
        return
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(text), dict)


def json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def test_json_state_accepts_exactly_the_prefixes_of_objects():
    for text in ['{"a": [1, -2.5e+3, true, null, {"b": "x\\u00e9\\n"}], "c": {}}', '{}', ' {"k":"v"}']:
        for i in range(len(text) + 1):
            assert JsonState().feed(text[:i]), text[:i]
        state = JsonState()
        assert state.feed(text) and state.complete
    for bad in ['[1]', '{"a" 1}', '{"a": 01}', '{"a": tru}', '{"a": 1,}', '{,}', '{"a": "\x01"}', '{"a": 1]',
                '{"a": -}', '{"a": 1.}', '{} x', '{"a": "\\x"}']:
        state = JsonState()
        assert not (state.feed(bad) and state.complete), bad


def test_concurrent_requests_all_finish_and_share_steps(server):
    """A long stream runs while four requests come in together: every step they decode in is shared."""
    client = server.client()
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": "Once upon a time", "max_tokens": CTX - 10, "ignore_eos": True, "stream": True},
                      timeout=120) as long:
        lines = long.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        before = server.health()["stats"]
        replies: list = [None] * 4

        def ask(i: int) -> None:
            replies[i] = client.chat.completions.create(
                model="m", max_tokens=6, temperature=0.8, seed=i,
                messages=[{"role": "user", "content": f"Say a number bigger than {i}."}])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = server.health()
        assert after["slots"]["active"] == 1  # the long stream is still going
    assert all(r is not None and r.choices[0].finish_reason in ("stop", "length") for r in replies)
    stats = after["stats"]
    assert stats["max_batch"] >= 2
    assert stats["batched_decode_steps"] - before["batched_decode_steps"] >= max(r.usage.completion_tokens
                                                                                  for r in replies)


def test_requests_that_arrive_together_start_in_one_step(model, monkeypatch):
    """Parallel calls reaching an idle server a few ms apart have their prompts run in one step, not one by one."""
    steps: list[int] = []
    forward_batch = model.forward_batch
    monkeypatch.setattr(model, "forward_batch",
                        lambda work, *a, **k: steps.append(len(work)) or forward_batch(work, *a, **k))
    scheduler, loop = Scheduler(model, parallel=4, n_ctx=CTX), asyncio.new_event_loop()
    scheduler.start()
    ids = model.tokenizer.encode("Once upon a time")
    try:
        for _ in range(3):
            scheduler.submit(GenerationJob(loop, GenerationRequest(prompt=ids, max_tokens=2, ignore_eos=True), ids))
            time.sleep(0.005)
        deadline = time.monotonic() + 60
        while scheduler.stats.requests_done < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.shutdown()
        loop.close()
    assert scheduler.stats.requests_done == 3
    assert steps == [3, 3]


MESSAGE = {"messages": USER}


@pytest.mark.parametrize("body, status, param", [
    (b'{"messages": [', 400, None),
    (b'\xff\xfe{}', 400, None),
    (b'[1, 2]', 400, None),
    (b'[' * 100_000 + b']' * 100_000, 400, None),
    ({**MESSAGE, "max_tokens": -5}, 400, "max_tokens"),
    ({**MESSAGE, "temperature": "hot"}, 400, "temperature"),
    ({**MESSAGE, "top_p": 0}, 400, "top_p"),
    ({**MESSAGE, "n": 2}, 400, "n"),
    ({**MESSAGE, "stop": [1]}, 400, "stop"),
    ({**MESSAGE, "response_format": {"type": "yaml"}}, 400, "response_format"),
    ({**MESSAGE, "max_tokenz": 5}, 400, "max_tokenz"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "word " * 200_000}]}, 413, None),  # 1 MB
    ({"messages": [{"role": "user", "content": "word " * CTX}]}, 413, None),
])
def test_bad_requests_get_their_status_and_the_server_goes_on(server, body, status, param):
    r = server.post("/v1/chat/completions", content=body) if isinstance(body, bytes) else \
        server.post("/v1/chat/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param
    assert server.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1}).status_code == 200


def test_routes_methods_and_keys(server):
    assert httpx.get(server.url + "/v2/nothing").status_code == 404
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405
    for key in (None, "wrong"):
        r = server.post("/v1/chat/completions", MESSAGE, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(APIStatusError) as e:
        server.client(key="wrong").models.list()
    assert e.value.status_code == 401


def test_a_template_that_raises_is_a_400(single):
    r = single.post("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."}, *USER]})
    assert r.status_code == 400 and "no system prompts" in r.json()["error"]["message"]
    ok = single.post("/v1/chat/completions", {"messages": USER, "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def test_a_client_that_disconnects_frees_its_slot(single):
    """--parallel 1: a stream of up to 1000 tokens is dropped after a few; the next request is served and
    the dropped stream never produced its 1000."""
    before = single.health()["stats"]["tokens_generated"]
    with httpx.stream("POST", single.url + "/v1/completions", timeout=120,
                      json={"prompt": "Once", "max_tokens": CTX - 10, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            assert next(line for line in lines if line.startswith("data:"))
    reply = single.client().completions.create(model="m", prompt="Hello", max_tokens=3,
                                               extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 3
    assert single.health()["stats"]["tokens_generated"] - before < CTX - 10


def test_sigterm_ends_streams_and_exits_cleanly(single):
    with httpx.stream("POST", single.url + "/v1/completions", timeout=120,
                      json={"prompt": "Once", "max_tokens": CTX - 10, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        single.proc.send_signal(signal.SIGTERM)
        rest = list(lines)  # the stream ends instead of running to its 1000 tokens
    rest = [line for line in rest if line]
    assert any("shutting down" in line for line in rest) and rest[-1] == "data: [DONE]"
    assert single.proc.wait(60) == 0
    assert "Traceback" not in single.log.read_text()
    with socket.socket() as s:  # the port is free again for a new server (which, like any, reuses TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", single.port))
        s.listen()
