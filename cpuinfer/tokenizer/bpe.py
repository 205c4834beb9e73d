"""`tokenizer.ggml.model = gpt2`: byte-level BPE with merges (SmolLM2, Llama 3, ...).

Built on Hugging Face `tokenizers`. `tokenizer.ggml.pre` names the
pre-tokenizer; the regexes are the ones llama.cpp uses for that name, applied
in order, each splitting off its matches.
"""

from __future__ import annotations

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from ..errors import GGUFError, quote
from .base import Tokenizer

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

PRE_TOKENIZERS = {
    "default": [GPT2],
    "gpt2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "llama-bpe": [LLAMA3],
    "llama3": [LLAMA3],
}


class ByteLevelBPETokenizer(Tokenizer):
    def __init__(self, tokens, types, merges, pre, bos_id, eos_id, add_bos, eot_id=None):
        super().__init__(tokens, types, bos_id, eos_id, add_bos, eot_id)
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(f"unsupported tokenizer.ggml.pre {quote(pre)}; "
                            f"cpuinfer knows {', '.join(PRE_TOKENIZERS)}")
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        if any(len(p) != 2 for p in pairs):
            raise GGUFError("tokenizer.ggml.merges holds an entry that is not two tokens separated by a space")
        try:
            tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in ("llama-bpe", "llama3")))
        except Exception as e:  # the tokenizers library raises plain Exception, e.g. for a merge of unknown tokens
            raise GGUFError("the vocabulary (tokenizer.ggml.tokens / merges) is not a valid BPE model: "
                            f"{quote(str(e), 200)}") from None
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tk.decoder = decoders.ByteLevel()
        self._tk = tk

    def _encode_text(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def _decode_ids(self, ids: list[int]) -> str:
        return self._tk.decode(ids, skip_special_tokens=False)
