"""The `cpuinfer` command's entry point.

Start-up takes a while (numba alone imports in ~1 s), and Ctrl-C then would
print a KeyboardInterrupt traceback from deep inside an import. Until a
command starts running, Ctrl-C exits quietly with status 130; from then on
the command handles it (stopping a reply, removing a partial file).
"""

from __future__ import annotations

import signal


def quiet_exit(signum, frame):
    raise SystemExit(130)


def main() -> None:
    """Run the `cpuinfer` command line."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if started with SIGINT ignored
        signal.signal(signal.SIGINT, quiet_exit)
    from .cli import app

    app(prog_name="cpuinfer")
