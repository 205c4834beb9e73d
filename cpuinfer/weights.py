"""Find the model's tensors in a GGUF file by llama.cpp's names, and check their shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .errors import GGUFError
from .ggml_types import GGMLQuantizationType as QT
from .gguf_file import GGUFFile
from .linear import Linear, linear_views


@dataclass(frozen=True)
class Expert:
    gate: Linear  # w1 [ffn, dim]
    up: Linear  # w3 [ffn, dim]
    down: Linear  # w2 [dim, ffn]

    @property
    def nbytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes


@dataclass(frozen=True)
class Layer:
    attn_norm: np.ndarray
    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    ffn_norm: np.ndarray
    ffn: Expert | None  # dense models
    router: Linear | None  # mixture of experts: [n_experts, dim]
    experts: tuple[Expert, ...]


@dataclass(frozen=True)
class Weights:
    tok_embd: Linear
    layers: tuple[Layer, ...]
    out_norm: np.ndarray
    output: Linear  # tied to tok_embd when the file has no output.weight


class _Tensors:
    def __init__(self, gguf: GGUFFile, int8: bool):
        self.gguf = gguf
        self.int8 = int8

    def info(self, name: str, shape: tuple[int, ...]):
        info = self.gguf.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.gguf.path}: missing tensor {name}")
        if info.shape != shape:
            raise GGUFError(f"{self.gguf.path}: tensor {name} has shape {list(info.shape)}, "
                            f"the metadata implies {list(shape)}")
        return info

    def matrix(self, name: str, rows: int, cols: int) -> Linear:
        return linear_views(self.gguf, self.info(name, (rows, cols)), self.int8)[0]

    def experts(self, prefix: str, n: int, rows: int, cols: int) -> list[Linear]:
        """The n expert matrices of `prefix` (e.g. blk.0.ffn_gate): one 3-D tensor `prefix_exps.weight`, or,
        in Mixtral files written before April 2024, one 2-D tensor `prefix.E.weight` per expert."""
        if f"{prefix}.0.weight" in self.gguf.tensors and f"{prefix}_exps.weight" not in self.gguf.tensors:
            return [self.matrix(f"{prefix}.{e}.weight", rows, cols) for e in range(n)]
        return linear_views(self.gguf, self.info(f"{prefix}_exps.weight", (n, rows, cols)), self.int8)

    def vector(self, name: str, n: int) -> np.ndarray:
        info = self.info(name, (n,))
        raw = self.gguf.raw(info)
        if info.ggml_type == QT.F32:
            return raw.view(np.float32)
        if info.ggml_type == QT.F16:
            return raw.view(np.float16).astype(np.float32)
        if info.ggml_type == QT.BF16:
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        raise GGUFError(f"{self.gguf.path}: norm {name} is {info.type_name}, expected F32, F16 or BF16")


def load_weights(gguf: GGUFFile, cfg: ModelConfig, int8: bool = False) -> Weights:
    """Map every tensor the model needs; nothing is copied but the small norm vectors of F16 files.
    `int8`: matrices take the integer path where they can (cpuinfer.linear)."""
    if "rope_freqs.weight" in gguf.tensors:  # Llama 3.1's per-frequency RoPE scaling
        raise GGUFError(f"{gguf.path}: RoPE frequency scaling (rope_freqs.weight) is not supported")
    t = _Tensors(gguf, int8)
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    layers = []
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        ffn, router, experts = None, None, ()
        if cfg.is_moe:
            router = t.matrix(p + "ffn_gate_inp.weight", cfg.n_experts, cfg.dim)
            gates = t.experts(p + "ffn_gate", cfg.n_experts, cfg.ffn_dim, cfg.dim)
            ups = t.experts(p + "ffn_up", cfg.n_experts, cfg.ffn_dim, cfg.dim)
            downs = t.experts(p + "ffn_down", cfg.n_experts, cfg.dim, cfg.ffn_dim)
            experts = tuple(Expert(g, u, d) for g, u, d in zip(gates, ups, downs))
        else:
            ffn = Expert(t.matrix(p + "ffn_gate.weight", cfg.ffn_dim, cfg.dim),
                         t.matrix(p + "ffn_up.weight", cfg.ffn_dim, cfg.dim),
                         t.matrix(p + "ffn_down.weight", cfg.dim, cfg.ffn_dim))
        layers.append(Layer(
            attn_norm=t.vector(p + "attn_norm.weight", cfg.dim),
            wq=t.matrix(p + "attn_q.weight", q_dim, cfg.dim),
            wk=t.matrix(p + "attn_k.weight", kv_dim, cfg.dim),
            wv=t.matrix(p + "attn_v.weight", kv_dim, cfg.dim),
            wo=t.matrix(p + "attn_output.weight", cfg.dim, q_dim),
            ffn_norm=t.vector(p + "ffn_norm.weight", cfg.dim),
            ffn=ffn, router=router, experts=experts))
    tok_embd = t.matrix("token_embd.weight", cfg.n_vocab, cfg.dim)
    output = t.matrix("output.weight", cfg.n_vocab, cfg.dim) if "output.weight" in gguf.tensors else tok_embd
    return Weights(tok_embd, tuple(layers), t.vector("output_norm.weight", cfg.dim), output)
