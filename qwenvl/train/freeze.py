"""Stage policies: which parameters train, by module-name prefix; and the v1 stage-2 resolution change.

Every parameter belongs to one group:
  vision   the ViT (v1: conv1, positional_embedding, ln_pre, transformer.*, ln_post, proj; v2: patch_embed, blocks)
  adapter  what maps ViT features into the LLM (the family's adapter_prefixes: v1 the resampler
           `visual.attn_pool`; Qwen2/2.5-VL `visual.merger`; Qwen3-VL also `visual.deepstack_merger_list`)
  llm      model.* and lm_head
v1's ln_post and proj sit after the resampler but belong to the tower in the official code, and the
official finetune's `fix_vit` leaves them frozen (facts A.10), so they count as vision here.

  policy       trains                      source
  stage0_text  llm                         text-only warm-up of a from-scratch decoder (this project)
  stage1       vision + adapter            paper stage 1 (LLM frozen)
  stage2       vision + adapter + llm      paper stage 2
  stage3       adapter + llm               paper stage 3 (ViT frozen)
  fix_vit      adapter + llm               official finetune.py fix_vit (ViT frozen except attn_pool)
  full         everything
stage3 and fix_vit select the same parameters; both names are kept so a recipe says which it follows.
Must not: build optimizers or read data.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from qwenvl import families
from qwenvl.train.config import GROUPS, StageConfig

POLICIES: dict[str, frozenset[str]] = {
    "stage0_text": frozenset({"llm"}),
    "stage1": frozenset({"vision", "adapter"}),
    "stage2": frozenset(GROUPS),
    "stage3": frozenset({"adapter", "llm"}),
    "fix_vit": frozenset({"adapter", "llm"}),
    "full": frozenset(GROUPS),
}


def param_group(name: str, adapter_prefixes: tuple[str, ...]) -> str:
    """'vision' | 'adapter' | 'llm' for a parameter name of QwenVLModel (prefixes: the family's adapter)."""
    if not name.startswith("visual."):
        return "llm"
    return "adapter" if name.startswith(adapter_prefixes) else "vision"


def trainable_groups(stage: StageConfig) -> frozenset[str]:
    return frozenset(stage.trainable) if stage.policy == "custom" else POLICIES[stage.policy]


def apply_policy(model: nn.Module, groups: frozenset[str] | set[str]) -> dict[str, int]:
    """Set requires_grad by group; returns trainable parameter counts per group."""
    prefixes = families.of(model.cfg).adapter_prefixes
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        g = param_group(name, prefixes)
        p.requires_grad_(g in groups)
        if g in groups:
            counts[g] += p.numel()
    return counts


def set_image_size(model: nn.Module, image_size: int, resize_pos_embed: bool) -> None:
    """v1 stage 2: a new input side for the tower (e.g. 112 -> 224 px), optionally resampling the learned
    position table to the new patch grid for good (bicubic, as the forward pass does on the fly).

    Without resize_pos_embed the table keeps its grid and is interpolated every forward pass (what
    the released model does: a 16x16 table for 448 px input). The model config is updated, so the
    export's config.json says the new image_size / pos_embed_grid.
    """
    cfg = model.cfg
    if not families.of(cfg).fixed_resolution:
        raise ValueError("stage.image_size applies to the fixed-resolution v1 tower only (v2 takes a pixel "
                         "budget: set data.min_pixels / data.max_pixels)")
    vis = cfg.vision
    if image_size % vis.patch_size:
        raise ValueError(f"stage.image_size {image_size} is not a multiple of the patch size {vis.patch_size}")
    new_vis = replace(vis, image_size=image_size)
    if resize_pos_embed:
        from qwenvl.model.resampler import resize_pos_table

        grid = image_size // vis.patch_size
        table = model.visual.positional_embedding
        with torch.no_grad():
            resized = resize_pos_table(table.detach(), grid)
        model.visual.positional_embedding = nn.Parameter(resized.clone(), requires_grad=table.requires_grad)
        new_vis = replace(new_vis, pos_embed_grid=grid)
    model.cfg = replace(cfg, vision=new_vis)
    model.visual.cfg = new_vis


def apply_stage(model: nn.Module, stage: StageConfig) -> dict[str, int]:
    """Resolution change (if any), then the freeze policy. Returns trainable counts per group."""
    if (stage.image_size and stage.image_size != model.cfg.vision.image_size) or stage.resize_pos_embed:
        set_image_size(model, stage.image_size, stage.resize_pos_embed)
    return apply_policy(model, trainable_groups(stage))
