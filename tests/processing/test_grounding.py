"""Grounding box codec: the four conventions, exact round trips, clamping, tolerant parsing (pain point 4)."""

from __future__ import annotations

import random

import pytest

from qwenvl.processing.grounding import (
    FAMILIES,
    Box,
    format_box,
    format_boxes,
    input_size_from_grid,
    parse_boxes,
)

# (original W, H) paired with a Qwen2.5-VL resized input (w, h): down-, up- and odd-scaled, non-square.
SIZES = [
    ((640, 480), (644, 476)),
    ((480, 640), (476, 644)),
    ((1920, 1080), (1932, 1092)),
    ((4032, 3024), (1288, 966)),
    ((333, 1777), (336, 1764)),
    ((1000, 1000), (1008, 1008)),
    ((7, 5), (28, 28)),
    ((1001, 999), (1008, 980)),
]


def _grid(family: str, input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(units x, units y, max x, max y) as the module docstring specifies them."""
    if family == "qwen2_5_vl":
        return (*input_size, *input_size)
    top = 1000 if family == "qwen3_vl" else 999
    return 1000, 1000, top, top


def _snap(v: float, side: int, units: int, top: int) -> float:
    return min(max(round(v / side * units), 0), top) / units * side


def _canonical(family: str, label: str | None, g: list[int]) -> str:
    """A model-style string written by hand, independent of format_box."""
    if family == "qwen_vl":
        return (f"<ref>{label}</ref>" if label is not None else "") + "<box>({},{}),({},{})</box>".format(*g)
    if family == "qwen2_vl":
        ref = f"<|object_ref_start|>{label}<|object_ref_end|>" if label is not None else ""
        return ref + "<|box_start|>({},{}),({},{})<|box_end|>".format(*g)
    label_part = f', "label": "{label}"' if label is not None else ""
    return '{"bbox_2d": [' + ", ".join(str(v) for v in g) + "]" + label_part + "}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("image_size", "input_size"), SIZES)
def test_parse_of_format_is_the_box_snapped_to_the_grid(family, image_size, input_size) -> None:
    rng = random.Random(f"{family}{image_size}")  # str seeds are stable across runs
    (w, h), (gx, gy, tx, ty) = image_size, _grid(family, input_size)
    for _ in range(150):
        # Corners in any order and partly outside the image: format swaps and clamps.
        xs = [rng.uniform(-0.1 * w, 1.1 * w) for _ in range(2)]
        ys = [rng.uniform(-0.1 * h, 1.1 * h) for _ in range(2)]
        box = Box(rng.choice([None, "cat", "红色的车"]), xs[0], ys[0], xs[1], ys[1])
        text = format_box(box, family, image_size, input_size)
        (back,) = parse_boxes(text, family, image_size, input_size)
        sx = sorted(_snap(x, w, gx, tx) for x in xs)
        sy = sorted(_snap(y, h, gy, ty) for y in ys)
        assert (back.x1, back.y1, back.x2, back.y2) == (sx[0], sy[0], sx[1], sy[1])
        assert back.label == box.label
        assert format_box(back, family, image_size, input_size) == text  # idempotent on the grid


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("image_size", "input_size"), SIZES)
def test_format_of_parse_gives_back_every_valid_string(family, image_size, input_size) -> None:
    rng = random.Random(7)
    _, _, tx, ty = _grid(family, input_size)
    edges = [[0, 0, tx, ty], [tx, ty, tx, ty], [0, 0, 0, 0]]
    for i in range(150):
        if i < len(edges):
            g = edges[i]
        else:
            x1, x2 = sorted(rng.randint(0, tx) for _ in range(2))
            y1, y2 = sorted(rng.randint(0, ty) for _ in range(2))
            g = [x1, y1, x2, y2]
        text = _canonical(family, rng.choice([None, "dog", "a b"]), g)
        (box,) = parse_boxes(text, family, image_size, input_size)
        assert 0 <= box.x1 <= box.x2 <= image_size[0] and 0 <= box.y1 <= box.y2 <= image_size[1]
        assert format_box(box, family, image_size, input_size) == text


def test_documented_examples_in_original_pixels() -> None:
    v1 = (
        "The <ref>dog</ref><box>(100,200),(500,800)</box> and <ref>cats</ref><box>(0,0),(10,10)</box> "
        "<box>(20,20),(30,30)</box>; also <box>(1,1),(2,2)</box>"
    )
    boxes = parse_boxes(v1, "qwen_vl", (2000, 1000))
    assert [b.label for b in boxes] == ["dog", "cats", "cats", None]
    assert boxes[0] == Box("dog", 200.0, 200.0, 1000.0, 800.0)
    q2 = "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"
    assert parse_boxes(q2, "qwen2_vl", (2000, 1000)) == [Box("dog", 200.0, 200.0, 1000.0, 800.0)]
    q25 = 'Sure.\n```json\n[\n\t{"bbox_2d": [644, 483, 1288, 966], "label": "car"}\n]\n```'
    assert parse_boxes(q25, "qwen2_5_vl", (4032, 3024), (1288, 966)) == [Box("car", 2016.0, 1512.0, 4032.0, 3024.0)]
    q3 = '```json\n[{"bbox_2d": [500, 500, 1000, 1000], "label": "car"}]\n```'
    assert parse_boxes(q3, "qwen3_vl", (4032, 3024)) == [Box("car", 2016.0, 1512.0, 4032.0, 3024.0)]
    # a MoE checkpoint (model_type qwen3_vl_moe) is the qwen3_vl family, so it writes boxes the same way
    from qwenvl.families import for_model_type
    assert for_model_type("qwen3_vl_moe").name == "qwen3_vl"
    with pytest.raises(ValueError, match="unknown grounding family"):  # model_type spellings are not families
        parse_boxes(q3, "qwen", (4032, 3024))
    assert boxes[0].as_dict() == {"label": "dog", "x1": 200.0, "y1": 200.0, "x2": 1000.0, "y2": 800.0}


def test_same_numbers_mean_different_pixels_per_family() -> None:
    # The confusion of pain point 4: one JSON, read as Qwen2.5-VL pixels vs Qwen3-VL per mille.
    text = '[{"bbox_2d": [100, 100, 200, 200]}]'
    (a,) = parse_boxes(text, "qwen2_5_vl", (2000, 2000), input_size=(1000, 1000))
    (b,) = parse_boxes(text, "qwen3_vl", (2000, 2000))
    assert (a.x1, b.x1) == (200.0, 200.0)
    (c,) = parse_boxes(text, "qwen2_5_vl", (2000, 2000), input_size=(500, 500))
    assert c.x1 == 400.0


def test_swapped_corners_and_clamping() -> None:
    (b,) = parse_boxes("<box>(500,800),(100,200)</box>", "qwen_vl", (1000, 1000))
    assert (b.x1, b.y1, b.x2, b.y2) == (100.0, 200.0, 500.0, 800.0)
    (b,) = parse_boxes("<box>(1200,-5),(500,500)</box>", "qwen_vl", (2000, 1000))
    assert (b.x1, b.y1, b.x2, b.y2) == (1000.0, 0.0, 2000.0, 500.0)  # 1200 -> 1000 (far edge), -5 -> 0
    (b,) = parse_boxes('[{"bbox_2d": [-3, 0, 9999, 50]}]', "qwen2_5_vl", (100, 100), (50, 50))
    assert (b.x1, b.x2, b.y2) == (0.0, 100.0, 100.0)
    assert (
        format_box(Box("a", 300, 400, 100, 200), "qwen_vl", (1000, 1000))
        == "<ref>a</ref><box>(100,200),(300,400)</box>"
    )
    huge = Box(None, -10, -10, 5000, 5000)
    assert format_box(huge, "qwen_vl", (640, 480)) == "<box>(0,0),(999,999)</box>"
    assert format_box(huge, "qwen2_vl", (640, 480)) == "<|box_start|>(0,0),(999,999)<|box_end|>"
    assert format_box(huge, "qwen3_vl", (640, 480)) == '{"bbox_2d": [0, 0, 1000, 1000]}'
    assert format_box(huge, "qwen2_5_vl", (640, 480), (644, 476)) == '{"bbox_2d": [0, 0, 644, 476]}'


def test_format_boxes_round_trip_groups_refs() -> None:
    size = (1280, 720)
    for family in FAMILIES:
        labels = ["a", "a", "b", None, None, "c", "a"]
        boxes = [Box(lab, 10 * i, 5 * i, 100 + 10 * i, 50 + 5 * i) for i, lab in enumerate(labels)]
        text = format_boxes(boxes, family, size, (1288, 728))
        parsed = parse_boxes(text, family, size, (1288, 728))
        assert [b.label for b in parsed] == labels
        assert format_boxes(parsed, family, size, (1288, 728)) == text
    assert format_boxes(boxes[:2], "qwen_vl", size).count("<ref>") == 1
    assert format_boxes([], "qwen3_vl", size) == "```json\n[]\n```"
    assert parse_boxes("```json\n[]\n```", "qwen3_vl", size) == []


def test_tolerant_tag_parsing() -> None:
    size = (1000, 1000)
    assert parse_boxes("<ref> a cat </ref><box>( 10 , 20 ) , ( 30 , 40 )</box>", "qwen_vl", size) == [
        Box(" a cat ", 10.0, 20.0, 30.0, 40.0)
    ]
    truncated = "<ref>a</ref><box>(1,2),(3,4)</box><ref>b</ref><box>(5,6),(7"
    assert [b.label for b in parse_boxes(truncated, "qwen_vl", size)] == ["a"]
    assert [b.label for b in parse_boxes("<ref>a <box>(1,2),(3,4)</box>", "qwen_vl", size)] == [None]
    assert parse_boxes("<box>(1,2)</box><box>(a,b),(c,d)</box><box></box>", "qwen_vl", size) == []
    assert parse_boxes("<box>(1.5,2),(3,4)</box>", "qwen_vl", size)[0].x1 == 1.5
    # v1 tags mean nothing to the Qwen2-VL parser and vice versa.
    assert parse_boxes("<box>(1,2),(3,4)</box>", "qwen2_vl", size) == []


def test_tolerant_json_parsing() -> None:
    size, inp = (1000, 1000), (1000, 1000)
    cases = {
        'The boxes are [{"bbox_2d": [1, 2, 3, 4], "label": "x"}] as asked.': ["x"],
        '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "x"},\n\t{"bbox_2d": [5, 6, 7': ["x"],
        "[{'bbox_2d': [1, 2, 3, 4], 'label': 'x'},]": ["x"],
        '[{"label": "x", "bbox_2d": [1, 2, 3, 4], "attrs": {"color": "red"}}]': ["x"],
        '{"bbox_2d": [1, 2, 3, 4], "label": 5}': ["5"],
        '[{"point_2d": [1, 2], "label": "p"}, {"bbox_2d": [1, 2, 3], "label": "short"}]': [],
        '[{"bbox_2d": [NaN, 2, 3, 4]}, {"bbox_2d": [true, 2, 3, 4]}, {"bbox": [1, 2, 3, 4]}]': [None],
        '[{"bbox_2d": [1, 2, 3, 4], "label": "say \\"hi\\" 猫"}]': ['say "hi" 猫'],
        '{"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "w"}]}': ["w"],
        '[{"bbox_2d": [1%s, 2, 3, 4]}]' % ("0" * 400): [],  # int too large for a float
        "": [],
        "no boxes here {not json}": [],
    }
    for text, labels in cases.items():
        assert [b.label for b in parse_boxes(text, "qwen2_5_vl", size, inp)] == labels, text
        assert [b.label for b in parse_boxes(text, "qwen3_vl", size)] == labels, text


@pytest.mark.parametrize("family", FAMILIES)
def test_parsing_never_raises_on_garbage(family) -> None:
    rng = random.Random(3)
    size, inp = (1920, 1080), (1932, 1092)
    boxes = [Box(lab, 10, 20, 300 + i, 400) for i, lab in enumerate(["a", "a", None, "b"])]
    valid = "Here: " + format_boxes(boxes, family, size, inp) + " done."
    alphabet = "<>(),[]{}\"':0123456789-. \n|_abcxyzboxref/json`"
    for _ in range(400):
        chars = list(valid[: rng.randint(0, len(valid))])
        for _ in range(rng.randint(0, 5)):
            if chars:
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        for box in parse_boxes("".join(chars), family, size, inp):
            assert 0 <= box.x1 <= box.x2 <= size[0] and 0 <= box.y1 <= box.y2 <= size[1]


def test_errors_for_programmer_mistakes() -> None:
    with pytest.raises(ValueError, match="input_size"):
        parse_boxes("no box", "qwen2_5_vl", (100, 100))
    with pytest.raises(ValueError, match="input_size"):
        format_box(Box(None, 1, 2, 3, 4), "qwen2_5_vl", (100, 100))
    with pytest.raises(ValueError, match="unknown grounding family"):
        parse_boxes("", "qwen4_vl", (100, 100))
    with pytest.raises(ValueError, match="image_size"):
        parse_boxes("", "qwen_vl", (0, 100))
    with pytest.raises(ValueError, match="finite"):
        format_box(Box(None, float("nan"), 2, 3, 4), "qwen_vl", (100, 100))
    with pytest.raises(ValueError, match="grounding tag"):
        format_box(Box("a</ref>b", 1, 2, 3, 4), "qwen_vl", (100, 100))
    assert input_size_from_grid((1, 34, 46)) == (644, 476)
