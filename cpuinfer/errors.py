"""Errors that carry a message meant for the user.

The CLI prints any `CpuinferError` as one line and exits with code 2; anything
else is a bug and keeps its traceback.
"""


class CpuinferError(Exception):
    """A problem with the user's input (file, arguments, environment)."""


class GGUFError(CpuinferError):
    """A GGUF file that is truncated, malformed or not something cpuinfer can run."""


class ContextFullError(CpuinferError):
    """The KV cache of a model without a sliding window has no room left."""
