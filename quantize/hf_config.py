"""The JSON files of a checkpoint folder, checked field by field before anything is converted.

config.json (Hugging Face), params.json (Mistral consolidated),
tokenizer_config.json and model.safetensors.index.json are read through one
small typed schema: every field the converter uses has its type and range
checked, then the fields are checked against each other (the heads divide the
width, experts per token fit the experts, ...). An error names the file and
the field, quotes the value and says what was expected. JSON null means "not
set", as in the configs transformers writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpuinfer.errors import CpuinferError, quote

HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
UINT32_MAX = 2**32 - 1  # GGUF stores the hyper-parameters as uint32
_REQUIRED = object()


def read_json(path: Path) -> Any:
    """The parsed JSON file (UTF-8), or a CpuinferError saying why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CpuinferError(f"missing {path}") from None
    except IsADirectoryError:
        raise CpuinferError(f"{path} is a folder, not a JSON file") from None
    except OSError as e:
        raise CpuinferError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CpuinferError(f"{path}: not valid JSON ({quote(str(e), 120)})") from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


class Fields:
    """A JSON object whose fields are read with their expected types; `where` names it in errors."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise CpuinferError(f"{where}: expected a JSON object, found {_kind(obj)}")
        self.obj, self.where = obj, where

    def refuse(self, key: str, expected: str) -> CpuinferError:
        value = self.obj.get(key)
        return CpuinferError(f"{self.where}: {quote(key)} is {quote(value)} ({_kind(value)}); expected {expected}")

    def get(self, key: str, default: Any) -> Any:
        """The raw value; `default` when it is null or absent (an error if there is no default)."""
        value = self.obj.get(key)
        if value is not None:
            return value
        if default is _REQUIRED:
            raise CpuinferError(f"{self.where}: missing or invalid {quote(key)} (null or absent)")
        return default

    def integer(self, key: str, default: Any = _REQUIRED, lo: int = 1, hi: int = UINT32_MAX) -> int:
        if self.obj.get(key) is None:
            return self.get(key, default)
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.refuse(key, f"an integer in {lo}..{hi}")
        return value

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        """A finite number > 0 (that float32 holds)."""
        if self.obj.get(key) is None:
            return self.get(key, default)
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 3.4e38:
            raise self.refuse(key, "a finite number > 0")
        return float(value)

    def text(self, key: str, default: Any = _REQUIRED) -> str:
        value = self.get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.refuse(key, "a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.refuse(key, "true or false")
        return value

    def fields(self, key: str) -> "Fields":
        """A nested object (null or absent: an empty one)."""
        return Fields(self.get(key, {}), f"{self.where}: {quote(key)}")


@dataclass(frozen=True)
class Hparams:
    name: str
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_vocab: int
    rope_theta: float
    norm_eps: float
    context_length: int
    sliding_window: int  # 0: none
    n_experts: int
    n_experts_used: int
    tied_embeddings: bool = False
    bos_id: int | None = None
    eos_id: int | None = None


def _heads(f: Fields, dim: int, n_heads: int, kv_key: str, head_key: str) -> tuple[int, int]:
    """(kv heads, head dim): each head_dim wide, whole query heads per kv head, rotary pairs whole."""
    if f.get(head_key, None) is None and dim % n_heads:
        raise CpuinferError(f"{f.where}: the width {dim} does not divide into {n_heads} heads")
    n_kv = f.integer(kv_key, n_heads, hi=n_heads)
    if n_heads % n_kv:
        raise CpuinferError(f"{f.where}: {n_heads} attention heads do not divide into {n_kv} kv heads")
    head_dim = f.integer(head_key, dim // n_heads)
    if head_dim % 2:
        raise CpuinferError(f"{f.where}: head dimension {head_dim} is odd (RoPE rotates pairs)")
    return n_kv, head_dim


def _experts(f: Fields, n_key: str, used_key: str) -> tuple[int, int]:
    n = f.integer(n_key, 0, lo=0)
    used = f.integer(used_key, 0, lo=0)
    if n and not 0 < used <= n:
        raise CpuinferError(f"{f.where}: {used} experts per token of {n}")
    return n, used


def hf_hparams(cfg: Any, folder: Path) -> tuple[str, Hparams]:
    """(architecture, hyper-parameters) of a Hugging Face config.json."""
    f = Fields(cfg, str(folder / "config.json"))
    archs = f.get("architectures", ["(none)"])
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise f.refuse("architectures", "a list of names such as [\"MistralForCausalLM\"]")
    arch = archs[0]
    if arch not in HF_ARCHITECTURES:
        raise CpuinferError(f"{folder}: unknown architecture {quote(arch)}; cpuinfer converts "
                            f"{', '.join(HF_ARCHITECTURES)}")
    scaling = f.fields("rope_scaling").obj
    if scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise CpuinferError(f"{folder}: rope_scaling {quote(scaling)} is not supported")
    dim, n_heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    n_kv, head_dim = _heads(f, dim, n_heads, "num_key_value_heads", "head_dim")
    theta = f.number("rope_theta", None) or f.fields("rope_parameters").number("rope_theta", 10000.0)
    n_experts, used = _experts(f, "num_local_experts", "num_experts_per_tok")
    window = f.integer("sliding_window", 0, lo=0)  # checked for all, used by Mistral only
    name = f.text("_name_or_path", "") or folder.resolve().name
    n_vocab = f.integer("vocab_size")
    return arch, Hparams(
        name=name, n_layers=f.integer("num_hidden_layers"), dim=dim, ffn_dim=f.integer("intermediate_size"),
        n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, n_vocab=n_vocab, rope_theta=theta,
        norm_eps=f.number("rms_norm_eps", 1e-6), context_length=f.integer("max_position_embeddings", 4096),
        sliding_window=window if arch == "MistralForCausalLM" else 0, n_experts=n_experts, n_experts_used=used,
        tied_embeddings=f.flag("tie_word_embeddings", False),
        bos_id=f.integer("bos_token_id", None, lo=0, hi=n_vocab - 1),
        eos_id=f.integer("eos_token_id", None, lo=0, hi=n_vocab - 1))


def consolidated_hparams(params: Any, folder: Path, ffn_from_tensors: int) -> Hparams:
    """Hyper-parameters of a Mistral params.json; `ffn_from_tensors` is used when hidden_dim is absent."""
    f = Fields(params, str(folder / "params.json"))
    dim, n_heads = f.integer("dim"), f.integer("n_heads")
    n_kv, head_dim = _heads(f, dim, n_heads, "n_kv_heads", "head_dim")
    ffn_dim = f.integer("hidden_dim", ffn_from_tensors or None)
    if ffn_dim is None:
        raise CpuinferError(f"{f.where}: missing 'hidden_dim' and no feed-forward tensor to infer it from")
    moe = f.fields("moe")
    n_experts, used = _experts(moe, "num_experts", "num_experts_per_tok")
    context = f.integer("max_seq_len", None) or f.integer("max_position_embeddings", 32768)
    return Hparams(
        name=folder.resolve().name, n_layers=f.integer("n_layers"), dim=dim, ffn_dim=ffn_dim, n_heads=n_heads,
        n_kv_heads=n_kv, head_dim=head_dim, n_vocab=f.integer("vocab_size"),
        rope_theta=f.number("rope_theta", 10000.0), norm_eps=f.number("norm_eps", 1e-5), context_length=context,
        sliding_window=f.integer("sliding_window", 0, lo=0), n_experts=n_experts, n_experts_used=used)


@dataclass(frozen=True)
class TokenizerConfig:
    add_bos: bool = True
    add_eos: bool = False
    chat_template: str | None = None


def tokenizer_config(folder: Path) -> TokenizerConfig:
    """The fields of tokenizer_config.json the converter keeps (defaults when the file is absent)."""
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return TokenizerConfig()
    f = Fields(read_json(path), str(path))
    template = f.get("chat_template", None)
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = [Fields(t, f"{path}: chat_template entry") for t in template]
        template = next((t.text("template") for t in named if t.text("name", None) == "default"), None)
    elif template is not None and not isinstance(template, str):
        raise f.refuse("chat_template", "a string or a list of {\"name\", \"template\"} objects")
    return TokenizerConfig(add_bos=f.flag("add_bos_token", True), add_eos=f.flag("add_eos_token", False),
                           chat_template=template or None)


def weight_map(folder: Path) -> dict[str, str]:
    """model.safetensors.index.json's weight_map: tensor name -> shard file in `folder`."""
    path = folder / "model.safetensors.index.json"
    f = Fields(read_json(path), str(path))
    mapping = f.get("weight_map", None)
    if not isinstance(mapping, dict) or not mapping:
        raise CpuinferError(f"{path}: no weight_map")
    for name, shard in mapping.items():
        if not isinstance(shard, str) or not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CpuinferError(f"{path}: tensor {quote(name)} is placed in {quote(shard)}; expected the file "
                                "name of a shard in the folder")
    return mapping
