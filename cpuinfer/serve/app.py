"""The HTTP routes: OpenAI's /v1 endpoints and /health, on Starlette.

A handler checks the key, parses and validates the body (requests.py), turns
the prompt into ids off the event loop, hands a Job to the scheduler and
relays its events: as server-sent events when `stream` is set, else as one
JSON body. Every failure is an OpenAI error body with its status; nothing a
client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..embeddings import embedding_tokens
from ..errors import CpuinferError
from . import requests as rq
from .bodies import SSE_DONE, Completion, embeddings_body, models_body, sse
from .scheduler import EmbeddingJob, GenerationJob, Scheduler

log = logging.getLogger("cpuinfer.serve")
MAX_BODY = 16 << 20
HTTP_ERRORS = {404: "not found", 405: "method not allowed"}


def error_response(e: rq.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class Server:
    """The routes of one model served by one scheduler."""

    def __init__(self, model, scheduler: Scheduler, n_ctx: int, api_key: str | None = None):
        self.model, self.scheduler, self.n_ctx, self.api_key = model, scheduler, n_ctx, api_key
        self.name = Path(model.path).name
        self.started = int(time.time())
        # No token spells more characters than the longest one: a longer text cannot fit, untokenized.
        self.max_chars = n_ctx * max(len(t) for t in model.tokenizer.tokens)

    def app(self) -> Starlette:
        routes = [Route("/health", self.health, methods=["GET"]),
                  Route("/v1/models", self.guarded(self.models), methods=["GET"]),
                  Route("/v1/chat/completions", self.guarded(self.chat), methods=["POST"]),
                  Route("/v1/completions", self.guarded(self.completions), methods=["POST"]),
                  Route("/v1/embeddings", self.guarded(self.embeddings), methods=["POST"])]
        return Starlette(routes=routes, exception_handlers={HTTPException: self.http_error, Exception: self.crash})

    def guarded(self, handler):
        async def endpoint(request: Request) -> Response:
            try:
                self.authorize(request)
                return await handler(request)
            except rq.ApiError as e:
                return error_response(e)
            except CpuinferError as e:  # the model refused the input (template, token ids, ...)
                return error_response(rq.ApiError(400, str(e)))
        return endpoint

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise rq.ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                              type="authentication_error", code="invalid_api_key")

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        message = HTTP_ERRORS.get(exc.status_code, exc.detail)
        return error_response(rq.ApiError(exc.status_code, f"{request.method} {request.url.path}: {message}",
                                          code=message.replace(" ", "_")))

    async def crash(self, request: Request, exc: Exception) -> Response:
        log.exception("request failed", exc_info=exc)
        return error_response(rq.ApiError(500, f"internal error: {type(exc).__name__}"))

    # --- routes -------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.name, "slots": self.scheduler.load(),
                             "stats": vars(self.scheduler.stats)})

    async def models(self, request: Request) -> Response:
        return JSONResponse(models_body(self.name, self.started))

    async def chat(self, request: Request) -> Response:
        return await self.generate(request, rq.chat_request(await self.body(request)), chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, rq.completion_request(await self.body(request)), chat=False)

    async def embeddings(self, request: Request) -> Response:
        r = rq.embedding_request(await self.body(request))
        token_lists = await run_in_threadpool(self.embedding_ids, r.inputs)
        job = EmbeddingJob(asyncio.get_running_loop(), token_lists)
        self.scheduler.submit(job)
        event = await self.next_event(job, request)
        if event[0] == "error":
            raise event[1]
        return JSONResponse(embeddings_body(event[1], self.name, event[2], r.base64))

    # --- helpers ------------------------------------------------------------

    async def body(self, request: Request) -> dict:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise rq.ApiError(413, f"the request body is larger than {MAX_BODY >> 20} MiB",
                                  code="request_too_large")
        return rq.parse_body(bytes(raw))

    async def generate(self, request: Request, r: rq.GenerationRequest, chat: bool) -> Response:
        prompt = await run_in_threadpool(self.prompt_ids, r)
        job = GenerationJob(asyncio.get_running_loop(), r, prompt)
        completion = Completion(self.name, chat)
        self.scheduler.submit(job)
        if r.stream:
            return StreamingResponse(self.stream(job, completion, r.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        parts = []
        while True:
            event = await self.next_event(job, request)
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return JSONResponse(completion.whole("".join(parts), event[1], event[2]))
            else:
                raise event[1]

    async def next_event(self, job, request: Request) -> tuple:
        """The job's next event; a client that hung up cancels the job (checked every second)."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), 1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise rq.ApiError(499, "the client closed the connection") from None

    async def stream(self, job: GenerationJob, completion: Completion, include_usage: bool):
        # Starlette cancels this generator when the client disconnects: `finally` frees the slot.
        try:
            if completion.chat:
                yield sse(completion.chunk(first=True))
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    yield sse(completion.chunk(event[1]))
                    continue
                if event[0] == "done":
                    yield sse(completion.chunk(finish_reason=event[1]))
                    if include_usage:
                        yield sse(completion.usage_chunk(event[2]))
                else:
                    yield sse(event[1].body())
                break
            yield SSE_DONE
        finally:
            job.cancel()

    def prompt_ids(self, r: rq.GenerationRequest) -> list[int]:
        """The prompt's token ids (chat template for messages); 413 when it leaves no room to reply."""
        tok = self.model.tokenizer
        if r.messages is not None:
            self.check_length(sum(len(m["content"]) for m in r.messages), "characters")
            ids = tok.apply_chat_template(r.messages, add_generation_prompt=True)
        elif isinstance(r.prompt, str):
            self.check_length(len(r.prompt), "characters")
            ids = tok.encode(r.prompt, bos=tok.add_bos)
        else:
            ids = self.model._checked_ids(r.prompt).tolist()
        if not ids:
            raise rq.ApiError(400, "the prompt has no tokens", param="prompt")
        self.check_length(len(ids), "tokens")
        return ids

    def embedding_ids(self, inputs: list) -> list[list[int]]:
        ids = []
        for text in inputs:
            if isinstance(text, str):
                self.check_length(len(text), "characters")
                ids.append(embedding_tokens(self.model, text))
            else:
                ids.append(self.model._checked_ids(text).tolist())
            if len(ids[-1]) > self.n_ctx:
                raise self.too_long(len(ids[-1]), "tokens", self.n_ctx)
        return ids

    def check_length(self, n: int, unit: str) -> None:
        limit = self.max_chars if unit == "characters" else self.n_ctx - 1  # one position for the reply
        if n > limit:
            raise self.too_long(n, unit, limit)

    def too_long(self, n: int, unit: str, limit: int) -> rq.ApiError:
        return rq.ApiError(413, f"the input has {n} {unit}, more than fits the context of {self.n_ctx} tokens "
                           f"(at most {limit} {unit}; start the server with a larger --ctx)",
                           code="context_length_exceeded")
