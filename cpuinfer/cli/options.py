"""Options shared by the commands (one definition each)."""

from __future__ import annotations

from typing import Optional

import typer

from ..sampler import SamplerSettings

_D = SamplerSettings()
TEMP = typer.Option(_D.temperature, "--temp", help="temperature (0 = greedy)")
TOP_K = typer.Option(_D.top_k, "--top-k", help="keep the k most likely tokens (0 = off)")
TOP_P = typer.Option(_D.top_p, "--top-p", help="keep the smallest set with this probability mass (1 = off)")
MIN_P = typer.Option(_D.min_p, "--min-p", help="drop tokens below this fraction of the top one (0 = off)")
REPEAT_PENALTY = typer.Option(_D.repeat_penalty, "--repeat-penalty", help="penalty for recent tokens (1 = off)")
REPEAT_LAST_N = typer.Option(_D.repeat_last_n, "--repeat-last-n", help="how many recent tokens are penalized")
SEED = typer.Option(None, "--seed", help="random seed, for reproducible output")
CTX = typer.Option(None, "--ctx", help="context length in tokens (default: the model's, at most 4096)")
THREADS = typer.Option(None, "--threads", "-t", help="threads (default: physical cores)")
KV_TYPE = typer.Option(None, "--kv-type", help="KV cache storage: f16 (default, as llama.cpp; f32 with --exact), "
                       "f32, or q8_0")
SYSTEM = typer.Option(None, "--system", help="system prompt")
TEMPLATE = typer.Option(None, "--template", help="chat template: mistral, chatml, llama2, or a Jinja file")
DEBUG = typer.Option(False, "--debug", help="show tracebacks")
EXACT = typer.Option(False, "--exact", help="float32 activations in the matrix products instead of int8 ones, "
                     "and a float32 KV cache (slower; exact up to float32 rounding)")
MAX_MEMORY = typer.Option(None, "--max-memory", help="memory the process may use, e.g. 12G or 800M (default: 80% of "
                          "the memory available at start); a Mixtral larger than that keeps experts in a cache")
EXPERT_CACHE = typer.Option("lru", "--expert-cache", help="which cached expert to evict: lru or lfu")
GUESS_NEXT = typer.Option(True, "--guess-next/--no-guess-next",
                          help="read the next layer's likely experts ahead (with an expert cache)")


def sampler_settings(temp: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
                     repeat_last_n: int, seed: Optional[int]) -> SamplerSettings:
    return SamplerSettings(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                           repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
