"""Qwen-VL v1 (Qwen-VL, Qwen-VL-Chat): 448 px fixed-resolution ViT, a 256-query cross-attention
resampler, the Qwen-7B decoder with 1-D RoPE (fp32 rotation, dynamic NTK and log-n beyond seq_length),
tiktoken vocabulary, ChatML via make_context, `<ref>`/`<box>` grounding in 0-999.

config.json (model_type "qwen", QWenLMHeadModel) has its own key names (architecture-facts A.2, A.5): a
flat LLM block (`kv_channels`, `rotary_emb_base`, `layer_norm_epsilon`, `no_bias`, ...) and a `visual`
block (`width`, `layers`, `heads`, `mlp_ratio`, `output_dim`, ...). Every rejection names the offending
key. Checkpoint keys: families/qwen_vl_keys.py (`transformer.*`, .bin or safetensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qwenvl.config import QWEN_VL, QwenVLConfig, TextConfig, VisionConfig
from qwenvl.families.base import Family, Tensors
from qwenvl.families.qwen_vl_keys import v1_export, v1_iter

IMAGE_START_ID = 151857  # `<img>`; `</img>` = +1, `<imgpad>` = +2
EOD_ID = 151643  # `<|endoftext|>`: the only id that ends v1 generation (facts A.7b)
N_QUERIES = 256  # visual.py's default; the official config.json does not carry it
POS_EMBED_GRID = 16  # the official ViT position table is fixed at 16x16 = 256 rows

_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_REQUIRED_VISUAL = ("heads", "image_size", "layers", "mlp_ratio", "output_dim", "patch_size", "width")


def _bad(key: str, msg: str) -> ValueError:
    return ValueError(f"invalid Qwen-VL config: {key} {msg}")


def _text(d: dict) -> TextConfig:
    hidden, heads = d["hidden_size"], d["num_attention_heads"]
    if hidden % heads:
        raise _bad("hidden_size", f"{hidden} is not divisible by num_attention_heads {heads}")
    kv = d.get("kv_channels", hidden // heads)
    if kv * heads != hidden:
        raise _bad("kv_channels", f"{kv} * num_attention_heads {heads} != hidden_size {hidden} (unsupported)")
    if float(d.get("rotary_pct", 1.0)) != 1.0:
        raise _bad("rotary_pct", f"{d['rotary_pct']} is unsupported (only 1.0: rotary on the whole head)")
    if d.get("no_bias", True) is not True:
        raise _bad("no_bias", "must be true (only c_attn carries a bias in the supported architecture)")
    if d.get("scale_attn_weights", True) is not True:
        raise _bad("scale_attn_weights", "must be true (attention is scaled by 1/sqrt(head_dim))")
    inter = d["intermediate_size"]
    if inter % 2:
        raise _bad("intermediate_size", f"{inter} must be even (w1 and w2 are each intermediate_size // 2)")
    seq = d.get("seq_length", 2048)
    if seq < 2:
        raise _bad("seq_length", f"{seq} must be >= 2 (log-n scaling divides by log(seq_length))")
    return TextConfig(
        vocab_size=d["vocab_size"], hidden_size=hidden, intermediate_size=inter // 2,
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=heads,
        rms_norm_eps=float(d.get("layer_norm_epsilon", 1e-6)), rope_theta=float(d.get("rotary_emb_base", 10000)),
        mrope_section=None, max_position_embeddings=d.get("max_position_embeddings", 8192), hidden_act="silu",
        attention_bias=True, seq_length=seq, use_dynamic_ntk=bool(d.get("use_dynamic_ntk", True)),
        use_logn_attn=bool(d.get("use_logn_attn", True)),
    )


def _vision(v: dict, text_hidden: int) -> VisionConfig:
    missing = [f"visual.{k}" for k in _REQUIRED_VISUAL if k not in v]
    if missing:
        raise ValueError(f"invalid Qwen-VL config: missing keys {missing}")
    width, heads, out = v["width"], v["heads"], v["output_dim"]
    if width % heads:
        raise _bad("visual.width", f"{width} is not divisible by visual.heads {heads}")
    if out < 128 or out % 128:
        raise _bad("visual.output_dim",
                   f"{out} must be a positive multiple of 128 (resampler heads = output_dim // 128)")
    if out != text_hidden:
        raise _bad("visual.output_dim", f"{out} != hidden_size {text_hidden} (image tokens feed the LLM directly)")
    if v["image_size"] % v["patch_size"]:
        raise _bad("visual.image_size", f"{v['image_size']} is not a multiple of visual.patch_size {v['patch_size']}")
    nq = v.get("n_queries", N_QUERIES)
    if nq < 1 or round(nq**0.5) ** 2 != nq:
        raise _bad("visual.n_queries", f"{nq} is not a square (the resampler queries form a square grid)")
    mlp = int(width * v["mlp_ratio"])  # 8192 = int(1664 * 4.9231) for the released model
    if mlp < 1:
        raise _bad("visual.mlp_ratio", f"{v['mlp_ratio']} gives an empty MLP")
    return VisionConfig(
        tower="resampler", norm="layernorm", mlp="plain", window_size=0,
        fullatt_block_indexes=(), depth=v["layers"], hidden_size=width, num_heads=heads, intermediate_size=mlp,
        out_hidden_size=out, hidden_act="gelu", in_channels=3, patch_size=v["patch_size"],
        image_size=v["image_size"], n_queries=nq, pos_embed_grid=v.get("pos_embed_grid", POS_EMBED_GRID),
        layer_norm_eps=1e-6,
    )


def v1_from_hf_dict(d: dict) -> QwenVLConfig:
    """Parsed official Qwen-VL `config.json` -> QwenVLConfig(family=QWEN_VL, model_type="qwen")."""
    missing = [k for k in (*_REQUIRED, "visual") if k not in d]
    if missing:
        raise ValueError(f"invalid Qwen-VL config: missing keys {missing}")
    if not isinstance(d["visual"], dict):
        raise _bad("visual", "must be an object")
    text = _text(d)
    vision = _vision(d["visual"], text.hidden_size)
    start = d["visual"].get("image_start_id", IMAGE_START_ID)
    if not 0 <= start <= text.vocab_size - 3:
        raise _bad("visual.image_start_id", f"{start}: <img>, </img> and <imgpad> must fit in vocab_size "
                   f"{text.vocab_size}")
    return QwenVLConfig(
        family=QWEN_VL, model_type="qwen", vision=vision, text=text,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), image_start_id=start,
        bos_token_id=d.get("bos_token_id", EOD_ID), eos_token_id=d.get("eos_token_id", EOD_ID),
    )


def _mlp_ratio(width: int, mlp: int) -> float:
    """A ratio r with int(width * r) == mlp, as short as possible (4.9231 for 1664 -> 8192)."""
    for r in (round(mlp / width, 4), mlp / width, (mlp + 0.5) / width):
        if int(width * r) == mlp:
            return r
    raise ValueError(f"no mlp_ratio reproduces ViT MLP width {mlp} from width {width}")


def v1_to_hf_dict(cfg: QwenVLConfig) -> dict[str, Any]:
    """QwenVLConfig(family=QWEN_VL) -> the official `config.json` dict (loads back via v1_from_hf_dict)."""
    t, v = cfg.text, cfg.vision
    if cfg.family != QWEN_VL or t.mrope_section is not None or t.num_key_value_heads != t.num_attention_heads \
            or not t.attention_bias:
        raise ValueError("v1_to_hf_dict needs a Qwen-VL v1 config (1-D RoPE, MHA, q/k/v bias)")
    visual: dict[str, Any] = {
        "heads": v.num_heads, "image_size": v.image_size, "image_start_id": cfg.image_start_id, "layers": v.depth,
        "mlp_ratio": _mlp_ratio(v.hidden_size, v.intermediate_size), "output_dim": v.out_hidden_size,
        "patch_size": v.patch_size, "width": v.hidden_size,
    }
    if v.n_queries != N_QUERIES:  # visual.py accepts it as a keyword; left out when default, as released
        visual["n_queries"] = v.n_queries
    if v.pos_embed_grid != POS_EMBED_GRID:  # our extension: the official code hard-codes 16
        visual["pos_embed_grid"] = v.pos_embed_grid
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "model_type": "qwen",
        "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0,
        "hidden_size": t.hidden_size, "intermediate_size": 2 * t.intermediate_size,
        "kv_channels": t.head_dim, "layer_norm_epsilon": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings, "no_bias": True,
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "rotary_emb_base": int(t.rope_theta) if t.rope_theta.is_integer() else t.rope_theta,
        "rotary_pct": 1.0, "scale_attn_weights": True,
        "seq_length": t.seq_length, "tie_word_embeddings": cfg.tie_word_embeddings,
        "tokenizer_type": "QWenTokenizer", "use_dynamic_ntk": t.use_dynamic_ntk, "use_logn_attn": t.use_logn_attn,
        "vocab_size": t.vocab_size, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "visual": visual,
    }


class QwenVL(Family):
    name = QWEN_VL
    model_types = ("qwen",)
    prompt_format = "chatml_v1"
    fixed_resolution = True
    # ln_post and proj sit after the resampler but belong to the tower (official fix_vit leaves them frozen)
    adapter_prefixes = ("visual.attn_pool.",)

    def parse_config(self, d: dict) -> QwenVLConfig:
        return v1_from_hf_dict(d)

    def dump_config(self, cfg: QwenVLConfig) -> dict:
        return v1_to_hf_dict(cfg)

    def canonical_key(self, key: str, cfg: QwenVLConfig) -> str:
        return key  # the official names are canonical

    def export_state(self, state: dict[str, torch.Tensor], cfg: QwenVLConfig) -> dict[str, torch.Tensor]:
        return v1_export(state, cfg)

    def import_tensors(self, tensors: Tensors, cfg: QwenVLConfig):
        return v1_iter(tensors, cfg)

    def build_processor(self, folder: str | Path, cfg: QwenVLConfig) -> Any:
        from qwenvl.processing.processor_v1 import QwenV1Processor

        return QwenV1Processor.from_folder(folder, cfg)

    def generation_config(self, config: dict) -> dict:
        """Greedy defaults; v1 stops at <|im_end|> through chat_format."""
        eod = config["eos_token_id"]
        return {"chat_format": "chatml", "eos_token_id": eod, "pad_token_id": eod, "do_sample": False,
                "max_new_tokens": 64}

    def dummy_vision_input(self, cfg: QwenVLConfig) -> tuple[torch.Tensor, list]:
        """A 2x2-patch image: the smallest square input the fixed-resolution tower accepts."""
        v = cfg.vision
        return torch.zeros(1, v.in_channels, 2 * v.patch_size, 2 * v.patch_size), []



FAMILY = QwenVL()
