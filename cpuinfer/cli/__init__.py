"""The `cpuinfer` command."""

import typer

from .bench_cmd import bench
from .chat_cmd import chat
from .embed_cmd import embed
from .generate_cmd import generate
from .imatrix_cmd import imatrix
from .info_cmd import info
from .models_cmd import models, pull
from .perplexity_cmd import perplexity
from .quantize_cmd import quantize
from .serve_cmd import serve

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CPU-first quantized LLM inference on GGUF files.")
for command in (chat, generate, embed, serve, bench, perplexity, imatrix, quantize, info, pull, models):
    app.command()(command)
