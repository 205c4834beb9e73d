"""Decode speed when another process takes one of the cores, cpuinfer beside llama.cpp.

A busy loop pinned to CPU 0 stands in for a neighbour (a browser tab, a
build). Each engine decodes the same file with the same threads, first alone
and then beside the busy loop, one engine at a time; the figure that matters
is each engine's slowdown (alone / beside the loop), measured in one run.
cpuinfer runs as `cpuinfer bench` subprocesses, so that settings read when
the OpenMP runtime loads (OMP_WAIT_POLICY, numba's threading layer) can be
compared as variants.

    python -m bench.contention MODEL.gguf [-t 2] [-n 64] [-r 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.compare import run_other

VARIANTS = {
    "cpuinfer": {},
    "cpuinfer OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "cpuinfer workqueue layer": {"NUMBA_THREADING_LAYER": "workqueue"},
}


def cpuinfer_tg(path: Path, threads: int, n: int, reps: int, env: dict) -> float:
    cmd = [sys.executable, "-m", "cpuinfer", "bench", str(path), "-p", "0", "-n", str(n), "-t", str(threads),
           "-r", str(reps), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
    return json.loads(out)["results"][0]["mean"]


def llamacpp_tg(path: Path, threads: int, n: int, reps: int) -> float | None:
    r = run_other("llama.cpp", path, threads, 1, n, reps)
    return None if r is None else r[f"tg{n}"]["mean"]


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])


def measure(path: Path, threads: int, n: int, reps: int) -> list[dict]:
    engines = {name: (lambda env=env: cpuinfer_tg(path, threads, n, reps, env)) for name, env in VARIANTS.items()}
    engines["llama.cpp"] = lambda: llamacpp_tg(path, threads, n, reps)
    rows = []
    for name, tg in engines.items():
        alone = tg()
        if alone is None:
            continue
        loop = busy_loop()
        try:
            beside = tg()
        finally:
            loop.kill()
            loop.wait()
        rows.append({"engine": name, "threads": threads, f"tg{n} alone": alone, f"tg{n} beside a busy core": beside,
                     "slowdown": alone / beside})
        print(f"{name:34s} alone {alone:8.1f} t/s   beside a busy core {beside:8.1f} t/s   "
              f"slowdown {alone / beside:5.2f}x", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    rows = measure(args.model, args.threads, args.n, args.reps)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
