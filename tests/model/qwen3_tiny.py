"""Tiny Qwen3-VL / Qwen3-VL-MoE configs, ours and transformers' side by side (test-only reference).

Sizes are chosen to expose index bugs: head_dim 24 != hidden / heads, an M-RoPE section (5, 4, 3) whose
H and W bounds differ, a 5x5 learned position table that is both up- and down-sampled, deepstack levels
from non-final blocks, and a dense layer between MoE layers.
"""

from __future__ import annotations

from qwenvl.config import QWEN3_VL, QwenVLConfig, TextConfig, VisionConfig

VOCAB = 151936  # real special-token ids stay valid
HIDDEN = 48
SECTION = (5, 4, 3)  # sums to head_dim / 2 = 12
PATCH_DIM = 3 * 2 * 16 * 16


def vision_kw(deepstack: tuple[int, ...] = (0, 2)) -> dict:
    return dict(depth=4, hidden_size=32, intermediate_size=56, num_heads=2, out_hidden_size=HIDDEN, patch_size=16,
                temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=25,
                deepstack_visual_indexes=list(deepstack), hidden_act="gelu_pytorch_tanh")


def ours_vision(deepstack: tuple[int, ...] = (0, 2)) -> VisionConfig:
    kw = vision_kw(deepstack)
    kw["deepstack_visual_indexes"] = tuple(kw["deepstack_visual_indexes"])
    return VisionConfig(tower="deepstack", norm="layernorm", mlp="plain", window_size=0, patch_bias=True, **kw)


def hf_vision(deepstack: tuple[int, ...] = (0, 2)):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    return Qwen3VLVisionConfig(**vision_kw(deepstack))


def text_kw(moe: bool, vocab: int = 300) -> dict:
    kw = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6, attention_bias=False)
    if moe:  # layers 0 and 2 sparse, layer 1 dense
        kw.update(num_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, decoder_sparse_step=1,
                  mlp_only_layers=[1])
    return kw


def ours_text(moe: bool, vocab: int = 300) -> TextConfig:
    kw = text_kw(moe, vocab)
    if moe:
        kw["mlp_only_layers"] = tuple(kw["mlp_only_layers"])
    return TextConfig(**kw, rope_theta=10000.0, mrope_section=SECTION, mrope_interleaved=True, qk_norm=True)


def hf_text(moe: bool, vocab: int = 300):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(SECTION), "mrope_interleaved": True}
    if moe:
        from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig

        cfg = Qwen3VLMoeTextConfig(**text_kw(moe, vocab), rope_parameters=rope)
        cfg._experts_implementation = "eager"  # the reference's literal per-expert loop
        return cfg
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig

    return Qwen3VLTextConfig(**text_kw(moe, vocab), rope_parameters=rope)


def ours_model(moe: bool = False, tie: bool = False) -> QwenVLConfig:
    return QwenVLConfig(family=QWEN3_VL, model_type="qwen3_vl_moe" if moe else "qwen3_vl", vision=ours_vision(),
                        text=ours_text(moe, VOCAB), tie_word_embeddings=tie)


def hf_model_config(tie: bool = False):
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(SECTION), "mrope_interleaved": True}
    return Qwen3VLConfig(text_config=dict(text_kw(False, VOCAB), rope_parameters=rope), vision_config=vision_kw(),
                         tie_word_embeddings=tie)
