"""Attention kernels over SDPA: variable-length segments (ViT) and causal decoder attention with a KV cache.

The KV cache is owned by the caller (the engine): a layer only receives the cache tensors for its own
layer and the offset to write at. Nothing is stored on the module.
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
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(n, h, d)
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    pad = q.new_zeros(3, n_seg, lmax, h, d)
    pad[0, seg, off], pad[1, seg, off], pad[2, seg, off] = q, k, v
    pq, pk, pv = pad.transpose(2, 3).unbind(0)  # [S, H, Lmax, D]
    mask = None
    if bool((lens != lmax).any()):
        mask = (torch.arange(lmax, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=mask)  # [S, H, Lmax, D]
    return out.transpose(1, 2)[seg, off]


@dataclass
class LayerCache:
    """One layer's view of an engine-owned KV cache: k, v [B, Hkv, S_max, D] and where to write."""

    k: torch.Tensor
    v: torch.Tensor
    start: int  # absolute position of the first new token


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     cache: LayerCache | None, scale: float | None = None) -> torch.Tensor:
    """Grouped-query causal attention.

    q: [B, H, T, D]; k, v: [B, Hkv, T, D] (new tokens only). With a cache, k/v are written at
    [start, start+T) and attention runs over [0, start+T). mask: [B, 1, T, S] bool (True = attend) or
    None for a plain causal prefill from position 0. Returns [B, H, T, D].
    """
    if cache is not None:
        end = cache.start + k.shape[2]
        cache.k[:, :, cache.start:end] = k
        cache.v[:, :, cache.start:end] = v
        k, v = cache.k[:, :, :end], cache.v[:, :, :end]
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        causal = q.shape[2] > 1
        if causal and k.shape[2] != q.shape[2]:
            raise ValueError("a causal chunk after cached tokens needs an explicit mask")
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


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
