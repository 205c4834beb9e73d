"""Signals that stop the program where it is: Ctrl-C that waits for a consistent state; SIGTERM and
SIGHUP that raise like Ctrl-C while a file is being written."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT until the block ends, then raise KeyboardInterrupt.

    Used around the step that stores a forward chunk's keys/values in the
    cache and advances its position: stopped half way, a rolling buffer would
    hold slots overwritten for positions it does not count. The step is short,
    so Ctrl-C still answers at once. Only the main thread gets signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program was so that cleanup (`finally`) runs, as for Ctrl-C.

    A BaseException like KeyboardInterrupt: `except Exception` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise Terminated in the main thread.

    A signal that is ignored stays ignored (`nohup` ignores SIGHUP so a job survives a closed terminal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, terminate)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
