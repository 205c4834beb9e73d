"""Mixtral-8x7B larger than RAM: cpuinfer's expert cache against llama.cpp running from the mapping.

Every run is a fresh process started with the file dropped from the page cache
(posix_fadvise DONTNEED; `--drop-caches` also writes /proc/sys/vm/drop_caches,
which needs root and empties the page cache of the whole machine). Each engine
decodes the same token sequence one token at a time: `--warmup` tokens fill
its cache, then `-n` tokens are timed. Per run: tokens/s, bytes the process
read from storage per token (/proc/self/io), peak RSS (VmHWM) and, for
cpuinfer, the expert cache's hits, misses, bytes read and next-layer guesses.

The first cpuinfer run also records the router's choices; replaying them
through the cache policies (LRU and LFU, with and without guesses, and
Belady's optimum as a bound) at several capacities shows which policy wins on
this file without reading it again.

    python -m bench.synthetic mixtral-8x7b --type q4_0 -o /scratch/mixtral-q4_0.gguf   # 26.4 GB, ~4 min
    python -m bench.mixtral /scratch/mixtral-q4_0.gguf --budgets 12G,8G,16G,default \\
        --llamacpp .venv-bench/bin/python --compare-guess -n 16 --warmup 8 -t 2
    rm /scratch/mixtral-q4_0.gguf

Writes bench/results/mixtral.json; `python -m bench.plot` (in .venv-bench)
draws bench/results/mixtral.png, tokens/s against the budget. llama.cpp
repacks Q4_0 at load unless its model parameter use_extra_bufts is false
(llama-cpp-python's Llama() does not expose it; the runner patches the default
parameters); with the repack it cannot load this file on a 23 GiB machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def token_sequence(n_vocab: int, count: int) -> list[int]:
    """The tokens every engine decodes: random ids, so no engine's sampler decides what comes next."""
    return np.random.default_rng(0).integers(3, n_vocab, count).tolist()


def _field(path: str, name: str, scale: int = 1) -> int:
    with open(path) as f:
        return next(int(line.split()[1]) * scale for line in f if line.startswith(name + ":"))


def decode(step, tokens: list[int], warmup: int, after_warmup=None) -> dict:
    """step(t) for every token; time those after the warm-up and count the storage reads they cause."""
    t0 = time.perf_counter()
    for t in tokens[:warmup]:
        step(t)
    warm = time.perf_counter() - t0
    if after_warmup is not None:
        after_warmup()
    disk, t0 = _field("/proc/self/io", "read_bytes"), time.perf_counter()
    for t in tokens[warmup:]:
        step(t)
    n = len(tokens) - warmup
    return dict(tokens_per_second=n / (time.perf_counter() - t0), warmup_seconds=warm,
                disk_bytes_per_token=(_field("/proc/self/io", "read_bytes") - disk) / n)


# --- the engines, each in its own process ------------------------------------------------------

def run_cpuinfer(args) -> dict:
    import cpuinfer

    t0 = time.perf_counter()
    m = cpuinfer.load(args.model, n_ctx=args.warmup + args.n + 8, threads=args.threads,
                      max_memory=None if args.max_memory == "default" else args.max_memory,
                      expert_cache=args.policy, guess_next=args.guess)
    load = time.perf_counter() - t0
    trace: list[tuple[int, list[int], list[int] | None]] = []
    if args.trace:
        run = m.transformer.experts.run

        def recording(layer, experts, compute, next_guess=None):
            trace.append((layer, list(experts), next_guess))
            run(layer, experts, compute, next_guess)
        m.transformer.experts.run = recording
    cache, stats, c = m.new_cache(), m.expert_stats, m.expert_cache
    tokens = token_sequence(m.config.n_vocab, args.warmup + args.n)
    out = decode(lambda t: m.forward([t], cache, all_logits=False), tokens, args.warmup, stats.clear)
    expert_bytes = m.weights.layers[0].experts[0].nbytes
    out.update(engine="cpuinfer", load_seconds=load, peak_rss_bytes=_field("/proc/self/status", "VmHWM", 1024),
               max_memory=m.memory.budget, policy=c.policy.name if c else None,
               guess_next=c.guesses_next if c else None, slots=c.slots if c else None,
               miss_bytes_per_token=stats.misses * expert_bytes / max(stats.tokens, 1), **stats.as_dict())
    if args.trace:
        out["trace"] = trace
    return out


def run_llamacpp(args) -> dict:
    import llama_cpp
    import llama_cpp.llama_cpp as C

    default_params = C.llama_model_default_params

    def without_repack():
        params = default_params()
        params.use_extra_bufts = False  # no Q4_0 repack: compute from the mapping
        return params

    C.llama_model_default_params = without_repack  # Llama() looks it up at call time
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(args.model, n_ctx=args.warmup + args.n + 8, n_threads=args.threads,
                          n_threads_batch=args.threads, use_mmap=True, verbose=False)
    load = time.perf_counter() - t0
    tokens = token_sequence(llm.n_vocab(), args.warmup + args.n)
    out = decode(lambda t: llm.eval([t]), tokens, args.warmup)
    out.update(engine="llama.cpp", version=llama_cpp.__version__, load_seconds=load,
               peak_rss_bytes=_field("/proc/self/status", "VmHWM", 1024))
    return out


# --- replaying the router's choices through the policies ----------------------------------------

def simulate(trace, capacity: int, policy: str, guesses: bool, skip: int) -> dict:
    """Hit rate, misses and reads per token of an expert cache of `capacity` experts over a recorded
    trace (one entry per layer and token), counted after `skip` entries. A guessed expert is read,
    if not held, before the next layer routes; if that router does not pick it, it is demoted."""
    from cpuinfer.cache_policy import make_policy

    p, held, unconfirmed = make_policy(policy), set(), set()
    hits = misses = reads = 0

    def bring(key, pinned) -> None:
        if len(held) >= capacity:
            victim = p.victim(lambda k: k not in pinned)
            held.discard(victim)
            p.removed(victim)
        held.add(key)
        p.added(key)

    for i, (layer, experts, guess) in enumerate(trace):
        counted = i >= skip
        keys = {(layer, e) for e in experts}
        for key in [k for k in unconfirmed if k[0] == layer]:
            unconfirmed.discard(key)
            if key not in keys and key in held:
                p.demoted(key)
        for key in sorted(keys):
            p.picked(key)
            if key in held:
                hits += counted
            else:
                misses += counted
                reads += counted
                bring(key, keys)
        for e in (guess or []) if guesses else []:
            if (layer + 1, e) not in held:
                reads += counted
                bring((layer + 1, e), keys)
                unconfirmed.add((layer + 1, e))
    return _rates(hits, misses, reads, trace, skip)


def belady(trace, capacity: int, skip: int) -> dict:
    """Evict the expert whose next use is farthest away: the fewest misses any demand-read policy gets."""
    picks = [(i, (layer, e)) for i, (layer, experts, _) in enumerate(trace) for e in experts]
    next_use, upcoming = [0] * len(picks), {}
    for j in range(len(picks) - 1, -1, -1):
        next_use[j] = upcoming.get(picks[j][1], len(picks))
        upcoming[picks[j][1]] = j
    held: dict = {}  # key -> index of its next use
    hits = misses = 0
    for j, (i, key) in enumerate(picks):
        if key in held:
            hits += i >= skip
        else:
            misses += i >= skip
            if len(held) >= capacity:
                layer_keys = {(trace[i][0], e) for e in trace[i][1]}
                del held[max((k for k in held if k not in layer_keys), key=held.get)]
        held[key] = next_use[j]
    return _rates(hits, misses, misses, trace, skip)


def _rates(hits: int, misses: int, reads: int, trace, skip: int) -> dict:
    n_layers = 1 + max(layer for layer, _, _ in trace)
    tokens = max(1, (len(trace) - skip) // n_layers)
    return dict(hit_rate=hits / max(1, hits + misses), misses_per_token=misses / tokens, reads_per_token=reads / tokens)


def policy_table(trace, warmup_tokens: int) -> list[dict]:
    """The simulated policies at several capacities, counted after the warm-up tokens."""
    skip = warmup_tokens * (1 + max(layer for layer, _, _ in trace))
    rows = []
    for capacity in (32, 64, 96, 128, 160, 192, 224):
        row = {"capacity": capacity, "belady": belady(trace, capacity, skip)}
        for policy in ("lru", "lfu"):
            for guesses in (False, True):
                row[policy + ("+guess" if guesses else "")] = simulate(trace, capacity, policy, guesses, skip)
        rows.append(row)
        print(f"capacity {capacity}: " + ", ".join(f"{k} {v['hit_rate']:.0%} ({v['reads_per_token']:.1f} reads)"
                                                   for k, v in row.items() if k != "capacity"), flush=True)
    return rows


def markdown(runs: list[dict]) -> str:
    """The runs as a table for bench/README.md: tokens/s and its ratio to llama.cpp's, reads, hits, RSS."""
    lcpp = next((r["tokens_per_second"] for r in runs if r["engine"] == "llama.cpp" and "error" not in r), None)
    lines = ["| engine | --max-memory | policy | tg t/s | vs llama.cpp | disk MB/token | misses/token (MB) "
             "| hit rate | guesses right | peak RSS GiB |", "|---" * 10 + "|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r.get('max_memory', '')} | | {r['error']} |" + " |" * 6)
            continue
        cache = r.get("cache_hit_rate") is not None
        budget = f"{r['max_memory'] / 2**30:.1f}G" if "max_memory" in r else "–"
        policy = (r["policy"] + (" + guesses" if r["guess_next"] else "")) if cache else "mapping"
        ratio = f"{r['tokens_per_second'] / lcpp:.2f}" if lcpp else "–"
        misses = f"{r['cache_misses_per_token']:.1f} ({r['miss_bytes_per_token'] / 1e6:.0f})" if cache else "–"
        hits = f"{r['cache_hit_rate']:.0%}" if cache else "–"
        right = f"{r['guess_accuracy']:.0%}" if cache and r["guess_accuracy"] is not None else "–"
        lines.append(f"| {r['engine']} | {budget} | {policy if r['engine'] == 'cpuinfer' else 'mapping'} "
                     f"| {r['tokens_per_second']:.3f} | {ratio} | {r['disk_bytes_per_token'] / 1e6:.0f} | {misses} "
                     f"| {hits} | {right} | {r['peak_rss_bytes'] / 2**30:.1f} |")
    return "\n".join(lines)


# --- the driver -------------------------------------------------------------------------------

def drop_page_cache(path: str, everything: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if everything:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def start(python: str, engine: str, args, **options) -> dict:
    """Run one engine in a fresh process from a dropped page cache; its JSON result."""
    drop_page_cache(args.model, args.drop_caches)
    cmd = [python, "-m", "bench.mixtral", args.model, "--worker", engine, "-n", str(args.n),
           "--warmup", str(args.warmup), "-t", str(args.threads)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else ["--no-" + flag[2:]] if value is False else [flag, str(value)]
    print("$", " ".join(cmd), flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"timed out after {args.timeout} s", file=sys.stderr)
        return dict(engine=engine, error=f"timed out after {args.timeout} s", **options)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        return dict(engine=engine, error=(done.stderr.strip().splitlines() or ["failed"])[-1], **options)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k not in ("trace", "expert_reuse_per_layer")}), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--budgets", default="12G,default", help="cpuinfer --max-memory values, comma-separated")
    ap.add_argument("--policies", default="lru", help="expert cache policies, comma-separated (the others "
                                                      "run at the first budget)")
    ap.add_argument("--compare-guess", action="store_true", help="also run the first budget without guesses")
    ap.add_argument("--llamacpp", default=None, help="a python with llama-cpp-python (no llama.cpp run without)")
    ap.add_argument("-n", type=int, default=16, help="timed tokens")
    ap.add_argument("--warmup", type=int, default=8, help="tokens decoded before the timing")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=None, help="seconds one engine's run may take")
    ap.add_argument("--drop-caches", action="store_true", help="also empty the whole page cache (root)")
    ap.add_argument("-o", "--output", type=Path, default=RESULTS / "mixtral.json")
    ap.add_argument("--worker", choices=["cpuinfer", "llamacpp"], help=argparse.SUPPRESS)
    ap.add_argument("--max-memory", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="lru", help=argparse.SUPPRESS)
    ap.add_argument("--guess", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps((run_cpuinfer if args.worker == "cpuinfer" else run_llamacpp)(args)))
        return

    budgets, policies = args.budgets.split(","), args.policies.split(",")
    conditions = dict(load_average_before=os.getloadavg(), drop_caches=args.drop_caches, threads=args.threads,
                      mem_available_bytes=_field("/proc/meminfo", "MemAvailable", 1024), n=args.n, warmup=args.warmup)
    runs = [start(args.llamacpp, "llamacpp", args)] if args.llamacpp else []
    for i, budget in enumerate(budgets):
        runs.append(start(sys.executable, "cpuinfer", args, max_memory=budget, policy=policies[0], guess=True,
                          trace=i == 0))
    for policy in policies[1:]:
        runs.append(start(sys.executable, "cpuinfer", args, max_memory=budgets[0], policy=policy, guess=True))
    if args.compare_guess:
        runs.append(start(sys.executable, "cpuinfer", args, max_memory=budgets[0], policy=policies[0], guess=False))
    traced = next((r for r in runs if isinstance(r.get("trace"), list)), None)
    table = policy_table(traced.pop("trace"), args.warmup) if traced else []
    conditions["load_average_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(dict(conditions=conditions, runs=runs, policy_simulation=table), indent=1) + "\n")
    print(f"wrote {args.output}")
    print(markdown(runs))


if __name__ == "__main__":
    main()
