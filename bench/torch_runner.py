"""pp/tg tokens/s of a GGUF file in Hugging Face transformers on torch, float32 on the CPU.

What a Python user would reach for: transformers loads the GGUF (dequantizing
every weight to float32) and runs it with its KV cache. Runs in the bench
virtualenv as a subprocess of compare.py and prints one JSON object; same
tests as `cpuinfer bench`.

    .venv-bench/bin/python bench/torch_runner.py MODEL.gguf --threads 2 -p 512 -n 128 -r 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model.parent, gguf_file=args.model.name,
                                                 torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    n_vocab = model.config.vocab_size

    @torch.inference_mode()
    def prompt() -> float:
        ids = torch.tensor([rng.integers(0, n_vocab, args.p).tolist()])
        t = time.perf_counter()
        model(ids, use_cache=True)
        return time.perf_counter() - t

    @torch.inference_mode()
    def decode() -> float:
        token = torch.tensor([[int(rng.integers(0, n_vocab))]])
        past = None
        t = time.perf_counter()
        for _ in range(args.n):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - t

    out = {"engine": "torch f32", "version": f"transformers {transformers.__version__}, torch {torch.__version__}",
           "threads": args.threads}
    for name, fn, n in (("pp", prompt, args.p), ("tg", decode, args.n)):
        fn()
        rates = [n / fn() for _ in range(args.r)]
        out[f"{name}{n}"] = {"mean": float(np.mean(rates)), "std": float(np.std(rates, ddof=1)) if len(rates) > 1
                             else 0.0, "tokens_per_second": rates}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
