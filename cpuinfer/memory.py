"""How much memory a model may use: `--max-memory` sizes, the default budget, and what the process holds.

The budget covers the whole process: the interpreter and libraries, the
compiled kernels, the dense weights, the KV caches and, for a mixture of
experts larger than what is left, a cache of whole experts (expert_cache.py).
"""

from __future__ import annotations

import math
import os
import re
import threading
import weakref
from dataclasses import dataclass

from .config import ModelConfig
from .errors import CpuinferError
from .gguf_file import GGUFFile
from .kv_cache import RollingKVCache
from .parallel import TILE_FLOATS
from .transformer import Scratch

# The default budget: this share of the memory the kernel reports available at
# start (MemAvailable: free memory plus page cache it can drop). The expert
# cache is anonymous memory, and with no swap (as here and on many laptops)
# nothing can take it back, so the rest of the system keeps a fifth to grow
# into (a browser, a build) and the page cache keeps room for other files.
DEFAULT_SHARE = 0.8

# What the process adds once it runs a model, beyond what it holds at load:
# numba's compiled kernels and LLVM (measured: +150 MB on the first forward of
# a small Mixtral), BLAS buffers, thread stacks. Activation buffers are counted apart.
RUNTIME_BYTES = 256 << 20

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes in a size such as 12G, 800M, 1.5G, 512MiB or 1000000 (K/M/G/T are powers of 1024)."""
    if isinstance(text, int):
        size = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise CpuinferError(f"bad memory size {text!r}: use a number with K, M, G or T, e.g. 12G or 800M")
        size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise CpuinferError(f"bad memory size {text!r}: it must be more than zero")
    return size


def format_size(n: float, rounding=round) -> str:
    """Bytes as G with one decimal or whole M (powers of 1024, as parse_size reads them). Errors show a
    need with math.ceil and the budget with math.floor, so a larger need never prints like the budget."""
    unit, digits = (1 << 30, 10) if n >= 1 << 30 else (1 << 20, 1)
    value = rounding(n / unit * digits) / digits
    return f"{value:.1f}G" if unit == 1 << 30 else f"{value:.0f}M"


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resident_bytes() -> int:
    """Memory the process holds now (VmRSS: anonymous and mapped file pages)."""
    return _status("VmRSS")


def peak_resident_bytes() -> int:
    """The most memory the process has held (VmHWM)."""
    return _status("VmHWM")


def disk_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (/proc/self/io read_bytes; 0 if unknown)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (on other systems: free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget() -> int:
    """What the process holds now plus DEFAULT_SHARE of the memory available."""
    return resident_bytes() + int(DEFAULT_SHARE * available_memory())


@dataclass(frozen=True)
class MemoryPlan:
    """Where a budget goes: what must stay resident, and the room left for experts."""

    budget: int
    process: int  # held at load: interpreter, libraries
    runtime: int  # compiled kernels and activation buffers of one prompt chunk
    dense: int  # weights outside the experts (attention, embeddings, norms, routers)
    kv: int  # the default KV cache
    experts: int  # every expert's bytes (0 for a dense model)
    expert_bytes: int  # the largest single expert

    @property
    def resident(self) -> int:
        """What stays resident whatever the experts do."""
        return self.process + self.runtime + self.dense + self.kv

    @property
    def fits(self) -> bool:
        """Everything, experts included, fits: the plain mapping needs no cache."""
        return self.resident + self.experts <= self.budget

    @property
    def expert_slots(self) -> int:
        """Whole experts the rest of the budget holds."""
        return self.slots_beside(0)

    def slots_beside(self, extra: int) -> int:
        """Whole experts the budget holds beside `extra` more bytes (KV caches beyond the default one)."""
        return max(0, self.budget - self.resident - extra) // self.expert_bytes if self.expert_bytes else 0

    def check(self, k: int, n_ctx: int) -> None:
        """Raise a CpuinferError saying what is needed unless the model runs in the budget (k experts at once)."""
        parts = (f"dense weights {format_size(self.dense)}, KV cache {format_size(self.kv)} for {n_ctx} tokens, "
                 f"runtime {format_size(self.process + self.runtime)}")
        budget = f"--max-memory is {format_size(self.budget, math.floor)}: raise it, or use a smaller --ctx"
        if not self.experts and not self.fits:
            raise CpuinferError(f"the model needs {format_size(self.resident, math.ceil)} ({parts}) but {budget}")
        if self.experts and not self.fits and self.expert_slots < k:
            need = format_size(self.resident + k * self.expert_bytes, math.ceil)
            raise CpuinferError(f"the model needs at least {need} ({parts}, {k} experts of "
                                f"{format_size(self.expert_bytes)}) but {budget}")


def plan_memory(gguf: GGUFFile, cfg: ModelConfig, n_ctx: int, kv_type: str, batch: int, experts: dict,
                expert_bytes: int, budget: int, process: int) -> MemoryPlan:
    """Split `budget`: the process as it is, the runtime (a prompt chunk of `batch` tokens), the dense
    weights, the default KV cache (n_ctx tokens of kv_type); the rest holds `expert_bytes` experts. Refuses,
    with what is needed, a model that cannot run in it."""
    expert_total = sum(p.nbytes for parts in experts.values() for p in parts)
    scratch = sum(a.nbytes for a in vars(Scratch.allocate(cfg, batch)).values())  # np.empty: no pages yet
    logits = 4 * batch * cfg.n_vocab
    plan = MemoryPlan(budget=budget, process=process, runtime=RUNTIME_BYTES + scratch + logits + 4 * TILE_FLOATS,
                      dense=sum(t.nbytes for t in gguf.tensors.values()) - expert_total,
                      kv=RollingKVCache.bytes_for(cfg, n_ctx, kv_type), experts=expert_total, expert_bytes=expert_bytes)
    plan.check(cfg.n_experts_used, n_ctx)
    return plan


class KVBudget:
    """The KV caches' part of a budget. The plan holds one default cache; every byte of live caches
    beyond it takes room from the expert cache (down to k experts) or, without one, must fit beside
    all the weights."""

    def __init__(self, plan: MemoryPlan, expert_cache, k: int):
        self.plan, self.expert_cache, self.k = plan, expert_cache, k
        self.live = 0  # bytes of the caches alive now
        self._lock = threading.Lock()

    def admit(self, cache: RollingKVCache) -> None:
        """Count a new cache, or raise a CpuinferError if there is no room for it."""
        with self._lock:
            extra = max(0, self.live + cache.nbytes - self.plan.kv)
            slots = self.plan.slots_beside(extra)
            if self.expert_cache is not None:
                room = slots >= self.k
            else:
                room = self.plan.resident + self.plan.experts + extra <= self.plan.budget
            if not room:
                raise CpuinferError(f"no room for another KV cache of {cache.n_ctx} tokens "
                                    f"({format_size(cache.nbytes)}) within --max-memory "
                                    f"{format_size(self.plan.budget, math.floor)}: close a conversation, or use a "
                                    "smaller context")
            self.live += cache.nbytes
            if self.expert_cache is not None and extra:
                self.expert_cache.resize(slots)
        weakref.finalize(cache, self._forget, cache.nbytes)

    def _forget(self, nbytes: int) -> None:
        with self._lock:
            self.live -= nbytes
            if self.expert_cache is not None:
                self.expert_cache.resize(self.plan.slots_beside(max(0, self.live - self.plan.kv)))
