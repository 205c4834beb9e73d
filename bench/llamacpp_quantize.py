"""Quantize a GGUF file with llama.cpp's own llama_model_quantize (llama-cpp-python), optionally with an imatrix.

Runs in a Python that has llama-cpp-python (the bench virtualenv, or
/work/venvs/lcpp), imported (tests/fixtures/make_mix_reference.py) or as a
subprocess (bench/quality.py, tests/fixtures/make_llamacpp_quants.py):

    .venv-bench/bin/python bench/llamacpp_quantize.py SRC.gguf DST.gguf Q4_K_M [IMPORTANCE.npz]

calls `llama_model_quantize` as tools/quantize does: allow_requantize (the
default model is itself Q4_1), the importances as one float array per tensor
(experts concatenated) — the npz maps tensor names to those arrays.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np


def llamacpp_quantize(src: Path, out: Path, type_name: str, imatrix: dict[str, np.ndarray] | None = None,
                      threads: int = 2, verbose: bool = False) -> None:
    import llama_cpp

    if not verbose:  # llama.cpp logs every tensor; keep the caller's output readable
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{'ALL' if type_name.lower() == 'f32' else 'MOSTLY'}_"
                                      f"{type_name.upper()}")
    params.nthread = threads
    params.allow_requantize = True
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for k, (name, values) in enumerate(imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            keep.append(values)
            entries[k].name = name.encode()
            entries[k].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[k].size = values.size
        entries[len(imatrix)].name = None
        params.imatrix = entries
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {type_name}) failed")


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet(level, text, user_data):
    pass


def main() -> None:
    src, dst, ftype = sys.argv[1:4]
    imatrix = dict(np.load(sys.argv[4])) if len(sys.argv) > 4 else None
    llamacpp_quantize(Path(src), Path(dst), ftype, imatrix)


if __name__ == "__main__":
    main()
