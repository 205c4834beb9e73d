"""The model's hyper-parameters, read from GGUF metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from . import metadata
from .errors import GGUFError, quote

SUPPORTED_ARCHITECTURES = ("llama",)
_LAYER = re.compile(r"blk\.(\d+)\.")


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
    def from_metadata(cls, md: dict[str, Any], n_vocab: int, tensor_names: Iterable[str] = ()) -> "ModelConfig":
        """Build the config from GGUF metadata; `n_vocab` comes from the embedding's shape. Given the file's
        tensor names, `block_count` must also agree with the layers they hold."""
        arch = metadata.text(md, "general.architecture", "")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(f"unsupported architecture {quote(arch) if arch else '(none)'}: cpuinfer runs "
                            f"{', '.join(SUPPORTED_ARCHITECTURES)} (Llama, Mistral, Mixtral)")
        p = arch + "."
        scaling = metadata.text(md, p + "rope.scaling.type", None)
        if scaling not in (None, "none"):
            raise GGUFError(f"RoPE scaling {quote(scaling)} is not supported (cpuinfer runs plain RoPE)")
        dim = metadata.integer(md, p + "embedding_length", lo=1)
        n_heads = metadata.integer(md, p + "attention.head_count", lo=1, hi=dim)
        n_kv_heads = metadata.integer(md, p + "attention.head_count_kv", n_heads, lo=1, hi=n_heads)
        if dim % n_heads or n_heads % n_kv_heads:
            raise GGUFError(f"inconsistent head counts: dim {dim}, heads {n_heads}, kv heads {n_kv_heads}")
        head_dim = metadata.integer(md, p + "attention.key_length", dim // n_heads, lo=2)
        rope_dim = metadata.integer(md, p + "rope.dimension_count", head_dim, lo=2)
        if rope_dim > head_dim or rope_dim % 2:
            raise GGUFError(f"rope dimension {rope_dim} does not fit head dimension {head_dim}")
        n_experts = metadata.integer(md, p + "expert_count", 0, lo=0)
        n_used = metadata.integer(md, p + "expert_used_count", 0, lo=0)
        if n_experts and not 0 < n_used <= n_experts:
            raise GGUFError(f"expert_used_count {n_used} does not fit expert_count {n_experts}")
        n_layers = metadata.integer(md, p + "block_count", lo=1)
        layers_present = {int(m.group(1)) for m in map(_LAYER.match, tensor_names) if m}
        if layers_present and max(layers_present) >= n_layers:
            raise GGUFError(f"metadata key {p}block_count is {n_layers}, but the file has tensors for layer "
                            f"{max(layers_present)} (blk.{max(layers_present)}.*)")
        if n_vocab <= 0:
            raise GGUFError("no token embedding (token_embd.weight)")
        return cls(
            architecture=arch,
            n_vocab=n_vocab,
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=metadata.integer(md, p + "feed_forward_length", lo=1),
            rope_dim=rope_dim,
            rope_theta=metadata.number(md, p + "rope.freq_base", 10000.0),
            norm_eps=metadata.number(md, p + "attention.layer_norm_rms_epsilon", 1e-5, positive=False),
            context_length=metadata.integer(md, p + "context_length", 4096, lo=1),
            sliding_window=metadata.integer(md, p + "attention.sliding_window", 0, lo=0),  # 0: none
            n_experts=n_experts,
            n_experts_used=n_used,
            name=metadata.text(md, "general.name", ""),
        )
