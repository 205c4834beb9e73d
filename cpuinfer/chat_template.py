"""Conversations to token ids: Jinja chat templates, rendered as Hugging Face does, encoded per message.

The ids come from rendering the template once per conversation prefix: the
text each message adds is encoded on its own, as Mistral's reference encoder
(mistral-common) encodes each message separately. Message contents are
replaced by placeholders while rendering, so text a user typed is encoded as
plain text even if it looks like `<s>` or `<|im_start|>`; only the template's
own text is searched for special tokens. A message may carry "ids" (the exact
tokens a model generated), which are used instead of re-encoding its content.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime
from pathlib import Path

import jinja2

from .errors import CpuinferError, quote
from .template_sandbox import LimitedSandbox, TemplateLimit, render_limited
from .text import read_utf8_file
from .tokenizer import Tokenizer

# Mistral v1 (7B v0.1/v0.2, Mixtral 8x7B) as mistral-common encodes it: system
# prompts join the first user message; [INST] is plain text, not a token.
MISTRAL_V1 = (
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set ns.system = ns.system ~ ('\n\n' if ns.system else '') ~ m.content -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}"
    "[INST] {% if ns.first and ns.system %}{{ ns.system }}\n\n{% endif %}{% set ns.first = false %}"
    "{{- m.content }} [/INST]"
    "{%- elif m.role == 'assistant' -%}"
    "{{- m.content }}{{ eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}")

# Llama 2 chat: the system prompt sits in <<SYS>> inside the first user turn.
LLAMA2 = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{%- if m.role == 'user' -%}"
    "[INST] {% if loop.first and ns.system %}<<SYS>>\n{{ ns.system }}\n<</SYS>>\n\n{% endif %}{{ m.content }} [/INST]"
    "{%- else -%}"
    "{{- ' ' ~ m.content ~ ' ' ~ eos_token ~ bos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}")

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

BUILTIN = {"mistral": MISTRAL_V1, "llama2": LLAMA2, "chatml": CHATML}



def _raise(message: str):
    raise CpuinferError(f"the chat template refused the conversation: {quote(str(message), 200)}")


def _environment() -> jinja2.Environment:
    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def choose_template(tokenizer: Tokenizer, file_template: str | None, name_hint: str,
                    override: str | None = None) -> tuple[str, str]:
    """(name, source) of the template to use: --template, else the file's, else one by model family.

    A file template in Mistral's v1 `[INST]` style is replaced by the built-in
    one, which reproduces mistral-common's token ids; Hugging Face's template
    text does not (it is rendered to one string and tokenized at once).
    """
    if override:
        if override in BUILTIN:
            return override, BUILTIN[override]
        path = Path(override)
        if path.is_file():
            return path.name, read_utf8_file(path, "--template")
        raise CpuinferError(f"--template {override!r}: not a file nor one of {', '.join(BUILTIN)}")
    if file_template:
        if "[INST]" in file_template and "<<SYS>>" not in file_template and "[INST]" not in tokenizer.special_ids:
            return "mistral", MISTRAL_V1
        return "file", file_template
    hint = name_hint.lower()
    if "<|im_start|>" in tokenizer.special_ids:
        return "chatml", CHATML
    if "mistral" in hint or "mixtral" in hint:
        return "mistral", MISTRAL_V1
    return "llama2", LLAMA2


class ChatTemplate:
    """A compiled template bound to a tokenizer."""

    def __init__(self, tokenizer: Tokenizer, source: str, name: str = "custom"):
        self.tokenizer = tokenizer
        self.name = name
        try:
            self._template = _environment().from_string(source)
        except (jinja2.TemplateError, RecursionError) as e:
            raise CpuinferError(f"the chat template does not parse: {quote(str(e), 200)}") from None
        # Message contents are rendered as placeholders: private-use characters around a random key that is
        # not in the source, then the message's number. Digits survive filters such as upper and trim, and a
        # template with private-use characters of its own cannot forge or break a placeholder.
        key = str(secrets.randbelow(10**12)).zfill(12)
        while key in source:
            key = str(secrets.randbelow(10**12)).zfill(12)
        self._placeholder = "\ue000" + key + "{}\ue001"
        self._placeholder_re = re.compile("\ue000" + key + "(\\d+)\ue001")

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The template's text for `messages` (contents as given), within the sandbox's time and size limits."""
        try:
            return render_limited(self._template, messages=messages, add_generation_prompt=add_generation_prompt,
                                  bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token)
        except CpuinferError:
            raise
        except TemplateLimit as e:
            raise CpuinferError(f"the chat template was stopped: {e}") from None
        except Exception as e:  # a template is user code: any error it raises is the user's to see
            raise CpuinferError(f"the chat template failed: {type(e).__name__}: {quote(str(e), 200)}") from None

    def encode(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the conversation, message by message (see the module docstring)."""
        masked = [{**m, "content": self._placeholder.format(i)} for i, m in enumerate(messages)]
        renders = [""]
        try:
            for k in range(len(masked) + 1):
                renders.append(self.render(masked[:k], add_generation_prompt=False))
            if add_generation_prompt:
                renders.append(self.render(masked, add_generation_prompt=True))
            prefix_ok = all(b.startswith(a) for a, b in zip(renders, renders[1:]))
        except CpuinferError:
            prefix_ok = False  # a template may reject partial conversations: render it whole
        if not prefix_ok:
            renders = ["", self.render(masked, add_generation_prompt)]
        ids: list[int] = []
        for before, after in zip(renders, renders[1:]):
            ids.extend(self._encode_chunk(after[len(before):], messages))
        return ids

    def _encode_chunk(self, text: str, messages: list[dict]) -> list[int]:
        """Template text (special tokens parsed) with message contents (plain text, or given ids) spliced in."""
        pieces: list[str | list[int]] = []
        for i, part in enumerate(self._placeholder_re.split(text)):
            if i % 2 and int(part) < len(messages):
                message = messages[int(part)]
                pieces.append(list(message["ids"]) if message.get("ids") is not None else str(message["content"]))
            elif i % 2:  # a number no message has: the template built it; it stays text
                pieces.extend(self.tokenizer.split_specials(self._placeholder.format(part)))
            elif part:
                pieces.extend(self.tokenizer.split_specials(part))
        return self.tokenizer.encode_pieces(pieces)
