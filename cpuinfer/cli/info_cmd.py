"""`cpuinfer info MODEL.gguf`: what a GGUF file holds, without loading the model."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import ModelConfig
from ..errors import CpuinferError, one_line, quote
from ..gguf_file import GGUFFile
from .common import user_errors


def info(model: str = typer.Argument(..., help="GGUF file"),
         debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    """Show a GGUF file's architecture, sizes, tensor types, context, window, experts and tokenizer."""
    with user_errors(debug):
        g = GGUFFile(model)
        md = g.metadata
        embd = g.tensors.get("token_embd.weight")
        rows = [("file", f"{model} ({os.path.getsize(model) / 1e6:,.1f} MB, GGUF v{md['GGUF.version']})"),
                ("name", _shown(md.get("general.name", ""))),
                ("architecture", _shown(md.get("general.architecture")) or "(none)"),
                ("parameters", f"{sum(math.prod(t.shape) for t in g.tensors.values()) / 1e6:,.1f} M")]
        try:
            cfg = ModelConfig.from_metadata(md, embd.shape[0] if embd else 0, tensor_names=g.tensors)
            rows += [("layers / dim / ffn", f"{cfg.n_layers} / {cfg.dim} / {cfg.ffn_dim}"),
                     ("heads / kv heads / head dim", f"{cfg.n_heads} / {cfg.n_kv_heads} / {cfg.head_dim}"),
                     ("context length", str(cfg.context_length)),
                     ("sliding window", str(cfg.sliding_window) if cfg.sliding_window else "none"),
                     ("experts", f"{cfg.n_experts} ({cfg.n_experts_used} per token)" if cfg.is_moe else "none"),
                     ("rope theta", f"{cfg.rope_theta:g}")]
        except CpuinferError as e:
            rows.append(("runnable", f"no: {e}"))
        tokens = md.get("tokenizer.ggml.tokens")
        count = f"{len(tokens)} tokens" if isinstance(tokens, list) else "no token list" if tokens is None \
            else "tokens not an array of strings"
        rows += [("tokenizer", f"{_shown(md.get('tokenizer.ggml.model', 'none'))} "
                               f"({count}, pre={_shown(md.get('tokenizer.ggml.pre', '-'))})"),
                 ("chat template", "yes" if isinstance(md.get("tokenizer.chat_template"), str)
                  else "no (built-in by architecture)")]
        summary = Table(show_header=False, box=None)
        for key, value in rows:
            summary.add_row(f"[bold]{key}[/]", escape(one_line(value)))
        by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for t in g.tensors.values():
            by_type[t.type_name][0] += 1
            by_type[t.type_name][1] += t.nbytes
        types = Table("type", "tensors", "bytes", title="tensors by type")
        for name, (count, nbytes) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
            types.add_row(name, str(count), f"{nbytes:,}")
        out = Console()
        out.print(summary)
        out.print(types)


def _shown(value) -> str:
    """A metadata value as `info` shows it: short printable text as it is, anything else quoted."""
    if value is None or (isinstance(value, str) and value.isprintable() and len(value) <= 80):
        return value
    return quote(value, 80)
