"""`cpuinfer perplexity MODEL FILE`: llama-perplexity's method, optionally with KL divergence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..perplexity import perplexity as compute
from ..text import read_utf8_file
from . import options as o
from .common import err_console, load_model, user_errors


def perplexity(model: str = typer.Argument(..., help="GGUF file ('default' for the default model)"),
               text_file: Path = typer.Argument(..., help="UTF-8 text to score"),
               ctx: int = typer.Option(512, "--ctx", help="window length in tokens"),
               stride: Optional[int] = typer.Option(None, "--stride", help="window step (default: --ctx)"),
               kl_base: Optional[str] = typer.Option(None, "--kl-base", help="a reference GGUF (e.g. F16): "
                                                     "also report KL divergence, ΔPPL and top-1 agreement"),
               threads: Optional[int] = o.THREADS, kv_type: Optional[str] = o.KV_TYPE, exact: bool = o.EXACT,
               as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
               debug: bool = o.DEBUG) -> None:
    """Perplexity of a text file in windows of --ctx tokens, scoring each window's second half."""
    with user_errors(debug):
        text = read_utf8_file(text_file, "the text file")
        m = load_model(None if model == "default" else model, n_ctx=ctx, threads=threads, quiet=as_json,
                       kv_type=kv_type, exact=exact)
        base = load_model(kl_base, n_ctx=ctx, threads=threads, quiet=as_json, kv_type=kv_type,
                          exact=exact) if kl_base else None
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=err_console, disable=as_json)
        task = bar.add_task("perplexity", total=None)

        def on_window(done: int, total: int, r) -> None:
            ppl, err = r.ppl
            bar.update(task, completed=done, total=total, description=f"PPL {ppl:.4f} ± {err:.4f}")
            bar.start()  # only once the first window is scored: an error in the input prints without a bar

        try:
            result = compute(m, text, ctx=ctx, stride=stride, base=base, on_window=on_window)
        finally:
            bar.stop()
        out = result.as_dict()
        if as_json:
            print(json.dumps(out))
            return
        print(f"PPL = {out['ppl']:.4f} ± {out['ppl_stderr']:.4f} over {out['tokens']} tokens "
              f"({out['windows']} windows of {ctx})")
        if base is not None:
            print(f"base PPL = {out['base_ppl']:.4f} ± {out['base_ppl_stderr']:.4f}; "
                  f"ΔPPL = {out['delta_ppl']:+.4f}; mean KL divergence = {out['mean_kl']:.6f}; "
                  f"same top-1 = {out['top1_agreement'] * 100:.2f}%")
