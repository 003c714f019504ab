"""Prefix reuse: a finished request's KV slot kept as "cached", so the next chat turn prefills only
what is new.

    keys, spans = position_keys(model, inputs, image_items, video_items)   # per request, at submit
    slot, m = prefix.acquire(pool, ids, keys, spans, inputs.positions)         # at admission
    prefix.store(slot, keys_of_what_is_in_the_slot, positions)              # when it finishes well

Per-position keys: a text token is its id; a vision slot is (item key, offset in the item), so two
prompts with the same ids (image slots are all the same pad id) but different pictures differ at
the first slot of the first differing item. A match m is the longest common prefix with a cached
slot, cut so that (1) at least the last prompt token is prefilled (its logits are needed), (2) no
vision item straddles m (an item is either all in the reused KV or all in the remainder, which
then gets its features; Qwen3-VL DeepStack included), (3) the remainder's placeholder masks are the
prompt's own over the same span (v1: the <img> tag that opens an item stays with it), and (4) the
reused positions equal the new prompt's positions there (they must when ids and items match; a
mismatch is counted and is no match, never a wrong one), and (5) the RoPE frequencies of both
prompt lengths are the same (v1 dynamic NTK grows the base with the prompt length: a cached prefix
rotated with another base is not reused).

Cached slots stay in the pool's free list; acquiring any slot drops its entry first, so a slot's
entry always describes what its KV holds. Eviction: least recently used cached slot, only when no
uncached free slot is left (acquire says when a partial match may overwrite a cached slot).
Must not touch the model beyond placeholder_masks and the decoder's rope_freqs.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from qwenvl.engine.kv import KVPool
from qwenvl.engine.vision_cache import Item


def _counts(items: Sequence[Item], n_slots: int) -> list[int]:
    total = sum(it.weight for it in items)
    return [it.weight * n_slots // total for it in items] if total else []


def position_keys(model, input_ids: list[int], image_items: Sequence[Item], video_items: Sequence[Item]
                  ) -> tuple[list[Hashable], list[tuple[int, int]]] | None:
    """(per-position keys [T], each item's [begin, end) slot span in prompt order per kind: images
    then videos); None when the model cannot say where its vision slots are (no reuse then)."""
    keys: list[Hashable] = list(input_ids)
    spans: list[tuple[int, int]] = []
    if not image_items and not video_items:
        return keys, spans
    masks_of = getattr(model, "placeholder_masks", None)
    if masks_of is None:
        return None
    masks = masks_of(torch.tensor([input_ids]))
    for mask, items in zip(masks, (image_items, video_items), strict=True):
        pos = mask[0].nonzero().flatten().tolist()
        o = 0
        for it, n in zip(items, _counts(items, len(pos)), strict=True):
            span = pos[o:o + n]
            for j, p in enumerate(span):
                keys[p] = (it.key, j)
            spans.append((span[0], span[-1] + 1) if span else (0, 0))
            o += n
    return keys, spans


@dataclass
class Entry:
    keys: list[Hashable]  # per position of what the slot's KV holds
    positions: torch.Tensor  # [3, L] or [L] their RoPE positions
    used: int  # LRU clock
    rope: torch.Tensor | None  # RoPE frequencies its keys were rotated with (v1 NTK: by prompt length)


class PrefixCache:
    """slot -> Entry for the free-but-cached slots of a KVPool."""

    def __init__(self, model) -> None:
        self.model = model
        self.entries: dict[int, Entry] = {}
        self._clock = itertools.count()
        self.hits = self.evictions = self.position_mismatches = 0

    def _rope(self, ntk_len: int) -> torch.Tensor | None:
        freqs = getattr(getattr(self.model, "model", None), "rope_freqs", None)
        return freqs(ntk_len).detach().cpu() if freqs is not None else None

    def store(self, slot: int, keys: list[Hashable], positions: torch.Tensor, ntk_len: int) -> None:
        """Keep slot's KV for reuse: keys / positions [..., L] of its tokens, the prompt length its
        RoPE base came from."""
        self.entries[slot] = Entry(keys, positions.cpu(), next(self._clock), self._rope(ntk_len))

    def drop(self, slot: int) -> None:
        self.entries.pop(slot, None)

    def match(self, entry: Entry, input_ids: list[int], keys: list[Hashable], spans: list[tuple[int, int]],
              positions: torch.Tensor) -> int:
        """Reusable prefix length of entry for a prompt (0: none); see the module doc for the cuts."""
        limit = min(len(entry.keys), len(keys) - 1)
        m = 0
        while m < limit and entry.keys[m] == keys[m]:
            m += 1
        for b, e in spans:
            if b < m < e:
                m = b
        if m and entry.rope is not None and not torch.equal(entry.rope, self._rope(len(input_ids))):
            return 0
        if m and not torch.equal(entry.positions[..., :m], positions[..., :m].cpu()):
            self.position_mismatches += 1
            return 0
        if m and spans:
            m = self._mask_safe(input_ids, m)
        return m

    def _mask_safe(self, input_ids: list[int], m: int) -> int:
        """m moved back until the remainder's own placeholder masks are the prompt's (v1 <img> tags)."""
        ids = torch.tensor([input_ids])
        full = [mk[0] for mk in self.model.placeholder_masks(ids)]
        while m > 0:
            part = [mk[0] for mk in self.model.placeholder_masks(ids[:, m:])]
            if all(torch.equal(p, f[m:]) for p, f in zip(part, full, strict=True)):
                return m
            m -= 1
        return 0

    def acquire(self, pool: KVPool, input_ids: list[int], keys: list[Hashable] | None,
                spans: list[tuple[int, int]], positions: torch.Tensor) -> tuple[int | None, int]:
        """(slot, reused prefix length) for a prompt. The cached slot with the longest match is taken
        when that match covers at least half of what the slot holds (the next turn of its chat), or
        when no uncached free slot is left; otherwise the lowest uncached free slot (another chat's
        cache is not overwritten to share a system prompt); failing both, the least recently used
        cached slot is evicted."""
        if not pool.free:
            return None, 0
        best, best_m = None, 0
        if keys is not None:
            for slot in sorted(pool.free):
                entry = self.entries.get(slot)
                if entry is not None:
                    m = self.match(entry, input_ids, keys, spans, positions)
                    if m > best_m:
                        best, best_m = slot, m
        plain = [s for s in pool.free if s not in self.entries]
        if best is not None and plain and 2 * best_m < len(self.entries[best].keys):
            best, best_m = None, 0
        if best is None:
            if plain:
                best = min(plain)
            else:
                best = min(pool.free, key=lambda s: self.entries[s].used)
                self.evictions += 1
        else:
            self.hits += 1
        pool.free.remove(best)
        self.drop(best)
        return best, best_m
