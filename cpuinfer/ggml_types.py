"""ggml's type table, `gguf.constants`, loaded without the rest of the gguf package.

The package's __init__ imports gguf.vocab, which imports mistral_common (pydantic,
requests, image libraries): 0.75 s of a 3 s warm `cpuinfer generate` start-up,
measured here. The runtime needs only the constants module, which imports
nothing else of gguf's, so it is loaded from the installed file under its own
name; when the converter or a test imports gguf later, the package finds it in
sys.modules and uses this same module.
"""

from __future__ import annotations

import importlib.util
import sys


def _gguf_constants():
    name = "gguf.constants"
    if name not in sys.modules:
        package = importlib.util.find_spec("gguf")
        if package is None or not package.submodule_search_locations:
            raise ImportError("the gguf package is not installed")
        spec = importlib.util.spec_from_file_location(
            name, f"{list(package.submodule_search_locations)[0]}/constants.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


_constants = _gguf_constants()
GGMLQuantizationType = _constants.GGMLQuantizationType
GGML_QUANT_SIZES = _constants.GGML_QUANT_SIZES
