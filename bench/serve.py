"""Aggregate generated tokens/s of `cpuinfer serve` with 1, 2 and 4 concurrent streams.

Each server runs in a subprocess on a free loopback port; the streams are
threads posting fixed prompts to /v1/completions (temperature 0, a fixed
max_tokens, `ignore_eos` so that every stream generates exactly max_tokens)
after one warm-up request. Aggregate tokens/s is all streams' generated tokens
over the wall time from the first request sent to the last reply (prompts
included, as a client sees it). The /health counters of cpuinfer before and
after each run show that the streams share steps: tokens per decode step is
about the number of streams when the decode step of all of them is one
batched forward (Model.forward_batch), 1 if they ran one after the other.
llama.cpp's llama-server (`-np 4`, the same requests) runs side by side when it
is on PATH or in `.venv-bench/bin` (`make bench` builds it from the sources of
the bench's llama-cpp-python), else it is skipped with a message; `--exact`
adds cpuinfer's float path (`serve --exact`) next to its default integer one.

    python -m bench.serve [MODEL.gguf ...] [-n 64] [--streams 1 2 4] [-r 2] [-t THREADS] [--exact]
    python -m bench.serve /path/mistral-7b-q4_0.gguf -n 16 -r 1

With no MODEL it measures the default model. Results: bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The history of the city of Paris begins",
           "Here is a short story about a lighthouse keeper:",
           "The three most important ideas in thermodynamics are",
           "A recipe for bread needs flour, water, salt and"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """A server subprocess: cpuinfer serve or llama-server, both speaking OpenAI's /v1/completions."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path):
        self.name, self.url, self.log = name, f"http://127.0.0.1:{port}", log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900  # a 7B file loads from a slow disk
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{name} did not come up:\n{log.read_text()[-2000:]}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def complete(self, prompt: str, max_tokens: int) -> int:
        """One request; the number of tokens it generated."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        r = httpx.post(self.url + "/v1/completions", json=body, timeout=3600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def concurrent(engine: Engine, streams: int, max_tokens: int) -> tuple[float, int]:
    """`streams` requests at once: (wall seconds, generated tokens)."""
    counts = [0] * streams
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            counts[i] = engine.complete(PROMPTS[i % len(PROMPTS)], max_tokens)
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, sum(counts)


def measure(engine: Engine, streams: list[int], max_tokens: int, reps: int) -> list[dict]:
    engine.complete(PROMPTS[0], 4)  # warm-up: kernels compiled, weights paged in
    rows = []
    for n in streams:
        walls, tokens = [], 0
        before = engine.health().get("stats") if engine.name.startswith("cpuinfer") else None
        for _ in range(reps):
            wall, tokens = concurrent(engine, n, max_tokens)
            walls.append(wall)
        row = {"engine": engine.name, "streams": n, "max_tokens": max_tokens, "reps": reps,
               "wall_s": walls, "tokens": tokens, "tokens_per_second": tokens * reps / sum(walls)}
        if before is not None:
            after = engine.health()["stats"]
            steps = after["decode_steps"] - before["decode_steps"]
            row["decode_steps"] = steps
            row["tokens_per_decode_step"] = (after["tokens_generated"] - before["tokens_generated"]) / max(steps, 1)
            row["max_batch"] = after["max_batch"]
        rows.append(row)
        extra = f", {row['tokens_per_decode_step']:.2f} tokens per decode step" if before is not None else ""
        print(f"  {engine.name:16} {n} streams: {row['tokens_per_second']:7.2f} tokens/s{extra}", flush=True)
    return rows


def run_model(path: Path | None, args, tmp: Path) -> dict:
    ctx = max(256, 2 * args.max_tokens + 64)
    parallel = max(args.streams)
    cmd = [sys.executable, "-m", "cpuinfer", "serve", *([str(path)] if path else []), "--ctx", str(ctx),
           "--parallel", str(parallel)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    engines = [("cpuinfer", cmd)] + ([("cpuinfer --exact", cmd + ["--exact"])] if args.exact else [])
    llama_server = shutil.which("llama-server") or shutil.which("llama-server", path=ROOT / ".venv-bench" / "bin")
    if llama_server is None:
        print("  llama.cpp: skipped (no llama-server on PATH or in .venv-bench/bin; see `make bench`)")
    elif path is None:
        print("  llama.cpp: skipped (give the default model's path to compare on it)")
    else:
        engines.append(("llama.cpp", [llama_server, "-m", str(path), "-np", str(parallel), "-c",
                                      str(ctx * parallel), "--host", "127.0.0.1",
                                      *(["-t", str(args.threads)] if args.threads else [])]))
    rows = []
    for name, base in engines:  # one server at a time, never two at once
        port = free_port()
        extra = ["--port", str(port)]
        engine = Engine(name, base + extra, port, tmp / f"{name}-{port}.log")
        try:
            rows += measure(engine, args.streams, args.max_tokens, args.reps)
        finally:
            engine.stop()
    ratios = {}
    for name in dict.fromkeys(r["engine"] for r in rows):
        rate = {r["streams"]: r["tokens_per_second"] for r in rows if r["engine"] == name}
        one = rate.get(min(rate))
        ratios[name] = {f"{n}/{min(rate)}": rate[n] / one for n in rate if n != min(rate)}
        print(f"  {name}: " + ", ".join(f"{k} streams {v:.2f}x" for k, v in ratios[name].items()))
    return {"model": str(path) if path else "default (SmolLM2-135M-Instruct Q4_1)", "rows": rows, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, help="GGUF files (default: the default model)")
    ap.add_argument("-n", "--max-tokens", type=int, default=64, help="tokens each stream generates")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4], help="concurrent streams to try")
    ap.add_argument("-r", "--reps", type=int, default=2, help="runs of each stream count")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads per server (default: theirs)")
    ap.add_argument("--exact", action="store_true", help="also cpuinfer's float path (serve --exact)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for path in args.models or [None]:
            print(f"{path or 'default model'}: -n {args.max_tokens}, {args.reps} runs each", flush=True)
            results.append(run_model(path, args, Path(tmp)))
    # Runs of other files (a 7B file wants a smaller -n) stay in the file; this run's files replace theirs.
    old = json.loads(args.json.read_text()) if args.json.exists() else []
    results = [r for r in old if r["model"] not in {n["model"] for n in results}] + results
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
