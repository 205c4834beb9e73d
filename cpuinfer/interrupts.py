"""Ctrl-C that waits for a consistent state."""

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
