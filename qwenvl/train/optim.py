"""AdamW parameter groups, ViT layer-wise LR decay, and linear-warmup + cosine LR schedule.

Groups: weight decay on matrices only. Norm weights, biases, every other 1-D parameter and the
embedding-like tables (token embeddings, the ViT position table, the resampler's learned queries)
are not decayed. With `vit_layer_decay` d < 1, ViT block i of `depth` gets lr * d^(depth - i)
(the patch embedding and position table d^(depth + 1)); the adapter and the LLM get the full lr.
Example, depth 2, d 0.9: conv1 / positional_embedding 0.729x, block 0 0.81x, block 1 0.9x, attn_pool 1x.

The schedule is a function of the optimizer step (not of time), so a resumed run recomputes the
same LR. Budgets in minutes are turned into a step count by the loop (see loop.py).
Must not: know about data, checkpoints or distributed state.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from qwenvl.train.config import OptimConfig

_NO_DECAY_NAMES = ("embed_tokens.weight", "positional_embedding", "attn_pool.query")
_V1_BLOCK = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.")
_V2_BLOCK = re.compile(r"visual\.blocks\.(\d+)\.")
_V1_STEM = ("visual.conv1.", "visual.positional_embedding", "visual.ln_pre.")
_V2_STEM = ("visual.patch_embed.", "visual.pos_embed.")  # pos_embed: Qwen3-VL


_PEFT_WRAP = re.compile(r"\.(base_layer|original_module|modules_to_save\.\w+)\.")


def _clean(name: str) -> str:
    # PEFT wraps a module as `<name>.base_layer` / `<name>.modules_to_save.default`: name the original
    return _PEFT_WRAP.sub(".", name)


def decays(name: str, p: torch.Tensor) -> bool:
    """True when weight decay applies: matrices that are not embedding-like tables."""
    name = _clean(name)
    return p.ndim >= 2 and not name.endswith(_NO_DECAY_NAMES)


def vit_layer_id(name: str, depth: int) -> int | None:
    """0 for the ViT stem, i + 1 for block i, depth + 1 for everything after the blocks; None outside the ViT."""
    name = _clean(name)
    if not name.startswith("visual."):
        return None
    m = _V1_BLOCK.match(name) or _V2_BLOCK.match(name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith(_V1_STEM + _V2_STEM):
        return 0
    return depth + 1


def lr_scale(name: str, depth: int, layer_decay: float) -> float:
    layer = vit_layer_id(name, depth)
    if layer is None or layer_decay == 1.0:
        return 1.0
    return layer_decay ** (depth + 1 - layer)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 vit_depth: int | None = None) -> list[dict]:
    """Trainable parameters of `model` in groups keyed by (decay on/off, lr scale).

    Each group carries `lr_scale` (read by WarmupCosine) and `names` (for tests and logs).
    """
    if vit_depth is None:
        cfg = getattr(model, "cfg", None)
        vit_depth = cfg.vision.depth if cfg is not None else 0
    groups: dict[tuple[bool, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        dec = decays(name, p)
        scale = lr_scale(name, vit_depth, layer_decay)
        g = groups.setdefault((dec, scale), {"params": [], "names": [], "weight_decay": weight_decay if dec else 0.0,
                                             "lr_scale": scale})
        g["params"].append(p)
        g["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: the freeze policy froze everything")
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, cfg.vit_layer_decay)
    betas = (cfg.betas[0], cfg.betas[1])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


class WarmupCosine:
    """LR at optimizer step s (0-based), per group times its lr_scale:

        s < W:          peak * (s + 1) / W
        W <= s < S:     min + (peak - min) * (1 + cos(pi * (s - W) / (S - W))) / 2
        s >= S:         min
    with W warm-up steps and S total steps. `total_steps` may be set after construction (the loop's
    wall-clock calibration); it is part of state_dict so a resumed run keeps the same curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak: float, min_lr: float, total_steps: int = 0,
                 warmup_steps: int = 0, warmup_ratio: float = 0.0) -> None:
        self.optimizer = optimizer
        self.peak, self.min_lr = peak, min_lr
        self.warmup_steps, self.warmup_ratio = warmup_steps, warmup_ratio
        self.total_steps = total_steps

    @classmethod
    def from_config(cls, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int = 0) -> WarmupCosine:
        return cls(optimizer, cfg.lr, cfg.min_lr, total_steps, cfg.warmup_steps, cfg.warmup_ratio)

    @property
    def warmup(self) -> int:
        if self.warmup_steps:
            return self.warmup_steps
        return round(self.warmup_ratio * self.total_steps)

    def lr_at(self, step: int) -> float:
        w, total = self.warmup, self.total_steps
        if step < w:
            return self.peak * (step + 1) / w
        if step >= total or total <= w:
            return self.min_lr
        progress = (step - w) / (total - w)
        return self.min_lr + (self.peak - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        """Set every group's lr for optimizer step `step`; returns the base (scale 1) lr."""
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "warmup_ratio": self.warmup_ratio, "peak": self.peak, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = state["total_steps"]
        self.warmup_steps, self.warmup_ratio = state["warmup_steps"], state["warmup_ratio"]
        self.peak, self.min_lr = state["peak"], state["min_lr"]
