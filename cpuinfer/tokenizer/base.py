"""What every tokenizer shares: special tokens, splitting text at them, streaming decode."""

from __future__ import annotations

import re

import numpy as np

from ..text import utf8_text

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary.

    `encode` never turns text into special tokens: what a user types stays
    text. Only `split_specials` (and `encode_with_specials` on top of it), which
    the chat templates use for their own text, maps the literal text of control
    tokens (`<s>`, `<|im_start|>`, ...) to their ids.
    """

    def __init__(self, tokens: list[str], types: np.ndarray, bos_id: int | None, eos_id: int | None,
                 add_bos: bool, eot_id: int | None = None):
        self.tokens = tokens
        self.types = types
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.add_eos = False  # embeddings append EOS when the file says so (tokenizer.ggml.add_eos_token)
        special = np.nonzero((types == CONTROL) | (types == USER_DEFINED))[0]
        self.special_ids = {self.tokens[i]: int(i) for i in special if self.tokens[i]}
        self._hidden = set(np.nonzero(types == CONTROL)[0].tolist())
        self.stop_ids = {i for i in (eos_id, eot_id) if i is not None}
        names = sorted(self.special_ids, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def bos_token(self) -> str:
        return self.tokens[self.bos_id] if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.tokens[self.eos_id] if self.eos_id is not None else ""

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of plain `text` (special-token strings in it stay text)."""
        ids = self._encode_text(utf8_text(text, "the text")) if text else []
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def split_specials(self, text: str) -> list[str | list[int]]:
        """`text` cut at the literal strings of special tokens, which become [id]."""
        if self._special_re is None:
            return [text]
        return [[self.special_ids[part]] if i % 2 else part
                for i, part in enumerate(self._special_re.split(text)) if part]

    def encode_pieces(self, pieces: list[str | list[int]]) -> list[int]:
        """Ids of text pieces and ready ids; adjacent text is encoded as one string."""
        ids: list[int] = []
        run = ""
        for piece in pieces:
            if isinstance(piece, str):
                run += piece
            else:
                ids.extend(self.encode(run))
                run = ""
                ids.extend(piece)
        return ids + self.encode(run)

    def encode_with_specials(self, text: str) -> list[int]:
        """Token ids of template text, where literal special-token strings become their ids."""
        return self.encode_pieces(self.split_specials(text))

    def decode(self, ids) -> str:
        """Text of `ids`; control tokens (bos, eos, ...) print as nothing."""
        return self._decode_ids([int(i) for i in ids if int(i) not in self._hidden])

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation ([{"role": ..., "content": ...}, ...]) in the model's chat format."""
        return self.chat_template.encode(messages, add_generation_prompt)

    def use_chat_template(self, name_or_path: str | None, file_template: str | None = None,
                          model_name: str = "") -> None:
        """Pick the chat template: a built-in name or a Jinja file, else the file's own, else by model family."""
        from ..chat_template import ChatTemplate, choose_template

        name, source = choose_template(self, file_template, model_name, override=name_or_path)
        self.chat_template = ChatTemplate(self, source, name)

    def stream(self) -> "StreamDecoder":
        """An incremental decoder for printing tokens as they are generated."""
        return StreamDecoder(self)

    # implemented by each vocabulary type
    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_ids(self, ids: list[int]) -> str:
        raise NotImplementedError


class StreamDecoder:
    """Turns a growing list of ids into text deltas whose concatenation is `decode(ids)`.

    A token can end inside a multi-byte character (byte-fallback tokens,
    byte-level BPE): such a tail decodes to U+FFFD and is held back until the
    character completes.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        delta, self.emitted = text[len(self.emitted):], text
        return delta

    def flush(self) -> str:
        """The rest of the text, incomplete characters included."""
        text = self.tokenizer.decode(self.ids)
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta
