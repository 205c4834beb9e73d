"""Hugging Face and Mistral-consolidated checkpoint folders as conversion sources.

Both describe the same Llama-family model with different names; Hugging Face
also stores Q/K rows permuted for its rotate_half RoPE, which llama.cpp's
converter undoes (see source.rope_row_order). Consolidated checkpoints already
use the interleaved layout and are not permuted.
"""

from __future__ import annotations

import re
from pathlib import Path

from gguf.constants import GGUFValueType as VT

from cpuinfer.errors import CpuinferError, quote

from .hf_config import Hparams, consolidated_hparams, hf_hparams, read_json, tokenizer_config, weight_map
from .safetensors_file import SafetensorsEntry, read_header
from .source import Matrix, Source, SourceTensor, reordered, rope_row_order, whole
from .vocab import add_sentencepiece_vocab, find_tokenizer_model

_EXPERT = re.compile(r"\.experts\.(\d+)\.")

HF_NAMES = {
    "token_embd": "model.embed_tokens.weight",
    "output_norm": "model.norm.weight",
    "output": "lm_head.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "attn_q": "model.layers.{i}.self_attn.q_proj.weight",
    "attn_k": "model.layers.{i}.self_attn.k_proj.weight",
    "attn_v": "model.layers.{i}.self_attn.v_proj.weight",
    "attn_output": "model.layers.{i}.self_attn.o_proj.weight",
    "ffn_gate": "model.layers.{i}.mlp.gate_proj.weight",
    "ffn_up": "model.layers.{i}.mlp.up_proj.weight",
    "ffn_down": "model.layers.{i}.mlp.down_proj.weight",
    "ffn_gate_inp": "model.layers.{i}.block_sparse_moe.gate.weight",
    "ffn_gate_exps": "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
    "ffn_up_exps": "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight",
    "ffn_down_exps": "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight",
}

CONSOLIDATED_NAMES = {
    "token_embd": "tok_embeddings.weight",
    "output_norm": "norm.weight",
    "output": "output.weight",
    "attn_norm": "layers.{i}.attention_norm.weight",
    "ffn_norm": "layers.{i}.ffn_norm.weight",
    "attn_q": "layers.{i}.attention.wq.weight",
    "attn_k": "layers.{i}.attention.wk.weight",
    "attn_v": "layers.{i}.attention.wv.weight",
    "attn_output": "layers.{i}.attention.wo.weight",
    "ffn_gate": "layers.{i}.feed_forward.w1.weight",
    "ffn_up": "layers.{i}.feed_forward.w3.weight",
    "ffn_down": "layers.{i}.feed_forward.w2.weight",
    "ffn_gate_inp": "layers.{i}.feed_forward.gate.weight",
    "ffn_gate_exps": "layers.{i}.feed_forward.experts.{e}.w1.weight",
    "ffn_up_exps": "layers.{i}.feed_forward.experts.{e}.w3.weight",
    "ffn_down_exps": "layers.{i}.feed_forward.experts.{e}.w2.weight",
}


def open_hf(folder: Path) -> Source:
    """A Hugging Face folder: config.json, (sharded) safetensors, tokenizer.model."""
    arch, hp = hf_hparams(read_json(folder / "config.json"), folder)
    tokenizer = tokenizer_config(folder)
    entries = _hf_entries(folder)
    source = Source(f"Hugging Face checkpoint {folder} ({arch})")
    _build(source, hp, HF_NAMES, entries, str(folder), permute_qk=True)
    add_sentencepiece_vocab(source, find_tokenizer_model(folder), hp.n_vocab, hp.bos_id, hp.eos_id, tokenizer)
    return source


def open_consolidated(folder: Path) -> Source:
    """A Mistral consolidated folder: params.json, consolidated.safetensors, tokenizer.model."""
    params = read_json(folder / "params.json")
    path = folder / "consolidated.safetensors"
    if not path.is_file():
        raise CpuinferError(f"{folder}: missing consolidated.safetensors")
    entries = read_header(str(path))
    w1 = entries.get("layers.0.feed_forward.w1.weight") or entries.get("layers.0.feed_forward.experts.0.w1.weight")
    hp = consolidated_hparams(params, folder, w1.shape[0] if w1 and len(w1.shape) == 2 else 0)
    source = Source(f"Mistral consolidated checkpoint {folder}")
    _build(source, hp, CONSOLIDATED_NAMES, entries, str(folder), permute_qk=False)
    add_sentencepiece_vocab(source, find_tokenizer_model(folder), hp.n_vocab)
    return source


def _hf_entries(folder: Path) -> dict[str, SafetensorsEntry]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        mapping = weight_map(folder)
        entries: dict[str, SafetensorsEntry] = {}
        for shard in sorted(set(mapping.values())):
            if not (folder / shard).is_file():
                raise CpuinferError(f"{folder}: missing shard {quote(shard)} named by model.safetensors.index.json")
            entries.update(read_header(str(folder / shard)))
        for name, shard in mapping.items():
            if name not in entries:
                raise CpuinferError(f"{folder / shard}: lacks tensor {quote(name)} that the index places there")
        return entries
    single = folder / "model.safetensors"
    if single.is_file():
        return read_header(str(single))
    if list(folder.glob("*.bin")):
        raise CpuinferError(f"{folder}: only PyTorch .bin weights; cpuinfer reads safetensors checkpoints")
    raise CpuinferError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _check_counts(hp: Hparams, names: dict[str, str], entries: dict[str, SafetensorsEntry], where: str) -> None:
    """The config's layer and expert counts against the tensors present: a count too low would silently
    convert part of the model."""
    layer = re.compile(re.escape(names["attn_norm"].split("{i}")[0]) + r"(\d+)\.")
    for count, label, find in ((hp.n_layers, "layer", layer.match), (hp.n_experts, "expert", _EXPERT.search)):
        found = {int(m.group(1)): name for name, m in zip(entries, map(find, entries)) if m}
        if found and max(found) >= count:
            raise CpuinferError(f"{where}: the config gives {count} {label}(s), but the checkpoint has a tensor "
                                f"for {label} {max(found)}: {quote(found[max(found)])}")


def _build(source: Source, hp: Hparams, names: dict[str, str], entries: dict[str, SafetensorsEntry],
           where: str, permute_qk: bool) -> None:
    """Architecture metadata and the tensor list, each tensor checked for presence and shape."""
    _check_counts(hp, names, entries, where)
    add_llama_metadata(source, hp)

    def matrix(key: str, shape: tuple[int, ...], **fmt) -> Matrix:
        name = names[key].format(**fmt)
        entry = entries.get(name)
        if entry is None:
            raise CpuinferError(f"{where}: missing tensor {name}")
        if entry.shape != shape:
            raise CpuinferError(f"{where}: tensor {name} has shape {list(entry.shape)}, expected {list(shape)}")
        if len(shape) == 1:
            return whole(shape, entry.read)
        return Matrix(shape[0], shape[1], entry.read_rows)

    def add(key: str, shape: tuple[int, ...], i: int | None = None, heads: int | None = None) -> None:
        m = matrix(key, shape, i=i)
        if heads is not None and permute_qk:
            m = reordered(m, rope_row_order(shape[0], heads))
        source.tensors.append(SourceTensor(_gguf_name(key, i), shape, [m]))

    def add_experts(key: str, rows: int, cols: int, i: int) -> None:
        parts = [matrix(key, (rows, cols), i=i, e=e) for e in range(hp.n_experts)]
        source.tensors.append(SourceTensor(_gguf_name(key, i), (hp.n_experts, rows, cols), parts))

    q_dim, kv_dim = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    add("token_embd", (hp.n_vocab, hp.dim))
    for i in range(hp.n_layers):
        add("attn_norm", (hp.dim,), i)
        add("attn_q", (q_dim, hp.dim), i, heads=hp.n_heads)
        add("attn_k", (kv_dim, hp.dim), i, heads=hp.n_kv_heads)
        add("attn_v", (kv_dim, hp.dim), i)
        add("attn_output", (hp.dim, q_dim), i)
        add("ffn_norm", (hp.dim,), i)
        if hp.n_experts:
            add("ffn_gate_inp", (hp.n_experts, hp.dim), i)
            add_experts("ffn_gate_exps", hp.ffn_dim, hp.dim, i)
            add_experts("ffn_up_exps", hp.ffn_dim, hp.dim, i)
            add_experts("ffn_down_exps", hp.dim, hp.ffn_dim, i)
        else:
            add("ffn_gate", (hp.ffn_dim, hp.dim), i)
            add("ffn_up", (hp.ffn_dim, hp.dim), i)
            add("ffn_down", (hp.dim, hp.ffn_dim), i)
    add("output_norm", (hp.dim,))
    if not (hp.tied_embeddings and names["output"] not in entries):
        add("output", (hp.n_vocab, hp.dim))


def _gguf_name(key: str, i: int | None) -> str:
    return f"{key}.weight" if i is None else f"blk.{i}.{key}.weight"


def add_llama_metadata(source: Source, hp: Hparams) -> None:
    """llama.cpp's `llama.*` keys for these hyper-parameters."""
    p = "llama."
    source.set("general.architecture", "llama", VT.STRING)
    source.set("general.name", hp.name, VT.STRING)
    source.set(p + "vocab_size", hp.n_vocab, VT.UINT32)
    source.set(p + "context_length", hp.context_length, VT.UINT32)
    source.set(p + "embedding_length", hp.dim, VT.UINT32)
    source.set(p + "block_count", hp.n_layers, VT.UINT32)
    source.set(p + "feed_forward_length", hp.ffn_dim, VT.UINT32)
    source.set(p + "rope.dimension_count", hp.head_dim, VT.UINT32)
    source.set(p + "rope.freq_base", hp.rope_theta, VT.FLOAT32)
    source.set(p + "attention.head_count", hp.n_heads, VT.UINT32)
    source.set(p + "attention.head_count_kv", hp.n_kv_heads, VT.UINT32)
    source.set(p + "attention.layer_norm_rms_epsilon", hp.norm_eps, VT.FLOAT32)
    if hp.head_dim != hp.dim // hp.n_heads:
        source.set(p + "attention.key_length", hp.head_dim, VT.UINT32)
        source.set(p + "attention.value_length", hp.head_dim, VT.UINT32)
    if hp.sliding_window:
        source.set(p + "attention.sliding_window", int(hp.sliding_window), VT.UINT32)
    if hp.n_experts:
        source.set(p + "expert_count", hp.n_experts, VT.UINT32)
        source.set(p + "expert_used_count", hp.n_experts_used, VT.UINT32)
