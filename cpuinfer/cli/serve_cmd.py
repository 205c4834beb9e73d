"""`cpuinfer serve [MODEL]`: the OpenAI-compatible HTTP server (cpuinfer/serve/)."""

from __future__ import annotations

import ipaddress
import signal
from typing import Optional

import typer

from ..errors import CpuinferError
from . import options as o
from .common import err_console, load_model, user_errors


def serve(model: Optional[str] = typer.Argument(None, help="GGUF file (default: SmolLM2-135M-Instruct)"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
          port: int = typer.Option(8080, "--port", help="TCP port"),
          parallel: int = typer.Option(4, "--parallel", "-np", help="conversations decoded together"),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="CPUINFER_API_KEY",
                                                help="require 'Authorization: Bearer KEY'"),
          template: Optional[str] = o.TEMPLATE, ctx: Optional[int] = o.CTX, threads: Optional[int] = o.THREADS,
          kv_type: Optional[str] = o.KV_TYPE, exact: bool = o.EXACT, max_memory: Optional[str] = o.MAX_MEMORY,
          expert_cache: str = o.EXPERT_CACHE, guess_next: bool = o.GUESS_NEXT, debug: bool = o.DEBUG) -> None:
    """Serve a model over HTTP with OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings)."""
    from ..serve.app import Server
    from ..serve.scheduler import Scheduler
    from ..serve.server import listen, run

    with user_errors(debug):
        if not 1 <= parallel <= 64:
            raise CpuinferError(f"--parallel must be 1..64, not {parallel}")
        if not 0 < port < 65536:
            raise CpuinferError(f"--port must be 1..65535, not {port}")
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background start leaves SIGINT ignored
        sock = listen(host, port)
        m = load_model(model, ctx, threads, kv_type=kv_type, exact=exact, max_memory=max_memory,
                       expert_cache=expert_cache, guess_next=guess_next)
        if template:
            m.tokenizer.use_chat_template(template)
        scheduler = Scheduler(m, parallel, m.n_ctx)
        app = Server(m, scheduler, m.n_ctx, api_key).app()
        scheduler.start()
        if api_key is None and not _is_loopback(host):
            err_console.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who can "
                              "reach this port can use the model")
        err_console.print(f"serving {m.config.name or m.path} at http://{host}:{port}/v1 · {parallel} parallel · "
                          f"context {m.n_ctx} · template {m.tokenizer.chat_template.name} · {m.kernels} · {m.threads} threads",
                          highlight=False, soft_wrap=True)
        run(app, sock, scheduler)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
