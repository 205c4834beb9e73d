"""What quantization costs: size, bits per weight, perplexity and KL divergence of each type, against F16.

The default model ships as Q4_1; its F16 file is the exact dequantization of
that Q4_1 file. Every type is made from the Q4_1 file by `cpuinfer quantize`
and (when a Python with llama-cpp-python is found) by llama.cpp's own
quantizer, each without and with an importance matrix. The matrix is collected
by `cpuinfer imatrix` on another text than the scored one (the GNU FDL 1.3,
ctx 512), as the issue's targets ask. Each file is scored on the GNU GPL v3
with llama-perplexity's method, plus the KL divergence of its token
distributions from the F16 file's. Files are cached in bench/models.

    python -m bench.quality [--ctx 512] [--types q4_0 q4_k_m ...] [--no-imatrix] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from cpuinfer import load
from cpuinfer.default_model import pull
from cpuinfer.gguf_file import GGUFFile
from cpuinfer.perplexity import perplexity
from quantize import convert
from quantize.collect import collect
from quantize.imatrix import read_imatrix, write_imatrix

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "fixtures" / "text" / "GPL-3.txt"
CALIBRATION = ROOT / "tests" / "fixtures" / "text" / "GFDL-1.3.txt"
MODELS = ROOT / "bench" / "models"
LLAMA_PYTHONS = [os.environ.get("LLAMA_PYTHON", ""), str(ROOT / ".venv-bench" / "bin" / "python"),
                 "/work/venvs/lcpp/bin/python"]
TYPES = ["q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0", "iq4_xs", "q3_k_m", "q3_k_s", "q2_k"]


def llama_python() -> str | None:
    """A Python with llama-cpp-python, or None (then only cpuinfer's files are scored)."""
    for python in LLAMA_PYTHONS:
        if python and Path(python).exists() and subprocess.run([python, "-c", "import llama_cpp"],
                                                               capture_output=True).returncode == 0:
            return python
    return None


def imatrix_file(source: Path, ctx: int) -> Path:
    out = MODELS / f"smollm2-135m-{CALIBRATION.stem}-ctx{ctx}.imatrix.gguf"
    if not out.exists():
        write_imatrix(out, collect(load(source, n_ctx=ctx), CALIBRATION.read_text(), ctx, CALIBRATION.name))
    return out


def llamacpp_file(python: str, source: Path, out: Path, type_name: str, imatrix: Path | None) -> None:
    """llama.cpp's quantizer, given the same importances (as per-tensor arrays in an npz)."""
    args = [python, str(ROOT / "bench" / "llamacpp_quantize.py"), str(source), str(out), type_name]
    with tempfile.TemporaryDirectory() as tmp:
        if imatrix is not None:
            npz = Path(tmp) / "importance.npz"
            np.savez(npz, **{name: e.importance() for name, e in read_imatrix(imatrix).entries.items()})
            args.append(str(npz))
        subprocess.run(args, check=True, capture_output=True)


def variants(types=("q8_0", "q6_k", "q4_k_m", "q4_0"), with_imatrix: bool = False, ctx: int = 512) -> dict[str, Path]:
    """{label: file}: F16 and the Q4_1 source, then per type cpuinfer's file ("Q4_K_M"), llama.cpp's
    ("Q4_K_M llama.cpp", with a Python that has llama-cpp-python), and with `with_imatrix` both again
    ("... imatrix")."""
    source = pull()
    MODELS.mkdir(parents=True, exist_ok=True)
    f16 = MODELS / "smollm2-135m-f16.gguf"
    if not f16.exists():
        convert(source, f16, "f16")
    files = {"F16": f16, "Q4_1": source}
    python = llama_python()
    matrix = imatrix_file(source, ctx) if with_imatrix else None
    for type_name in types:
        for imatrix in ([None, matrix] if with_imatrix else [None]):
            suffix = "-imatrix" if imatrix else ""
            label = type_name.upper() + (" imatrix" if imatrix else "")
            out = MODELS / f"smollm2-135m-{type_name}{suffix}.gguf"
            if not out.exists():
                convert(source, out, type_name, imatrix=imatrix)
            files[label] = out
            if python:
                out = MODELS / f"smollm2-135m-{type_name}{suffix}-llamacpp.gguf"
                if not out.exists():
                    llamacpp_file(python, source, out, type_name, imatrix)
                files[type_name.upper() + " llama.cpp" + (" imatrix" if imatrix else "")] = out
    return files


def bits_per_weight(path: Path) -> float:
    """Bits per value over the tensors (the metadata and tokenizer left out)."""
    g = GGUFFile(path)
    nbytes = sum(g.raw(t).nbytes for t in g.tensors.values())
    values = sum(int(np.prod(t.shape)) for t in g.tensors.values())
    return 8 * nbytes / values


def run(ctx: int = 512, types=("q8_0", "q6_k", "q4_k_m", "q4_0"), with_imatrix: bool = False) -> dict:
    files = variants(types, with_imatrix, ctx)
    text = TEXT.read_text()
    base = load(files["F16"], n_ctx=ctx)
    rows = []
    for name, path in files.items():
        m = base if name == "F16" else load(path, n_ctx=ctx)
        r = perplexity(m, text, ctx=ctx, base=None if name == "F16" else base).as_dict()
        r.update(type=name, file_bytes=path.stat().st_size, bits_per_weight=bits_per_weight(path))
        rows.append(r)
        print(f"{name:22} {r['file_bytes'] / 1e6:7.1f} MB {r['bits_per_weight']:5.2f} bpw  PPL {r['ppl']:.4f} "
              f"± {r['ppl_stderr']:.4f}" + (f"  dPPL {r['delta_ppl']:+.4f}  KL {r['mean_kl']:.5f}  "
                                            f"same top-1 {r['top1_agreement'] * 100:.1f}%" if "mean_kl" in r else ""),
              flush=True)
    f16 = rows[0]["ppl"]
    for r in rows:
        r["ppl_increase_over_f16"] = r["ppl"] / f16 - 1
    return {"text": TEXT.name, "calibration": CALIBRATION.name if with_imatrix else None, "ctx": ctx, "results": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--no-imatrix", action="store_true", help="skip the importance-matrix variants")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.ctx, args.types, not args.no_imatrix)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
