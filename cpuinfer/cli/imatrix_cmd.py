"""`cpuinfer imatrix MODEL TEXT -o FILE`: an importance matrix for `cpuinfer quantize --imatrix`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import one_line
from ..text import read_utf8_file
from . import options as o
from .common import err_console, load_model, user_errors


def imatrix(model: str = typer.Argument(..., help="GGUF file ('default' for the default model)"),
            text_file: Path = typer.Argument(..., help="UTF-8 calibration text"),
            out: Path = typer.Option(..., "-o", "--output", help="the importance matrix to write"),
            ctx: int = typer.Option(512, "--ctx", help="chunk length in tokens, as llama-imatrix's -c"),
            legacy: bool = typer.Option(False, "--dat", help="write llama.cpp's legacy .dat format, not GGUF"),
            threads: Optional[int] = o.THREADS,
            force: bool = typer.Option(False, "--force", help="overwrite the output if it exists"),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
            debug: bool = o.DEBUG) -> None:
    """Sum the squared inputs of every weight matrix over a text (llama-imatrix's statistics and files)."""
    from quantize.collect import collect
    from quantize.imatrix import write_imatrix
    from quantize.writer import atomic_output, check_output

    with user_errors(debug):
        check_output(out, force)
        text = read_utf8_file(text_file, "the calibration text")
        m = load_model(None if model == "default" else model, n_ctx=ctx, threads=threads, quiet=quiet)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=err_console, disable=quiet)
        task = bar.add_task("collecting", total=None)

        def on_chunk(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            bar.start()

        try:
            result = collect(m, text, ctx=ctx, dataset=text_file.name, on_chunk=on_chunk)
        finally:
            bar.stop()
        with atomic_output(out) as tmp:
            write_imatrix(tmp, result, legacy=legacy)
    if not quiet:
        err_console.print(f"wrote {escape(one_line(str(out)))}: {len(result.entries)} entries over "
                          f"{result.chunk_count} chunks of {ctx} tokens", soft_wrap=True)
