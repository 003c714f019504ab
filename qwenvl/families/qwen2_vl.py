"""Qwen2-VL: LayerNorm + QuickGELU dynamic-resolution ViT (full attention per frame), 2x2 merger,
chunked M-RoPE decoder with q/k/v bias (facts B.1-B.2, B.6-B.8).

Checkpoints: legacy `visual.*` / `model.*` / `lm_head` (what we save) or transformers >= 4.52's
`model.visual.*` / `model.language_model.*`. Grounding: `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` in 0-999.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenvl.config import QWEN2_VL, QwenVLConfig, TextConfig, VisionConfig
from qwenvl.families.base import Family, int_if_whole, rope_dict, special_ids, split_hf_dict


def qwen2_text(d: dict, top: dict) -> TextConfig:
    """The Qwen2 decoder block of a Qwen2-VL / Qwen2.5-VL config.json."""
    rope = rope_dict(d) or rope_dict(top)
    section = rope.get("mrope_section")
    theta = rope.get("rope_theta", d.get("rope_theta", top.get("rope_theta", 1000000.0)))
    num_heads, hidden = d["num_attention_heads"], d["hidden_size"]
    if section is None:
        # transformers falls back to [16, 24, 24], valid only for head_dim 128
        section = [16, 24, 24] if hidden // num_heads == 128 else None
        if section is None:
            raise ValueError("invalid config: rope mrope_section missing and head_dim != 128")
    if d.get("head_dim") not in (None, hidden // num_heads):
        raise ValueError(f"invalid config: head_dim {d['head_dim']} != hidden_size/num_attention_heads")
    return TextConfig(
        vocab_size=d["vocab_size"], hidden_size=hidden, intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=num_heads,
        num_key_value_heads=d.get("num_key_value_heads", num_heads),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta), mrope_section=tuple(section),
        max_position_embeddings=d.get("max_position_embeddings", 32768), hidden_act=d.get("hidden_act", "silu"),
    )


def qwen2_text_dump(cfg: QwenVLConfig) -> dict:
    t = cfg.text
    rope = {"rope_type": "default", "type": "mrope", "rope_theta": t.rope_theta,
            "mrope_section": list(t.mrope_section or ())}
    return dict(
        model_type=f"{cfg.model_type}_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta, rope_scaling=rope, rope_parameters=rope, use_sliding_window=False,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, tie_word_embeddings=cfg.tie_word_embeddings,
    )


def vision_common(v: dict, act: str) -> dict[str, Any]:
    return dict(depth=v.get("depth", 32), num_heads=v.get("num_heads", 16),
                in_channels=v.get("in_channels", v.get("in_chans", 3)), patch_size=v.get("patch_size", 14),
                temporal_patch_size=v.get("temporal_patch_size", 2),
                spatial_merge_size=v.get("spatial_merge_size", 2), hidden_act=v.get("hidden_act", act),
                rope_theta=rope_dict(v).get("rope_theta", 10000.0))


def vision_common_dump(v: VisionConfig) -> dict[str, Any]:
    return dict(in_channels=v.in_channels, in_chans=v.in_channels, patch_size=v.patch_size,
                temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size,
                rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta})


def assemble(family: str, model_type: str, d: dict, text: TextConfig, vision: VisionConfig,
             text_d: dict) -> QwenVLConfig:
    tie = d.get("tie_word_embeddings", text_d.get("tie_word_embeddings", False))
    return QwenVLConfig(family=family, model_type=model_type, vision=vision, text=text,
                        tie_word_embeddings=bool(tie), **special_ids(d, text_d))


def assemble_dump(cfg: QwenVLConfig, arch: str, text: dict, vision: dict, flat: bool = True) -> dict:
    out = dict(
        architectures=[arch], model_type=cfg.model_type, text_config=text, vision_config=vision,
        tie_word_embeddings=cfg.tie_word_embeddings, image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
    )
    if flat:  # top-level copies for readers of the older flat form (vLLM, transformers 4.4x)
        out.update({k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                                         "max_position_embeddings", "rope_scaling", "hidden_act")})
    return out


class Qwen2VL(Family):
    name = QWEN2_VL
    model_types = ("qwen2_vl",)
    absolute_time = False  # Qwen2.5-VL: the temporal M-RoPE id counts seconds

    def parse_config(self, d: dict) -> QwenVLConfig:
        text_d, v = split_hf_dict(d)
        text = qwen2_text(text_d, d)
        width = v.get("embed_dim", 1280)
        vision = VisionConfig(
            tower="merger", norm="layernorm", mlp="plain", window_size=0, fullatt_block_indexes=(),
            **vision_common(v, "quick_gelu"), hidden_size=width, intermediate_size=int(width * v.get("mlp_ratio", 4)),
            out_hidden_size=v.get("hidden_size", text.hidden_size))
        return assemble(self.name, d["model_type"], d, text, vision, text_d)

    def dump_config(self, cfg: QwenVLConfig) -> dict:
        v = cfg.vision
        vision = dict(model_type="qwen2_vl_vision", depth=v.depth, embed_dim=v.hidden_size,
                      hidden_size=v.out_hidden_size, mlp_ratio=int_if_whole(v.intermediate_size / v.hidden_size),
                      num_heads=v.num_heads, hidden_act=v.hidden_act, **vision_common_dump(v))
        return assemble_dump(cfg, "Qwen2VLForConditionalGeneration", qwen2_text_dump(cfg), vision)

    def rope_spec(self, cfg: QwenVLConfig):
        from qwenvl.processing.positions import RopeSpec

        return RopeSpec(cfg.image_token_id, cfg.video_token_id, cfg.vision.spatial_merge_size,
                        absolute_time=self.absolute_time, tokens_per_second=cfg.vision.tokens_per_second)

    def build_processor(self, folder: str | Path, cfg: QwenVLConfig) -> Any:
        from qwenvl.processing.processor import Qwen2VLProcessor

        return Qwen2VLProcessor.from_folder(folder, cfg, rope=self.rope_spec(cfg))


FAMILY = Qwen2VL()
