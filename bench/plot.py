"""Plots from bench/results/*.json: tokens/s by type and threads, and quality against size.

    python -m bench.plot      (needs matplotlib, installed in .venv-bench by `make bench`)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def short_name(model: str) -> str:
    """'smollm2-135m-q8_0.gguf' -> 'Q8_0'; other names lose only their extension."""
    match = re.search(r"(q\d_\d|f16|f32)\.gguf$", model, re.IGNORECASE)
    return match.group(1).upper() if match else model.removesuffix(".gguf")


def speed_plot(rows: list[dict], out: Path) -> None:
    import matplotlib.pyplot as plt

    tests = sorted({r["test"] for r in rows}, key=lambda t: (t[:2], int(t[2:])))
    engines = [e for e in ("cpuinfer", "llama.cpp", "torch f32") if any(e in r for r in rows)]
    fig, axes = plt.subplots(1, len(tests), figsize=(6 * len(tests), 4), squeeze=False)
    for ax, test in zip(axes[0], tests):
        sel = [r for r in rows if r["test"] == test]
        labels = [f"{short_name(r['model'])}\n{r['threads']}T" for r in sel]
        width = 0.8 / len(engines)
        for i, engine in enumerate(engines):
            ax.bar([x + i * width for x in range(len(sel))], [r.get(engine, 0) for r in sel], width, label=engine)
        ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(sel))], labels, fontsize=7)
        ax.set_title(test)
        ax.set_ylabel("tokens/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def quality_plot(result: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for r in result["results"]:
        ax.errorbar(r["file_bytes"] / 1e6, r["ppl"], yerr=r["ppl_stderr"], fmt="o")
        ax.annotate(r["type"], (r["file_bytes"] / 1e6, r["ppl"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel(f"perplexity ({result['text']}, ctx {result['ctx']})")
    ax.set_title("SmolLM2-135M: quality against size")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def mixtral_plot(result: dict, out: Path) -> None:
    """Decode tokens/s against --max-memory (bench/mixtral.py), llama.cpp from the mapping as a line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [r for r in result["runs"] if "error" not in r]
    for guess in (True, False):
        points = sorted((r["max_memory"] / 2**30, r["tokens_per_second"]) for r in ok
                        if r["engine"] == "cpuinfer" and r["policy"] == "lru" and r["guess_next"] == guess)
        if points:
            ax.plot(*zip(*points), "o-" if guess else "s:",
                    label="cpuinfer, expert cache (LRU" + (", next-layer guesses)" if guess else ")"))
    for r in ok:
        if r["engine"] == "llama.cpp":
            ax.axhline(r["tokens_per_second"], color="gray", ls="--",
                       label=f"llama.cpp from the mapping (peak RSS {r['peak_rss_bytes'] / 2**30:.1f} GiB)")
    ax.set_xlabel("--max-memory (GiB)")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title("Mixtral-8x7B-shape Q4_0 (26.4 GB), 23 GiB RAM, 2 threads", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    compare, quality, mixtral = RESULTS / "compare.json", RESULTS / "quality.json", RESULTS / "mixtral.json"
    if compare.exists():
        speed_plot(json.loads(compare.read_text()), RESULTS / "speed.png")
    if quality.exists():
        quality_plot(json.loads(quality.read_text()), RESULTS / "quality.png")
    if mixtral.exists():
        mixtral_plot(json.loads(mixtral.read_text()), RESULTS / "mixtral.png")


if __name__ == "__main__":
    main()
