"""Qwen3-VL config.json (dense and MoE) <-> QwenVLConfig, checked against transformers' own config classes."""

from __future__ import annotations

import copy

import pytest

from qwenvl.families import for_model_type, from_hf_dict, to_hf_dict

# The shape of a released Qwen3-VL-2B-Instruct config.json (facts C; nested form, rope in rope_scaling)
DENSE = {
    "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "rope_theta": 5000000,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": True,
    },
    "vision_config": {
        "model_type": "qwen3_vl", "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "out_hidden_size": 2048, "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    },
}


def moe() -> dict:
    d = copy.deepcopy(DENSE)
    d.update(model_type="qwen3_vl_moe", architectures=["Qwen3VLMoeForConditionalGeneration"], tie_word_embeddings=False)
    d["text_config"].update(model_type="qwen3_vl_moe_text", num_experts=128, num_experts_per_tok=8,
                            moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[],
                            num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, hidden_size=2048,
                            tie_word_embeddings=False)
    d["vision_config"]["out_hidden_size"] = 2048
    return d


def test_dense_parses_to_the_qwen3_knobs():
    cfg = from_hf_dict(DENSE)
    t, v = cfg.text, cfg.vision
    assert cfg.family == "qwen3_vl" and cfg.model_type == "qwen3_vl" and cfg.tie_word_embeddings
    assert t.head_dim == 128 and t.qk_norm and not t.attention_bias and t.mrope_interleaved
    assert t.mrope_section == (24, 20, 20) and t.rope_theta == 5e6 and t.num_experts == 0
    assert v.tower == "deepstack" and v.patch_size == 16 and v.patch_bias and v.norm == "layernorm"
    assert v.deepstack_visual_indexes == (5, 11, 17) and v.num_position_embeddings == 2304 and v.window_size == 0
    assert cfg.n_deepstack == 3


def test_head_dim_need_not_be_hidden_over_heads():
    d = copy.deepcopy(DENSE)
    d["text_config"].update(hidden_size=2560, num_attention_heads=32)  # Qwen3-VL-4B: 32 heads of 128 at 2560
    d["vision_config"]["out_hidden_size"] = 2560
    assert from_hf_dict(d).text.head_dim == 128


@pytest.mark.parametrize("make", [lambda: DENSE, moe], ids=["dense", "moe"])
def test_round_trip_and_transformers_reads_what_we_write(make):
    transformers = pytest.importorskip("transformers")
    cfg = from_hf_dict(make())
    out = to_hf_dict(cfg)
    assert from_hf_dict(out) == cfg
    cls = transformers.Qwen3VLMoeConfig if cfg.text.num_experts else transformers.Qwen3VLConfig
    ref = cls(**{k: v for k, v in out.items() if k != "architectures"})
    rt, rv = ref.text_config, ref.vision_config
    t, v = cfg.text, cfg.vision
    assert (rt.hidden_size, rt.num_hidden_layers, rt.head_dim, rt.num_key_value_heads) == \
        (t.hidden_size, t.num_hidden_layers, t.head_dim, t.num_key_value_heads)
    assert rt.rope_parameters["mrope_section"] == list(t.mrope_section)
    assert rt.rope_parameters["rope_theta"] == t.rope_theta
    assert list(rv.deepstack_visual_indexes) == list(v.deepstack_visual_indexes)
    assert (rv.depth, rv.hidden_size, rv.patch_size, rv.num_position_embeddings) == \
        (v.depth, v.hidden_size, v.patch_size, v.num_position_embeddings)
    if cfg.text.num_experts:
        assert (rt.num_experts, rt.num_experts_per_tok, rt.moe_intermediate_size) == (128, 8, 768)
        assert out["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]


def test_moe_is_the_same_family_with_sparse_layers():
    cfg = from_hf_dict(moe())
    assert cfg.family == "qwen3_vl" and cfg.model_type == "qwen3_vl_moe"
    assert for_model_type("qwen3_vl_moe") is for_model_type("qwen3_vl")
    assert all(cfg.text.is_moe_layer(i) for i in range(cfg.text.num_hidden_layers))
    d = moe()
    d["text_config"].update(decoder_sparse_step=2, mlp_only_layers=[3])
    t = from_hf_dict(d).text
    assert [i for i in range(6) if t.is_moe_layer(i)] == [1, 5]


@pytest.mark.parametrize("edit, match", [
    ({"attention_bias": True}, "attention_bias"),
    ({"head_dim": 100, "rope_scaling": {"mrope_section": [24, 20, 20]}}, "mrope_section"),
    ({"num_experts_per_tok": 0}, None),
])
def test_bad_configs_are_refused_by_name(edit, match):
    d = moe() if "num_experts_per_tok" in edit else copy.deepcopy(DENSE)
    d["text_config"].update(edit)
    with pytest.raises(ValueError, match=match or "num_experts_per_tok"):
        from_hf_dict(d)


def test_deepstack_index_outside_the_tower_is_refused():
    d = copy.deepcopy(DENSE)
    d["vision_config"]["deepstack_visual_indexes"] = [5, 11, 24]
    with pytest.raises(ValueError, match="deepstack_visual_indexes"):
        from_hf_dict(d)
