"""Attention kernels over SDPA: variable-length segments (ViT) and causal decoder attention with a KV cache.

The KV cache is owned by the caller (the engine): a layer only receives the cache tensors for its own
layer and the offset to write at. Nothing is stored on the module.

Two cache modes. Training and single-prompt inference: one int `start` for the whole batch. The
engine's pool: `start` a [B] tensor (each row's own cache length) and optionally `rows` [B] (which
pool rows the batch rows are). Each row writes its new k/v at its own offset; keys past a row's own
end are masked by ragged_causal_mask, so a short row never sees another request's stale entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def segment_layout(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For packed tokens split by cu_seqlens [S+1]: (segment id [N], offset in segment [N], max length)."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    n = int(cu_seqlens[-1])
    seg = torch.repeat_interleave(torch.arange(len(lens), device=cu_seqlens.device), lens)
    off = torch.arange(n, device=cu_seqlens.device) - cu_seqlens[:-1].long()[seg]
    return seg, off, int(lens.max()) if len(lens) else 0


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """F.scaled_dot_product_attention; in training on CPU, bf16 inputs run in float32. The CPU bf16 flash
    kernel's backward is the slow part of a tiny model's step: [32, 3, 64, 64] fwd+bwd 13.5 ms in bf16
    vs 3.5 ms in fp32 (bench/RESULTS.md, 2026-12-02); inference keeps bf16 (its forward is faster)."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kw)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     layout: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
    """Non-causal attention restricted to segments, without a Python loop per segment.

    q, k, v: [N, H, D] packed tokens; cu_seqlens: [S+1] segment boundaries. Returns [N, H, D].
    Segments are scattered into a padded batch [S, Lmax, H, D] and run as one SDPA call with a key
    padding mask (no dense N x N block-diagonal mask: memory stays S * Lmax^2, e.g. 64^2 per window).
    """
    seg, off, lmax = layout if layout is not None else segment_layout(cu_seqlens)
    n_seg = cu_seqlens.numel() - 1
    n, h, d = q.shape
    if n_seg * lmax == n:  # equal segments (one image, full windows): a reshape, no scatter/gather copies
        split = lambda t: t.reshape(n_seg, lmax, h, d).transpose(1, 2)
        return sdpa(split(q), split(k), split(v)).transpose(1, 2).reshape(n, h, d)
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    pad = q.new_zeros(3, n_seg, lmax, h, d)
    pad[0, seg, off], pad[1, seg, off], pad[2, seg, off] = q, k, v
    pq, pk, pv = pad.transpose(2, 3).unbind(0)  # [S, H, Lmax, D]
    mask = None
    if bool((lens != lmax).any()):
        mask = (torch.arange(lmax, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    out = sdpa(pq, pk, pv, attn_mask=mask)  # [S, H, Lmax, D]
    return out.transpose(1, 2)[seg, off]


@dataclass
class LayerCache:
    """One layer's view of an engine-owned KV cache: k, v [N, Hkv, S_max, D] and where to write.

    start: int (every row) or [B] long (per row) absolute slot of the first new token.
    rows: None (batch row b is cache row b, N == B) or [B] long indices into the N cache rows.
    """

    k: torch.Tensor
    v: torch.Tensor
    start: int | torch.Tensor  # absolute position of the first new token
    rows: torch.Tensor | None = None


def _write_rows(cache: LayerCache, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row write at each row's own offset, then the keys/values [B, Hkv, S, D] for S = max end.

    Example, starts (5, 2), T = 1: row 0 writes slot 5, row 1 slot 2; both read slots [0, 6) and the
    mask hides slots 3-5 of row 1 (whatever an earlier request left there).
    """
    b, _, t, _ = k.shape
    start = cache.start
    if not isinstance(start, torch.Tensor):
        start = torch.full((b,), start, dtype=torch.long, device=k.device)
    rows = cache.rows if cache.rows is not None else torch.arange(b, device=k.device)
    idx = start[:, None] + torch.arange(t, device=k.device)  # [B, T]
    # advanced indices on dims 0 and 2 put [B, T] first: the target view is [B, T, Hkv, D]
    cache.k[rows[:, None], :, idx] = k.transpose(1, 2)
    cache.v[rows[:, None], :, idx] = v.transpose(1, 2)
    end = int(start.max()) + t
    if cache.rows is None:
        return cache.k[:, :, :end], cache.v[:, :, :end]
    return cache.k[rows, :, :end], cache.v[rows, :, :end]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     cache: LayerCache | None, scale: float | None = None) -> torch.Tensor:
    """Grouped-query causal attention.

    q: [B, H, T, D]; k, v: [B, Hkv, T, D] (new tokens only). With a cache, k/v are written at
    [start, start+T) and attention runs over [0, start+T) (per-row starts: over [0, max end), the
    mask hiding each row's tail). mask: [B, 1, T, S] bool (True = attend) or None for a plain causal
    prefill from position 0. Returns [B, H, T, D].
    """
    if cache is not None and (cache.rows is not None or isinstance(cache.start, torch.Tensor)):
        k, v = _write_rows(cache, k, v)
    elif cache is not None:
        end = cache.start + k.shape[2]
        cache.k[:, :, cache.start:end] = k
        cache.v[:, :, cache.start:end] = v
        k, v = cache.k[:, :, :end], cache.v[:, :, :end]
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        causal = q.shape[2] > 1
        if causal and k.shape[2] != q.shape[2]:
            raise ValueError("a causal chunk after cached tokens needs an explicit mask")
        return sdpa(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    return sdpa(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def build_causal_mask(key_valid: torch.Tensor | None, start: int, t: int, batch: int,
                      device: torch.device, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 1, T, S] bool mask for T new tokens at absolute positions [start, start+T), S = start+T.

    key_valid: [B, S] bool, False for padding keys. segment_ids: [B, T] ints for packed training
    sequences (block-diagonal causal; only with start == 0). A query row whose keys are all masked
    (a left-pad query) attends to itself, which keeps SDPA finite; its output is ignored.
    """
    s = start + t
    qpos = torch.arange(start, s, device=device)
    kpos = torch.arange(s, device=device)
    mask = (kpos[None, :] <= qpos[:, None])[None, None].expand(batch, 1, t, s)
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :s].bool()
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    diag = kpos[None, :] == qpos[:, None]
    return mask | (~mask.any(-1, keepdim=True) & diag)


def ragged_causal_mask(starts: torch.Tensor, t: int) -> torch.Tensor:
    """[B, 1, T, S] bool mask for T new tokens per row at [starts[b], starts[b]+T), S = max(starts)+T.

    Query i of row b attends keys 0..starts[b]+i; later slots (another row's longer history, or stale
    entries of a reused cache row) are hidden. Example, starts (3, 1), T = 1, S = 4:
        row 0: 1 1 1 1     row 1: 1 1 0 0
    """
    s = int(starts.max()) + t
    qpos = starts[:, None] + torch.arange(t, device=starts.device)  # [B, T]
    kpos = torch.arange(s, device=starts.device)
    return (kpos[None, None, :] <= qpos[:, :, None])[:, None]
