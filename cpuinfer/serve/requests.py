"""Request bodies of the OpenAI API, checked field by field, into plain values the scheduler runs.

Every problem becomes an ApiError with OpenAI's error body and the status a
client expects (400 for a malformed body or a bad field, naming the field).
Fields OpenAI defines that cpuinfer cannot honour (n > 1, logprobs, tools,
penalties other than 0) are refused rather than silently ignored; unknown
fields are refused as OpenAI does, so a typo (`max_token`) is not lost.
`top_k`, `min_p`, `repeat_penalty` and `ignore_eos` are accepted as
llama.cpp's server accepts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..sampler import SamplerSettings

MAX_STOPS = 4  # OpenAI's limit
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit
SEED_MAX = 2**63 - 1
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields clients send that change nothing here (bookkeeping for OpenAI's platform).
IGNORED = {"model", "user", "metadata", "store", "service_tier", "parallel_tool_calls"}


class ApiError(Exception):
    """An error response: HTTP status plus OpenAI's {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"'{param}': {message}", param=param, code="invalid_value")


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or text completion: the prompt (messages or text or ids) and how to sample."""

    messages: list[dict] | None = None
    prompt: str | list[int] | None = None
    settings: SamplerSettings = SamplerSettings()
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    json_mode: bool = False
    ignore_eos: bool = False


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[str | list[int]]
    base64: bool = False


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not valid UTF-8", code="invalid_json") from None
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # json's parser recurses once per nested array or object
        raise ApiError(400, "the request body nests arrays or objects too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def chat_request(body: dict) -> GenerationRequest:
    """POST /v1/chat/completions."""
    known = {"messages", "response_format", "max_completion_tokens", "tools", "tool_choice", "functions",
             "function_call", "top_logprobs", "modalities", "audio", "prediction", "reasoning_effort"}
    _check_fields(body, known | _SAMPLING)
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad(name, "tool calling is not supported")
    if body.get("tool_choice") not in (None, "none"):
        raise bad("tool_choice", "tool calling is not supported")
    if body.get("function_call") not in (None, "none"):
        raise bad("function_call", "tool calling is not supported")
    for name in ("top_logprobs", "modalities", "audio", "prediction", "reasoning_effort"):
        if body.get(name) not in (None, 0):
            raise bad(name, "not supported")
    messages = _messages(body.get("messages"))
    max_tokens = _integer(body, "max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", None, 1)
    return GenerationRequest(messages=messages, max_tokens=max_tokens, json_mode=_json_mode(body),
                             **_sampling(body))


def completion_request(body: dict) -> GenerationRequest:
    """POST /v1/completions (OpenAI's legacy endpoint; max_tokens defaults to 16 as there)."""
    _check_fields(body, {"prompt", "echo", "suffix", "best_of"} | _SAMPLING)
    if body.get("echo") not in (None, False):
        raise bad("echo", "not supported")
    if body.get("suffix") not in (None, ""):
        raise bad("suffix", "not supported")
    if body.get("best_of") not in (None, 1):
        raise bad("best_of", "only 1 is supported")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise bad("prompt", "must not be empty")
    elif _is_token_list(prompt):
        pass
    elif isinstance(prompt, list):
        raise bad("prompt", "one prompt per request (a string or a list of token ids)")
    else:
        raise bad("prompt", "must be a string or a list of token ids")
    return GenerationRequest(prompt=prompt, max_tokens=_integer(body, "max_tokens", 16, 1), **_sampling(body))


def embedding_request(body: dict) -> EmbeddingRequest:
    """POST /v1/embeddings: input is a string, a list of strings, token ids, or a list of token-id lists."""
    _check_fields(body, {"input", "encoding_format", "dimensions"})
    value = body.get("input")
    if isinstance(value, str) or _is_token_list(value):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) or _is_token_list(v) for v in value):
        inputs = value
    else:
        raise bad("input", "must be a string, a non-empty list of strings, or (lists of) token ids")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise bad("input", f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
    for i, text in enumerate(inputs):
        if isinstance(text, str) and not text:
            raise bad("input", f"input {i} is an empty string")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad("encoding_format", "must be 'float' or 'base64'")
    if body.get("dimensions") is not None:
        raise bad("dimensions", "not supported: vectors have the model's width")
    return EmbeddingRequest(inputs=inputs, base64=encoding == "base64")


_SAMPLING = {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens", "stop", "n",
             "stream", "stream_options", "presence_penalty", "frequency_penalty", "logprobs", "logit_bias",
             "ignore_eos"}


def _check_fields(body: dict, known: set[str]) -> None:
    for name in body:
        if name not in known and name not in IGNORED:
            raise ApiError(400, f"unrecognized request argument: '{name}'", param=name, code="unknown_parameter")
    if "model" in body and not isinstance(body["model"], str):
        raise bad("model", "must be a string")


def _sampling(body: dict) -> dict:
    """The fields chat and text completions share."""
    d = SamplerSettings()
    temperature = _number(body, "temperature", d.temperature, 0, 2)
    settings = SamplerSettings(
        temperature=temperature, top_p=_number(body, "top_p", d.top_p, 0, 1, low_open=True),
        top_k=_integer(body, "top_k", d.top_k, 0), min_p=_number(body, "min_p", d.min_p, 0, 1),
        repeat_penalty=_number(body, "repeat_penalty", d.repeat_penalty, 0, 10, low_open=True),
        seed=_integer(body, "seed", None, 0, SEED_MAX))
    if _integer(body, "n", 1, 1) != 1:
        raise bad("n", "only n=1 is supported")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2, 2) != 0:
            raise bad(name, "not supported (use repeat_penalty)")
    if _boolean(body, "logprobs", False):
        raise bad("logprobs", "not supported")
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias", "not supported")
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad("stream_options", "only allowed with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("stream_options", "must be an object with 'include_usage'")
    include_usage = _boolean(options or {}, "include_usage", False, "stream_options.include_usage")
    return dict(settings=settings, stop=_stops(body.get("stop")), stream=stream, include_usage=include_usage,
                ignore_eos=_boolean(body, "ignore_eos", False))


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad("messages", "must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"unknown role {str(role)[:40]!r} (use system, user or assistant)")
        if m.get("tool_calls") or m.get("function_call"):
            raise bad(where, "tool calls are not supported")
        out.append({"role": ROLES[role], "content": _content(m.get("content"), role, f"{where}.content")})
    return out


def _content(value, role: str, where: str) -> str:
    if value is None and role == "assistant":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                       isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise bad(where, "must be a string or a list of text parts ({'type': 'text', 'text': ...})")


def _json_mode(body: dict) -> bool:
    fmt = body.get("response_format")
    if fmt is None:
        return False
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object"):
        raise bad("response_format", "must be {'type': 'text'} or {'type': 'json_object'}")
    return kind == "json_object"


def _stops(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "must be a non-empty string or a list of them")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"at most {MAX_STOPS} stop sequences")
    return stops


def _is_token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(name, "must be a number")
    if not (low < value if low_open else low <= value) or not value <= high:
        raise bad(name, f"must be in {'(' if low_open else '['}{low}, {high}], not {value}")
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int:
        raise bad(name, "must be an integer")
    if value < low or (high is not None and value > high):
        raise bad(name, f"must be >= {low}" + (f" and <= {high}" if high is not None else "") + f", not {value}")
    return value


def _boolean(body: dict, name: str, default: bool, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(param or name, "must be true or false")
    return value
