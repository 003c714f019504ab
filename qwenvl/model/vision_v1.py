"""Qwen-VL v1 vision tower: fixed-resolution ViT (OpenCLIP bigG shape) + resampler + ln_post + proj.

Mirrors `VisionTransformer` of Qwen-VL's `visual.py` (architecture-facts A.2-A.3). Input: square images
[n, 3, S, S] (S = 448 for the released models); output: n * n_queries LLM-space tokens, image-major,
so QwenVLModel.embed scatters them into the `<img>...</img>` slots in prompt order.

Module names follow the official checkpoint under `transformer.visual.` (conv1, positional_embedding,
ln_pre, transformer.resblocks.{i}.{ln_1, attn, ln_2, mlp}, attn_pool, ln_post, proj); the only other
renames are the shared MLP's `mlp.fc1` / `mlp.fc2` for `mlp.c_fc` / `mlp.c_proj` (see weights_v1.py).

qkv layout: `attn.in_proj` is kept in the OFFICIAL layout, so checkpoints load without a permutation.
Its output row for one token is per-head interleaved, [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] with head_dim
values each, i.e. viewed as [.., heads, 3 * head_dim] and split in three. This is NOT torch MHA's
[all q | all k | all v] layout (the resampler's `attn.in_proj_weight` is). Pure tensor code: no I/O.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from qwenvl.config import VisionConfig
from qwenvl.model.layers import PlainMLP
from qwenvl.model.resampler import Resampler, resize_pos_table


class InterleavedAttention(nn.Module):
    """Full (unmasked) self-attention whose fused `in_proj` is per-head interleaved [q_h, k_h, v_h]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]; scale 1/sqrt(head_dim)."""
        b, n, d = x.shape
        q, k, v = self.in_proj(x).view(b, n, self.num_heads, -1).transpose(1, 2).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, D/H]
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(x)); exact-erf GELU MLP."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = InterleavedAttention(cfg.hidden_size, cfg.num_heads)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # the v1 ViT is always exact GELU (config.json has no activation key)
        self.mlp = PlainMLP(cfg.hidden_size, cfg.intermediate_size, "gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The block stack (`transformer.resblocks` in the checkpoint). No final norm."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(cfg) for _ in range(cfg.depth))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class VisionTransformerV1(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.tower != "resampler":
            raise ValueError(f"VisionTransformerV1 needs a vision config with tower 'resampler', got {cfg.tower!r}")
        self.cfg = cfg
        w = cfg.hidden_size
        self.conv1 = nn.Conv2d(cfg.in_channels, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        # learned table for the pos_embed_grid^2 grid (224 px stage 1), resized to the input grid
        self.positional_embedding = nn.Parameter(w**-0.5 * torch.randn(cfg.pos_embed_grid**2, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.transformer = Transformer(cfg)
        self.attn_pool = Resampler(cfg.n_queries, cfg.out_hidden_size, w, cfg.layer_norm_eps)
        self.ln_post = nn.LayerNorm(cfg.out_hidden_size, eps=cfg.layer_norm_eps)
        # a raw [in, out] matrix used as x @ proj (not an nn.Linear: no transpose, no bias)
        self.proj = nn.Parameter(cfg.out_hidden_size**-0.5 * torch.randn(cfg.out_hidden_size, cfg.out_hidden_size))

    def forward(self, pixels: torch.Tensor, grid_thw: object = None) -> torch.Tensor:
        """pixels [n, C, S, S] -> image tokens [n * n_queries, out_hidden]. grid_thw is ignored (fixed size)."""
        n, c, hgt, wid = pixels.shape
        p = self.cfg.patch_size
        if hgt != wid or hgt % p:
            raise ValueError(f"v1 images must be square with a side divisible by {p}, got {hgt}x{wid}")
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # [n, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [n, g*g, W], row-major patches
        x = x + resize_pos_table(self.positional_embedding, math.isqrt(x.shape[1]))
        x = self.transformer(self.ln_pre(x))
        x = self.ln_post(self.attn_pool(x))  # [n, n_queries, D]
        return (x @ self.proj).flatten(0, 1)
