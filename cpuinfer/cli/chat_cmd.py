"""`cpuinfer chat [MODEL]`: a terminal REPL over a ChatSession."""

from __future__ import annotations

import shlex
import signal
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ContextFullError, CpuinferError, one_line
from ..memory import peak_resident_bytes, resident_bytes
from ..moe import summary
from ..numbers import token_limit
from ..session import ChatSession
from ..text import decode_utf8, utf8_text
from . import options as o
from .common import load_model, user_errors

HELP = """\
/help                this help
/reset               start a new conversation
/drop                forget the oldest exchange (frees context)
/system TEXT         set the system prompt (and start over)
/temp X  /top_p X  /top_k N  /min_p X  /repeat_penalty X  /seed N
                     sampling settings
/stats               context used, speed, memory
/save FILE           save the conversation as JSON
/load FILE           load a conversation saved with /save
/exit                leave (or Ctrl-D)
End a line with \\ to continue on the next one. Ctrl-C stops a reply."""

SETTINGS = {"temp": ("temperature", float), "top_p": ("top_p", float), "top_k": ("top_k", int),
            "min_p": ("min_p", float), "repeat_penalty": ("repeat_penalty", float), "seed": ("seed", int)}


def chat(model: Optional[str] = typer.Argument(None, help="GGUF file (default: SmolLM2-135M-Instruct)"),
         system: Optional[str] = o.SYSTEM, template: Optional[str] = o.TEMPLATE,
         temp: float = o.TEMP, top_k: int = o.TOP_K, top_p: float = o.TOP_P, min_p: float = o.MIN_P,
         repeat_penalty: float = o.REPEAT_PENALTY, repeat_last_n: int = o.REPEAT_LAST_N,
         seed: Optional[int] = o.SEED, ctx: Optional[int] = o.CTX, threads: Optional[int] = o.THREADS,
         kv_type: Optional[str] = o.KV_TYPE,
         max_tokens: Optional[int] = typer.Option(None, "-n", "--max-tokens", help="cap on a reply's length"),
         no_color: bool = typer.Option(False, "--no-color", help="plain text output"),
         exact: bool = o.EXACT, max_memory: Optional[str] = o.MAX_MEMORY, expert_cache: str = o.EXPERT_CACHE,
         guess_next: bool = o.GUESS_NEXT,
         debug: bool = o.DEBUG) -> None:
    """Chat with a model in the terminal."""
    console = Console(no_color=no_color, highlight=False, emoji=False)
    with user_errors(debug):
        system = utf8_text(system, "--system") if system else system
        settings = o.sampler_settings(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        token_limit(max_tokens)
        m = load_model(model, ctx, threads, kv_type=kv_type, exact=exact, max_memory=max_memory,
                       expert_cache=expert_cache, guess_next=guess_next)
        if template:
            m.tokenizer.use_chat_template(template)
        session = ChatSession(m, system=system, settings=settings, max_tokens=max_tokens)
    window = f", sliding window {m.config.sliding_window}" if m.config.sliding_window else ""
    console.print(f"[bold]{escape(one_line(m.config.name or m.path))}[/] · context {m.n_ctx}{window} · "
                  f"template {escape(one_line(m.tokenizer.chat_template.name))} · {m.threads} threads · "
                  "/help for commands")
    Repl(session, console, debug).run()


class Repl:
    def __init__(self, session: ChatSession, console: Console, debug: bool):
        self.session, self.console, self.debug = session, console, debug

    def run(self) -> None:
        try:
            import readline  # noqa: F401  (arrow keys and history for input())
        except ImportError:
            pass
        # A shell that starts us in the background makes SIGINT ignored; in the REPL Ctrl-C must stop a reply.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        while True:
            try:
                text = self.read()
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print("\n[dim](Ctrl-D or /exit to leave)[/]")
                continue
            except CpuinferError as e:
                self.error(f"{e}; nothing was sent")
                continue
            if not text.strip():
                continue
            if text.startswith("/"):
                if self.command(text) == "exit":
                    return
                continue
            self.reply(text)

    def read(self) -> str:
        """One message (lines ending in \\ continue it), checked to be UTF-8 (see cpuinfer.text)."""
        lines = [self.read_line(">>> ")]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(self.read_line("... "))
        return "\n".join(lines)

    @staticmethod
    def read_line(prompt: str) -> str:
        try:
            return utf8_text(input(prompt), "the line")
        except UnicodeDecodeError as e:  # input() decodes strictly under a UTF-8 locale (not in UTF-8 mode)
            decode_utf8(bytes(e.object), "the line")  # raises the CpuinferError that names the byte
            raise

    def reply(self, text: str) -> None:
        s = self.session

        def on_prefill(done: int, total: int) -> None:
            if total > s.model.batch:
                self.console.print(f"[dim]reading the prompt: {done}/{total}[/]", end="\r")

        try:
            for delta in s.send(text, on_prefill=on_prefill):
                self.console.out(delta, end="", highlight=False)
        except KeyboardInterrupt:
            self.console.print("\n[yellow](stopped)[/]")
        except ContextFullError as e:
            self.console.print(f"[yellow]{e}[/]")
            return
        except CpuinferError as e:
            self.error(str(e))
            return
        t = s.last.timings if s.last else None
        if t is None:
            return
        note = {"context full": " · [yellow]context full: /reset or /drop[/]", "max tokens": " · max tokens"}
        self.console.print(f"\n[dim]{t.generated_tokens} tokens, {t.generation_tps:.1f} t/s · prompt "
                           f"{t.prompt_tokens} tokens, {t.prompt_tps:.1f} t/s · context "
                           f"{s.context_used()}/{s.cache.n_ctx}{note.get(t.stop_reason, '')}[/]")

    def command(self, line: str) -> str | None:
        s, out = self.session, self.console
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        try:
            if name in ("exit", "quit", "bye"):
                return "exit"
            if name == "help":
                out.print(HELP, markup=False)
            elif name == "reset":
                s.reset()
                out.print("[dim]new conversation[/]")
            elif name == "drop":
                out.print("[dim]dropped the oldest exchange[/]" if s.drop_oldest() else "[dim]nothing to drop[/]")
            elif name == "system":
                s.system = arg or None
                s.reset()
                out.print(f"[dim]system prompt {'set' if arg else 'cleared'}; new conversation[/]")
            elif name in SETTINGS:
                field, kind = SETTINGS[name]
                s.configure(**{field: kind(arg)})
                out.print(f"[dim]{field} = {getattr(s.settings, field)}[/]")
            elif name == "stats":
                self.stats()
            elif name in ("save", "load"):
                path = shlex.split(arg)[0] if arg else ""
                if not path:
                    raise CpuinferError(f"/{name} needs a file name")
                getattr(s, name)(path)
                out.print(f"[dim]{'saved to' if name == 'save' else 'loaded'} {escape(path)}[/]")
            else:
                out.print(f"unknown command /{escape(name)} (try /help)")
        except ValueError:  # int("x"), float("x"), or shlex's unbalanced quotes
            kind = SETTINGS[name][1] if name in SETTINGS else None
            self.error(f"/{name} needs " + ("an integer" if kind is int else "a number" if kind else "a file name"))
        except CpuinferError as e:
            self.error(str(e))
        return None

    def error(self, message: str) -> None:
        """One line, as the commands print their errors (the terminal wraps it, not rich)."""
        self.console.print(f"[red]error:[/] {escape(one_line(message))}", soft_wrap=True)

    def stats(self) -> None:
        s = self.session
        m, cache = s.model, s.cache
        t = s.last.timings if s.last else None
        lines = [f"context: {s.context_used()} of {cache.n_ctx} tokens"
                 + (f" (rolling window of {cache.size})" if cache.sliding else ""),
                 f"messages: {len(s.messages)}",
                 f"KV cache: {cache.nbytes / 1e6:.1f} MB; memory (RSS) now {resident_bytes() / 1e6:.0f} MB, peak "
                 f"{peak_resident_bytes() / 1e6:.0f} MB, --max-memory {m.memory.budget / 1e6:.0f} MB",
                 f"sampling: {s.settings}"]
        if t:
            lines.append(f"last reply: {t.generated_tokens} tokens at {t.generation_tps:.1f} t/s; prompt "
                         f"{t.prompt_tokens} tokens at {t.prompt_tps:.1f} t/s")
        if m.expert_stats is not None:
            counters = m.expert_stats.as_dict()
            where = (f"a cache of {m.expert_cache.slots} experts ({m.expert_cache.policy.name})" if m.expert_cache
                     else "the mapped file")
            lines += [f"experts (since start, from {where}): {summary(counters)}",
                      "expert reuse between consecutive tokens per layer: "
                      + " ".join(f"{r:.0%}" for r in counters["expert_reuse_per_layer"])]
        self.console.print("\n".join(lines), markup=False)
