"""`cpuinfer generate MODEL PROMPT`: one completion, streamed to stdout."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from ..errors import CpuinferError
from ..generation import Reply
from ..numbers import token_limit
from ..sampler import Sampler
from ..text import decode_utf8, utf8_text
from . import options as o
from .common import err_console, load_model, user_errors


def generate(model: str = typer.Argument(..., help="GGUF file ('default' for the default model)"),
             prompt: str = typer.Argument(..., help="the prompt, or - to read it from stdin"),
             chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
             system: Optional[str] = o.SYSTEM, template: Optional[str] = o.TEMPLATE,
             max_tokens: int = typer.Option(256, "-n", "--max-tokens", help="tokens to generate at most "
                                             "(0: none, -1: until the end of text or a full context)"),
             stop: list[str] = typer.Option([], "--stop", help="stop at this string (repeatable)"),
             as_json: bool = typer.Option(False, "--json", help="print text, token counts and timings as JSON"),
             temp: float = o.TEMP, top_k: int = o.TOP_K, top_p: float = o.TOP_P, min_p: float = o.MIN_P,
             repeat_penalty: float = o.REPEAT_PENALTY, repeat_last_n: int = o.REPEAT_LAST_N,
             seed: Optional[int] = o.SEED, ctx: Optional[int] = o.CTX, threads: Optional[int] = o.THREADS,
             kv_type: Optional[str] = o.KV_TYPE, exact: bool = o.EXACT, max_memory: Optional[str] = o.MAX_MEMORY,
             expert_cache: str = o.EXPERT_CACHE, guess_next: bool = o.GUESS_NEXT, debug: bool = o.DEBUG) -> None:
    """Complete a prompt (raw, or with --chat as a user message) and stream the text."""
    with user_errors(debug):
        if prompt == "-":
            prompt = decode_utf8(sys.stdin.buffer.read(), "the prompt on stdin")
        prompt = utf8_text(prompt, "the prompt")
        system = utf8_text(system, "--system") if system else system
        stop = [utf8_text(s, "--stop") for s in stop]
        settings = o.sampler_settings(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        max_tokens = token_limit(max_tokens)
        if not prompt.strip():
            raise CpuinferError("empty prompt")
        m = load_model(None if model == "default" else model, ctx, threads, quiet=as_json, kv_type=kv_type,
                       exact=exact, max_memory=max_memory, expert_cache=expert_cache, guess_next=guess_next)
        tok = m.tokenizer
        if chat:
            if template:
                tok.use_chat_template(template)
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        else:
            ids = tok.encode(prompt, bos=tok.add_bos)
        cache = m.new_cache()
        if cache.limit is not None and len(ids) >= cache.limit:
            raise CpuinferError(f"the prompt has {len(ids)} tokens; the context holds {cache.limit} "
                                "(use --ctx to enlarge it)")
        reply = Reply(m, cache, ids, Sampler(settings), max_tokens=max_tokens, stop=stop)
        try:
            for delta in reply:
                if not as_json:
                    sys.stdout.write(delta)
                    sys.stdout.flush()
        except BaseException:
            if reply.text and not as_json:  # an error or Ctrl-C goes on a line of its own, after the text
                sys.stdout.write("\n")
            raise
        t = reply.timings
        if as_json:
            print(json.dumps({"text": reply.text, **t.as_dict()}, ensure_ascii=False))
        else:
            sys.stdout.write("\n")
            err_console.print(f"[dim]prompt {t.prompt_tokens} tokens, {t.prompt_tps:.1f} t/s | "
                              f"generated {t.generated_tokens} tokens, {t.generation_tps:.1f} t/s | "
                              f"stop: {t.stop_reason}[/]", highlight=False)
