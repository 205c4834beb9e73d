"""The thread that owns the model: many conversations advanced together, one batched step at a time.

Each step is one `model.forward_batch` call holding the next token of every
decoding sequence plus prompt chunks of newly admitted ones, up to
`model.batch` tokens in all, so every weight is read once per step for all
streams and a long prompt is read chunk by chunk between their tokens instead
of freezing them. Up to `parallel` sequences run at once, each with a KV cache
of its own (kept in a pool and reused); later requests wait in order.
An idle scheduler waits GATHER_S for requests that arrive together, so that
their prompts share the first step.
Embedding requests are served between steps, a step's worth of tokens at a
time.

Requests live in the asyncio world of the HTTP server: a Job carries the
event loop and an asyncio.Queue, and the scheduler pushes events into it with
`loop.call_soon_threadsafe`: ("text", delta), ("done", finish_reason, usage),
("embeddings", vectors, tokens), ("error", ApiError). A job whose client went
away is cancelled and leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..embeddings import embed_tokens
from ..errors import CpuinferError
from ..generation import StopStrings
from ..sampler import Sampler
from .json_mode import JsonConstraint
from .requests import ApiError, GenerationRequest

log = logging.getLogger("cpuinfer.serve")

# An idle server waits this long after a request for others to join it, so that a client's parallel calls start in
# one step: else the first one's prompt runs alone and the rest wait behind it. Measured with bench/serve.py (4
# streams, 7B-shape Q4_0, 2 threads), an 8-token prompt alone took 1.1 s and 42 tokens of four prompts 2.4 s.
GATHER_S = 0.05


class Job:
    """One request's link to its HTTP handler; events after `finish` or `cancel` are dropped."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self._lock = threading.Lock()

    def emit(self, *event, last: bool = False) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = last
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                self.closed = True

    def cancel(self) -> None:
        with self._lock:
            self.closed = True


class GenerationJob(Job):
    def __init__(self, loop, request: GenerationRequest, prompt: list[int]):
        super().__init__(loop)
        self.request, self.prompt = request, prompt


class EmbeddingJob(Job):
    def __init__(self, loop, token_lists: list[list[int]]):
        super().__init__(loop)
        self.token_lists = token_lists


@dataclass
class Sequence:
    """A generation job in progress: its cache, what is left of its prompt, and its text so far."""

    job: GenerationJob
    cache: object
    pending: list[int]  # prompt tokens not yet in the cache
    sampler: Sampler
    decoder: object
    stops: StopStrings
    json: JsonConstraint | None
    history: list[int]
    generated: list[int] = field(default_factory=list)


@dataclass
class Stats:
    """Counters shown by GET /health: evidence that streams share steps."""

    steps: int = 0
    decode_steps: int = 0  # steps that produced a token for at least one sequence
    batched_decode_steps: int = 0  # ... for two or more
    max_batch: int = 0  # most sequences in one step
    tokens_generated: int = 0
    requests_done: int = 0


class Scheduler:
    def __init__(self, model, parallel: int, n_ctx: int):
        self.model, self.parallel, self.n_ctx = model, parallel, n_ctx
        self.stats = Stats()
        self._cond = threading.Condition()
        self._waiting: deque[GenerationJob] = deque()
        self._embeddings: deque[tuple[EmbeddingJob, int, list]] = deque()
        self._active: list[Sequence] = []
        self._caches: list = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="cpuinfer-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                job.emit("error", ApiError(503, "the server is shutting down"), last=True)
                return
            if isinstance(job, EmbeddingJob):
                self._embeddings.append((job, 0, []))
            else:
                self._waiting.append(job)
            self._cond.notify()

    def load(self) -> dict:
        with self._cond:
            return {"active": len(self._active), "waiting": len(self._waiting), "parallel": self.parallel}

    def shutdown(self, timeout: float = 30.0) -> None:
        """End every request (their streams get an error event) and stop after the current step."""
        with self._cond:
            self._stopping = True
            jobs = [s.job for s in self._active] + list(self._waiting) + [e[0] for e in self._embeddings]
            self._cond.notify()
        for job in jobs:
            job.emit("error", ApiError(503, "the server is shutting down"), last=True)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # --- the scheduler thread ---------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._active or self._embeddings):
                    self._cond.wait()
                if self._waiting and not self._active:
                    self._cond.wait_for(lambda: self._stopping or len(self._waiting) >= self.parallel, GATHER_S)
                if self._stopping:
                    return
                self._active = [s for s in self._active if not self._dropped(s)]
                while self._waiting and len(self._active) < self.parallel:
                    job = self._waiting.popleft()
                    if not job.closed:
                        self._active.append(self._start(job))
                embedding = self._embeddings[0] if self._embeddings else None
            try:
                if embedding is not None:
                    self._embed_some(*embedding)
                if self._active:
                    self._step()
            except Exception as e:  # a bug must cost the requests in flight, not the server
                log.exception("scheduler step failed")
                self._fail_all(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

    def _dropped(self, seq: Sequence) -> bool:
        if seq.job.closed:
            self._release(seq.cache)
            return True
        return False

    def _start(self, job: GenerationJob) -> Sequence:
        r, tok = job.request, self.model.tokenizer
        cache = self._caches.pop() if self._caches else self.model.new_cache(self.n_ctx)
        return Sequence(job=job, cache=cache, pending=list(job.prompt), sampler=Sampler(r.settings),
                        decoder=tok.stream(), stops=StopStrings(r.stop),
                        json=JsonConstraint(tok) if r.json_mode else None, history=list(job.prompt))

    def _release(self, cache) -> None:
        cache.reset()
        self._caches.append(cache)

    def _step(self) -> None:
        decoding = [s for s in self._active if not s.pending]
        budget = max(0, self.model.batch - len(decoding))
        work = [(s, [s.generated[-1]]) for s in decoding]
        for s in self._active:
            if s.pending and budget > 0:
                chunk = s.pending[:budget]
                budget -= len(chunk)
                work.append((s, chunk))
        logits = self.model.forward_batch([(ids, s.cache) for s, ids in work])
        producing = 0
        for (s, ids), row in zip(work, logits):
            if s.pending:
                del s.pending[:len(ids)]
                if s.pending:
                    continue
            producing += 1
            self._next_token(s, row)
        st = self.stats
        st.steps += 1
        st.max_batch = max(st.max_batch, len(work))
        st.decode_steps += producing > 0
        st.batched_decode_steps += producing > 1
        with self._cond:
            self._active = [s for s in self._active if not self._dropped(s)]

    def _next_token(self, s: Sequence, logits: np.ndarray) -> None:
        r, stop_ids = s.job.request, self.model.tokenizer.stop_ids
        if r.ignore_eos:
            logits = logits.copy()
            logits[list(stop_ids)] = -np.inf
        token = s.json.choose(s.sampler, logits, s.history) if s.json else s.sampler(logits, s.history)
        if token is None:  # no token can continue the JSON object (not seen in practice)
            return self._finish(s, "stop")
        s.generated.append(token)
        s.history.append(token)
        self.stats.tokens_generated += 1
        if token in stop_ids and not r.ignore_eos:
            return self._finish(s, "stop")
        delta = s.stops.feed(s.decoder.push(token))
        if delta:
            s.job.emit("text", delta)
        room = s.cache.room()
        if s.stops.hit or (s.json is not None and s.json.complete):
            self._finish(s, "stop")
        elif (r.max_tokens is not None and len(s.generated) >= r.max_tokens) or (room is not None and room < 1):
            self._finish(s, "length")

    def _finish(self, s: Sequence, reason: str) -> None:
        if not s.stops.hit:
            tail = s.stops.feed(s.decoder.flush()) + s.stops.flush()
            if tail:
                s.job.emit("text", tail)
        prompt, completion = len(s.job.prompt), len(s.generated)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        s.job.emit("done", reason, usage, last=True)
        self.stats.requests_done += 1

    def _embed_some(self, job: EmbeddingJob, start: int, vectors: list) -> None:
        """Embed the job's next texts, about one step's worth of tokens; answer when all are done."""
        lists = job.token_lists
        end, tokens = start, 0
        while end < len(lists) and (end == start or tokens + len(lists[end]) <= self.model.batch):
            tokens += len(lists[end])
            end += 1
        try:
            if not job.closed:
                vectors.extend(embed_tokens(self.model, lists[start:end]))
        except CpuinferError as e:
            job.emit("error", ApiError(400, str(e)), last=True)
        with self._cond:
            self._embeddings.popleft()
            if end < len(lists) and not job.closed:
                self._embeddings.appendleft((job, end, vectors))
        if end == len(lists):
            job.emit("embeddings", vectors, sum(len(ids) for ids in lists), last=True)
            self.stats.requests_done += 1

    def _fail_all(self, error: ApiError) -> None:
        with self._cond:
            for s in self._active:
                s.job.emit("error", error, last=True)
                self._release(s.cache)
            self._active = []
