"""pp/tg tokens/s of one GGUF file in llama.cpp, through llama-cpp-python.

Runs in the bench virtualenv (`make bench` builds llama-cpp-python there), as
a subprocess of compare.py, and prints one JSON object. Same tests as
`cpuinfer bench`: a prompt of N random tokens from an empty cache, and N
tokens decoded one at a time from an empty cache; a warm-up run first.

    .venv-bench/bin/python bench/llamacpp_runner.py MODEL.gguf --threads 2 -p 512 -n 128 -r 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(args.model, n_ctx=max(args.p, args.n) + 16, n_batch=512, n_ubatch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    rng = np.random.default_rng(0)
    n_vocab = llm.n_vocab()

    def prompt() -> float:
        llm.reset()
        tokens = rng.integers(0, n_vocab, args.p).tolist()
        t = time.perf_counter()
        llm.eval(tokens)
        return time.perf_counter() - t

    def decode() -> float:
        llm.reset()
        token = int(rng.integers(0, n_vocab))
        t = time.perf_counter()
        for _ in range(args.n):
            llm.eval([token])
        return time.perf_counter() - t

    out = {"engine": "llama.cpp", "version": llama_cpp.__version__, "threads": args.threads}
    for name, fn, n in (("pp", prompt, args.p), ("tg", decode, args.n)):
        fn()
        times = [fn() for _ in range(args.r)]
        rates = [n / t for t in times]
        out[f"{name}{n}"] = {"mean": float(np.mean(rates)), "std": float(np.std(rates, ddof=1)) if len(rates) > 1
                             else 0.0, "tokens_per_second": rates}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
