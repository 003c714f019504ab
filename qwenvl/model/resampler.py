"""Qwen-VL v1 position-aware adapter: one cross-attention layer from learnable queries to ViT patches.

Mirrors `Resampler` (`attn_pool`) of Qwen-VL's `visual.py` (architecture-facts A.3): n_queries learned
queries attend to the ViT patch tokens, with a fixed 2-D sin-cos table added to queries and keys only.
Parameter names match the official checkpoint (`query`, `pos_embed`, `kv_proj`, `ln_q`, `ln_kv`,
`attn.in_proj_weight`, `attn.in_proj_bias`, `attn.out_proj`), so weights load with a prefix rename.
Pure tensor code: no I/O.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim]: [sin(pos * omega) | cos(pos * omega)], omega_i = 1 / 10000^(i / (dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.float()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """The MAE 2-D sin-cos table [grid*grid, dim], fp32.

    Row k is the grid cell (row k // grid, column k % grid). As in the reference (a `meshgrid(w, h)`
    whose first plane is the column), channels [0, dim/2) encode the COLUMN and [dim/2, dim) the ROW;
    each half is [sin | cos] over dim/4 frequencies. Example, grid 2: rows are cells
    (r0,c0) (r0,c1) (r1,c0) (r1,c1); the first half of row 1 encodes 1, its second half encodes 0.
    """
    if dim % 4:
        raise ValueError(f"sin-cos table width {dim} must be a multiple of 4")
    k = torch.arange(grid * grid)
    col, row = k % grid, k // grid
    return torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1)


def resize_pos_table(table: torch.Tensor, side: int) -> torch.Tensor:
    """A square position table [s*s, C] resized to [side*side, C] (returned as is when s == side).

    Bicubic, align_corners=False, computed in fp32 and cast back, as the reference's `get_abs_pos`.
    """
    n, c = table.shape
    src = math.isqrt(n)
    if src * src != n:
        raise ValueError(f"position table has {n} rows, not a square grid")
    if src == side:
        return table
    grid = table.float().reshape(1, src, src, c).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(side * side, c).to(table.dtype)


class CrossAttention(nn.Module):
    """torch.nn.MultiheadAttention's math and parameter names (`in_proj_weight` = [Wq; Wk; Wv]), over SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, Q, D], k and v [B, N, D] -> [B, Q, D]."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        h = self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, D/H]
            return x.unflatten(-1, (h, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(F.linear(q, wq, bq)), heads(F.linear(k, wk, bk)),
                                             heads(F.linear(v, wv, bv)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Resampler(nn.Module):
    """ViT patches [B, N, width] -> [B, n_queries, D] (before the tower's ln_post / proj).

    Heads = D // 128. The sin-cos `pos_embed` is a persistent buffer (stored in the checkpoint, never
    trained); queries use it as is, keys use it resized to the patch grid (e.g. 16x16 -> 32x32).
    """

    def __init__(self, n_queries: int, dim: int, kv_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        grid = math.isqrt(n_queries)
        if grid * grid != n_queries:
            raise ValueError(f"n_queries {n_queries} is not a square")
        if dim < 128 or dim % 128:
            raise ValueError(f"resampler width {dim} must be a positive multiple of 128 (heads = dim // 128)")
        self.query = nn.Parameter(torch.empty(n_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.register_buffer("pos_embed", sincos_2d(dim, grid))
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False)
        self.ln_q = nn.LayerNorm(dim, eps=eps)
        self.ln_kv = nn.LayerNorm(dim, eps=eps)
        self.attn = CrossAttention(dim, dim // 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, width], N a square patch grid -> [B, n_queries, D]."""
        b, n, _ = x.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"resampler input has {n} patches, not a square grid")
        pos = self.pos_embed.to(x.dtype)
        x = self.ln_kv(self.kv_proj(x))
        q = (self.ln_q(self.query) + pos).expand(b, -1, -1)
        return self.attn(q, x + resize_pos_table(pos, side), x)
