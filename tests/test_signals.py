"""Signals and limits from outside, in real processes: SIGTERM/SIGHUP while converting, Ctrl-C while
starting, a file-size limit, and a model file truncated while it runs (SIGBUS)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The real command, with each written chunk slowed down so that a signal surely lands mid-write.
SLOW_QUANTIZE = textwrap.dedent("""
    import sys, time
    import quantize
    real = quantize.convert

    def convert(src, out, type_name, force=False, progress=None, **options):
        def slowly(total, n):
            inner = progress(total, n)
            return lambda nbytes: (inner(nbytes), time.sleep(0.05))
        return real(src, out, type_name, force=force, progress=slowly, **options)

    quantize.convert = convert
    sys.argv = ["cpuinfer", *sys.argv[1:]]
    from cpuinfer.main import main
    main()
""")


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_while_converting_removes_the_partial_file(hf_checkpoint, tmp_path, signum):
    out = tmp_path / "m.gguf"
    # SIGHUP as a terminal delivers it, even when the tests run under nohup (whose ignored SIGHUP the child
    # would inherit and keep: test_ignored_sighup_stays_ignored)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_QUANTIZE, "quantize", str(hf_checkpoint("mixtral")),
                             "-o", str(out), "-q"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        while not _partials(tmp_path) and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)  # a few chunks in
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert "Traceback" not in err
    assert err.strip() == ("interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}")
    assert list(tmp_path.iterdir()) == []


def test_ignored_sighup_stays_ignored(hf_checkpoint, tmp_path):
    """Under nohup (SIGHUP ignored) a conversion survives the terminal closing."""
    out = tmp_path / "m.gguf"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_QUANTIZE, "quantize", str(hf_checkpoint("llama")),
                             "-o", str(out), "-q"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        while not _partials(tmp_path) and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_ctrl_c_while_starting_exits_quietly(smollm2):
    """SIGINT while the command imports its modules (numba, ...): exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "cpuinfer", "info", str(smollm2)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        maps = Path(f"/proc/{proc.pid}/maps")
        # once llvmlite's library is mapped the entry point has run and numba is being imported
        while proc.poll() is None and "llvmlite" not in (maps.read_text() if maps.exists() else ""):
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_file_size_limit_is_named(hf_checkpoint, tmp_path):
    """`ulimit -f` (and FAT32's 4 GB) make writes fail with EFBIG: its own message, nothing left."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    proc = subprocess.run([sys.executable, "-m", "cpuinfer", "quantize", str(hf_checkpoint("llama")), "-o",
                           str(tmp_path / "m.gguf"), "-q"], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.gguf'} would be larger than this file system or `ulimit -f` allows (FAT32 stops "
        "at 4 GB); nothing was written"]
    assert list(tmp_path.iterdir()) == []


TRUNCATE_WHILE_RUNNING = textwrap.dedent("""
    import os, sys
    import cpuinfer
    m = cpuinfer.load(sys.argv[1], n_ctx=64)
    cache = m.new_cache()
    m.forward([1, 2, 3], cache)
    os.truncate(sys.argv[1], os.path.getsize(sys.argv[1]) // 10)  # another program shortens the file
    m.forward([4], cache)
    print("still running")
""")


def test_model_file_truncated_while_running(converted, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copyfile(converted("llama", "q8_0"), path)
    proc = subprocess.run([sys.executable, "-c", TRUNCATE_WHILE_RUNNING, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: the model file was truncated or changed while in use "
                                        "(bus error reading its mapping); cpuinfer stopped"]


def test_truncated_while_running_under_faulthandler(converted, tmp_path):
    """pytest and `python -X faulthandler` install their own SIGBUS handler first: cpuinfer's replaces it."""
    path = tmp_path / "model.gguf"
    shutil.copyfile(converted("llama", "q8_0"), path)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", TRUNCATE_WHILE_RUNNING, str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Fatal Python error" not in proc.stderr, proc.stderr
    assert os.path.getsize(path) < os.path.getsize(converted("llama", "q8_0"))
