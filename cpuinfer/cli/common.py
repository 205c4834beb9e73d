"""What every command shares: user-facing errors, the default model, loading with feedback."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import CpuinferError, one_line
from ..interrupts import Terminated
from ..main import quiet_exit

err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Print a CpuinferError as one line and exit 2 (the traceback too with --debug); Ctrl-C exits 130,
    SIGTERM/SIGHUP while a file is written 128 + the signal's number."""
    if signal.getsignal(signal.SIGINT) is quiet_exit and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # start-up is over: Ctrl-C may now clean up
    try:
        yield
    except CpuinferError as e:
        if debug:
            traceback.print_exc()
        # escape: a path like "a[/b]" is not markup; one_line and soft_wrap: one line whatever the message
        # holds and however long it is (pipes, logs)
        err_console.print(f"[bold red]error:[/] {escape(one_line(str(e)))}", highlight=False, markup=True,
                          soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Terminated as e:
        err_console.print(f"stopped by {e}")
        raise typer.Exit(128 + e.signum) from None


def model_path(model: str | None) -> Path:
    """The GGUF to run: the given path, or (None or "default") the default model, fetched on first use."""
    if model is None or model == "default":
        from ..default_model import pull

        return pull()
    path = Path(model).expanduser()
    if not path.exists():
        raise CpuinferError(f"{model}: no such file (run `cpuinfer models` to list cached models)")
    return path


def load_model(model: str | None, n_ctx: int | None = None, threads: int | None = None, quiet: bool = False,
               kv_type: str | None = None, exact: bool = False):
    """Load a model and run its kernels once, with a status line on stderr.

    The warm-up compiles the numba kernels on the very first run (~10 s; later
    runs load them from the cache in well under a second), so the first reply
    and every timing shown afterwards measure inference, not compilation.
    """
    from ..model import load

    path = model_path(model)
    with err_console.status(f"loading {path.name} ...", spinner="dots") if not quiet and sys.stderr.isatty() \
            else contextlib.nullcontext():
        m = load(path, n_ctx=n_ctx, threads=threads, kv_type=kv_type, exact=exact)
        cache = m.new_cache(4)
        m.forward([0, 0, 0], cache, all_logits=False)  # a prompt chunk (the batched kernels)
        m.forward([0], cache, all_logits=False)  # a decoded token (matvec kernels)
        return m
