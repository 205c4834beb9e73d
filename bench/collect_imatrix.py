"""An importance matrix for the quality benchmark (a stand-in until `cpuinfer imatrix` exists).

Runs cpuinfer's model over a calibration text in independent chunks of --ctx
tokens, as llama-imatrix does, and sums the squares of every matrix
multiplication's input per column (and counts the rows), by wrapping
`matmul` where the model calls it; writes llama.cpp's GGUF imatrix format.

    python -m bench.collect_imatrix MODEL.gguf TEXT -o imatrix.gguf [--ctx 512]
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

import cpuinfer
from cpuinfer import linear, moe, transformer
from quantize.imatrix import Entry, Imatrix, write_imatrix


def collect(model_path: Path, text: str, ctx: int) -> Imatrix:
    sums: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    real = linear.matmul

    def recording(w, x, out, workers):
        m = re.fullmatch(r"(.+?)(?:\[(\d+)\])?", w.name)  # experts are named NAME[e]
        name, expert = m.group(1), int(m.group(2) or 0)
        x64 = np.asarray(x, dtype=np.float64)
        sums[name][expert] = sums[name].get(expert, 0) + (x64 * x64).sum(axis=0)
        counts[name][expert] += x.shape[0]
        return real(w, x, out, workers)

    transformer.matmul = moe.matmul = recording
    try:
        m = cpuinfer.load(model_path, n_ctx=ctx)
        cache = m.new_cache()
        ids = m.tokenizer.encode(text, bos=False)
        chunks = len(ids) // ctx
        for c in range(chunks):
            cache.reset()
            m.forward(ids[c * ctx:(c + 1) * ctx], cache)
    finally:
        transformer.matmul = moe.matmul = real
    imatrix = Imatrix(datasets=["calibration text"], chunk_count=chunks, chunk_size=ctx)
    for name, per_expert in sums.items():
        if name.endswith("ffn_gate_inp.weight"):
            continue  # the router stays F32
        n = max(per_expert) + 1
        cols = next(iter(per_expert.values())).shape[0]
        s = np.stack([per_expert.get(e, np.zeros(cols)) for e in range(n)]).astype(np.float32)
        imatrix.entries[name] = Entry(s, np.array([counts[name][e] for e in range(n)]))
    return imatrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    imatrix = collect(args.model, args.text.read_text(), args.ctx)
    imatrix.datasets = [args.text.name]
    write_imatrix(args.output, imatrix)
    print(f"wrote {args.output}: {len(imatrix.entries)} entries over {imatrix.chunk_count} chunks of {args.ctx}")


if __name__ == "__main__":
    main()
