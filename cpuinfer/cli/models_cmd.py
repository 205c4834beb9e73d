"""`cpuinfer pull` and `cpuinfer models`: the model cache."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..default_model import SMOLLM2, list_models, models_dir, pull as pull_model
from .common import user_errors


def pull() -> None:
    """Fetch the default model (SmolLM2-135M-Instruct Q4_1) into the cache."""
    with user_errors():
        path = pull_model()
    Console().print(f"{SMOLLM2.name}: {path}")


def models() -> None:
    """List the GGUF files in the model cache."""
    found = list_models()
    out = Console()
    if not found:
        out.print(f"no models in {models_dir()} (run `cpuinfer pull`)")
        return
    table = Table("model", "size", "path")
    for p in found:
        table.add_row(p.name, f"{p.stat().st_size / 1e6:,.1f} MB", str(p))
    out.print(table)
