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
from numba.core.event import Listener, install_listener
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


class _SayOnceCompiling(Listener):
    """A numba event listener: numba fires "numba:compile" only for a kernel it compiles, not for one it loads
    from its cache, so a cold cache is told once and a warm one says nothing."""

    def __init__(self, say):
        super().__init__()
        self.say, self.said = say, False

    def on_start(self, event) -> None:
        if not self.said:
            self.said = True
            self.say()

    def on_end(self, event) -> None:
        pass


def load_model(model: str | None, n_ctx: int | None = None, threads: int | None = None, quiet: bool = False,
               kv_type: str | None = None, exact: bool = False, max_memory: str | None = None,
               expert_cache: str = "lru", guess_next: bool = True):
    """Load a model and run its kernels once, with a status line on stderr.

    The warm-up compiles the numba kernels on the very first run (later runs
    load them from the cache), so the first reply and every timing shown
    afterwards measure inference, not compilation.
    """
    from ..model import load

    path = model_path(model)
    compiling = "compiling the kernels for this CPU (first run only, about a minute) ..."
    tty = sys.stderr.isatty()
    status = err_console.status(f"loading {path.name} ...", spinner="dots") if not quiet and tty \
        else contextlib.nullcontext()

    def say_compiling() -> None:
        if tty:
            status.update(f"loading {path.name}: {compiling}")
        else:
            print(compiling, file=sys.stderr, flush=True)

    with status, install_listener("numba:compile", _SayOnceCompiling(say_compiling)) if not quiet \
            else contextlib.nullcontext():
        m = load(path, n_ctx=n_ctx, threads=threads, kv_type=kv_type, exact=exact, max_memory=max_memory,
                 expert_cache=expert_cache, guess_next=guess_next)
        cache = m.new_cache(4)
        m.forward([0, 0, 0], cache, all_logits=False)  # a prompt chunk (the batched kernels)
        m.forward([0], cache, all_logits=False)  # a decoded token (matvec kernels)
        return m
