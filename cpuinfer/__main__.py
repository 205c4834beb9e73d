"""`python -m cpuinfer` is the `cpuinfer` command."""

from .main import main

main()
