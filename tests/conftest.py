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
