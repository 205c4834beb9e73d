"""`cpuinfer bench MODEL`: llama-bench style pp/tg tokens/s."""

from __future__ import annotations

import json
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..bench import add_bandwidth_share, bench_decode, bench_prompt, memory_bandwidth
from ..errors import one_line
from ..memory import peak_resident_bytes
from ..moe import summary
from ..numbers import checked
from ..threads import physical_cores
from . import options as o
from .common import err_console, load_model, user_errors


def bench(model: Optional[str] = typer.Argument(None, help="GGUF file (default: the default model)"),
          prompt: list[int] = typer.Option([512], "-p", "--n-prompt", help="prompt lengths (repeatable; 0 skips)"),
          gen: list[int] = typer.Option([128], "-n", "--n-gen", help="generated lengths (repeatable; 0 skips)"),
          threads: list[int] = typer.Option([], "-t", "--threads", help="thread counts (repeatable)"),
          reps: int = typer.Option(3, "-r", "--reps", help="repetitions after the warm-up"),
          ctx: Optional[int] = o.CTX, kv_type: Optional[str] = o.KV_TYPE, exact: bool = o.EXACT,
          as_json: bool = typer.Option(False, "--json", help="print results as JSON"),
          max_memory: Optional[str] = o.MAX_MEMORY, expert_cache: str = o.EXPERT_CACHE, guess_next: bool = o.GUESS_NEXT,
          debug: bool = o.DEBUG) -> None:
    """Measure prompt processing (ppN) and generation (tgN) speed, as llama-bench does."""
    with user_errors(debug):
        for n in prompt + gen:
            checked(n, "-p/-n (prompt and generated lengths)", integer=True, lo=0)
        checked(reps, "-r/--reps", integer=True, lo=1)
        thread_counts = [checked(t, "-t/--threads", integer=True, lo=1) for t in threads] or [physical_cores()]
        longest = max(prompt + gen + [1])
        m = load_model(model, n_ctx=ctx or max(longest, 512), threads=thread_counts[0], quiet=as_json,
                       kv_type=kv_type, exact=exact, max_memory=max_memory, expert_cache=expert_cache,
                       guess_next=guess_next)
        rng = np.random.default_rng(0)
        rows = []
        for t in thread_counts:
            rows += [bench_prompt(m, n, reps, rng, threads=t) for n in prompt if n]
            rows += [bench_decode(m, n, reps, rng, threads=t) for n in gen if n]
        info = dict(model=m.path, name=m.config.name, file_bytes=m.file.data.nbytes, kernels=m.kernels,
                    peak_rss_mb=peak_resident_bytes() / 1e6, max_memory_mb=m.memory.budget / 1e6,
                    expert_cache=None if m.expert_cache is None else
                    dict(slots=m.expert_cache.slots, slab_mb=m.expert_cache.slab_bytes / 1e6,
                         policy=m.expert_cache.policy.name, guess_next=m.expert_cache.guesses_next))
        for t in thread_counts:
            decode = [r for r in rows if r.threads == t and r.test.startswith("tg")]
            if decode:
                bandwidth = memory_bandwidth(t)
                for r in decode:
                    add_bandwidth_share(r, bandwidth)
        if as_json:
            print(json.dumps({**info, "results": [r.as_dict() for r in rows]}, indent=1))
            return
        table = Table("test", "threads", "t/s", "warm-up s", "notes",
                      title=f"{escape(one_line(m.config.name or m.path))} · {m.kernels}")
        for r in rows:
            notes = []
            if "time_to_first_token_s" in r.extra:
                notes.append(f"time to first token {r.extra['time_to_first_token_s'] * 1000:.0f} ms")
            if "bandwidth_share" in r.extra:
                notes.append(f"weights {r.extra['weight_gb_per_s']:.1f} GB/s = "
                             f"{r.extra['bandwidth_share'] * 100:.0f}% of measured "
                             f"{r.extra['machine_bandwidth_gb_per_s']:.1f} GB/s")
            if "expert_bytes_per_token" in r.extra:
                notes.append(f"{summary(r.extra)}, picks {r.extra['expert_histogram']}")
            table.add_row(r.test, str(r.threads), f"{r.mean:.2f} ± {r.std:.2f}", f"{r.warmup_seconds:.2f}",
                          "; ".join(notes))
        Console().print(table)
        cache = info["expert_cache"]
        slabs = f"; expert cache {cache['slots']} x {cache['slab_mb']:.0f} MB ({cache['policy']})" if cache else ""
        err_console.print(f"peak memory (RSS) {info['peak_rss_mb']:.0f} MB, --max-memory {info['max_memory_mb']:.0f} "
                          f"MB; file {info['file_bytes'] / 1e6:.0f} MB{slabs}")
