"""`cpuinfer quantize SRC -o OUT.gguf --type q4_0`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from ..errors import one_line
from .common import err_console, user_errors


def quantize(src: Path = typer.Argument(..., help="Hugging Face folder, Mistral consolidated folder, or GGUF file"),
             out: Path = typer.Option(..., "-o", "--output", help="the GGUF file to write"),
             type_name: str = typer.Option("q8_0", "--type", "-t", help="q8_0, q4_0, q4_1, f16 or f32"),
             force: bool = typer.Option(False, "--force", help="overwrite OUT if it exists"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
             debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    """Convert a checkpoint or GGUF to a block-quantized GGUF, streaming tensor by tensor."""
    from quantize import convert

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=err_console, disable=quiet)

    def progress(total: int, n_tensors: int):
        task = bar.add_task(f"writing {n_tensors} tensors", total=total)
        bar.start()  # only once the input checked out: errors print without a bar
        return lambda n: bar.advance(task, n)

    with user_errors(debug):
        try:
            convert(src, out, type_name, force=force, progress=progress)
        finally:
            bar.stop()
    if not quiet:
        err_console.print(f"wrote {escape(one_line(str(out)))} ({out.stat().st_size / 1e6:,.1f} MB)", soft_wrap=True)
