"""Qwen3-VL, dense and MoE: patch-16 ViT with a learned position table (bilinearly resized to each grid)
and DeepStack (features of chosen ViT blocks, through their own mergers, added to the hidden states of
the first decoder layers); Qwen3 decoder with q/k RMSNorm, no q/k/v bias, explicit head_dim, interleaved
M-RoPE; video frames separated by text timestamps; grounding in 0-1000 (facts C).

config.json model_type "qwen3_vl" (Qwen3VLForConditionalGeneration) or "qwen3_vl_moe"
(Qwen3VLMoeForConditionalGeneration: sparse MoE blocks where TextConfig.is_moe_layer). Checkpoints come
in both layouts: model.visual.* / model.language_model.* (canonical: the releases use it and
transformers 5 has no rename table for Qwen3-VL, so that is what we save) or legacy visual.* / model.*.
MoE experts are fused 3-D tensors, stored by the releases as gate_up_proj [E, H, 2I] and
down_proj [E, I, H] (canonical: what we save, what vLLM reads) and by transformers 5 as [E, 2I, H] /
[E, H, I] (our module layout); both load, told apart by shape (when H == 2I the gate_up shape is
ambiguous and the released layout is assumed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qwenvl.config import QWEN3_VL, QwenVLConfig, TextConfig, VisionConfig
from qwenvl.families.base import Family, Tensors, hf_to_legacy, legacy_to_hf, rope_dict, split_hf_dict
from qwenvl.families.qwen2_vl import assemble, assemble_dump, vision_common, vision_common_dump

_EXPERTS = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")


def _text(d: dict, top: dict, moe: bool) -> TextConfig:
    rope = rope_dict(d) or rope_dict(top)
    theta = rope.get("rope_theta", d.get("rope_theta", top.get("rope_theta", 5000000.0)))
    if d.get("attention_bias", False):
        raise ValueError("invalid config: attention_bias true is unsupported for Qwen3-VL (no released model "
                         "has q/k/v/o biases)")
    heads = d["num_attention_heads"]
    kw: dict[str, Any] = {}
    if moe:
        # transformers 5 writes num_local_experts, the releases num_experts
        kw = dict(num_experts=d.get("num_experts", d.get("num_local_experts", 60)),
                  num_experts_per_tok=d.get("num_experts_per_tok", 4),
                  moe_intermediate_size=d.get("moe_intermediate_size", 1408),
                  decoder_sparse_step=d.get("decoder_sparse_step", 1),
                  mlp_only_layers=tuple(d.get("mlp_only_layers") or ()))
    return TextConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads") or heads, head_dim=d.get("head_dim") or 128,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        # transformers' Qwen3-VL rotary always interleaves, whatever `mrope_interleaved` says
        mrope_section=tuple(rope.get("mrope_section", (24, 20, 20))), mrope_interleaved=True,
        max_position_embeddings=d.get("max_position_embeddings", 128000), hidden_act=d.get("hidden_act", "silu"),
        attention_bias=False, qk_norm=True, **kw)


def _text_dump(cfg: QwenVLConfig) -> dict:
    t = cfg.text
    rope = {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section or ()),
            "mrope_interleaved": True}
    out = dict(
        model_type=f"{cfg.model_type}_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim,
        hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta, rope_scaling=rope, rope_parameters=rope, attention_bias=False,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, tie_word_embeddings=cfg.tie_word_embeddings,
    )
    if t.num_experts:
        out.update(num_experts=t.num_experts, num_experts_per_tok=t.num_experts_per_tok,
                   moe_intermediate_size=t.moe_intermediate_size, decoder_sparse_step=t.decoder_sparse_step,
                   mlp_only_layers=list(t.mlp_only_layers))
    return out


def _is_expert(key: str) -> bool:
    return key.endswith(_EXPERTS)


class Qwen3VL(Family):
    name = QWEN3_VL
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    adapter_prefixes = ("visual.merger.", "visual.deepstack_merger_list.")

    def parse_config(self, d: dict) -> QwenVLConfig:
        text_d, v = split_hf_dict(d)
        text = _text(text_d, d, moe=d["model_type"] == "qwen3_vl_moe")
        vision = VisionConfig(
            tower="deepstack", norm="layernorm", mlp="plain", window_size=0, fullatt_block_indexes=(),
            patch_bias=True, **{**vision_common(v, "gelu_pytorch_tanh"), "depth": v.get("depth", 27),
                                "patch_size": v.get("patch_size", 16)},
            hidden_size=v.get("hidden_size", 1152), intermediate_size=v.get("intermediate_size", 4304),
            out_hidden_size=v.get("out_hidden_size", text.hidden_size),
            num_position_embeddings=v.get("num_position_embeddings", 2304),
            deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes", (8, 16, 24))))
        return assemble(self.name, d["model_type"], d, text, vision, text_d)

    def dump_config(self, cfg: QwenVLConfig) -> dict:
        v = cfg.vision
        vision = dict(model_type=f"{cfg.model_type}_vision", depth=v.depth, hidden_size=v.hidden_size,
                      intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size,
                      num_heads=v.num_heads, hidden_act=v.hidden_act,
                      num_position_embeddings=v.num_position_embeddings,
                      deepstack_visual_indexes=list(v.deepstack_visual_indexes), **vision_common_dump(v))
        arch = "Qwen3VLMoeForConditionalGeneration" if cfg.text.num_experts else "Qwen3VLForConditionalGeneration"
        return assemble_dump(cfg, arch, _text_dump(cfg), vision, flat=False)

    # -- checkpoint keys: the transformers >= 4.52 names + the released expert layout -----------------
    def canonical_key(self, key: str, cfg: QwenVLConfig) -> str:
        return legacy_to_hf(hf_to_legacy(key))

    def our_key(self, canonical: str, cfg: QwenVLConfig) -> str:
        return hf_to_legacy(canonical)

    def _released(self, key: str, shape: tuple[int, ...], cfg: QwenVLConfig) -> bool:
        """Whether an expert tensor of this shape is in the released layout (else transformers 5's)."""
        t = cfg.text
        ours = ((t.num_experts, 2 * t.moe_intermediate_size, t.hidden_size) if key.endswith(_EXPERTS[0])
                else (t.num_experts, t.hidden_size, t.moe_intermediate_size))
        return tuple(shape) != ours or ours[1] == ours[2]

    def canonical_shapes(self, found: dict[str, tuple[int, ...]], cfg: QwenVLConfig) -> dict[str, tuple[int, ...]]:
        out = super().canonical_shapes(found, cfg)
        for k, s in out.items():
            if _is_expert(k) and len(s) == 3 and not self._released(k, s, cfg):
                out[k] = (s[0], s[2], s[1])
        return out

    def export_state(self, state: dict[str, torch.Tensor], cfg: QwenVLConfig) -> dict[str, torch.Tensor]:
        return {k: t.transpose(1, 2) if _is_expert(k) else t for k, t in super().export_state(state, cfg).items()}

    def import_tensors(self, tensors: Tensors, cfg: QwenVLConfig):
        for name, t in super().import_tensors(tensors, cfg):
            if _is_expert(name) and t.dim() == 3 and self._released(name, tuple(t.shape), cfg):
                t = t.transpose(1, 2).contiguous()
            yield name, t

    # -- processing -------------------------------------------------------------------------------
    def rope_spec(self, cfg: QwenVLConfig):
        from qwenvl.processing.positions import RopeSpec

        # time comes from the text timestamps: every temporal patch is its own (1, h, w) item
        return RopeSpec(cfg.image_token_id, cfg.video_token_id, cfg.vision.spatial_merge_size,
                        split_video_groups=True)

    def processing_defaults(self) -> dict[str, Any]:
        """Qwen3-VL's defaults: patch 16, mean = std = 0.5, a clip-wide video budget, the Qwen3-VL-Instruct
        template when the folder has none."""
        from qwenvl.processing.chat_template import QWEN3_VL_TEMPLATE
        from qwenvl.processing.image import QWEN3_VL_IMAGE
        from qwenvl.processing.video_qwen3 import QWEN3_VL_VIDEO

        return {"image_cfg": QWEN3_VL_IMAGE, "video_opts": QWEN3_VL_VIDEO, "default_template": QWEN3_VL_TEMPLATE}

    def build_processor(self, folder: str | Path, cfg: QwenVLConfig) -> Any:
        """Qwen2-VL's processor with Qwen3-VL's defaults and timestamped video frame groups."""
        from qwenvl.processing.processor import Qwen2VLProcessor

        return Qwen2VLProcessor.from_folder(folder, cfg, rope=self.rope_spec(cfg), video_timestamps=True,
                                            **self.processing_defaults())


FAMILY = Qwen3VL()
