"""Shared fixtures: the default model, the committed reference data, tiny checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
TEXT = FIXTURES / "text"
sys.path.insert(0, str(FIXTURES))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The default model's GGUF (SmolLM2-135M-Instruct Q4_1), fetched once into the user cache."""
    from cpuinfer.default_model import pull

    return pull(quiet=True)


@pytest.fixture(scope="session")
def mistral_tokenizer_model() -> Path:
    """The real Mistral v1 tokenizer.model, from the mistral-common wheel."""
    from checkpoints import tokenizer_model_path

    return tokenizer_model_path()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """hf_checkpoint(kind) -> folder of the tiny reference checkpoint in Hugging Face layout (bf16, 2 shards)."""
    from checkpoints import write_hf

    made: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in made:
            made[kind] = write_hf(kind, tmp_path_factory.mktemp(f"hf-{kind}"))
        return made[kind]

    return make


@pytest.fixture(scope="session")
def converted(hf_checkpoint, tmp_path_factory):
    """converted(kind, type, rounding="search") -> GGUF path of the reference checkpoint converted by
    `cpuinfer quantize`."""
    from quantize import convert

    made: dict[tuple[str, str, str], Path] = {}

    def make(kind: str, type_name: str, rounding: str = "search") -> Path:
        key = (kind, type_name, rounding)
        if key not in made:
            out = tmp_path_factory.mktemp("gguf") / f"{kind}-{type_name}-{rounding}.gguf"
            made[key] = convert(hf_checkpoint(kind), out, type_name, rounding=rounding)
        return made[key]

    return make


@pytest.fixture(scope="session")
def reference():
    """reference(kind) -> the committed transformers outputs for that checkpoint (npz)."""
    import numpy as np

    return lambda kind: np.load(REFERENCE / f"{kind}.npz")
