"""The image-embedding cache: vision features per image / video item, LRU under a byte budget.

    cache = VisionCache(256 << 20)                     # 0 disables it (every item is encoded)
    keys = item_keys(model_key(model), "image", inputs.image_pixels, inputs.image_grid)
    feats = encode_items(model, cache, items, device)  # features of several items, in order

An item is one image or one video: for Qwen2/3-VL its t*h*w packed patch rows (its grid), for v1
one [3, S, S] image. Its key is a blake2b hash of the preprocessed pixel bytes, their dtype and shape,
the grid and the model's identity, so the same picture sent again (the next chat turn) skips the ViT
and one changed pixel does not. The keys also name the items in the engine's prefix keys
(engine/prefix.py). Must not know of requests, slots or the KV pool.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_VISION_CACHE_BYTES = 256 << 20


def model_key(model) -> bytes:
    """The model's identity in item keys: the object and its config (features of another model, or of
    the same object after its config changed, never match)."""
    return hashlib.blake2b(f"{id(model)}:{getattr(model, 'cfg', None)!r}".encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Item:
    """One image or video of a prompt: its pixels (v2 [t*h*w, C*T*P*P], v1 [1, 3, S, S]), grid, key."""

    pixels: torch.Tensor
    grid: tuple[int, int, int] | None
    key: bytes

    @property
    def weight(self) -> int:
        """Patch rows before merging (t*h*w), or 1 for v1: feature rows are proportional to it."""
        return 1 if self.grid is None else self.grid[0] * self.grid[1] * self.grid[2]


def _digest(mkey: bytes, kind: str, pixels: torch.Tensor, grid) -> bytes:
    h = hashlib.blake2b(mkey, digest_size=16)
    h.update(f"{kind}|{pixels.dtype}|{tuple(pixels.shape)}|{grid}|".encode())
    h.update(pixels.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def split_items(mkey: bytes, kind: str, pixels: torch.Tensor | None, grid: Sequence) -> list[Item]:
    """A prompt's packed pixels as items, in order. grid [(t, h, w)] per item (v2); empty for v1,
    where each row of pixels [n, 3, S, S] is one image."""
    if pixels is None:
        return []
    if not grid:
        return [Item(pixels[i:i + 1], None, _digest(mkey, kind, pixels[i:i + 1], None)) for i in range(len(pixels))]
    items, o = [], 0
    for g in grid:
        g = tuple(int(x) for x in g)
        n = g[0] * g[1] * g[2]
        items.append(Item(pixels[o:o + n], g, _digest(mkey, kind, pixels[o:o + n], g)))
        o += n
    if o != pixels.shape[0]:
        raise ValueError(f"{kind} grid covers {o} patch rows, the pixels have {pixels.shape[0]}")
    return items


class VisionCache:
    """key -> features [N_tok, F] (kept on the model's device), least recently used evicted first so
    that the stored features stay within max_bytes. An item larger than the budget is not stored."""

    def __init__(self, max_bytes: int = DEFAULT_VISION_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"vision cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> torch.Tensor | None:
        feats = self.entries.get(key)
        if feats is not None:
            self.entries.move_to_end(key)
        return feats

    def put(self, key: bytes, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if size > self.max_bytes or key in self.entries:
            return
        while self.nbytes + size > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
            self.evictions += 1
        self.entries[key] = feats.clone()  # its own storage: not a view that pins the whole batch output
        self.nbytes += size


@torch.no_grad()
def encode_items(model, cache: VisionCache | None, items: list[Item], device: torch.device) -> torch.Tensor | None:
    """Features [sum N_tok, F] of items, in order. Hits come from the cache; the misses (each distinct
    key once) are encoded in ONE batched encode_images call and stored. cache None: all encoded."""
    if not items:
        return None
    found: dict[bytes, torch.Tensor] = {}
    if cache is not None:
        for it in items:
            feats = cache.get(it.key) if it.key not in found else found[it.key]
            if feats is not None:
                found[it.key] = feats
    todo = list({it.key: it for it in items if it.key not in found}.values())
    if cache is not None:
        cache.hits += sum(it.key in found for it in items)
        cache.misses += len(todo)
    if todo:
        grid = [it.grid for it in todo] if todo[0].grid is not None else []
        out = model.encode_images(torch.cat([it.pixels for it in todo]).to(device), grid)
        total = sum(it.weight for it in todo)
        # feature rows are proportional to patch rows (a 2x2 merge: a quarter; v1: n_queries each)
        counts = [it.weight * out.shape[0] // total for it in todo]
        if sum(counts) != out.shape[0]:
            raise ValueError(f"{out.shape[0]} feature rows do not split over items of {total} patch rows")
        for it, feats in zip(todo, out.split(counts), strict=True):
            found[it.key] = feats
            if cache is not None:
                cache.put(it.key, feats)
    return torch.cat([found[it.key] for it in items])
