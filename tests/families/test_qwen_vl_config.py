"""Qwen-VL v1 `config.json` <-> QwenVLConfig (architecture-facts A.2, A.5)."""

from __future__ import annotations

import copy

import pytest

from qwenvl.families import from_hf_dict, to_hf_dict
from qwenvl.families.qwen_vl import v1_from_hf_dict, v1_to_hf_dict

# the released Qwen-VL-Chat config.json: the values of facts A.2 / A.5, plus keys we read but ignore
# (dtype flags, dropout, flash-attn switches)
OFFICIAL = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                 "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    "attn_dropout_prob": 0.0, "bf16": True, "emb_dropout_prob": 0.0, "fp16": False, "fp32": False,
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 22016, "kv_channels": 128,
    "layer_norm_epsilon": 1e-06, "max_position_embeddings": 8192, "model_type": "qwen", "no_bias": True,
    "num_attention_heads": 32, "num_hidden_layers": 32, "onnx_safe": None, "rotary_emb_base": 10000,
    "rotary_pct": 1.0, "scale_attn_weights": True, "seq_length": 2048, "tie_word_embeddings": False,
    "tokenizer_type": "QWenTokenizer", "transformers_version": "4.31.0", "use_cache": True,
    "use_dynamic_ntk": True, "use_flash_attn": False, "use_logn_attn": True, "vocab_size": 151936,
    "visual": {"heads": 16, "image_size": 448, "image_start_id": 151857, "layers": 48, "mlp_ratio": 4.9231,
               "output_dim": 4096, "patch_size": 14, "width": 1664},
}


def test_official_config_maps_to_the_shared_dataclasses():
    cfg = from_hf_dict(OFFICIAL)  # the registry dispatches model_type "qwen" to the qwen_vl family
    v, t = cfg.vision, cfg.text
    assert cfg.model_type == "qwen" and cfg.family == "qwen_vl" and v.tower == "resampler"
    assert (v.depth, v.hidden_size, v.num_heads, v.head_dim) == (48, 1664, 16, 104)
    assert v.intermediate_size == 8192  # int(1664 * 4.9231)
    assert (v.out_hidden_size, v.image_size, v.patch_size, v.n_queries, v.pos_embed_grid) == (4096, 448, 14, 256, 16)
    assert v.hidden_act == "gelu" and v.layer_norm_eps == 1e-6
    assert t.intermediate_size == 11008  # each of w1 / w2
    assert (t.vocab_size, t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (151936, 4096, 32, 32)
    assert t.num_key_value_heads == 32 and t.head_dim == 128 and t.attention_bias
    assert t.mrope_section is None and t.rope_theta == 10000.0 and t.rms_norm_eps == 1e-6
    assert (t.seq_length, t.max_position_embeddings, t.use_dynamic_ntk, t.use_logn_attn) == (2048, 8192, True, True)
    assert cfg.image_start_id == 151857 and cfg.eos_token_id == 151643 and not cfg.tie_word_embeddings


def test_export_writes_the_official_keys_and_round_trips():
    cfg = v1_from_hf_dict(OFFICIAL)
    out = to_hf_dict(cfg)
    assert out == v1_to_hf_dict(cfg)
    for key in ("architectures", "auto_map", "model_type", "hidden_size", "intermediate_size", "kv_channels",
                "layer_norm_epsilon", "max_position_embeddings", "no_bias", "num_attention_heads",
                "num_hidden_layers", "rotary_emb_base", "rotary_pct", "seq_length", "tie_word_embeddings",
                "use_dynamic_ntk", "use_logn_attn", "vocab_size", "visual"):
        assert out[key] == OFFICIAL[key], key
    assert from_hf_dict(out) == cfg


def test_non_default_n_queries_is_written_and_read_back():
    d = copy.deepcopy(OFFICIAL)
    d["visual"]["n_queries"] = 64
    cfg = v1_from_hf_dict(d)
    assert cfg.vision.n_queries == 64
    out = v1_to_hf_dict(cfg)
    assert out["visual"]["n_queries"] == 64 and v1_from_hf_dict(out) == cfg
    assert "n_queries" not in v1_to_hf_dict(v1_from_hf_dict(OFFICIAL))["visual"]


def test_mlp_ratio_reproduces_odd_widths():
    d = copy.deepcopy(OFFICIAL)
    d["visual"].update(width=48, heads=4, mlp_ratio=7 / 3)  # int(48 * 7/3) = 112
    cfg = v1_from_hf_dict(d)
    assert cfg.vision.intermediate_size == 112
    assert v1_from_hf_dict(v1_to_hf_dict(cfg)) == cfg


def _set(path: str, value):
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return edit


@pytest.mark.parametrize("path,value,named", [
    ("rotary_pct", 0.5, "rotary_pct"),
    ("visual.output_dim", 100, "visual.output_dim"),
    ("visual.output_dim", 2048, "visual.output_dim"),  # a multiple of 128 but != hidden_size
    ("kv_channels", 64, "kv_channels"),
    ("no_bias", False, "no_bias"),
    ("intermediate_size", 22017, "intermediate_size"),
    ("visual.width", 1665, "visual.width"),
    ("visual.image_size", 450, "visual.image_size"),
    ("visual.n_queries", 200, "visual.n_queries"),
    ("visual.image_start_id", 151936, "visual.image_start_id"),
    ("hidden_size", KeyError, "hidden_size"),
    ("visual.mlp_ratio", KeyError, "visual.mlp_ratio"),
    ("visual", KeyError, "visual"),
])
def test_invalid_configs_name_the_key(path, value, named):
    d = copy.deepcopy(OFFICIAL)
    _set(path, value)(d)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        from_hf_dict(d)
