"""Quantize a GGUF file with llama.cpp's own llama_model_quantize (llama-cpp-python).

Runs in a Python that has llama-cpp-python (the bench virtualenv, or any
other: tests/fixtures/make_llamacpp_quants.py uses it too), as a subprocess:

    .venv-bench/bin/python bench/llamacpp_quantize.py SRC.gguf DST.gguf Q4_K_M
"""

from __future__ import annotations

import ctypes
import sys


def main() -> None:
    src, dst, ftype = sys.argv[1:4]
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True  # the default model is itself quantized (Q4_1)
    params.nthread = 2
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize {src} -> {dst} ({ftype}) failed")


if __name__ == "__main__":
    main()
