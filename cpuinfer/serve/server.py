"""uvicorn, listening on a socket bound up front, stopping the scheduler's work first on Ctrl-C / SIGTERM."""

from __future__ import annotations

import signal
import socket

import uvicorn

from ..errors import CpuinferError


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CpuinferError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


class _Server(uvicorn.Server):
    """On a stop signal the scheduler ends every request first (streams get an error event), so no
    in-flight stream holds uvicorn's graceful shutdown open."""

    def __init__(self, config: uvicorn.Config, scheduler):
        super().__init__(config)
        self.scheduler = scheduler

    def handle_exit(self, sig, frame) -> None:
        self.scheduler.shutdown(timeout=0)
        super().handle_exit(sig, frame)


def run(app, sock: socket.socket, scheduler) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt afterwards, as usual) or SIGTERM (a plain return)."""
    config = uvicorn.Config(app, log_level="info", lifespan="off", timeout_graceful_shutdown=5)
    # uvicorn re-raises the signal that stopped it once it is done; SIGTERM's default action would kill
    # the process with status -15 instead of letting it exit 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _Server(config, scheduler).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        scheduler.shutdown()
        sock.close()
