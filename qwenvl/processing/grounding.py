"""One grounding box codec for every generation; boxes always come back in ORIGINAL-image pixels.

What each generation speaks (architecture-facts A.7, B.5, C; pain point 4):

* `qwen_vl` (v1): `<ref>cat</ref><box>(x1,y1),(x2,y2)</box>`, several boxes may follow one ref;
  integers per mille of the original image, 0..999.
* `qwen2_vl`: `<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`;
  per mille, 0..999.
* `qwen2_5_vl`: JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]`, often in a ```json fence; absolute
  pixels of the RESIZED model input, so input_size=(w, h) is required.
* `qwen3_vl`: the same JSON, per mille 0..1000.

Mapping (one rule for all): a grid value g on a grid of G units across a side of S original pixels is
`x = g / G * S` when parsing and `g = round(x / S * G)` when formatting, with G = 1000 for per-mille
families and G = the input width/height for Qwen2.5-VL. Because the parse is linear and the format
rounds, format(parse(s)) == s for every canonical string, and parse(format(box)) is the box snapped
to the grid, also on non-square and > 1000 px images.

Clamping: parsed values are clamped to [0, G] (a model's 1000 on a [0, 1000) grid means the far edge).
Formatted values are clamped to [0, 999] for `qwen_vl`/`qwen2_vl` (documented as [0, 1000)), [0, 1000]
for `qwen3_vl` and [0, input side] for `qwen2_5_vl`. Corners given as x2 < x1 (or y2 < y1) are swapped,
both when parsing and formatting. Malformed or truncated pieces of model output are skipped; parsing
never raises on text.

Must not: touch images (see draw.py) or tokenizers; it is pure text <-> numbers.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qwenvl.config import FAMILY_NAMES, QWEN2_5_VL, QWEN2_VL, QWEN3_VL, QWEN_VL

FAMILIES = FAMILY_NAMES  # every family has a box convention, named as the family
# (ref open, ref close, box open, box close) of the tag-based families.
_TAGS = {
    QWEN_VL: ("<ref>", "</ref>", "<box>", "</box>"),
    QWEN2_VL: ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"),
}
_NUM = r"[-+]?\d+(?:\.\d+)?"
_CORNERS = re.compile(rf"\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*")
_BBOX_KEYS = ("bbox_2d", "bbox")
_LENIENT_BBOX = re.compile(
    rf"""["']?(?:bbox_2d|bbox)["']?\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"""
)
_LENIENT_LABEL = re.compile(r"""["']?label["']?\s*:\s*("(?:[^"\\]|\\.)*"|'[^']*')""")


@dataclass
class Box:
    """An axis-aligned box in original-image pixels (x right, y down)."""

    label: str | None
    x1: float
    y1: float
    x2: float
    y2: float

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}


# ------------------------------------------------------------------------- grid


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown grounding family {family!r}; expected one of {FAMILIES}")
    return family


def _size(size: Sequence[float] | None, what: str) -> tuple[int, int]:
    if size is None or len(size) != 2 or not all(_is_number(v) and v > 0 for v in size):
        raise ValueError(f"{what} must be (width, height) with positive sides, got {size!r}")
    return int(size[0]), int(size[1])


def _grid(family: str, input_size: Sequence[float] | None) -> tuple[int, int, int, int]:
    """(units across x, units across y, max formatted x, max formatted y) for a family."""
    if family == QWEN2_5_VL:
        if input_size is None:
            raise ValueError("qwen2_5_vl boxes are pixels of the resized model input: pass input_size=(w, h)")
        w, h = _size(input_size, "input_size")
        return w, h, w, h
    top = 1000 if family == QWEN3_VL else 999
    return 1000, 1000, top, top


def input_size_from_grid(grid_thw: Sequence[int], patch_size: int = 14) -> tuple[int, int]:
    """Qwen2.5-VL input (width, height) from `image_grid_thw` = (t, h, w) in patches."""
    return int(grid_thw[2]) * patch_size, int(grid_thw[1]) * patch_size


def _clamp(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _to_pixels(
    values: Sequence[float], label: str | None, family: str, image_size: tuple[int, int], input_size: Any
) -> Box | None:
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return None
    gw, gh, _, _ = _grid(family, input_size)
    w, h = image_size
    x1, y1, x2, y2 = (_clamp(v, 0, g) / g * s for v, g, s in zip(values, (gw, gh) * 2, (w, h) * 2, strict=True))
    return Box(label, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _to_grid(box: Box, family: str, image_size: tuple[int, int], input_size: Any) -> list[int]:
    gw, gh, top_x, top_y = _grid(family, input_size)
    w, h = image_size
    coords = (box.x1, box.y1, box.x2, box.y2)
    if not all(_is_number(v) and math.isfinite(v) for v in coords):
        raise ValueError(f"box coordinates must be finite numbers: {box!r}")
    x1, y1, x2, y2 = (
        int(_clamp(round(v / s * g), 0, top))
        for v, s, g, top in zip(coords, (w, h) * 2, (gw, gh) * 2, (top_x, top_y) * 2, strict=True)
    )
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


# ------------------------------------------------------------------------- parse


def parse_boxes(
    text: str, family: str, image_size: tuple[int, int], input_size: tuple[int, int] | None = None
) -> list[Box]:
    """Every box in a model's text, in order, in original-image pixels. image_size = (W, H) of the
    original image; input_size = (w, h) of the resized model input (qwen2_5_vl only)."""
    family = _family(family)
    size = _size(image_size, "image_size")
    _grid(family, input_size)  # fail fast on a missing input_size even when text holds no box
    raw = _tagged_boxes(text, *_TAGS[family]) if family in _TAGS else _json_boxes(text)
    boxes = [_to_pixels(values, label, family, size, input_size) for label, values in raw]
    return [b for b in boxes if b is not None]


def _tagged_boxes(text: str, ref_open: str, ref_close: str, box_open: str, box_close: str) -> Iterator[tuple]:
    """(label, 4 values) per well-formed box span. A box takes the label of the ref right before it,
    with only whitespace or other boxes in between; any other text in between means no label."""
    ro, rc, bo, bc = (re.escape(t) for t in (ref_open, ref_close, box_open, box_close))
    # The label/box bodies may not run into another tag, so a missing close tag skips only its own span.
    body = rf"(?:(?!{ro}|{rc}|{bo}|{bc}).)*?"
    scanner = re.compile(rf"{ro}({body}){rc}|{bo}({body}){bc}", re.DOTALL)
    label, last_end = None, 0
    for m in scanner.finditer(text):
        between = text[last_end : m.start()]
        if between.strip():
            label = None
        last_end = m.end()
        if m.group(1) is not None:
            label = m.group(1)
            continue
        corners = _CORNERS.fullmatch(m.group(2))
        if corners:
            yield label, [float(v) for v in corners.groups()]


def _json_boxes(text: str) -> list[tuple]:
    """(label, 4 values) per JSON object with a bbox_2d; strict JSON first, then a scan of flat objects
    so prose around the JSON and truncated output still yield the complete boxes."""
    body = text
    fence = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", text, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        return list(_walk_json(json.loads(body)))
    except (ValueError, RecursionError):
        pass
    found = []
    for m in re.finditer(r"\{[^{}]*\}", text):
        try:
            found.extend(_walk_json(json.loads(m.group())))
        except ValueError:
            found.extend(_lenient_object(m.group()))
    return found


def _walk_json(node: Any) -> Iterator[tuple]:
    if isinstance(node, list):
        for child in node:
            yield from _walk_json(child)
    elif isinstance(node, dict):
        bbox = next((node[k] for k in _BBOX_KEYS if k in node), None)
        if bbox is None:  # a wrapper such as {"objects": [...]}: look inside
            for child in node.values():
                yield from _walk_json(child)
        elif isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
            label = node.get("label")
            yield (None if label is None else str(label)), [_as_float(v) for v in bbox]


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _as_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # a 400-digit JSON integer: not a coordinate, dropped as non-finite
        return math.inf


def _lenient_object(obj: str) -> Iterator[tuple]:
    """A `{...}` that is not strict JSON (single quotes, trailing commas): pull bbox and label by regex."""
    bbox = _LENIENT_BBOX.search(obj)
    if not bbox:
        return
    label = None
    m = _LENIENT_LABEL.search(obj)
    if m:
        quoted = m.group(1)
        try:
            label = json.loads(quoted) if quoted.startswith('"') else quoted[1:-1]
        except ValueError:
            label = quoted[1:-1]
    yield label, [float(v) for v in bbox.groups()]


# ------------------------------------------------------------------------- format


def format_box(box: Box, family: str, image_size: tuple[int, int], input_size: tuple[int, int] | None = None) -> str:
    """One box (original pixels) as the family writes it; JSON families give one object."""
    family = _family(family)
    x1, y1, x2, y2 = _to_grid(box, family, _size(image_size, "image_size"), input_size)
    if family in _TAGS:
        ref_open, ref_close, box_open, box_close = _TAGS[family]
        ref = "" if box.label is None else f"{ref_open}{_checked_label(box.label, family)}{ref_close}"
        return f"{ref}{box_open}({x1},{y1}),({x2},{y2}){box_close}"
    obj: dict[str, Any] = {"bbox_2d": [x1, y1, x2, y2]}
    if box.label is not None:
        obj["label"] = box.label
    return json.dumps(obj, ensure_ascii=False)


def format_boxes(
    boxes: Sequence[Box], family: str, image_size: tuple[int, int], input_size: tuple[int, int] | None = None
) -> str:
    """Several boxes: tag families group consecutive boxes of one label under one ref (as v1 writes
    them) and put ", " before an unlabelled box that follows a labelled one; JSON families give the
    fenced, tab-indented list Qwen2.5/3-VL print."""
    family = _family(family)
    if family not in _TAGS:
        objs = [format_box(b, family, image_size, input_size) for b in boxes]
        return "```json\n[\n" + ",\n".join(f"\t{o}" for o in objs) + "\n]\n```" if objs else "```json\n[]\n```"
    parts = []
    for i, b in enumerate(boxes):
        prev = boxes[i - 1].label if i > 0 else None
        grouped = b.label is not None and b.label == prev
        if b.label is None and prev is not None:
            parts.append(", ")  # text between breaks the ref chain, else this box would read as `prev`
        parts.append(format_box(Box(None if grouped else b.label, b.x1, b.y1, b.x2, b.y2), family, image_size))
    return "".join(parts)


def _checked_label(label: str, family: str) -> str:
    if any(tag in label for tag in _TAGS[family]):
        raise ValueError(f"label {label!r} contains a {family} grounding tag and could not be parsed back")
    return label
