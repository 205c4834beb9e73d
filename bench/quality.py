"""What quantization costs: perplexity of each type of the default model, against F16.

The default model ships as Q4_1; its F16 file is the exact dequantization of
that Q4_1 file, and the Q8_0 / Q4_0 files are re-quantized from it with
`cpuinfer quantize`, the Q6_K and Q4_K_M files by llama.cpp's own quantizer
(when the bench virtualenv has llama-cpp-python; SmolLM2's 576-value rows
are no multiple of 256, so llama.cpp makes them mostly Q5_0/Q8_0 with K-quant
ffn_down tensors). Each is scored on the same text (the GNU GPL v3 as Debian
ships it) with llama-perplexity's method, plus the KL divergence of its token
distributions from the F16 file's.

    python -m bench.quality [--ctx 512] [--json bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from cpuinfer import load
from cpuinfer.default_model import pull
from cpuinfer.perplexity import perplexity
from quantize import convert

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "fixtures" / "text" / "GPL-3.txt"
MODELS = ROOT / "bench" / "models"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


def variants() -> dict[str, Path]:
    """F16, Q8_0, Q4_0 (and with llama.cpp Q6_K, Q4_K_M) made from the default Q4_1 file (cached in
    bench/models), and the Q4_1 itself."""
    source = pull()
    MODELS.mkdir(parents=True, exist_ok=True)
    files = {"Q4_1": source}
    for type_name in ("f16", "q8_0", "q4_0"):
        out = MODELS / f"smollm2-135m-{type_name}.gguf"
        if not out.exists():
            convert(source, out, type_name)
        files[type_name.upper()] = out
    for ftype in ("Q6_K", "Q4_K_M"):
        out = MODELS / f"smollm2-135m-{ftype.lower()}-llamacpp.gguf"
        if not out.exists() and BENCH_PYTHON.exists():
            subprocess.run([str(BENCH_PYTHON), str(ROOT / "bench" / "llamacpp_quantize.py"), str(source), str(out),
                            ftype], capture_output=True)
        if out.exists():
            files[ftype] = out
    return files


def run(ctx: int) -> dict:
    files = variants()
    text = TEXT.read_text()
    base = load(files["F16"], n_ctx=ctx)
    rows = []
    for name in [t for t in ("F16", "Q8_0", "Q6_K", "Q4_1", "Q4_K_M", "Q4_0") if t in files]:
        m = base if name == "F16" else load(files[name], n_ctx=ctx)
        r = perplexity(m, text, ctx=ctx, base=None if name == "F16" else base).as_dict()
        r.update(type=name, file_bytes=files[name].stat().st_size)
        rows.append(r)
        print(f"{name:6} {r['file_bytes'] / 1e6:7.1f} MB  PPL {r['ppl']:.4f} ± {r['ppl_stderr']:.4f}"
              + (f"  KL {r['mean_kl']:.5f}  same top-1 {r['top1_agreement'] * 100:.1f}%" if "mean_kl" in r else ""))
    f16 = rows[0]["ppl"]
    for r in rows:
        r["ppl_increase_over_f16"] = r["ppl"] / f16 - 1
    return {"text": TEXT.name, "ctx": ctx, "results": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.ctx)
    for r in result["results"]:
        print(f"{r['type']:6} +{r['ppl_increase_over_f16'] * 100:.2f}% perplexity over F16")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
