"""Model configs: frozen dataclasses read from and written to a checkpoint's `config.json`.

One `QwenVLConfig` describes every generation; the generation is a config choice (`model_type`):
  - "qwen2_vl"   Qwen2-VL    (LayerNorm + QuickGELU ViT, full attention per frame)
  - "qwen2_5_vl" Qwen2.5-VL  (RMSNorm + SwiGLU ViT, window attention + full-attention layers)
  - "qwen"       Qwen-VL v1  (fixed 448 px ViT + learnable-query resampler, Qwen-7B decoder)
Field names follow the Hugging Face `config.json` names (Qwen2.5-VL spelling where the generations
differ). This module does no I/O: `from_hf_dict` takes an already parsed dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid config: {msg}")


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower (and adapter) hyper-parameters."""

    kind: str = "qwen2_5_vl"  # which tower: qwen2_vl | qwen2_5_vl | qwen
    depth: int = 32
    hidden_size: int = 1280  # ViT width (Qwen2-VL calls it embed_dim, v1 calls it width)
    num_heads: int = 16
    intermediate_size: int = 3420  # MLP width (Qwen2-VL: embed_dim * mlp_ratio)
    out_hidden_size: int = 3584  # adapter output = LLM hidden size
    hidden_act: str = "silu"
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112  # pixels; Qwen2.5-VL only
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # Qwen2.5-VL only
    tokens_per_second: float = 2.0  # Qwen2.5-VL absolute-time M-RoPE
    rope_theta: float = 10000.0
    # Qwen-VL v1 only
    image_size: int = 448
    n_queries: int = 256
    pos_embed_grid: int = 16  # learned ViT position table is pos_embed_grid**2 rows (224 px stage-1 grid)
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check(self.kind in FAMILIES, f"vision kind {self.kind!r} not one of {FAMILIES}")
        _check(self.hidden_size % self.num_heads == 0,
               f"vision hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        _check(self.depth > 0 and self.patch_size > 0, "vision depth and patch_size must be positive")
        if self.kind == "qwen2_5_vl":
            bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
            _check(not bad, f"fullatt_block_indexes {bad} outside 0..{self.depth - 1}")
            unit = self.spatial_merge_size * self.patch_size
            _check(self.window_size % unit == 0,
                   f"window_size {self.window_size} must be a multiple of patch_size*spatial_merge_size={unit}")
        if self.kind == "qwen":
            _check(self.out_hidden_size >= 128 and self.out_hidden_size % 128 == 0,
                   f"resampler output_dim {self.out_hidden_size} must be a positive multiple of 128 "
                   "(its heads are output_dim // 128)")
            _check(int(self.n_queries ** 0.5) ** 2 == self.n_queries, f"n_queries {self.n_queries} not a square")
            _check(self.image_size % self.patch_size == 0, "image_size must be a multiple of patch_size")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    """The decoder hyper-parameters (Qwen2 / Qwen-7B blocks)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] | None = (16, 24, 24)  # None: plain 1-D RoPE (v1)
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    attention_bias: bool = True  # q/k/v bias (o_proj never has one)
    # Qwen-VL v1 inference-time long-context tricks (beyond seq_length)
    seq_length: int = 2048
    use_dynamic_ntk: bool = False
    use_logn_attn: bool = False

    def __post_init__(self) -> None:
        _check(self.hidden_size % self.num_attention_heads == 0,
               f"hidden_size {self.hidden_size} not divisible by num_attention_heads {self.num_attention_heads}")
        _check(self.num_attention_heads % self.num_key_value_heads == 0,
               f"num_attention_heads {self.num_attention_heads} not a multiple of "
               f"num_key_value_heads {self.num_key_value_heads}")
        _check(self.hidden_act == "silu", f"text hidden_act {self.hidden_act!r} unsupported (only silu)")
        if self.mrope_section is not None:
            _check(2 * sum(self.mrope_section) == self.head_dim,
                   f"mrope_section {list(self.mrope_section)} sums to {sum(self.mrope_section)}, "
                   f"but must sum to head_dim/2 = {self.head_dim // 2}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class QwenVLConfig:
    model_type: str = "qwen2_5_vl"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    # v1: `<img>` id; `</img>` = +1, `<imgpad>` = +2
    image_start_id: int = 151857

    def __post_init__(self) -> None:
        _check(self.model_type in FAMILIES, f"model_type {self.model_type!r} not one of {FAMILIES}")
        _check(self.vision.kind == self.model_type,
               f"vision tower {self.vision.kind!r} does not match model_type {self.model_type!r}")
        _check(self.vision.out_hidden_size == self.text.hidden_size,
               f"vision output size {self.vision.out_hidden_size} != text hidden_size {self.text.hidden_size}")
        if self.model_type != "qwen":
            _check(self.text.mrope_section is not None, f"{self.model_type} needs rope mrope_section")

    @property
    def family(self) -> str:
        return self.model_type

    def replace(self, **kw: Any) -> QwenVLConfig:
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------------
# config.json <-> dataclasses


def _rope_dict(d: dict) -> dict:
    """`rope_scaling` (older transformers) and `rope_parameters` (>=4.5x / 5.x) hold the same thing."""
    out: dict = {}
    for key in ("rope_scaling", "rope_parameters"):
        val = d.get(key)
        if isinstance(val, dict):
            out.update(val)
    return out


def _text_from_hf(d: dict, top: dict) -> TextConfig:
    rope = _rope_dict(d) or _rope_dict(top)
    section = rope.get("mrope_section")
    theta = rope.get("rope_theta", d.get("rope_theta", top.get("rope_theta", 1000000.0)))
    num_heads = d["num_attention_heads"]
    hidden = d["hidden_size"]
    if section is None:
        # transformers falls back to [16, 24, 24], valid only for head_dim 128
        section = [16, 24, 24] if hidden // num_heads == 128 else None
        _check(section is not None, "rope mrope_section missing and head_dim != 128")
    if d.get("head_dim") not in (None, hidden // num_heads):
        raise ValueError(f"invalid config: head_dim {d['head_dim']} != hidden_size/num_attention_heads")
    return TextConfig(
        vocab_size=d["vocab_size"], hidden_size=hidden, intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=num_heads,
        num_key_value_heads=d.get("num_key_value_heads", num_heads),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta), mrope_section=tuple(section),
        max_position_embeddings=d.get("max_position_embeddings", 32768), hidden_act=d.get("hidden_act", "silu"),
    )


def _vision_from_hf(v: dict, family: str, text_hidden: int) -> VisionConfig:
    common = dict(
        kind=family, depth=v.get("depth", 32), num_heads=v.get("num_heads", 16),
        in_channels=v.get("in_channels", v.get("in_chans", 3)), patch_size=v.get("patch_size", 14),
        temporal_patch_size=v.get("temporal_patch_size", 2), spatial_merge_size=v.get("spatial_merge_size", 2),
        hidden_act=v.get("hidden_act", "quick_gelu" if family == "qwen2_vl" else "silu"),
    )
    theta = _rope_dict(v).get("rope_theta", 10000.0)
    if family == "qwen2_vl":
        width = v.get("embed_dim", 1280)
        return VisionConfig(**common, hidden_size=width, intermediate_size=int(width * v.get("mlp_ratio", 4)),
                            out_hidden_size=v.get("hidden_size", text_hidden), rope_theta=theta)
    return VisionConfig(
        **common, hidden_size=v.get("hidden_size", 1280), intermediate_size=v.get("intermediate_size", 3420),
        out_hidden_size=v.get("out_hidden_size", text_hidden), window_size=v.get("window_size", 112),
        fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
        tokens_per_second=float(v.get("tokens_per_second", 2)), rope_theta=theta,
    )


def from_hf_dict(d: dict) -> QwenVLConfig:
    """Build a config from a parsed `config.json` (top-level or nested text_config form)."""
    family = d.get("model_type")
    if family == "qwen":
        from qwenvl.config_v1 import v1_from_hf_dict  # v1 has its own key names

        return v1_from_hf_dict(d)
    if family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"unsupported model_type {family!r}: expected one of {FAMILIES}")
    text_d = dict(d.get("text_config") or {})
    for k, val in d.items():  # top-level form: text keys live at the top
        if k not in ("text_config", "vision_config"):
            text_d.setdefault(k, val)
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in text_d]
    if missing:
        raise ValueError(f"invalid config: text config lacks {missing}")
    text = _text_from_hf(text_d, d)
    if "vision_config" not in d:
        raise ValueError("invalid config: no vision_config")
    vision = _vision_from_hf(d["vision_config"], family, text.hidden_size)
    tie = d.get("tie_word_embeddings", text_d.get("tie_word_embeddings", False))

    def tok(name: str, default: int) -> int:
        return int(d.get(name, text_d.get(name, default)))

    return QwenVLConfig(
        model_type=family, vision=vision, text=text, tie_word_embeddings=bool(tie),
        image_token_id=tok("image_token_id", 151655), video_token_id=tok("video_token_id", 151656),
        vision_start_token_id=tok("vision_start_token_id", 151652),
        vision_end_token_id=tok("vision_end_token_id", 151653),
        bos_token_id=tok("bos_token_id", 151643), eos_token_id=tok("eos_token_id", 151645),
    )


def _int_if_whole(x: float) -> int | float:
    # transformers' strict configs want ints for mlp_ratio / tokens_per_second when they are whole
    return int(x) if float(x).is_integer() else x


def to_hf_dict(cfg: QwenVLConfig) -> dict:
    """The `config.json` that transformers (>=4.5x and 5.x) loads, nested text_config form."""
    if cfg.model_type == "qwen":
        from qwenvl.config_v1 import v1_to_hf_dict

        return v1_to_hf_dict(cfg)
    t, v = cfg.text, cfg.vision
    rope = {"rope_type": "default", "type": "mrope", "rope_theta": t.rope_theta,
            "mrope_section": list(t.mrope_section or ())}
    text = dict(
        model_type=f"{cfg.model_type}_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta, rope_scaling=rope, rope_parameters=rope, use_sliding_window=False,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, tie_word_embeddings=cfg.tie_word_embeddings,
    )
    vrope = {"rope_type": "axial", "rope_theta": v.rope_theta}
    if cfg.model_type == "qwen2_vl":
        vision = dict(model_type="qwen2_vl_vision", depth=v.depth, embed_dim=v.hidden_size,
                      hidden_size=v.out_hidden_size, mlp_ratio=_int_if_whole(v.intermediate_size / v.hidden_size),
                      num_heads=v.num_heads, hidden_act=v.hidden_act, rope_parameters=vrope)
        arch = "Qwen2VLForConditionalGeneration"
    else:
        vision = dict(model_type="qwen2_5_vl_vision", depth=v.depth, hidden_size=v.hidden_size,
                      intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size,
                      num_heads=v.num_heads, hidden_act=v.hidden_act, window_size=v.window_size,
                      fullatt_block_indexes=list(v.fullatt_block_indexes),
                      tokens_per_second=_int_if_whole(v.tokens_per_second), rope_parameters=vrope)
        arch = "Qwen2_5_VLForConditionalGeneration"
    vision.update(in_channels=v.in_channels, in_chans=v.in_channels, patch_size=v.patch_size,
                  temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size)
    return dict(
        architectures=[arch], model_type=cfg.model_type, text_config=text, vision_config=vision,
        tie_word_embeddings=cfg.tie_word_embeddings, image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        # top-level copies for readers of the older flat form (vLLM, transformers 4.4x)
        **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                                "max_position_embeddings", "rope_scaling", "hidden_act")},
    )
