"""Tiny random transformers Qwen2-VL / Qwen2.5-VL models saved as checkpoints (test-only reference)."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 151936  # real embedding rows, so the real special-token ids are valid


def hf_config(family: str, tie: bool = False):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
                tie_word_embeddings=tie)
    if family == "qwen2_5_vl":
        # window 112 px = 4x4 merge units; fullatt layers 1 and 3 of 4
        vision = dict(depth=4, hidden_size=48, intermediate_size=80, num_heads=4, out_hidden_size=64,
                      fullatt_block_indexes=[1, 3], window_size=112, tokens_per_second=2, hidden_act="silu")
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie)
    vision = dict(depth=3, embed_dim=48, mlp_ratio=2, num_heads=4, hidden_size=64, hidden_act="quick_gelu")
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie)


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights with enough spread that a wrong index order or missing term changes logits clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name \
                    or "layernorm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def make_hf_checkpoint(family: str, folder: Path, tie: bool = False, seed: int = 0):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    cls = Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = cls(hf_config(family, tie)).eval()
    randomize_(model, seed)
    if tie:
        model.tie_weights()
    model.save_pretrained(folder)
    return model
