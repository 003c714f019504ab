"""grounding_hit: the first box, decoded per family into original-image pixels, against the GT at IoU >= thr.

Qwen-VL (v1) answers are read as Qwen-VL's eval_mm/evaluate_grounding.py reads them; the reference steps are
replayed here in torch (float32, torchvision's box_area = (x2 - x1) * (y2 - y1)) to compare with.
"""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

from qwenvl.eval.metrics import grounding_hit, qwen_vl_eval_box

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
    # qwen2_vl's codec reads per mille / 1000, so on a 1000x1000 image per mille is pixels.
    # GT (0,0)-(100,100); pred (0,0)-(50,100): IoU = 5000/10000 = 0.5.
    image, gt = (1000, 1000), [0, 0, 100, 100]
    box = "<|box_start|>({},{}),({},{})<|box_end|>".format
    assert grounding_hit(box(0, 0, 50, 100), gt, "qwen2_vl", image) == 1.0
    # (0,0)-(49,100): IoU = 4900/10000 = 0.49
    assert grounding_hit(box(0, 0, 49, 100), gt, "qwen2_vl", image) == 0.0
    assert grounding_hit(box(0, 0, 49, 100), gt, "qwen2_vl", image, thr=0.4) == 1.0


# ------------------------------------------------------------------------- Qwen-VL (v1): the official eval's reading


def _reference_iou(answer: str, gt: list[float], w: int, h: int) -> float:
    """The reference's steps: first (a),(b) pair, 2 floats each or a zero box, /999, *(w, h), box_iou, float32."""
    m = re.findall(r"\((.*?)\),\((.*?)\)", answer)
    try:
        if "," not in m[0][0] or "," not in m[0][1]:
            box = (0.0, 0.0, 0.0, 0.0)
        else:
            x1, y1 = (float(v) for v in m[0][0].split(","))
            x2, y2 = (float(v) for v in m[0][1].split(","))
            box = (x1, y1, x2, y2)
    except (IndexError, ValueError):
        box = (0.0, 0.0, 0.0, 0.0)
    p = torch.tensor(box, dtype=torch.float32).view(-1, 4) / 999
    p[:, 0::2] *= w
    p[:, 1::2] *= h
    t = torch.tensor(gt, dtype=torch.float32).view(-1, 4)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # torchvision.ops.box_area
    wh = (torch.min(p[:, None, 2:], t[:, 2:]) - torch.max(p[:, None, :2], t[:, :2])).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return (inter / (area(p)[:, None] + area(t) - inter)).item()


def test_qwen_vl_box_is_per_mille_over_999() -> None:
    # x / 999 * w in float32: 100/999*640 = 64.064..., 200/999*480 = 96.096..., 500/999*640, 700/999*480
    box = qwen_vl_eval_box("(100,200),(500,700)", (640, 480))
    assert box == pytest.approx((64.06406, 96.09610, 320.32032, 336.33634), abs=1e-4)
    expected = (torch.tensor([100.0, 200, 500, 700]) / 999 * torch.tensor([640.0, 480, 640, 480])).tolist()
    assert list(box) == expected  # bit for bit the reference's float32
    # Where /999 and /1000 part: GT (0,0)-(100,100) on 1000x1000, answer (0,0),(200,100).
    # Read / 1000 (the codec, qwen2_vl): (0,0)-(200,100), IoU = 10000 / 20000 = 0.5 -> hit.
    # Read / 999 (the v1 eval): (0,0)-(200.2002,100.1001), IoU = 10000 / (200.2002 * 100.1001) = 0.49900 -> miss.
    gt, image = [0, 0, 100, 100], (1000, 1000)
    by_hand = 10000 / ((200 * 1000 / 999) * (100 * 1000 / 999))
    assert _reference_iou("(0,0),(200,100)", gt, *image) == pytest.approx(by_hand, rel=1e-6)
    assert grounding_hit("<box>(0,0),(200,100)</box>", gt, "qwen_vl", image) == 0.0
    assert grounding_hit("<|box_start|>(0,0),(200,100)<|box_end|>", gt, "qwen2_vl", image) == 1.0


@pytest.mark.parametrize(
    ("answer", "box"),
    [
        ("(12,34),(56,78)</box>", (12, 34, 56, 78)),  # the continuation after the prompt's <box>
        ("<ref>cat (left)</ref><box>(12,34),(56,78)</box>", (12, 34, 56, 78)),  # read after the first <box>
        ("<box>(12,34),(56,78)</box><box>(1,1),(2,2)</box>", (12, 34, 56, 78)),  # first pair only
        ("( 12 , 34 ),( 56 , 78 )", (12, 34, 56, 78)),  # float() takes the spaces
        ("(1.5,2),(3,4e2)", (1.5, 2, 3, 400)),
        ("(500,500),(100,100)", (500, 500, 100, 100)),  # corners are not swapped
        ("(1200,0),(1300,50)", (1200, 0, 1300, 50)),  # nor clamped
        ("cat (left) (12,34),(56,78)", (0, 0, 0, 0)),  # no <box>: the lazy pair starts at "(left": unparsable
        ("(1,2,3),(4,5)", (0, 0, 0, 0)),  # three values in a group
        ("(12,34)", (0, 0, 0, 0)),  # no second corner
        ("(a,b),(c,d)", (0, 0, 0, 0)),
        ("I cannot see it.", (0, 0, 0, 0)),
    ],
)
def test_qwen_vl_reading_matches_the_reference_regex(answer: str, box: tuple[float, ...]) -> None:
    w, h = 999, 999  # the pixels then equal the numbers up to float32 rounding
    assert qwen_vl_eval_box(answer, (w, h)) == pytest.approx(box, rel=1e-6)
    after = answer.partition("<box>")[2].replace("</box>", "").replace("<box>", "") if "<box>" in answer else answer
    gt = [10, 30, 60, 80]
    ref = _reference_iou(after, gt, w, h)
    ours_hit = grounding_hit(answer, gt, "qwen_vl", (w, h), thr=0.5)
    assert ours_hit == float(ref >= 0.5)


def test_qwen_vl_iou_equals_the_reference_bit_for_bit() -> None:
    rng = random.Random(0)
    hits = 0
    for _ in range(400):
        w, h = rng.randint(50, 2000), rng.randint(50, 2000)
        gx1, gy1 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        gt = [round(gx1, 2), round(gy1, 2), round(rng.uniform(gx1 + 1, w), 2), round(rng.uniform(gy1 + 1, h), 2)]
        # per-mille answers near the GT, so that many IoUs sit around the threshold
        c = [gt[0] / w, gt[1] / h, gt[2] / w, gt[3] / h]
        nums = [max(0, min(999, round(999 * v + rng.gauss(0, 40)))) for v in c]
        answer = f"<ref>x</ref><box>({nums[0]},{nums[1]}),({nums[2]},{nums[3]})</box>"
        ref = _reference_iou(f"({nums[0]},{nums[1]}),({nums[2]},{nums[3]})", gt, w, h)
        if not ref > 0:
            continue
        # hit at thr = the reference's IoU and miss just above it: our IoU is the same float.
        assert grounding_hit(answer, gt, "qwen_vl", (w, h), thr=ref) == 1.0
        assert grounding_hit(answer, gt, "qwen_vl", (w, h), thr=math.nextafter(ref, 2.0)) == 0.0
        hits += ref >= 0.5
    assert 50 < hits < 350  # both sides of the threshold were exercised
