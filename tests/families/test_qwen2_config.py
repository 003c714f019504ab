"""config.json parsing: both forms (top-level / nested text_config), both rope spellings, clear errors."""

from __future__ import annotations

import pytest

from qwenvl.families import from_hf_dict, to_hf_dict

# The flat form of a released Qwen2.5-VL-7B-Instruct config.json (facts B.3, B.7)
FLAT_25 = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 128000, "tie_word_embeddings": False, "hidden_act": "silu",
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                      "tokens_per_second": 2, "hidden_act": "silu"},
}


def nested(d):
    text = {k: d[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "num_key_value_heads", "vocab_size", "rms_norm_eps", "max_position_embeddings")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    return {"model_type": d["model_type"], "text_config": text, "vision_config": d["vision_config"],
            "tie_word_embeddings": d["tie_word_embeddings"], "image_token_id": 151655}


def test_flat_and_nested_forms_agree():
    a, b = from_hf_dict(FLAT_25), from_hf_dict(nested(FLAT_25))
    assert a == b
    assert a.text.mrope_section == (16, 24, 24) and a.text.head_dim == 128
    assert a.vision.fullatt_block_indexes == (7, 15, 23, 31) and a.vision.out_hidden_size == 3584


def test_to_hf_round_trip():
    cfg = from_hf_dict(FLAT_25)
    assert from_hf_dict(to_hf_dict(cfg)) == cfg


def test_qwen2_vl_names():
    d = dict(FLAT_25, model_type="qwen2_vl",
             vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "mlp_ratio": 4, "num_heads": 16,
                            "hidden_act": "quick_gelu"})
    cfg = from_hf_dict(d)
    assert cfg.vision.hidden_size == 1280 and cfg.vision.intermediate_size == 5120
    assert cfg.vision.out_hidden_size == 3584 and cfg.vision.hidden_act == "quick_gelu"
    assert from_hf_dict(to_hf_dict(cfg)) == cfg


@pytest.mark.parametrize("edit, msg", [
    ({"model_type": "llava"}, "unsupported model_type 'llava'"),
    ({"rope_scaling": {"mrope_section": [16, 24, 20]}}, "mrope_section [16, 24, 20] sums to 60"),
    ({"num_key_value_heads": 5}, "not a multiple of num_key_value_heads 5"),
    ({"vision_config": dict(FLAT_25["vision_config"], fullatt_block_indexes=[7, 40])}, "fullatt_block_indexes [40]"),
    ({"vision_config": dict(FLAT_25["vision_config"], out_hidden_size=2048)}, "vision output size 2048"),
    ({"vision_config": dict(FLAT_25["vision_config"], window_size=100)}, "window_size 100"),
])
def test_validation_errors_say_what_is_wrong(edit, msg):
    with pytest.raises(ValueError) as e:
        from_hf_dict({**FLAT_25, **edit})
    assert msg in str(e.value)


def test_missing_text_key_is_named():
    d = {k: v for k, v in FLAT_25.items() if k != "num_hidden_layers"}
    with pytest.raises(ValueError, match="num_hidden_layers"):
        from_hf_dict(d)
