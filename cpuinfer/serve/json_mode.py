"""JSON mode: sampling constrained so the reply is one syntactically valid JSON object.

`JsonState` is a character-level state machine of the JSON grammar (RFC 8259)
that says whether a text is a prefix of a JSON object. `JsonConstraint`
samples as usual and checks the token's text against it: the sampler's choice
is almost always valid, so the usual cost is one check per token; a rejected
token is masked and the sampler draws again, and after a few rejections the
tokens are tried in order of probability. End-of-sequence is never allowed:
the reply ends as soon as the object closes. An object still open when
max_tokens runs out cannot be closed honestly, so that reply reports
finish_reason "length".
"""

from __future__ import annotations

import numpy as np

WHITESPACE = " \t\n\r"
DIGITS = "0123456789"
HEX = DIGITS + "abcdefABCDEF"
MAX_DEPTH = 64
MAX_WHITESPACE = 32  # a model can pad with newlines forever: a run of more is refused
LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
# number grammar: (state, character class) -> next state; the states in NUMBER_ENDS may end a number
NUMBER = {("minus", "0"): "zero", ("minus", "d"): "int", ("int", "0"): "int", ("int", "d"): "int",
          ("int", "."): "dot", ("int", "e"): "exp", ("zero", "."): "dot", ("zero", "e"): "exp",
          ("dot", "0"): "frac", ("dot", "d"): "frac", ("frac", "0"): "frac", ("frac", "d"): "frac",
          ("frac", "e"): "exp", ("exp", "s"): "exp_sign", ("exp", "0"): "exp_int", ("exp", "d"): "exp_int",
          ("exp_sign", "0"): "exp_int", ("exp_sign", "d"): "exp_int", ("exp_int", "0"): "exp_int",
          ("exp_int", "d"): "exp_int"}
NUMBER_ENDS = {"zero", "int", "frac", "exp_int"}
REJECTIONS_BEFORE_SCAN = 8
TAIL = 8  # tokens of context when decoding a candidate (SentencePiece spaces depend on the previous token)


def _char_class(c: str) -> str:
    return "0" if c == "0" else "d" if c in DIGITS else "." if c == "." else "e" if c in "eE" else \
        "s" if c in "+-" else "x"


class JsonState:
    """Where a prefix of a JSON object stands; `feed` extends it, `complete` says the object closed."""

    __slots__ = ("stack", "mode", "aux", "key", "spaces")

    def __init__(self):
        self.stack: list[str] = []  # open containers, "{" or "["
        self.mode = "start"
        self.aux = ""  # number state, or the rest of a literal, or hex digits left of a \\u escape
        self.key = False  # the open string is an object key
        self.spaces = 0

    def copy(self) -> "JsonState":
        other = JsonState.__new__(JsonState)
        other.stack, other.mode, other.aux, other.key, other.spaces = \
            self.stack[:], self.mode, self.aux, self.key, self.spaces
        return other

    @property
    def complete(self) -> bool:
        return self.mode == "done"

    @property
    def in_string(self) -> bool:
        return self.mode in ("string", "escape", "unicode")

    def feed(self, text: str) -> bool:
        """Consume `text`; False (and the state is then undefined) when it cannot continue a JSON object."""
        return all(self._char(c) for c in text)

    def _char(self, c: str) -> bool:
        m = self.mode
        if m == "string":
            if c == '"':
                self._end_string()
            elif c == "\\":
                self.mode = "escape"
            return c >= " "
        if m == "escape":
            if c == "u":
                self.mode, self.aux = "unicode", "4"
            elif c in '"\\/bfnrt':
                self.mode = "string"
            else:
                return False
            return True
        if m == "unicode":
            left = int(self.aux) - 1
            self.mode, self.aux = ("string", "") if left == 0 else ("unicode", str(left))
            return c in HEX
        if m == "number":
            after = NUMBER.get((self.aux, _char_class(c)))
            if after is not None:
                self.aux = after
                return True
            if self.aux not in NUMBER_ENDS:
                return False
            self._end_value()  # the character ends the number; it is read below
            m = self.mode
        if m == "literal":
            if not self.aux.startswith(c):
                return False
            self.aux = self.aux[1:]
            if not self.aux:
                self._end_value()
            return True
        if c in WHITESPACE:
            self.spaces += 1
            return self.spaces <= MAX_WHITESPACE
        self.spaces = 0
        if m in ("start", "value", "value_or_end"):
            return self._value(c, m)
        if m in ("key_or_end", "key"):
            if c == "}" and m == "key_or_end":
                return self._close("{")
            self.mode, self.key = "string", True
            return c == '"'
        if m == "colon":
            self.mode = "value"
            return c == ":"
        if m == "after":
            top = self.stack[-1]
            if c == ",":
                self.mode = "key" if top == "{" else "value"
                return True
            return c == ("}" if top == "{" else "]") and self._close(top)
        return False  # done: only whitespace may follow

    def _value(self, c: str, m: str) -> bool:
        if c == "{":
            return self._open("{", "key_or_end")
        if m == "start":
            return False  # json_object: the top level is an object
        if c == "]" and m == "value_or_end":
            return self._close("[")
        if c == "[":
            return self._open("[", "value_or_end")
        if c == '"':
            self.mode, self.key = "string", False
        elif c == "-" or c in DIGITS:
            self.mode, self.aux = "number", "minus" if c == "-" else "zero" if c == "0" else "int"
        elif c in LITERALS:
            self.mode, self.aux = "literal", LITERALS[c]
        else:
            return False
        return True

    def _open(self, kind: str, mode: str) -> bool:
        self.stack.append(kind)
        self.mode = mode
        return len(self.stack) <= MAX_DEPTH

    def _close(self, kind: str) -> bool:
        if not self.stack or self.stack[-1] != kind:
            return False
        self.stack.pop()
        self._end_value()
        return True

    def _end_string(self) -> None:
        if self.key:
            self.mode = "colon"
        else:
            self._end_value()

    def _end_value(self) -> None:
        self.mode = "after" if self.stack else "done"


class JsonConstraint:
    """Chooses tokens whose text keeps the reply a prefix of a JSON object."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.state = JsonState()
        self.ids: list[int] = []

    @property
    def complete(self) -> bool:
        return self.state.complete

    def choose(self, sampler, logits: np.ndarray, history: list[int]) -> int | None:
        """A valid token (the sampler's choice when that is valid), recorded; None if no token fits."""
        logits = np.array(logits, dtype=np.float32)
        for _ in range(REJECTIONS_BEFORE_SCAN):
            token = sampler(logits, history)
            state = self._after(token)
            if state is not None:
                return self._accept(token, state)
            logits[token] = -np.inf
            if not np.isfinite(logits).any():
                return None
        for token in np.argsort(-logits, kind="stable").tolist():
            if not np.isfinite(logits[token]):
                break
            state = self._after(token)
            if state is not None:
                return self._accept(token, state)
        return None

    def _accept(self, token: int, state: JsonState) -> int:
        self.ids.append(token)
        self.state = state
        return token

    def _after(self, token: int) -> JsonState | None:
        """The state after `token`'s text, or None when that text cannot continue a JSON object."""
        if token in self.tokenizer.stop_ids:
            return None
        tail = self.ids[-TAIL:]
        # An incomplete UTF-8 character decodes to U+FFFD: it is judged once the next token completes it.
        before = self.tokenizer.decode(tail).rstrip("\ufffd")
        after = self.tokenizer.decode(tail + [token])
        pending = after.endswith("\ufffd")
        after = after.rstrip("\ufffd")
        if not after.startswith(before):
            return None
        state = self.state.copy()
        if not state.feed(after[len(before):]):
            return None
        if pending and not state.in_string:  # only a string may hold the character still being spelled
            return None
        return state
