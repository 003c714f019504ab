"""The engine's KV pool: k, v [L, n_slots, Hkv, max_len, Dh] preallocated once, one slot per request.

    pool = KVPool.create(cfg.text, dtype, device, memory_bytes=2 << 30)  # or n_slots=4, max_len=4096
    slot = pool.acquire()          # None when every slot is taken
    cache = pool.view([3, 1])      # a model.decoder.KVCache over those slots, for one forward
    pool.release(slot)

Sizing: bytes per token = 2 (k and v) * L * Hkv * Dh * element size. Unset sizes come from a memory
budget (default: a quarter of the free host memory, half of the free GPU memory, capped at
DEFAULT_CAP_BYTES): max_len defaults to the model's max_position_embeddings capped at
DEFAULT_MAX_LEN, and n_slots is what the budget holds, at most DEFAULT_MAX_SLOTS. A budget that holds
no slot is a ValueError here, never an out-of-memory later. The pool is zero-filled: a row reads slots
past its own length (masked, weight exactly 0), and 0 * NaN from uninitialised memory would poison it.
Must not know of requests or sampling (engine/scheduler.py does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from qwenvl.model.decoder import KVCache

DEFAULT_MAX_LEN = 32768
DEFAULT_MAX_SLOTS = 8
DEFAULT_CAP_BYTES = 16 << 30


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on the device: cudaMemGetInfo on a GPU, MemAvailable (or sysconf) on the host."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30


def default_budget(device: torch.device) -> int:
    frac = 0.5 if device.type == "cuda" else 0.25
    return min(int(free_memory_bytes(device) * frac), DEFAULT_CAP_BYTES)


def bytes_per_token(cfg, dtype: torch.dtype) -> int:
    """KV bytes of one token over all layers (k and v)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem


def plan(cfg, dtype: torch.dtype, device: torch.device, n_slots: int | None = None, max_len: int | None = None,
         memory_bytes: int | None = None) -> tuple[int, int]:
    """(n_slots, max_len) for the pool; explicit values win, the rest come from the budget."""
    per_token = bytes_per_token(cfg, dtype)
    if max_len is None:
        max_len = min(int(getattr(cfg, "max_position_embeddings", DEFAULT_MAX_LEN) or DEFAULT_MAX_LEN), DEFAULT_MAX_LEN)
    if max_len < 1 or (n_slots is not None and n_slots < 1):
        raise ValueError(f"n_slots and max_len must be >= 1, got n_slots={n_slots}, max_len={max_len}")
    if n_slots is not None and memory_bytes is None:
        return n_slots, max_len
    budget = memory_bytes if memory_bytes is not None else default_budget(device)
    slot_bytes = per_token * max_len
    fits = budget // slot_bytes
    if n_slots is None:
        n_slots = min(fits, DEFAULT_MAX_SLOTS)
    if n_slots < 1 or n_slots > fits:
        raise ValueError(f"KV memory budget {budget / 2**20:.1f} MiB holds {fits} slot(s) of max_len {max_len} "
                         f"({slot_bytes / 2**20:.1f} MiB each, {per_token} bytes per token), asked for "
                         f"{n_slots or 1}: raise memory_bytes or lower max_len / n_slots")
    return n_slots, max_len


@dataclass
class KVPool:
    """Preallocated slots; a slot is one request's cache row for its whole life."""

    cache: KVCache  # k, v [L, n_slots, Hkv, max_len, Dh]
    free: list[int]

    @classmethod
    def create(cls, cfg, dtype: torch.dtype, device: torch.device | str, n_slots: int | None = None,
               max_len: int | None = None, memory_bytes: int | None = None) -> KVPool:
        device = torch.device(device)
        n, length = plan(cfg, dtype, device, n_slots, max_len, memory_bytes)
        return cls(KVCache.allocate(cfg, n, length, dtype, device), list(range(n)))

    @property
    def n_slots(self) -> int:
        return self.cache.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @property
    def nbytes(self) -> int:
        return 2 * self.cache.k.numel() * self.cache.k.element_size()

    def acquire(self) -> int | None:
        """The lowest free slot (keeps running rows packed, so views stay contiguous), or None."""
        if not self.free:
            return None
        self.free.sort()
        return self.free.pop(0)

    def release(self, slot: int) -> None:
        if slot in self.free or not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} is not in use")
        self.free.append(slot)

    def view(self, slots: list[int]) -> KVCache:
        """A KVCache whose batch row b is pool slot slots[b]: a slice view when the slots are consecutive
        (no copies), else the whole pool with `rows` (attention indexes the rows)."""
        lo = slots[0]
        if slots == list(range(lo, lo + len(slots))):
            return KVCache(self.cache.k[:, lo:lo + len(slots)], self.cache.v[:, lo:lo + len(slots)])
        rows = torch.tensor(slots, dtype=torch.long, device=self.cache.k.device)
        return KVCache(self.cache.k, self.cache.v, rows)
