"""What every synthetic task shares: the per-sample context, split-by-content, knobs and record assembly.

A task is a function `build(ctx) -> Sample`. It draws content with `ctx.in_split(make, key)`, which
redraws until the content key hashes into the sample's split: the split of a piece of content is a
pure function of its key (sha256) and the split fractions, never of the seed or index, so the same
scene / text can never land in two splits, not even across datasets made with different seeds.

Must not: write files (synth.py does) or pick phrasing (phrases.py holds the words).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from PIL import Image

from qwenvl.config import QWEN2_5_VL, QWEN2_VL, QWEN_VL
from qwenvl.processing.grounding import Box, format_box, format_boxes
from qwenvl.processing.image import smart_resize

SPLITS = ("train", "val", "test")
LEVELS = ("easy", "medium", "hard")
MAX_REDRAWS = 10_000
T = TypeVar("T")


def split_of(key: str, fractions: tuple[float, float, float]) -> str:
    """The split that content `key` belongs to: a uniform hash in [0, 1) cut at the cumulative fractions."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1]


def sample_rng(seed: int, task: str, split: str, index: int) -> random.Random:
    """The one rng of a sample, from (seed, task, split, index) only: workers and resumed runs agree."""
    digest = hashlib.sha256(f"qwenvl-synth|{seed}|{task}|{split}|{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


@dataclass
class Ctx:
    """Everything a task may use to build one sample; images are collected, not written."""

    rng: random.Random
    task: str
    split: str
    index: int
    lang: str
    size: tuple[int, int]  # (W, H) of every image the task draws
    family: str  # grounding family used to write boxes into answers
    fractions: tuple[float, float, float]
    knobs: dict[str, Any]
    fonts: list[str]
    record_id: str = ""
    images: list[tuple[str, Image.Image]] = field(default_factory=list)  # (relative path, image)
    keys: list[str] = field(default_factory=list)  # content keys of the drawn images

    def in_split(self, make: Callable[[random.Random], T | None], key: Callable[[T], str]) -> T:
        """make(rng) until it returns content (not None) whose key falls in this sample's split."""
        for _ in range(MAX_REDRAWS):
            item = make(self.rng)
            if item is not None and split_of(key(item), self.fractions) == self.split:
                return item
        raise RuntimeError(f"{self.task}: no content for split {self.split!r} after {MAX_REDRAWS} draws; "
                           "the knobs leave too little content (or that split's fraction is ~0)")

    def add_image(self, img: Image.Image, key: str, suffix: str = "") -> str:
        """Register an image (and its content key); returns its path relative to the dataset folder."""
        path = f"images/{self.split}/{self.task}/{self.record_id}{suffix}.png"
        self.images.append((path, img))
        self.keys.append(key)
        return path

    def input_size(self) -> tuple[int, int] | None:
        """(w, h) of the resized model input, which qwen2_5_vl boxes are measured in (default processor)."""
        if self.family != QWEN2_5_VL:
            return None
        h, w = smart_resize(self.size[1], self.size[0])
        return w, h

    def box_text(self, box: list[int], label: str | None) -> str:
        return format_box(Box(label, *box), self.family, self.size, self.input_size())

    def boxes_text(self, boxes: list[list[int]], labels: list[str | None]) -> str:
        items = [Box(lab, *b) for b, lab in zip(boxes, labels, strict=True)]
        return format_boxes(items, self.family, self.size, self.input_size())

    @property
    def tagged(self) -> bool:
        """Whether boxes sit inline in text (<ref>/<box> families) rather than as a JSON list."""
        return self.family in (QWEN_VL, QWEN2_VL)


def first(make: Callable[[], T | None], what: str, tries: int = 1000) -> T:
    """The first non-None make(): for content that must also admit an unambiguous question."""
    for _ in range(tries):
        item = make()
        if item is not None:
            return item
    raise RuntimeError(f"{what}: no unambiguous sample in {tries} tries; the knobs rule out this question type")


@dataclass
class Sample:
    """A task's output: the conversation turns and the eval metadata."""

    messages: list[dict]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """A named builder and its knob presets (`levels["medium"]` holds every knob's default)."""

    name: str
    build: Callable[[Ctx], Sample]
    levels: dict[str, dict[str, Any]]

    def knobs(self, spec: str | dict | None) -> dict[str, Any]:
        """Resolve a difficulty spec: None (medium), a level name, or {"level": ..., knob: value, ...}."""
        if spec is None:
            spec = "medium"
        if isinstance(spec, str):
            spec = {"level": spec}
        spec = dict(spec)
        level = spec.pop("level", "medium")
        if level not in self.levels:
            raise ValueError(f"{self.name}: unknown level {level!r}; expected one of {list(self.levels)}")
        known = self.levels["medium"]
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise ValueError(f"{self.name}: unknown knobs {unknown}; known: {sorted(known)}")
        out = {**known, **self.levels[level], **spec}
        return {"level": level, **{k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}}


def levels(medium: dict[str, Any], easy: dict[str, Any], hard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"easy": {**medium, **easy}, "medium": dict(medium), "hard": {**medium, **hard}}


def user(parts: list[dict], text: str) -> dict:
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def image_part(path: str) -> dict:
    return {"type": "image", "image": path}


def qa(ctx: Ctx, path: str, question: str, answer: str, **meta: Any) -> Sample:
    """The common one-image, one-turn sample; meta gets answer, answers (answer first) and the rest."""
    answers = meta.pop("answers", None) or [answer]
    if answers[0] != answer:
        answers = [answer, *[a for a in answers if a != answer]]
    msgs = [user([image_part(path)], question), assistant(answer)]
    return Sample(msgs, {"answer": answer, "answers": answers, **meta})
