"""Model configs: frozen dataclasses describing every generation by architecture knobs.

The model code reads knobs (`vision.tower`, `vision.norm`, `text.qk_norm`, `text.num_experts`, ...) and
never a generation's name. Which knobs a generation sets, and how its `config.json` spells them, lives
in `qwenvl.families` (one module per generation); this module does no I/O and imports nothing of ours.

Family names (the one spelling of each generation, used by the registry, grounding and data):
  QWEN_VL     Qwen-VL v1   (config.json model_type "qwen")
  QWEN2_VL    Qwen2-VL     ("qwen2_vl")
  QWEN2_5_VL  Qwen2.5-VL   ("qwen2_5_vl")
  QWEN3_VL    Qwen3-VL     ("qwen3_vl", and "qwen3_vl_moe" for the MoE decoder)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

QWEN_VL, QWEN2_VL, QWEN2_5_VL, QWEN3_VL = "qwen_vl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"
FAMILY_NAMES = (QWEN_VL, QWEN2_VL, QWEN2_5_VL, QWEN3_VL)

TOWERS = ("resampler", "merger", "deepstack")  # v1 fixed-res ViT + resampler | Qwen2/2.5 | Qwen3
NORMS = ("layernorm", "rmsnorm")
MLPS = ("plain", "gated")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid config: {msg}")


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower (and adapter) hyper-parameters. Defaults: Qwen2.5-VL-7B."""

    tower: str = "merger"  # see TOWERS
    depth: int = 32
    hidden_size: int = 1280  # ViT width (Qwen2-VL calls it embed_dim, v1 calls it width)
    num_heads: int = 16
    intermediate_size: int = 3420  # MLP width (Qwen2-VL: embed_dim * mlp_ratio)
    out_hidden_size: int = 3584  # adapter output = LLM hidden size
    hidden_act: str = "silu"
    norm: str = "rmsnorm"  # ViT blocks and the merger's pre-norm
    mlp: str = "gated"  # ViT MLP: plain fc2(act(fc1)) or SwiGLU
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112  # pixels; 0 = every block attends over the whole frame
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # blocks that skip the window (window_size > 0)
    tokens_per_second: float = 2.0  # Qwen2.5-VL absolute-time M-RoPE
    rope_theta: float = 10000.0
    patch_bias: bool = False  # Conv3d patch embedding with a bias (Qwen3-VL)
    num_position_embeddings: int = 0  # learned square position table, bilinearly resized (Qwen3-VL: 2304)
    deepstack_visual_indexes: tuple[int, ...] = ()  # ViT blocks whose outputs feed decoder layers 0, 1, ...
    # tower "resampler" (Qwen-VL v1) only
    image_size: int = 448
    n_queries: int = 256
    pos_embed_grid: int = 16  # learned ViT position table is pos_embed_grid**2 rows (224 px stage-1 grid)
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check(self.tower in TOWERS, f"vision tower {self.tower!r} not one of {TOWERS}")
        _check(self.norm in NORMS, f"vision norm {self.norm!r} not one of {NORMS}")
        _check(self.mlp in MLPS, f"vision mlp {self.mlp!r} not one of {MLPS}")
        _check(self.hidden_size % self.num_heads == 0,
               f"vision hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        _check(self.depth > 0 and self.patch_size > 0, "vision depth and patch_size must be positive")
        if self.window_size:
            bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
            _check(not bad, f"fullatt_block_indexes {bad} outside 0..{self.depth - 1}")
            unit = self.spatial_merge_size * self.patch_size
            _check(self.window_size % unit == 0,
                   f"window_size {self.window_size} must be a multiple of patch_size*spatial_merge_size={unit}")
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.depth]
        _check(not bad, f"deepstack_visual_indexes {bad} outside 0..{self.depth - 1}")
        if self.num_position_embeddings:
            side = round(self.num_position_embeddings ** 0.5)
            _check(side * side == self.num_position_embeddings,
                   f"num_position_embeddings {self.num_position_embeddings} is not a square")
        if self.tower == "resampler":
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
    """The decoder hyper-parameters (Qwen2 / Qwen-7B / Qwen3 blocks, dense or MoE). Defaults: Qwen2.5-VL-7B."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    head_dim: int | None = None  # None: hidden_size // num_attention_heads (Qwen3 sets it, e.g. 128 at width 2560)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] | None = (16, 24, 24)  # None: plain 1-D RoPE (v1)
    mrope_interleaved: bool = False  # Qwen3-VL: frequencies cycle T H W T H W ... (rope.mrope_axis_map)
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    attention_bias: bool = True  # q/k/v bias (o_proj never has one)
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before RoPE
    # MoE (Qwen3-VL-MoE); num_experts 0 = dense
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    # Qwen-VL v1 inference-time long-context tricks (beyond seq_length)
    seq_length: int = 2048
    use_dynamic_ntk: bool = False
    use_logn_attn: bool = False

    def __post_init__(self) -> None:
        if self.head_dim is None:
            _check(self.hidden_size % self.num_attention_heads == 0,
                   f"hidden_size {self.hidden_size} not divisible by num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _check(self.head_dim > 0 and self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be positive and even")
        _check(self.num_attention_heads % self.num_key_value_heads == 0,
               f"num_attention_heads {self.num_attention_heads} not a multiple of "
               f"num_key_value_heads {self.num_key_value_heads}")
        _check(self.hidden_act == "silu", f"text hidden_act {self.hidden_act!r} unsupported (only silu)")
        if self.mrope_section is not None:
            _check(2 * sum(self.mrope_section) == self.head_dim,
                   f"mrope_section {list(self.mrope_section)} sums to {sum(self.mrope_section)}, "
                   f"but must sum to head_dim/2 = {self.head_dim // 2}")
        if self.num_experts:
            _check(0 < self.num_experts_per_tok <= self.num_experts,
                   f"num_experts_per_tok {self.num_experts_per_tok} must be in 1..num_experts={self.num_experts}")
            _check(self.moe_intermediate_size > 0, "moe_intermediate_size must be positive with num_experts > 0")
            _check(self.decoder_sparse_step > 0, "decoder_sparse_step must be positive")

    def is_moe_layer(self, i: int) -> bool:
        """Whether decoder layer i has a sparse MoE block (transformers' Qwen3-VL-MoE rule)."""
        return (self.num_experts > 0 and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)


@dataclass(frozen=True)
class QwenVLConfig:
    """A whole model. `family` is one of FAMILY_NAMES; `model_type` is config.json's own spelling."""

    family: str = QWEN2_5_VL
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
    # tower "resampler" (v1): `<img>` id; `</img>` = +1, `<imgpad>` = +2; every slot between the tags is an image slot
    image_start_id: int = 151857

    def __post_init__(self) -> None:
        _check(self.family in FAMILY_NAMES, f"family {self.family!r} not one of {FAMILY_NAMES}")
        _check(self.vision.out_hidden_size == self.text.hidden_size,
               f"vision output size {self.vision.out_hidden_size} != text hidden_size {self.text.hidden_size}")
        if self.vision.tower != "resampler":
            _check(self.text.mrope_section is not None, f"{self.model_type} needs rope mrope_section")
        _check(len(self.vision.deepstack_visual_indexes) <= self.text.num_hidden_layers,
               "more deepstack_visual_indexes than decoder layers to inject them into")

    @property
    def n_deepstack(self) -> int:
        return len(self.vision.deepstack_visual_indexes)

    def replace(self, **kw: Any) -> QwenVLConfig:
        return dataclasses.replace(self, **kw)
