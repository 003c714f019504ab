"""eval/probe.py: the fixed blank-image probe is reproducible, and the plain-render colour check scores what
the answers say (with fake pipes whose answers are known)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from qwenvl.data.phrases import COLOUR
from qwenvl.eval.probe import PLAIN_COLOURS, PROBE_TASKS, plain_colour_check, probe_records

SPEC = {"seed": 5, "image_size": 140, "family": "qwen2_5_vl", "n": 3}


def test_probe_records_are_the_same_on_every_run(tmp_path):
    a, b = probe_records(SPEC, tmp_path / "a"), probe_records(SPEC, tmp_path / "b")
    assert [r["task"] for r in a] == [t for t in PROBE_TASKS for _ in range(3)]
    assert all(r["id"].split("-")[1] == "test" for r in a)  # held-out split only
    for ra, rb in zip(a, b, strict=True):
        pa = [p["image"] for m in ra["messages"] for p in m["content"] if p.get("type") == "image"]
        pb = [p["image"] for m in rb["messages"] for p in m["content"] if p.get("type") == "image"]
        assert pa and all(Path(p).is_absolute() for p in pa)
        assert [Path(p).read_bytes() for p in pa] == [Path(p).read_bytes() for p in pb]
        assert ra["meta"] == rb["meta"]  # questions, answers and geometry


class FakePipe:
    """chat() answers with a function of the image and the question."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def chat(self, messages, **kw):
        parts = messages[0]["content"]
        img = next(p["image"] for p in parts if p["type"] == "image")
        question = next(p["text"] for p in parts if p["type"] == "text")
        return SimpleNamespace(text=self.answer(img, question))


def _name(img) -> str:
    rgb = img.getpixel((img.width // 2, img.height // 2))
    return min(PLAIN_COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(PLAIN_COLOURS[c], rgb, strict=True)))


def test_plain_check_counts_an_answer_that_names_the_colour():
    seeing = FakePipe(lambda img, q: _name(img).title() if q.isascii() else COLOUR["zh"][_name(img)] + "。")
    got = plain_colour_check(seeing)
    assert got["en"]["right"] == got["zh"]["right"] == 5 and got["en"]["of"] == 5
    assert plain_colour_check(FakePipe(lambda img, q: "red" if q.isascii() else "红色"))["zh"]["right"] == 1
    hedging = FakePipe(lambda img, q: "red or blue")  # naming several colours is not an answer
    assert plain_colour_check(hedging)["en"]["right"] == 0
