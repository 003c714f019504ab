"""Every task x language gives a valid record; boxes lie in the image and parse back through the codec
to the ground truth; counts match the scene spec and the pixels; boxes match the drawn pixels."""

from __future__ import annotations

import numpy as np
import pytest

from qwenvl.data import TASKS, make_sample, resolve_config
from qwenvl.data.scenes import COLOURS
from qwenvl.processing.grounding import FAMILIES, parse_boxes
from qwenvl.processing.messages import normalize_messages

N = 6  # samples per task x language x split


def _records(cfg, task, lang, n=N, split="train"):
    return [make_sample(cfg, task, split, i, lang) for i in range(n)]


def _answer_texts(rec: dict) -> list[str]:
    return [m["content"][0]["text"] for m in rec["messages"] if m["role"] == "assistant"]


def _gt_boxes(rec: dict) -> list[list[list[int]]]:
    """Per assistant turn, the boxes its text must contain (meta box / boxes, or dialogue turn boxes)."""
    meta = rec["meta"]
    if "turns" in meta:
        return [[t["box"]] if "box" in t else [] for t in meta["turns"]]
    if "box" in meta:
        return [[meta["box"]]]
    return [meta.get("boxes", [])]


def _check_boxes(rec: dict, family: str) -> int:
    w, h = rec["meta"]["image_size"]
    input_size = None
    if family == "qwen2_5_vl":
        from qwenvl.processing.image import smart_resize

        rh, rw = smart_resize(h, w)
        input_size = (rw, rh)
        assert rec["meta"]["input_size"] == [rw, rh]
    n = 0
    for text, want in zip(_answer_texts(rec), _gt_boxes(rec), strict=True):
        got = parse_boxes(text, family, (w, h), input_size)
        assert len(got) == len(want), (rec["id"], text)
        grid_x = w / (input_size[0] if input_size else 1000)  # one grid unit in pixels
        grid_y = h / (input_size[1] if input_size else 1000)
        for g, b in zip(got, want, strict=True):
            x1, y1, x2, y2 = b
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (rec["id"], b)
            assert abs(g.x1 - x1) <= grid_x and abs(g.x2 - x2) <= grid_x, (rec["id"], g, b)
            assert abs(g.y1 - y1) <= grid_y and abs(g.y2 - y2) <= grid_y, (rec["id"], g, b)
            n += 1
    return n


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_task_and_language_gives_valid_records(task: str, lang: str) -> None:
    cfg = resolve_config(seed=3, image_size=(224, 192))
    for rec, images in _records(cfg, task, lang):
        assert rec["task"] == task and rec["lang"] == lang and rec["id"].startswith(f"{task}-train-")
        msgs, items = normalize_messages(rec["messages"])  # the processor's own validation
        roles = [m["role"] for m in msgs]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert items, "every sample shows an image or a video"
        paths = [p for it in items for p in (it.source if isinstance(it.source, list) else [it.source])]
        assert paths == [p for p, _ in images] and len(set(paths)) == len(paths)
        assert all(img.size == (224, 192) and img.mode == "RGB" for _, img in images)
        assert all(p.startswith(f"images/train/{task}/") and p.endswith(".png") for p in paths)
        assert all(t.strip() for t in _answer_texts(rec))
        meta = rec["meta"]
        assert meta["answer"] == meta["answers"][0] == _answer_texts(rec)[-1]
        assert meta["content_keys"] and meta["difficulty"]["level"] == "medium"
        if "choices" in meta:
            assert meta["answer"] in meta["choices"] or meta["answer"] in meta["answers"]
        _check_boxes(rec, "qwen_vl")
        if lang == "zh":
            assert any("\u4e00" <= ch <= "\u9fff" for ch in rec["messages"][0]["content"][-1]["text"])


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_boxes_parse_back_in_every_family(family: str) -> None:
    cfg = resolve_config(seed=5, image_size=(256, 200), family=family)
    n = 0
    for task in ("grounding", "grounded_caption", "ocr", "dialogue"):
        for lang in ("en", "zh"):
            for rec, _ in _records(cfg, task, lang, n=8):
                n += _check_boxes(rec, family)
    assert n > 20


def _blobs(mask: np.ndarray) -> int:
    """4-connected components of a boolean mask (small flood fill; masks hold a few shapes)."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        count += 1
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


def test_count_answers_match_the_scene_and_the_pixels() -> None:
    cfg = resolve_config(seed=11, difficulty={"count": {"targets": ["colour"], "distractors": [1, 3]}})
    for i in range(12):
        rec, images = make_sample(cfg, "count", "train", i)
        meta = rec["meta"]
        colour = meta["target"]["colour"]
        in_spec = sum(o["colour"] == colour for o in meta["objects"])
        assert int(meta["answer"]) == meta["count"] == in_spec
        assert 1 <= meta["count"] <= 6 and len(meta["objects"]) > meta["count"]  # there are distractors
        pixels = np.asarray(images[0][1])
        assert _blobs((pixels == COLOURS[colour]).all(-1)) == meta["count"]


def test_count_spec_for_every_target_kind() -> None:
    cfg = resolve_config(seed=2, difficulty="hard")
    for i in range(20):
        meta = make_sample(cfg, "count", "val", i)[0]["meta"]
        t = meta["target"]
        hits = sum(t["shape"] in (None, o["shape"]) and t["colour"] in (None, o["colour"]) for o in meta["objects"])
        assert hits == meta["count"] == int(meta["answer"])


def test_object_boxes_are_the_drawn_pixels() -> None:
    cfg = resolve_config(seed=4, difficulty="hard")
    for i in range(8):
        rec, images = make_sample(cfg, "grounded_caption", "train", i)
        pixels = np.asarray(images[0][1])
        for o in rec["meta"]["objects"]:
            x1, y1, x2, y2 = o["box"]
            mask = (pixels[y1:y2, x1:x2] == COLOURS[o["colour"]]).all(-1)
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [0, 0, x2 - x1, y2 - y1]


def test_ocr_text_is_inside_its_box_and_image() -> None:
    cfg = resolve_config(seed=8, difficulty="hard")
    for i in range(10):
        rec, images = make_sample(cfg, "ocr", "test", i)
        meta = rec["meta"]
        x1, y1, x2, y2 = meta["text_box"]
        assert 0 <= x1 < x2 <= 224 and 0 <= y1 < y2 <= 224
        assert 6 <= len(meta["ocr_text"]) <= 8 and abs(meta["angle"]) <= 30
        img = np.asarray(images[0][1]).astype(int)
        inside = img[y1:y2, x1:x2]
        assert np.ptp(inside.reshape(-1, 3), axis=0).max() > 60  # ink differs from the background


def test_difficulty_knobs_change_content_and_are_recorded() -> None:
    easy = resolve_config(seed=0, difficulty="easy")
    hard = resolve_config(seed=0, difficulty={"ocr": "hard", "video": {"level": "hard", "frames": 8}})
    e = [make_sample(easy, "ocr", "train", i)[0]["meta"] for i in range(20)]
    h = [make_sample(hard, "ocr", "train", i)[0]["meta"] for i in range(20)]
    assert all(3 <= len(m["ocr_text"]) <= 5 and m["angle"] == 0 for m in e)
    assert all(6 <= len(m["ocr_text"]) <= 8 for m in h) and any(abs(m["angle"]) > 15 for m in h)
    assert h[0]["difficulty"]["level"] == "hard" and h[0]["difficulty"]["max_rotation"] == 30.0
    rec, images = make_sample(hard, "video", "train", 0)
    assert len(images) == 8 == rec["meta"]["frames"] and rec["meta"]["difficulty"]["frames"] == 8
    with pytest.raises(ValueError, match="unknown knobs"):
        resolve_config(difficulty={"ocr": {"lenght": [3, 4]}})
    with pytest.raises(ValueError, match="unknown level"):
        resolve_config(difficulty="brutal")


def test_video_frames_show_the_motion() -> None:
    cfg = resolve_config(seed=9, difficulty={"video": {"directions": ["left", "right", "up", "down"]}})
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for i in range(6):
        rec, images = make_sample(cfg, "video", "train", i)
        meta = rec["meta"]
        moving = meta["moving"]
        centres = []
        for _, img in images:
            ys, xs = np.nonzero((np.asarray(img) == COLOURS[moving["colour"]]).all(-1))
            keep = [(x, y) for x, y in zip(xs, ys, strict=True)  # only the moving object's pixels
                    if not any(s["colour"] == moving["colour"] and s["box"][0] <= x < s["box"][2]
                               and s["box"][1] <= y < s["box"][3] for s in meta["static"])]
            centres.append(np.mean(keep, axis=0))
        dx, dy = centres[-1] - centres[0]
        sx, sy = step[meta["direction"]]
        assert dx * sx + dy * sy > 10 and abs(dx * sy) + abs(dy * sx) < 3
