"""cpuinfer: CPU-first quantized LLM inference on GGUF files."""

from .errors import ContextFullError, CpuinferError, GGUFError
from .model import Model, load

__all__ = ["load", "Model", "CpuinferError", "GGUFError", "ContextFullError"]
__version__ = "0.1.0"
