"""`make bench`: the whole suite, results to bench/results/.

1. kernels.py  — every kernel at Mistral-7B shapes vs the bandwidth roofline and numpy BLAS
2. quality.py  — size, bits/weight, perplexity, KL of every type of the default model, cpuinfer vs llama.cpp,
                 without and with an importance matrix (and the files for 3)
3. compare.py  — those files through cpuinfer, llama.cpp and torch, 1 and 2 threads
4. with --full — synthetic full-size Mistral-7B (Q4_0, Q8_0, Q4_K_M) and Mixtral-8x7B (Q4_0) files,
                 written by synthetic.py, through cpuinfer and llama.cpp (needs ~40 GB of disk)
5. plot.py     — speed.png and quality.png (in the bench virtualenv, which has matplotlib)

    python -m bench.run_all [--full] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bench import compare, kernels, quality, synthetic

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="also the full-size synthetic 7B and 8x7B files")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)

    print("== kernels")
    result = kernels.run(max(args.threads), reps=5)
    (RESULTS / "kernels.json").write_text(json.dumps(result, indent=1))

    print("== quality")
    (RESULTS / "quality.json").write_text(json.dumps(quality.run(512, quality.TYPES, with_imatrix=True), indent=1))

    print("== compare (default model)")
    files = quality.variants()
    rows = compare.compare([files[t] for t in ("Q4_1", "Q8_0", "Q4_0", "F16", "Q4_K_M", "Q6_K") if t in files],
                           args.threads, p=512, n=128, reps=3, engines=list(compare.RUNNERS))
    (RESULTS / "compare.json").write_text(json.dumps(rows, indent=1))

    if args.full:
        print("== compare (synthetic full-size models)")
        models = quality.MODELS
        paths = []
        for shape, type_name in (("mistral-7b", "q4_0"), ("mistral-7b", "q8_0"), ("mistral-7b", "q4_k_m"),
                                 ("mixtral-8x7b", "q4_0")):
            path = models / f"synthetic-{shape}-{type_name}.gguf"
            if not path.exists():
                synthetic.write_synthetic(shape, type_name, path)
            paths.append(path)
        rows = compare.compare(paths, args.threads, p=64, n=16, reps=2, engines=["llama.cpp"])
        (RESULTS / "compare-full.json").write_text(json.dumps(rows, indent=1))

    plotter = compare.BENCH_PYTHON
    if plotter.exists():
        subprocess.run([str(plotter), str(Path(__file__).parent / "plot.py")], check=False)


if __name__ == "__main__":
    main()
