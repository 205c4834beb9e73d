"""No mutant of a model file or checkpoint folder crashes cpuinfer (tests/fixtures/fuzz.py).

CI runs a few hundred seeded mutants in one subprocess (so that a signal or a
hang names its case); CPUINFER_FUZZ_CASES and CPUINFER_FUZZ_SEED make a
longer run, e.g. `CPUINFER_FUZZ_CASES=5000 .venv/bin/python -m pytest
tests/test_fuzz.py`. A few mutants also go through the real `cpuinfer`
process, to check the in-process runs stand for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fuzz
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "tests" / "fixtures" / "fuzz.py"


def test_no_mutant_crashes_hangs_or_leaves_files(tmp_path):
    n = int(os.environ.get("CPUINFER_FUZZ_CASES", "400"))
    seed = int(os.environ.get("CPUINFER_FUZZ_SEED", "1"))
    cmd = [sys.executable, str(FUZZ), "--cases", str(n), "--seed", str(seed), "--work", str(tmp_path)]
    try:  # the limit only catches a hang: a case takes well under a second
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600 + 5 * n)
        out, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, code = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or "", "hang"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    started = [line["label"] for line in lines if "start" in line]
    done = [line for line in lines if "case" in line]
    last = started[-1] if started else "(setup)"
    assert code == 0, f"the fuzzer died ({code}) on {last}: {proc.stderr[-3000:] if code != 'hang' else ''}"
    failures = [f"{d['label']}: {d['problems']}" for d in done if d["problems"]]
    assert not failures, f"{len(failures)} of {len(done)} mutants misbehaved:\n" + "\n".join(failures[:20])
    assert len(done) == n
    summary = lines[-1]["summary"]
    print(f"{n} mutants (seed {seed}): {summary}")
    # the mutants reach both outcomes of every command, not only the first check that refuses them
    assert all(summary["outcomes"].get(f"{c} exit {e}", 0) > 0 for c in ("info", "generate", "quantize")
               for e in (0, 2)), summary["outcomes"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpuinfer", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def _assert_one_error_line(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    import quantize

    work = tmp_path_factory.mktemp("fuzz-real")
    hf = fuzz.write_small_hf(work / "hf")
    return work, hf, quantize.convert(hf, work / "base.gguf", "q8_0")


@pytest.mark.parametrize("case", ["key length", "tokens as integers", "config type", "safetensors entry"])
def test_mutants_in_a_real_process(small_inputs, case):
    """The in-process fuzz stands for the real command: the same mutants give exit 2 and one error line."""
    from gguf.constants import GGUFValueType as VT
    from gguf_parts import Parts, header_fields

    work, hf, gguf_path = small_inputs
    if case == "key length":  # a flipped high byte in a key's length: the message must stay short
        data = bytearray(gguf_path.read_bytes())
        label, offset, width = next(f for f in header_fields(bytes(data))[0] if f[0] == "key length")
        data[offset + 2] ^= 0x01
        (work / "m.gguf").write_bytes(bytes(data))
        proc = _run("info", str(work / "m.gguf"))
    elif case == "tokens as integers":
        Parts.read(gguf_path).set("tokenizer.ggml.tokens", list(range(fuzz.VOCAB)), VT.ARRAY, VT.INT32) \
            .write(work / "m.gguf")
        proc = _run("info", str(work / "m.gguf"))
        assert proc.returncode == 0 and "tokens not an array of strings" in proc.stdout, proc.stderr
        proc = _run("generate", str(work / "m.gguf"), "hi")
    else:
        folder = work / case.replace(" ", "-")
        shutil.copytree(hf, folder)
        rng = np.random.default_rng(0)
        if case == "config type":
            fuzz._edit_json(folder / "config.json", lambda c: c.__setitem__("num_key_value_heads", "4"))
        else:
            import struct

            shard = folder / fuzz.SHARDS[0]
            data = shard.read_bytes()
            (n,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + n])
            header[sorted(k for k in header if k != "__metadata__")[int(rng.integers(3))]]["data_offsets"] = ["0", "1"]
            text = json.dumps(header).encode()
            shard.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
        proc = _run("quantize", str(folder), "-o", str(work / "out.gguf"))
        assert not list(work.glob("*.partial")) and not (work / "out.gguf").exists()
    _assert_one_error_line(proc)
    assert len(proc.stderr) < 600
