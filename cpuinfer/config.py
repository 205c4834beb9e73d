"""The model's hyper-parameters, read from GGUF metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import GGUFError

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder (Llama, Mistral, Mixtral) as llama.cpp's `llama` architecture describes it."""

    architecture: str
    n_vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_dim: int
    rope_theta: float
    norm_eps: float
    context_length: int
    sliding_window: int = 0  # 0: full causal attention
    n_experts: int = 0  # 0: dense FFN
    n_experts_used: int = 0
    name: str = ""

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @classmethod
    def from_metadata(cls, md: dict[str, Any], n_vocab: int) -> "ModelConfig":
        """Build the config from GGUF metadata; `n_vocab` comes from the embedding's shape."""
        arch = str(md.get("general.architecture", ""))
        if arch not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(
                f"unsupported architecture {arch or '(none)'!r}: cpuinfer runs {', '.join(SUPPORTED_ARCHITECTURES)} "
                "(Llama, Mistral, Mixtral)")

        def get(key: str, default: Any = None, kind: type = int) -> Any:
            value = md.get(f"{arch}.{key}", default)
            if value is None:
                raise GGUFError(f"missing metadata key {arch}.{key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GGUFError(f"metadata key {arch}.{key} holds {str(value)[:40]!r} "
                                f"({type(value).__name__}), not a number")
            return kind(value)

        scaling = md.get(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none"):
            raise GGUFError(f"RoPE scaling {scaling!r} is not supported (cpuinfer runs plain RoPE)")
        dim, n_heads = get("embedding_length"), get("attention.head_count")
        n_kv_heads = get("attention.head_count_kv", n_heads)
        if n_heads <= 0 or n_kv_heads <= 0 or dim % n_heads or n_heads % n_kv_heads:
            raise GGUFError(f"inconsistent head counts: dim {dim}, heads {n_heads}, kv heads {n_kv_heads}")
        head_dim = get("attention.key_length", dim // n_heads)
        rope_dim = get("rope.dimension_count", head_dim)
        if rope_dim > head_dim or rope_dim % 2:
            raise GGUFError(f"rope dimension {rope_dim} does not fit head dimension {head_dim}")
        n_experts = get("expert_count", 0)
        n_used = get("expert_used_count", 0)
        if n_experts and not 0 < n_used <= n_experts:
            raise GGUFError(f"expert_used_count {n_used} does not fit expert_count {n_experts}")
        cfg = cls(
            architecture=arch,
            n_vocab=n_vocab,
            dim=dim,
            n_layers=get("block_count"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=get("feed_forward_length"),
            rope_dim=rope_dim,
            rope_theta=get("rope.freq_base", 10000.0, float),
            norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5, float),
            context_length=get("context_length", 4096),
            sliding_window=get("attention.sliding_window", 0),
            n_experts=n_experts,
            n_experts_used=n_used,
            name=str(md.get("general.name", "")),
        )
        if (min(cfg.n_layers, cfg.ffn_dim, cfg.context_length, cfg.n_vocab) <= 0
                or cfg.rope_theta <= 0 or cfg.norm_eps < 0):
            raise GGUFError(f"implausible model dimensions: {cfg}")
        return cfg
