"""cpuinfer: CPU-first quantized LLM inference on GGUF files."""

from .errors import ContextFullError, CpuinferError, GGUFError

__all__ = ["load", "Model", "CpuinferError", "GGUFError", "ContextFullError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # `load` and `Model` bring in numba (~1 s to import): only when they are used, so that the command's
    # entry point (cpuinfer.main) starts before any heavy import.
    if name in ("load", "Model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'cpuinfer' has no attribute {name!r}")
