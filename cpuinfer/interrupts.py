"""Ctrl-C that waits for a consistent state."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT until the block ends, then raise KeyboardInterrupt.

    A forward chunk writes keys/values into the rolling buffer layer by layer;
    stopping it half way would leave slots overwritten for positions the cache
    does not count. Deferring Ctrl-C to the end of the chunk (at most ~1 s)
    keeps the cache and its position in step. Only the main thread gets signals.
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
