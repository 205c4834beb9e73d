"""The `cpuinfer` command."""

import typer

from .info_cmd import info
from .quantize_cmd import quantize

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CPU-first quantized LLM inference on GGUF files.")
app.command()(quantize)
app.command()(info)
