"""Qwen2.5-VL: Qwen2-VL with an RMSNorm + SwiGLU ViT, window attention plus full-attention blocks,
and absolute-time M-RoPE for video (facts B.3). Grounding: JSON boxes in resized-input pixels.
"""

from __future__ import annotations

from qwenvl.config import QWEN2_5_VL, QwenVLConfig, VisionConfig
from qwenvl.families.base import int_if_whole, split_hf_dict
from qwenvl.families.qwen2_vl import (
    Qwen2VL,
    assemble,
    assemble_dump,
    qwen2_text,
    qwen2_text_dump,
    vision_common,
    vision_common_dump,
)


class Qwen25VL(Qwen2VL):
    name = QWEN2_5_VL
    model_types = ("qwen2_5_vl",)
    absolute_time = True

    def box_input_size(self, image_size: tuple[int, int], min_pixels: int | None = None,
                       max_pixels: int | None = None) -> tuple[int, int] | None:
        """Boxes are absolute pixels of the resized input: smart_resize at factor 28 (patch 14 x merge 2),
        the released min / max pixels unless given. ValueError for an image the rule refuses."""
        from qwenvl.processing.image import MAX_PIXELS, MIN_PIXELS, smart_resize

        w, h = image_size
        rh, rw = smart_resize(h, w, 28, min_pixels or MIN_PIXELS, max_pixels or MAX_PIXELS)
        return rw, rh

    def parse_config(self, d: dict) -> QwenVLConfig:
        text_d, v = split_hf_dict(d)
        text = qwen2_text(text_d, d)
        vision = VisionConfig(
            tower="merger", norm="rmsnorm", mlp="gated", **vision_common(v, "silu"),
            hidden_size=v.get("hidden_size", 1280), intermediate_size=v.get("intermediate_size", 3420),
            out_hidden_size=v.get("out_hidden_size", text.hidden_size), window_size=v.get("window_size", 112),
            fullatt_block_indexes=tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
            tokens_per_second=float(v.get("tokens_per_second", 2)))
        return assemble(self.name, d["model_type"], d, text, vision, text_d)

    def dump_config(self, cfg: QwenVLConfig) -> dict:
        v = cfg.vision
        vision = dict(model_type="qwen2_5_vl_vision", depth=v.depth, hidden_size=v.hidden_size,
                      intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size,
                      num_heads=v.num_heads, hidden_act=v.hidden_act, window_size=v.window_size,
                      fullatt_block_indexes=list(v.fullatt_block_indexes),
                      tokens_per_second=int_if_whole(v.tokens_per_second), **vision_common_dump(v))
        return assemble_dump(cfg, "Qwen2_5_VLForConditionalGeneration", qwen2_text_dump(cfg), vision)


FAMILY = Qwen25VL()
