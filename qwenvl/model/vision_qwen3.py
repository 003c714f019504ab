"""Qwen3-VL vision tower (tower "deepstack"): dynamic-resolution ViT, learned position table, DeepStack mergers.

Mirrors transformers' `Qwen3VLVisionModel` (architecture-facts C). Differences from the Qwen2-VL tower
(vision.py): the Conv3d patch embedding has a bias; a learned square position table is bilinearly
resized (align_corners=True) to every grid and added after the patch embedding; blocks are LayerNorm +
plain GELU-tanh MLP (`linear_fc1/linear_fc2`) with full attention per frame (no windows); besides the
final `merger`, the outputs of blocks `deepstack_visual_indexes` go through their own mergers
(`deepstack_merger_list`, norm AFTER the 2x2 concat), whose outputs the decoder adds to its hidden
states after layers 0, 1, ... (decoder.py).

Output layout: ONE tensor [N/merge^2, D*(1+k)] = [main merger | deepstack level 0 | level 1 | ...] along
the last dim (vLLM's layout for Qwen3-VL multimodal embeddings), so engines and caches move vision
features as one tensor. Module names equal the checkpoint keys under `visual.`.
Pure tensor code: imports torch and qwenvl only, no I/O.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from qwenvl.config import VisionConfig
from qwenvl.model.attention import segment_layout
from qwenvl.model.layers import activation
from qwenvl.model.rope import vision_cos_sin, vision_rope_positions
from qwenvl.model.vision import Grid, PatchEmbed, VisionAttention, frame_cu_seqlens


class VisionMLP(nn.Module):
    """linear_fc2(act(linear_fc1(x))) with biases (the reference's `Qwen3VLVisionMLP` names)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(dim, hidden)
        self.linear_fc2 = nn.Linear(hidden, dim)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class DeepstackBlock(nn.Module):
    """Pre-LayerNorm ViT block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x, cu_seqlens, cos, sin, layout) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens, cos, sin, layout)
        return x + self.mlp(self.norm2(x))


class Merger(nn.Module):
    """LayerNorm, concat each 2x2 block of contiguous patches, linear_fc1 -> GELU (erf) -> linear_fc2.

    postshuffle=False (the main `merger`): norm over D before the concat.
    postshuffle=True (`deepstack_merger_list.j`): norm over 4*D after it.
    """

    def __init__(self, cfg: VisionConfig, postshuffle: bool) -> None:
        super().__init__()
        self.unit = cfg.hidden_size * cfg.spatial_merge_size**2
        self.postshuffle = postshuffle
        self.norm = nn.LayerNorm(self.unit if postshuffle else cfg.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.unit, self.unit)
        self.act = nn.GELU()
        self.linear_fc2 = nn.Linear(self.unit, cfg.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] in merge-block order -> [N / merge^2, out_hidden]."""
        x = self.norm(x.view(-1, self.unit)) if self.postshuffle else self.norm(x).view(-1, self.unit)
        return self.linear_fc2(self.act(self.linear_fc1(x)))


def pos_embed_taps(grid: Grid, side: int, merge: int,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps into a side x side table for every patch: (indices [N, 4], weights [N, 4] fp32).

    align_corners=True, as the reference (`get_vision_interpolation_indices_and_weights`, bilinear): patch
    row r of an h-row grid samples table row r * (side - 1) / (h - 1), so the grid's corners land on the
    table's corners. Taps are (lo_r, lo_c) (lo_r, hi_c) (hi_r, lo_c) (hi_r, hi_c), hi clamped to side - 1.
    Example, side 3, h = 5: rows sample 0, 0.5, 1, 1.5, 2 -> row 1 is rows 0 and 1 at weights 0.5 / 0.5.
    Patches are in the processor's merge-block order (vision_rope_positions), repeated per frame.
    """
    rc = vision_rope_positions(grid, merge).to(device)  # [N, 2] (row, col)
    size = torch.cat([torch.tensor([[h, w]]).expand(t * h * w, 2) for t, h, w in grid]).to(device)
    src = rc.float() * (side - 1) / (size - 1).clamp(min=1)
    lo = src.floor()
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=side - 1)
    (r0, c0), (r1, c1), (fr, fc) = lo.unbind(1), hi.unbind(1), frac.unbind(1)
    idx = torch.stack([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1], dim=1)
    wts = torch.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], dim=1)
    return idx, wts


class DeepstackVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.tower != "deepstack":
            raise ValueError(f"DeepstackVisionTransformer needs tower 'deepstack', got {cfg.tower!r}")
        # this tower's data flow is fixed; knobs that would ask for another one must not be silently ignored
        if cfg.norm != "layernorm" or cfg.mlp != "plain" or cfg.window_size or not cfg.num_position_embeddings:
            raise ValueError("tower 'deepstack' needs norm 'layernorm', mlp 'plain', window_size 0 and "
                             f"num_position_embeddings > 0; got {cfg.norm!r}, {cfg.mlp!r}, {cfg.window_size}, "
                             f"{cfg.num_position_embeddings}")
        self.cfg = cfg
        self.side = round(cfg.num_position_embeddings**0.5)
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.blocks = nn.ModuleList(DeepstackBlock(cfg) for _ in range(cfg.depth))
        self.merger = Merger(cfg, postshuffle=False)
        self.deepstack_merger_list = nn.ModuleList(Merger(cfg, postshuffle=True)
                                                   for _ in cfg.deepstack_visual_indexes)
        self.gradient_checkpointing = False

    @property
    def n_deepstack(self) -> int:
        return len(self.cfg.deepstack_visual_indexes)

    def position_embedding(self, grid: Grid, device: torch.device) -> torch.Tensor:
        """[N, D] learned positions resized to every grid, fp32 weights (the reference sums in fp32)."""
        idx, wts = pos_embed_taps(grid, self.side, self.cfg.spatial_merge_size, device)
        return (self.pos_embed(idx) * wts[..., None]).sum(1)

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor | Grid) -> torch.Tensor:
        """pixels [N, C*T*P*P], grid_thw [n, 3] -> [N / merge^2, out_hidden * (1 + k)], k = n_deepstack.

        Columns [0, D) are the main merger's output, [D*(1+j), D*(2+j)) deepstack level j, where the
        levels are in block order (the reference appends them as the blocks run).
        """
        cfg = self.cfg
        grid = [tuple(int(v) for v in g) for g in (grid_thw.tolist() if torch.is_tensor(grid_thw) else grid_thw)]
        dev = pixels.device
        x = self.patch_embed(pixels)
        x = x + self.position_embedding(grid, dev).to(x.dtype)
        cos, sin = vision_cos_sin(vision_rope_positions(grid, cfg.spatial_merge_size).to(dev), cfg.head_dim,
                                  cfg.rope_theta)
        cu = frame_cu_seqlens(grid, dev)
        layout = segment_layout(cu)
        levels = []
        for i, blk in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(blk, x, cu, cos, sin, layout, use_reentrant=False)
            else:
                x = blk(x, cu, cos, sin, layout)
            if i in cfg.deepstack_visual_indexes:
                levels.append(self.deepstack_merger_list[cfg.deepstack_visual_indexes.index(i)](x))
        return torch.cat([self.merger(x), *levels], dim=-1)
