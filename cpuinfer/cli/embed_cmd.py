"""`cpuinfer embed MODEL [TEXT ...]`: embeddings, one line per text or OpenAI's JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..embeddings import POOLINGS, embedding_tokens, openai_embeddings
from ..errors import CpuinferError
from . import options as o
from .common import err_console, load_model, user_errors

BLOCK = 64  # texts of a --file embedded (and printed) together


def embed(model: str = typer.Argument(..., help="GGUF file ('default' for the default model)"),
          texts: list[str] = typer.Argument(None, help="texts to embed (or use --file)"),
          file: Optional[Path] = typer.Option(None, "--file", "-f",
                                              help="one text per line, or JSONL with a \"text\" field; - for stdin"),
          pooling: Optional[str] = typer.Option(None, "--pooling",
                                                help=f"{' | '.join(POOLINGS)} (default: the file's, else last)"),
          no_normalize: bool = typer.Option(False, "--no-normalize", help="keep the raw pooled vector"),
          as_json: bool = typer.Option(False, "--json", help="print OpenAI's embeddings response"),
          ctx: Optional[int] = o.CTX, threads: Optional[int] = o.THREADS, debug: bool = o.DEBUG) -> None:
    """Embed texts: the model's final hidden state, pooled and L2-normalised."""
    with user_errors(debug):
        if pooling is not None and pooling not in POOLINGS:
            raise CpuinferError(f"--pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        if bool(texts) == (file is not None):
            raise CpuinferError("give the texts as arguments or with --file, not both" if texts
                                else "nothing to embed: give texts as arguments or with --file")
        blocks = _file_blocks(file) if file is not None else iter([list(texts)])
        m = load_model(None if model == "default" else model, ctx, threads, quiet=as_json or file is None)
        data, n_tokens, done = [], 0, 0
        with Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), console=err_console,
                      disable=file is None or as_json, transient=True) as bar:
            task = bar.add_task("embed", total=None)
            for block in blocks:
                vectors = m.embed(block, pooling=pooling, normalize=not no_normalize,
                                  on_text=lambda i, v: bar.advance(task))
                n_tokens += sum(len(embedding_tokens(m, t)) for t in block)
                for vec in vectors:
                    if as_json:
                        data.append(vec)
                    else:
                        _print_vector(vec)
                done += len(block)
        if as_json:
            print(json.dumps(openai_embeddings(data, Path(m.path).name, n_tokens)))


def _print_vector(vec: np.ndarray) -> None:
    rows = vec if vec.ndim == 2 else vec[None]
    for row in rows:
        sys.stdout.write(" ".join(f"{v:.6g}" for v in row.tolist()) + "\n")
    if vec.ndim == 2:
        sys.stdout.write("\n")  # pooling none: a blank line ends each text's token rows
    sys.stdout.flush()


def _file_blocks(path: Path) -> Iterator[list[str]]:
    """The texts of a file (or stdin for "-"), BLOCK at a time; blank lines are skipped."""
    try:
        stream = sys.stdin if str(path) == "-" else open(path, encoding="utf-8")
    except OSError as e:
        raise CpuinferError(f"{path}: cannot read ({e.strerror})") from None
    block: list[str] = []
    with stream:
        try:
            for n, line in enumerate(stream, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                block.append(_text_of(line, path, n))
                if len(block) == BLOCK:
                    yield block
                    block = []
        except UnicodeDecodeError:
            raise CpuinferError(f"{path}: not UTF-8 text") from None
    if block:
        yield block


def _text_of(line: str, path: Path, n: int) -> str:
    if not line.lstrip().startswith("{"):
        return line
    try:
        record = json.loads(line)
    except ValueError as e:
        raise CpuinferError(f"{path}:{n}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise CpuinferError(f"{path}:{n}: a JSON line needs a string \"text\" field")
    return record["text"]
