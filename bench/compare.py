"""The same GGUF file through cpuinfer and through llama.cpp, side by side in one run.

cpuinfer runs in this process; llama.cpp (llama-cpp-python) and the
transformers/torch float32 baseline run as subprocesses of the bench
virtualenv `.venv-bench` that `make bench` prepares, one after the other (never
at the same time). An engine that is not installed there is skipped with a
message. Ratios are cpuinfer / other for the same test and thread count.

    python -m bench.compare MODEL.gguf [MODEL.gguf ...] [-t 1 -t 2] [-p 512] [-n 128] [-r 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cpuinfer import load
from cpuinfer.bench import bench_decode, bench_prompt

ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
RUNNERS = {"llama.cpp": ROOT / "bench" / "llamacpp_runner.py", "torch f32": ROOT / "bench" / "torch_runner.py"}


def run_cpuinfer(path: Path, threads: int, p: int, n: int, reps: int) -> dict:
    m = load(path, n_ctx=max(p, n) + 16, threads=threads)
    rng = np.random.default_rng(0)
    out = {"engine": "cpuinfer", "threads": threads}
    for r in (bench_prompt(m, p, reps, rng), bench_decode(m, n, reps, rng)):
        out[r.test] = {"mean": r.mean, "std": r.std, "tokens_per_second": r.tokens_per_second}
    return out


def run_other(engine: str, path: Path, threads: int, p: int, n: int, reps: int) -> dict | None:
    if not BENCH_PYTHON.exists():
        print(f"  {engine}: skipped ({BENCH_PYTHON} does not exist; `make bench` creates it)", file=sys.stderr)
        return None
    # -P: bench/ must not shadow packages (transformers imports a `kernels` package)
    cmd = [str(BENCH_PYTHON), "-P", str(RUNNERS[engine]), str(path), "--threads", str(threads),
           "-p", str(p), "-n", str(n), "-r", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"  {engine}: skipped ({last})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(paths: list[Path], threads: list[int], p: int, n: int, reps: int, engines: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        for t in threads:
            results = [run_cpuinfer(path, t, p, n, reps)]
            results += [r for e in engines if (r := run_other(e, path, t, p, n, reps)) is not None]
            for test in (f"pp{p}", f"tg{n}"):
                row = {"model": path.name, "threads": t, "test": test}
                for r in results:
                    row[r["engine"]] = r[test]["mean"]
                    row[r["engine"] + " std"] = r[test]["std"]
                for r in results[1:]:
                    row[f"cpuinfer / {r['engine']}"] = row["cpuinfer"] / r[test]["mean"]
                rows.append(row)
                print("  " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items() if not k.endswith(" std")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("-t", "--threads", type=int, action="append")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--engines", nargs="*", default=list(RUNNERS), help="other engines to run")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args()
    rows = compare(args.models, args.threads or [1, 2], args.p, args.n, args.reps, args.engines)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
