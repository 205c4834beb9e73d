"""A Jinja sandbox with limits on time and size, for chat templates.

A chat template is code that comes inside a model file or from --template.
jinja2's ImmutableSandboxedEnvironment keeps it away from Python's internals
and from mutating lists, but not from running for ever (nested range() loops)
or from building huge strings: `'a' * 10**10` is one C call that no timer can
interrupt. So, on top of it:

- time: a render that runs longer than MAX_SECONDS is interrupted; a timer
  thread raises an exception in the rendering thread, which Python delivers
  between two bytecodes (this works in any thread, unlike SIGALRM);
- size: each operation through which a template can make a string or list
  much larger than its inputs (`*`, `**`, `%`, `+`, `~`, str.format, the
  width-taking str methods, the join / replace / center / indent / format
  filters) is checked before it runs, and the output is counted as it is
  produced: nothing may exceed MAX_CHARS.

Either limit raises TemplateLimit, which says which one was hit.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import re
import threading
from typing import Any, Iterator

import jinja2
import jinja2.filters
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SECONDS = 2.0
# A chat template renders role markers around placeholders (message contents are not in its output):
# a few kilobytes. 4 million characters is far above any real template and far below trouble.
MAX_CHARS = 4_000_000
_MAX_INT_BITS = 100_000
_WIDE = re.compile(r"\d{7,}")  # a width or precision of a million or more in a % or {} format


class TemplateLimit(Exception):
    """A template went past MAX_SECONDS or MAX_CHARS."""


class _TimeUp(TemplateLimit):
    def __str__(self) -> str:
        return f"it ran longer than {MAX_SECONDS:g} s"


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def _limit(n: int, what: str) -> None:
    if n > MAX_CHARS:
        raise TemplateLimit(f"{what} would be {n:,} long (characters or items), past the limit of {MAX_CHARS:,}")


def _joined_size(items, sep: str = "") -> int:
    items = list(items)
    return sum(len(str(x)) for x in items) + len(sep) * max(len(items) - 1, 0)


def _bounded_filter(name: str, size_of):
    """Jinja's filter `name`, refusing to run when size_of(its arguments) exceeds MAX_CHARS."""
    real = jinja2.filters.FILTERS[name]

    def checked(*args, **kwargs):
        _limit(size_of(*args, **kwargs), f"the {name} filter's result")
        return real(*args, **kwargs)

    return functools.update_wrapper(checked, real)  # keeps jinja_pass_arg (eval context first, for some)


@jinja2.pass_eval_context
def _join(eval_ctx, value, d: str = "", attribute=None) -> str:
    """Jinja's join filter on a list of the items (a generator can be measured only once), size-checked."""
    items = list(value) if attribute is None else \
        list(map(jinja2.filters.make_attrgetter(eval_ctx.environment, attribute), value))
    _limit(_joined_size(items, str(d)), "the join filter's result")
    return jinja2.filters.do_join(eval_ctx, items, d)


def _str_method_size(method: str, s: str, args: tuple) -> int:
    """An upper bound of the result's length of s.method(*args), for the methods that can grow a string."""
    ints = [a for a in args if isinstance(a, int)]
    if method in ("ljust", "rjust", "center", "zfill"):
        return max([len(s), *ints])
    if method == "expandtabs":
        return len(s) + s.count("\t") * max([8, *ints])
    if method == "join" and args:
        return _joined_size(args[0], s)
    if method == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return len(s) + (s.count(args[0]) if args[0] else len(s) + 1) * len(args[1])
    return 0


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node, frame) -> None:  # `a ~ b`: Jinja's own str_join, but size-checked
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with MAX_CHARS enforced on every growing operation (see the module)."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self, **options):
        super().__init__(**options)
        self.filters.update(
            join=_join,
            replace=_bounded_filter("replace", lambda ctx, s, old, new, *a, **k:
                                    _str_method_size("replace", str(s), (str(old), str(new)))),
            center=_bounded_filter("center", lambda s, width=80: max(len(str(s)), width)),
            indent=_bounded_filter("indent", lambda s, width=4, *a, **k:
                                   (str(s).count("\n") + 1) * (len(width) if isinstance(width, str) else width)
                                   + len(str(s))),
            format=_bounded_filter("format", lambda s, *a, **k: MAX_CHARS + 1 if _WIDE.search(str(s)) else 0))

    def checked_concat(self, parts) -> str:
        text = [str(p) for p in parts]
        _limit(sum(map(len, text)), "a ~ concatenation")
        return "".join(text)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) and isinstance(n, int):
                    _limit(_size(seq) * n, "a repetition (*)")
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise TemplateLimit("a product (*) of integers would be too large")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                and right * math.log2(abs(left)) > _MAX_INT_BITS:
            raise TemplateLimit("a power (**) would be too large")
        elif operator == "%" and isinstance(left, str) and _WIDE.search(left):
            raise TemplateLimit("a % format has a width of a million or more")
        elif operator == "+":
            _limit(_size(left) + _size(right), "a sum (+)")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any):
        if isinstance(getattr(value, "__self__", None), str) and _WIDE.search(value.__self__):
            raise TemplateLimit("a str.format has a width of a million or more")
        return super().wrap_str_format(value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            method = getattr(__obj, "__name__", "")
            if method == "join" and args:
                args = (list(args[0]), *args[1:])  # measured, then joined: a generator is read once
            _limit(_str_method_size(method, owner, args), "a string method's result")
        return super().call(__context, __obj, *args, **kwargs)


def render_limited(template, **variables) -> str:
    """The template's output, within MAX_SECONDS and MAX_CHARS (else TemplateLimit)."""
    pieces, size = [], 0
    with _time_limit(MAX_SECONDS):
        for piece in template.generate(**variables):
            size += len(piece)
            _limit(size, "the output")
            pieces.append(piece)
    return "".join(pieces)


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _TimeUp in this thread if the block is still running after `seconds`."""
    thread = ctypes.c_ulong(threading.get_ident())
    lock, state = threading.Lock(), {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, ctypes.py_object(_TimeUp))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["fired"]:  # the exception may still be pending: withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread, None)
