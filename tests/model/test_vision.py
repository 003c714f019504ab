"""The Qwen2.5-VL tower under bf16 autocast (as training runs it): windows of unequal size take the padded
varlen path, whose q/k (RoPE in fp32) and v must meet in one dtype."""

from __future__ import annotations

import torch

from qwenvl.config import QwenVLConfig, TextConfig, VisionConfig
from qwenvl.model.qwenvl import QwenVLModel


def test_tower_runs_under_bf16_autocast_and_matches_fp32():
    torch.manual_seed(0)
    vision = VisionConfig(tower="merger", norm="rmsnorm", mlp="gated", depth=2, hidden_size=32, num_heads=2,
                          intermediate_size=48, out_hidden_size=64, fullatt_block_indexes=(1,), window_size=56)
    text = TextConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3))
    model = QwenVLModel(QwenVLConfig(vision=vision, text=text, image_token_id=241, video_token_id=242,
                                     vision_start_token_id=243, vision_end_token_id=244)).eval()
    grid = [(1, 6, 10), (1, 4, 6)]  # merged 3x5 and 2x3 against 2x2 windows: partial windows, unequal segments
    pixels = torch.randn(sum(t * h * w for t, h, w in grid), 3 * 2 * 14 * 14)
    with torch.no_grad():
        ref = model.encode_images(pixels, grid)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.encode_images(pixels, grid)
    assert out.shape == ref.shape == (15 + 6, 64)
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 3e-2, rel  # bf16 rounding only
