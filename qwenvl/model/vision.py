"""Dynamic-resolution ViT with the 2x2 patch merger (tower "merger": Qwen2-VL and Qwen2.5-VL).

Mirrors transformers' `Qwen2VisionTransformerPretrainedModel` / `Qwen2_5_VisionTransformerPretrainedModel`
(facts B.1-B.3). Input: packed patches of many images/videos [N, C*T*P*P] plus grid_thw; output:
merged tokens [N/4, out_hidden] in the same (input) order. The generations differ only in knobs read
here: `norm` (LayerNorm | RMSNorm), `mlp` (plain | gated) and `window_size` (0 = full attention per
frame); never in a family name. PatchEmbed, VisionAttention and frame_cu_seqlens are shared with the
Qwen3-VL tower (vision_qwen3.py). Pure tensor code: no I/O.
"""

from __future__ import annotations

import torch
from torch import nn

from qwenvl.config import VisionConfig
from qwenvl.model.attention import segment_layout, varlen_attention
from qwenvl.model.layers import GatedMLP, PlainMLP, RMSNorm
from qwenvl.model.rope import apply_rope, vision_cos_sin, vision_rope_positions

Grid = list[tuple[int, int, int]]


class PatchEmbed(nn.Module):
    """The reference's Conv3d(kernel = stride = (T, P, P)) over flattened patches, as one matmul.

    The weight keeps the Conv3d shape [D, C, T, P, P] so checkpoints load unchanged; a patch row is
    flattened in the same [C, T, P, P] order, so conv == x @ W.flatten(1).T (+ bias with `patch_bias`).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Module()
        shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj.weight = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.proj.weight, std=0.02)
        self.proj.register_parameter("bias", nn.Parameter(torch.zeros(cfg.hidden_size)) if cfg.patch_bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C*T*P*P] -> [N, D]."""
        w, b = self.proj.weight, self.proj.bias
        x = x.to(w.dtype)
        return x @ w.flatten(1).t() if b is None else torch.addmm(b, x, w.flatten(1).t())


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                layout: tuple) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # [all q | all k | all v]
        # RoPE in fp32, cast back (as the reference) to v's dtype: under autocast x stays fp32 but qkv is bf16
        cos, sin = cos[:, None], sin[:, None]
        q = apply_rope(q.float(), cos, sin).to(v.dtype)
        k = apply_rope(k.float(), cos, sin).to(v.dtype)
        return self.proj(varlen_attention(q, k, v, cu_seqlens, layout).reshape(n, -1))


def make_norm(kind: str, dim: int) -> nn.Module:
    """The ViT / merger norm named by VisionConfig.norm; eps 1e-6 in every released tower."""
    return nn.LayerNorm(dim, eps=1e-6) if kind == "layernorm" else RMSNorm(dim, eps=1e-6)


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.hidden_size)
        self.norm2 = make_norm(cfg.norm, cfg.hidden_size)
        if cfg.mlp == "plain":  # Qwen2-VL: QuickGELU
            self.mlp = PlainMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        else:  # Qwen2.5-VL: SwiGLU with biases
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, bias=True, act=cfg.hidden_act)
        self.attn = VisionAttention(cfg)

    def forward(self, x, cu_seqlens, cos, sin, layout) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens, cos, sin, layout)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Norm, concatenate each 2x2 block of contiguous patches, MLP(GELU) to the LLM width."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = make_norm(cfg.norm, cfg.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.out_hidden_size))
        self.unit = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.unit))


def frame_cu_seqlens(grid: Grid, device: torch.device | None = None) -> torch.Tensor:
    """[F+1] boundaries where every frame (temporal patch) of every image/video is one segment."""
    lens = [h * w for t, h, w in grid for _ in range(t)]
    return torch.tensor([0, *lens], device=device).cumsum(0).to(torch.int32)


def window_index(grid: Grid, merge: int, win: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL window reordering at merge-unit granularity.

    win = window side in merge units (window_size / merge / patch = 4 for the released models).
    Returns (index [N/merge^2] into merge units in window-major order, cu_window_seqlens in patches).
    Example, one frame of 6x6 merge units, win 4: windows (rows 0-3, cols 0-3) 16 units, (0-3, 4-5) 8,
    (4-5, 0-3) 8, (4-5, 4-5) 4 -> cu = [0, 64, 96, 128, 144] patches. Windows are per frame.
    """
    idx_all, lens_all, base = [], [], 0
    for t, h, w in grid:
        gh, gw = h // merge, w // merge
        nh, nw = -(-gh // win), -(-gw // win)
        idx = torch.full((t, nh * win, nw * win), -1, dtype=torch.long)
        idx[:, :gh, :gw] = torch.arange(t * gh * gw).view(t, gh, gw) + base
        idx = idx.view(t, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(t * nh * nw, win * win)
        valid = idx >= 0
        idx_all.append(idx[valid])
        lens_all.append(valid.sum(1))
        base += t * gh * gw
    lens = torch.cat(lens_all)
    lens = lens[lens > 0] * merge * merge
    cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).to(torch.int32)
    return torch.cat(idx_all), cu


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor | Grid) -> torch.Tensor:
        """pixels [N, C*T*P*P], grid_thw [n, 3] -> merged tokens [N / merge^2, out_hidden]."""
        cfg, m = self.cfg, self.cfg.spatial_merge_size
        grid = [tuple(int(v) for v in g) for g in (grid_thw.tolist() if torch.is_tensor(grid_thw) else grid_thw)]
        dev = pixels.device
        x = self.patch_embed(pixels)
        cos, sin = vision_cos_sin(vision_rope_positions(grid, m).to(dev), cfg.head_dim, cfg.rope_theta)
        cu_full = frame_cu_seqlens(grid, dev)
        cu_win, order = cu_full, None
        if cfg.window_size:
            win_idx, cu_win = window_index(grid, m, cfg.window_size // m // cfg.patch_size)
            cu_win, unit = cu_win.to(dev), m * m
            # reorder whole merge units so every window is contiguous; RoPE travels with its token
            order = (win_idx.to(dev)[:, None] * unit + torch.arange(unit, device=dev)).flatten()
            x, cos, sin = x[order], cos[order], sin[order]
        lay_full, lay_win = segment_layout(cu_full), segment_layout(cu_win)
        full = set(cfg.fullatt_block_indexes) if cfg.window_size else set(range(cfg.depth))
        for i, blk in enumerate(self.blocks):
            if i in full:
                x = blk(x, cu_full, cos, sin, lay_full)
            else:
                x = blk(x, cu_win, cos, sin, lay_win)
        x = self.merger(x)
        if order is not None:
            x = x[torch.argsort(win_idx.to(dev))]
        return x
