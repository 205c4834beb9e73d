"""`python -m cpuinfer` is the `cpuinfer` command."""

from .cli import app

app(prog_name="cpuinfer")
