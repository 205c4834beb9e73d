"""`cpuinfer quantize SRC -o OUT.gguf --type q4_k_m [--imatrix FILE] [--rounding reference]`."""

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
             type_name: str = typer.Option("q8_0", "--type", "-t",
                                           help="llama.cpp's file types: q8_0, q6_k, q5_k_m, q5_k_s, q5_1, q5_0, "
                                                "q4_k_m, q4_k_s, q4_1, q4_0, iq4_xs, iq4_nl, q3_k_m, q3_k_s, q2_k, "
                                                "bf16, f16, f32"),
             imatrix: Path = typer.Option(None, "--imatrix",
                                          help="importance matrix (llama.cpp's GGUF or .dat format) weighting "
                                               "each column's error"),
             rounding: str = typer.Option("search", "--rounding",
                                          help="search: minimise each block's error (default; Q5_0/Q5_1 only with "
                                               "--imatrix, where it measured better); reference: "
                                               "ggml's reference rounding, llama-quantize's bytes without --imatrix"),
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
            convert(src, out, type_name, force=force, progress=progress, rounding=rounding, imatrix=imatrix)
        finally:
            bar.stop()
    if not quiet:
        err_console.print(f"wrote {escape(one_line(str(out)))} ({out.stat().st_size / 1e6:,.1f} MB)", soft_wrap=True)
