"""grounding_hit: the first box, decoded per family into original-image pixels, against the GT at IoU >= thr."""

from __future__ import annotations

import pytest

from qwenvl.eval.metrics import grounding_hit

IMAGE = (640, 480)
GT = [64, 48, 320, 240]  # original pixels; per mille of 640x480: (100, 100), (500, 500)


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("qwen_vl", "<ref>the cat</ref><box>(100,100),(500,500)</box>"),
        ("qwen2_vl", "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"),
        ("qwen3_vl", '```json\n[{"bbox_2d": [100, 100, 500, 500], "label": "the cat"}]\n```'),
    ],
)
def test_per_mille_families_hit(family: str, text: str) -> None:
    assert grounding_hit(text, GT, family, IMAGE) == 1.0
    miss = text.replace("100", "600").replace("500", "900")  # (384, 288)-(576, 432): disjoint from GT
    assert grounding_hit(miss, GT, family, IMAGE) == 0.0


def test_qwen2_5_vl_uses_resized_input_pixels() -> None:
    # Original 1280x960 resized to 640x480: input pixels (32, 24, 160, 120) are original (64, 48, 320, 240).
    text = '[{"bbox_2d": [32, 24, 160, 120], "label": "cat"}]'
    image, gt = (1280, 960), [64, 48, 320, 240]
    assert grounding_hit(text, gt, "qwen2_5_vl", image, input_size=(640, 480)) == 1.0
    # Read as per mille (the scale heuristic pitfall) the same numbers land elsewhere: (41, 23)-(205, 115).
    assert grounding_hit(text, gt, "qwen3_vl", image) == 0.0
    with pytest.raises(ValueError, match="input_size"):
        grounding_hit(text, gt, "qwen2_5_vl", image)


def test_first_box_only_and_no_box() -> None:
    wrong_then_right = "<box>(600,600),(900,900)</box><box>(100,100),(500,500)</box>"
    assert grounding_hit(wrong_then_right, GT, "qwen_vl", IMAGE) == 0.0
    assert grounding_hit("I cannot see a cat.", GT, "qwen_vl", IMAGE) == 0.0
    assert grounding_hit("", GT, "qwen2_5_vl", IMAGE, input_size=(644, 476)) == 0.0


def test_threshold_is_inclusive() -> None:
    # On a 1000x1000 image per mille is pixels. GT (0,0)-(100,100); pred (0,0)-(50,100): IoU = 5000/10000 = 0.5.
    image, gt = (1000, 1000), [0, 0, 100, 100]
    assert grounding_hit("<box>(0,0),(50,100)</box>", gt, "qwen_vl", image) == 1.0
    # (0,0)-(49,100): IoU = 4900/10000 = 0.49
    assert grounding_hit("<box>(0,0),(49,100)</box>", gt, "qwen_vl", image) == 0.0
    assert grounding_hit("<box>(0,0),(49,100)</box>", gt, "qwen_vl", image, thr=0.4) == 1.0
