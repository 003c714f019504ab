"""Rotary position embeddings: 1-D (v1), M-RoPE (Qwen2/2.5-VL), interleaved M-RoPE (Qwen3-VL), 2-D ViT RoPE.

All angles are computed in fp32. Positions are always given explicitly by the caller (never rebuilt
from input_ids here), so an engine can own them per request.
"""

from __future__ import annotations

import torch


def inv_freq(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """[dim/2] inverse frequencies 1/theta^(2i/dim)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated by cos/sin broadcastable to x (rotate-half, non-interleaved pairs)."""
    return x * cos + rotate_half(x) * sin


def mrope_axis_map(section: tuple[int, ...], interleaved: bool = False) -> torch.Tensor:
    """For each of the head_dim/2 frequencies, which position axis (0=T, 1=H, 2=W) drives it.

    Chunked (Qwen2/2.5-VL), section (16, 24, 24): freqs 0-15 -> T, 16-39 -> H, 40-63 -> W.
    Interleaved (Qwen3-VL, the reference's `recomposition_frequencies`): freq j -> H if j % 3 == 1 and
    j < 3 * section[1], W if j % 3 == 2 and j < 3 * section[2], else T. The two bounds differ when the
    H and W sections do. Example, section (5, 4, 3), 12 freqs: T H W T H W T H W T H T
    (j = 10 is H since 10 < 12, j = 11 is T since 11 >= 9). Released (24, 20, 20): T H W x 20, then T x 4.
    """
    n = sum(section)
    if not interleaved:
        return torch.tensor([a for a, k in enumerate(section) for _ in range(k)])
    axis = [0] * n
    for j in range(n):
        if j % 3 == 1 and j < 3 * section[1]:
            axis[j] = 1
        elif j % 3 == 2 and j < 3 * section[2]:
            axis[j] = 2
    return torch.tensor(axis)


def text_cos_sin(
    positions: torch.Tensor, freqs: torch.Tensor, axis_map: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, T, D] for decoder RoPE.

    positions: [3, B, T] (M-RoPE: T/H/W ids) or [B, T] (1-D). freqs: [D/2] fp32, or [B, 1, D/2]
    (one base per row: v1 dynamic NTK with per-request lengths).
    With M-RoPE, frequency j takes its angle from axis axis_map[j]; for text T=H=W so this is 1-D RoPE.
    Cast to the model dtype like the reference (it applies rope in the model dtype).
    """
    if positions.dim() == 2:
        ang = positions[..., None].float() * freqs  # [B, T, D/2]
    else:
        ang_all = positions[..., None].float() * freqs  # [3, B, T, D/2]
        idx = axis_map.to(positions.device).view(1, 1, 1, -1).expand(1, *ang_all.shape[1:])
        ang = ang_all.gather(0, idx)[0]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def vision_rope_positions(grid_thw: list[tuple[int, int, int]], merge: int) -> torch.Tensor:
    """[N, 2] (row, col) of every ViT patch, in the processor's merge-block order.

    Patches arrive as (t, h/m, w/m, m, m): the m*m patches of one merge block are contiguous.
    Example, h = w = 4, m = 2: rows 0 0 1 1 | 0 0 1 1 | 2 2 3 3 | 2 2 3 3, cols 0 1 0 1 | 2 3 2 3 | ...
    Every frame repeats the grid (positions restart per image and per frame).
    """
    out = []
    for t, h, w in grid_thw:
        r = torch.arange(h).view(h // merge, merge, 1, 1).expand(h // merge, merge, w // merge, merge)
        c = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, w // merge, merge)
        rc = torch.stack([r.permute(0, 2, 1, 3).flatten(), c.permute(0, 2, 1, 3).flatten()], -1)
        out.append(rc.repeat(t, 1))
    return torch.cat(out)


def vision_cos_sin(rc: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N, head_dim] fp32: dims [0, hd/4) rotate with the row, [hd/4, hd/2) with the column, twice."""
    f = inv_freq(head_dim // 2, theta, rc.device)  # [hd/4]
    ang = torch.cat([rc[:, :1].float() * f, rc[:, 1:].float() * f], dim=-1)  # [N, hd/2]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos(), emb.sin()
