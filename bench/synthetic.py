"""Write GGUF files with random weights at real Mistral-7B / Mixtral-8x7B shapes.

Full-size speed and memory can be measured without downloading weights. The
blocks are generated directly in their quantized form (random codes, random
f16 scales), a few MB at a time, so the float model never exists. Every f16
scale (and K-quant min) gets a random sign: with positive scales only, every
Q4_0 weight would have mean -0.5*d, the residual stream would drift the same
way for every token, and a Mixtral router would pick the same experts every
time. The scales' size makes the weights' std ~1/sqrt(row length), measured
on a sample of unit-scale blocks.

`--type q4_k_m` writes llama.cpp's Q4_K_M mix (llama_tensor_get_type in
src/llama-quant.cpp) for the dense shape: Q4_K, with Q6_K for the output and
for attn_v and ffn_down in the layers `use_more_bits` picks.

    python -m bench.synthetic mixtral-8x7b --type q4_0 -o bench/models/mixtral-q4_0.gguf [--layers 4]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import GGUFValueType as VT
from gguf.quants import dequantize
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
# byte offsets of each block's f16 scales and mins (ggml-common.h)
F16_FIELDS = {QT.Q8_0: (0,), QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q2_K: (80, 82),
              QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,), QT.IQ4_NL: (0,), QT.IQ4_XS: (0,)}
TYPES = {"q4_0": (QT.Q4_0, 2), "q8_0": (QT.Q8_0, 7), "q4_k_m": (QT.Q4_K, 15)}  # type, llama_ftype
CHUNK_BYTES = 16 << 20


def _signed_scales(rng: np.random.Generator, blocks: np.ndarray, qtype: int, magnitude: float) -> np.ndarray:
    for o in F16_FIELDS[qtype]:
        scales = (rng.choice([-1.0, 1.0], size=blocks.shape[:2]) * magnitude).astype(np.float16)
        blocks[:, :, o:o + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks


def _unit_std(qtype: int) -> float:
    """The std of the values of random blocks whose f16 scales are all +-1."""
    rng = np.random.default_rng(1)
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = _signed_scales(rng, rng.integers(0, 256, size=(64, 4, size), dtype=np.uint8), qtype, 1.0)
    return float(dequantize(blocks.reshape(64, -1), qtype).std())


UNIT_STD = {t: _unit_std(t) for t in F16_FIELDS}


def random_blocks(rng: np.random.Generator, qtype: int, rows: int, cols: int) -> np.ndarray:
    """rows x cols weights of std ~1/sqrt(cols) as ggml blocks: random codes, random-sign f16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    return _signed_scales(rng, blocks, qtype, 1.0 / (UNIT_STD[qtype] * np.sqrt(cols))).reshape(rows, -1)


def q4_k_m_type(name: str, layer: int, n_layers: int) -> int:
    """The type llama.cpp's Q4_K_M gives a tensor of a dense Llama model."""
    more_bits = layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2
    if name == "output.weight" or (more_bits and name.split(".")[-2] in ("attn_v", "ffn_down")):
        return QT.Q6_K
    return QT.Q4_K


def tensors(hp: Hparams, qtype: int, seed: int) -> list[OutTensor]:
    rng = np.random.default_rng(seed)

    def matrix(name: str, shape: tuple[int, ...], t: int | None = None) -> OutTensor:
        if t is None:
            t = q4_k_m_type(name, int(name.split(".")[1]) if name.startswith("blk.") else 0, hp.n_layers) \
                if qtype == QT.Q4_K else qtype
        *lead, rows, cols = shape
        block, size = GGML_QUANT_SIZES[t]
        step = max(1, CHUNK_BYTES // (cols // block * size))

        def chunks():
            for _ in range(int(np.prod(lead or [1]))):
                for r0 in range(0, rows, step):
                    yield random_blocks(rng, t, min(step, rows - r0), cols)
        return OutTensor(name, shape, t, chunks)

    def vector(name: str, values: np.ndarray) -> OutTensor:
        return OutTensor(name, values.shape, QT.F32, lambda: iter([values.astype(np.float32)]))

    edge = QT.Q8_0 if qtype == QT.Q4_0 else None  # llama.cpp keeps Q4_0's embeddings and output at 8 bits
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


def write_synthetic(shape: str, type_name: str, out: Path, layers: int | None = None, seed: int = 0,
                    quiet: bool = False) -> Path:
    """Write the synthetic model; returns `out`."""
    from mistral_common import __file__ as mistral_common_init

    qtype, file_type = TYPES[type_name]
    hp = SHAPES[shape]
    if qtype == QT.Q4_K and hp.n_experts:
        raise ValueError("q4_k_m is written for the dense shape only (llama.cpp's Mixtral mix differs)")
    if layers:
        hp = dataclasses.replace(hp, n_layers=layers, name=f"{hp.name} ({layers} layers)")
    source = Source(f"synthetic {shape}")
    add_llama_metadata(source, hp)
    source.set("general.file_type", file_type, VT.UINT32)
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
    ap.add_argument("--type", default="q4_0", choices=sorted(TYPES))
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the real model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic(args.shape, args.type, args.output, args.layers, args.seed)


if __name__ == "__main__":
    main()
