"""LoRA fine-tuning through PEFT, with the official Qwen-VL targets mapped to our module names.

The official finetune (facts A.10) targets `c_attn`, `attn.c_proj`, `w1`, `w2` of Qwen-7B, LLM only:

  official         ours (model.layers.{i}.*)
  c_attn           self_attn.q_proj, self_attn.k_proj, self_attn.v_proj   (our split of the fused qkv)
  attn.c_proj      self_attn.o_proj
  w1               mlp.up_proj
  w2               mlp.gate_proj                                          (w2 is the SiLU side)
  (mlp.c_proj)     mlp.down_proj — not targeted officially; allowed here

The target pattern is anchored at `model.layers.`, so no ViT or resampler module is ever adapted.
PEFT freezes every other parameter (the official LoRA run also trains nothing in the vision tower).
`merge_and_unload` folds W + (alpha / r) * B @ A back into plain Linear weights, so the export is an
ordinary HF-layout checkpoint that weights.load_model reads with no PEFT installed.
Must not: import peft at module import (it pulls in transformers, ~4 s): only inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qwenvl.train.config import LoraConfig

OFFICIAL_V1_TARGETS: dict[str, tuple[str, ...]] = {
    "c_attn": ("q_proj", "k_proj", "v_proj"),
    "attn.c_proj": ("o_proj",),
    "w1": ("up_proj",),
    "w2": ("gate_proj",),
}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def target_pattern(targets: tuple[str, ...] | list[str]) -> str:
    """A regex PEFT full-matches against module names: the chosen decoder projections only.

    Example: ("q_proj", "up_proj") -> r"model\\.layers\\.\\d+\\.(self_attn\\.(q_proj)|mlp\\.(up_proj))".
    """
    attn = [t for t in targets if t in _ATTN]
    mlp = [t for t in targets if t in _MLP]
    unknown = [t for t in targets if t not in _ATTN + _MLP]
    if unknown or not targets:
        raise ValueError(f"LoRA targets {list(targets)}: each must be one of {_ATTN + _MLP}")
    alts = ([rf"self_attn\.({'|'.join(attn)})"] if attn else []) + ([rf"mlp\.({'|'.join(mlp)})"] if mlp else [])
    return rf"model\.layers\.\d+\.({'|'.join(alts)})"


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject LoRA adapters into `model` in place; returns the PeftModel wrapper.

    Our QwenVLModel object stays usable directly (forward_loss(model, batch)): PEFT replaces its
    Linear modules with LoRA ones and freezes everything else.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                              target_modules=target_pattern(cfg.targets),
                              modules_to_save=list(cfg.modules_to_save) or None)
    return get_peft_model(model, peft_cfg)


def lora_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def merge(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; returns the plain QwenVLModel (PEFT layers removed)."""
    return peft_model.merge_and_unload()


def export_merged(peft_model: nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Merge and write an HF-layout checkpoint folder with weights.save_model."""
    from qwenvl.weights import save_model

    merged = merge(peft_model)
    save_model(merged, folder, dtype=dtype)
    return Path(folder)
