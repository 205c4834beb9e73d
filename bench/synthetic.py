"""Write GGUF files with random weights at real Mistral-7B / Mixtral-8x7B shapes.

Full-size speed and memory can be measured without downloading weights. The
blocks are generated directly in their quantized form (random codes, random
f16 scales), a few MB at a time, so the float model never exists. Every block
scale gets a random sign: with positive scales only, every Q4_0 weight would
have mean -0.5*d, the residual stream would drift the same way for every
token, and a Mixtral router would pick the same experts every time.

    python -m bench.synthetic mixtral-8x7b --type q4_0 -o bench/models/mixtral-q4_0.gguf [--layers 4]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from quantize.checkpoint import Hparams, add_llama_metadata
from quantize.source import Source
from quantize.vocab import add_sentencepiece_vocab
from quantize.writer import OutTensor, atomic_output, check_disk_space, estimated_size, write_gguf

SHAPES = {
    "mistral-7b": Hparams(name="synthetic Mistral-7B", n_layers=32, dim=4096, ffn_dim=14336, n_heads=32,
                          n_kv_heads=8, head_dim=128, n_vocab=32000, rope_theta=10000.0, norm_eps=1e-5,
                          context_length=32768, sliding_window=4096, n_experts=0, n_experts_used=0),
    "mixtral-8x7b": Hparams(name="synthetic Mixtral-8x7B", n_layers=32, dim=4096, ffn_dim=14336, n_heads=32,
                            n_kv_heads=8, head_dim=128, n_vocab=32000, rope_theta=1e6, norm_eps=1e-5,
                            context_length=32768, sliding_window=None, n_experts=8, n_experts_used=2),
}
# std of the integer codes: Q4_0's q - 8 for q uniform in 0..15, Q8_0's int8 uniform
CODE_STD = {QT.Q4_0: 4.64, QT.Q8_0: 73.9}
BLOCK = {QT.Q4_0: (18, 1), QT.Q8_0: (34, 1)}  # bytes per block, f16 scales per block
CHUNK_BYTES = 16 << 20


def random_blocks(rng: np.random.Generator, qtype: int, rows: int, cols: int) -> np.ndarray:
    """rows x cols weights of std ~1/sqrt(cols) as ggml blocks: random codes, random-sign f16 scales."""
    nbytes, _ = BLOCK[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // 32, nbytes), dtype=np.uint8)
    magnitude = 1.0 / (CODE_STD[qtype] * np.sqrt(cols))
    scales = (rng.choice([-1.0, 1.0], size=(rows, cols // 32)) * magnitude).astype(np.float16)
    blocks[:, :, :2] = scales.view(np.uint8).reshape(rows, cols // 32, 2)
    return blocks.reshape(rows, -1)


def tensors(hp: Hparams, qtype: int, seed: int) -> list[OutTensor]:
    rng = np.random.default_rng(seed)

    def matrix(name: str, shape: tuple[int, ...], t: int = qtype) -> OutTensor:
        *lead, rows, cols = shape
        step = max(1, CHUNK_BYTES // (cols // 32 * BLOCK[t][0]))

        def chunks():
            for _ in range(int(np.prod(lead or [1]))):
                for r0 in range(0, rows, step):
                    yield random_blocks(rng, t, min(step, rows - r0), cols)
        return OutTensor(name, shape, t, chunks)

    def vector(name: str, values: np.ndarray) -> OutTensor:
        return OutTensor(name, values.shape, QT.F32, lambda: iter([values.astype(np.float32)]))

    edge = QT.Q8_0  # llama.cpp keeps embeddings and output at 8 bits under a 4-bit body
    out = [matrix("token_embd.weight", (hp.n_vocab, hp.dim), edge)]
    q_dim, kv_dim = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    for i in range(hp.n_layers):
        p = f"blk.{i}."
        out += [vector(p + "attn_norm.weight", np.ones(hp.dim)),
                matrix(p + "attn_q.weight", (q_dim, hp.dim)), matrix(p + "attn_k.weight", (kv_dim, hp.dim)),
                matrix(p + "attn_v.weight", (kv_dim, hp.dim)), matrix(p + "attn_output.weight", (hp.dim, q_dim)),
                vector(p + "ffn_norm.weight", np.ones(hp.dim))]
        if hp.n_experts:
            router = rng.standard_normal((hp.n_experts, hp.dim)) / np.sqrt(hp.dim) * 4
            out += [OutTensor(p + "ffn_gate_inp.weight", router.shape, QT.F32,
                              lambda r=router: iter([r.astype(np.float32)])),
                    matrix(p + "ffn_gate_exps.weight", (hp.n_experts, hp.ffn_dim, hp.dim)),
                    matrix(p + "ffn_up_exps.weight", (hp.n_experts, hp.ffn_dim, hp.dim)),
                    matrix(p + "ffn_down_exps.weight", (hp.n_experts, hp.dim, hp.ffn_dim))]
        else:
            out += [matrix(p + "ffn_gate.weight", (hp.ffn_dim, hp.dim)),
                    matrix(p + "ffn_up.weight", (hp.ffn_dim, hp.dim)),
                    matrix(p + "ffn_down.weight", (hp.dim, hp.ffn_dim))]
    out += [vector("output_norm.weight", np.ones(hp.dim)), matrix("output.weight", (hp.n_vocab, hp.dim), edge)]
    return out


def write_synthetic(shape: str | Hparams, type_name: str, out: Path, layers: int | None = None, seed: int = 0,
                    quiet: bool = False) -> Path:
    """Write the synthetic model of `shape` (a name in SHAPES, or any Hparams); returns `out`."""
    from mistral_common import __file__ as mistral_common_init

    qtype = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0}[type_name]
    hp = SHAPES[shape] if isinstance(shape, str) else shape
    if layers:
        hp = dataclasses.replace(hp, n_layers=layers, name=f"{hp.name} ({layers} layers)")
    source = Source(hp.name)
    add_llama_metadata(source, hp)
    source.set("general.file_type", {QT.Q4_0: 2, QT.Q8_0: 7}[qtype], VT.UINT32)
    tokenizer = Path(mistral_common_init).parent / "data" / "tokenizer.model.v1"
    add_sentencepiece_vocab(source, tokenizer, hp.n_vocab)
    plan = tensors(hp, qtype, seed)
    check_disk_space(out, estimated_size(plan))
    with Progress(TextColumn(f"writing {out.name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), disable=quiet) as bar, atomic_output(out) as tmp:
        task = bar.add_task("write", total=sum(t.nbytes for t in plan))
        write_gguf(tmp, source.metadata, plan, lambda n: bar.advance(task, n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("--type", default="q4_0", choices=["q4_0", "q8_0"])
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the real model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic(args.shape, args.type, args.output, args.layers, args.seed)


if __name__ == "__main__":
    main()
