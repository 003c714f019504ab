"""Questions about a given scene (shared by the vqa, grounding and dialogue tasks).

Each `ask_*` picks a target in the scene that the question can name unambiguously and returns a
`Turn`, or None when the scene offers no such target (the caller then redraws or asks something else).
Objects are named by the fewest attributes that single them out, never by the attribute asked about.
Must not: draw pixels or decide splits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from qwenvl.data import phrases as P
from qwenvl.data.scenes import COLOURS, REGIONS, RELATIONS, SHAPES, SIZES, Obj, Scene, matches, region_of, relation
from qwenvl.data.tasks.base import Ctx

_REFS = (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))


@dataclass
class Turn:
    """One question and its answer; meta holds qtype, answers, choices and any ground-truth box."""

    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def reference(target: Obj, objects: list[Obj], exclude: str | None = None) -> dict[str, str] | None:
    """The fewest attributes naming target alone among objects, never using `exclude`; None if impossible."""
    for attrs in _REFS:
        if exclude in attrs:
            continue
        want = {a: getattr(target, a) for a in attrs}
        if sum(matches(o, **want) for o in objects) == 1:
            return want
    return None


def _named(rng: random.Random, scene: Scene, exclude: str | None = None) -> tuple[Obj, dict] | None:
    options = [(o, r) for o in scene.objects if (r := reference(o, scene.objects, exclude))]
    return rng.choice(options) if options else None


def _turn(ctx: Ctx, key: str, answer: str, answers: list[str], qtype: str, choices: list[str] | None = None,
          **fields: str) -> Turn:
    meta: dict[str, Any] = {"qtype": qtype, "answers": answers}
    if choices is not None:
        meta["choices"] = choices
    return Turn(P.say(ctx.rng, key, ctx.lang, **fields), answer, meta)


def ask_attribute(ctx: Ctx, scene: Scene, attr: str) -> Turn | None:
    """What colour / shape / size is <object named without that attribute>?"""
    got = _named(ctx.rng, scene, exclude=attr)
    if got is None:
        return None
    o, ref = got
    vocab = {"colour": P.COLOUR, "shape": P.SHAPE, "size": P.SIZE}[attr][ctx.lang]
    universe = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}[attr]
    ans = vocab[getattr(o, attr)]
    answers = [ans] + ([ans.removesuffix("色")] if attr == "colour" and ctx.lang == "zh" else [])
    turn = _turn(ctx, attr, ans, answers, attr, [vocab[u] for u in universe], obj=P.noun(ctx.lang, **ref))
    turn.meta["target"] = o.box()
    return turn


def ask_position(ctx: Ctx, scene: Scene) -> Turn | None:
    options = [(o, r, reg) for o in scene.objects
               if (reg := region_of(o, scene.size)) and (r := reference(o, scene.objects))]
    if not options:
        return None
    o, ref, reg = ctx.rng.choice(options)
    ans = P.REGION[ctx.lang][reg]
    turn = _turn(ctx, "position", ans, [ans], "position", [P.REGION[ctx.lang][r] for r in REGIONS],
                 obj=P.noun(ctx.lang, **ref))
    turn.meta["target"] = o.box()
    return turn


def _pairs(scene: Scene) -> list[tuple[Obj, dict, Obj, dict, str]]:
    out = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b or (rel := relation(a, b)) is None:
                continue
            ra, rb = reference(a, scene.objects), reference(b, scene.objects)
            if ra and rb:
                out.append((a, ra, b, rb, rel))
    return out


def ask_relation(ctx: Ctx, scene: Scene, yes_no: bool = False) -> Turn | None:
    """Where is A relative to B (or: is A <rel> B?), for a pair with an unambiguous relation."""
    pairs = _pairs(scene)
    if not pairs:
        return None
    _, ra, _, rb, rel = ctx.rng.choice(pairs)
    lang, na, nb = ctx.lang, P.noun(ctx.lang, **ra), P.noun(ctx.lang, **rb)
    if not yes_no:
        ans = P.RELATION[lang][rel]
        return _turn(ctx, "relation", ans, [ans], "relation", [P.RELATION[lang][r] for r in RELATIONS], a=na, b=nb)
    asked = rel if ctx.rng.random() < 0.5 else ctx.rng.choice([r for r in RELATIONS if r != rel])
    phrase = P.relation_phrase(asked, "", "en").strip() if lang == "en" else P.RELATION["zh"][asked]
    answers = P.yes_no(asked == rel, lang)
    return _turn(ctx, "relation_yn", answers[0], answers, "relation_yn", [P.YES[lang], P.NO[lang]],
                 a=na, b=nb, rel=phrase)


def ask_exists(ctx: Ctx, scene: Scene) -> Turn:
    """Is there a <colour> <shape>? Half the time about one present, half about one absent."""
    present = {(o.colour, o.shape) for o in scene.objects}
    if ctx.rng.random() < 0.5:
        colour, shape = ctx.rng.choice(sorted(present))
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colour, shape = ctx.rng.choice(absent)
    answers = P.yes_no((colour, shape) in present, ctx.lang)
    return _turn(ctx, "exists", answers[0], answers, "exists", [P.YES[ctx.lang], P.NO[ctx.lang]],
                 obj=P.noun(ctx.lang, shape=shape, colour=colour, article="a"))


def count_noun(lang: str, shape: str | None, colour: str | None) -> str:
    return P.noun(lang, shape=shape, colour=colour, plural=True)


def ask_count(ctx: Ctx, scene: Scene) -> Turn:
    """How many <shape> / <colour> objects / <colour> <shape>: counts of attributes present in the scene."""
    o = ctx.rng.choice(scene.objects)
    kind = ctx.rng.choice(("shape", "colour", "colour_shape"))
    shape = o.shape if kind != "colour" else None
    colour = o.colour if kind != "shape" else None
    n = sum(matches(x, colour=colour, shape=shape) for x in scene.objects)
    answers = P.count_answers(n, ctx.lang)
    turn = _turn(ctx, "count", answers[0], answers, "count", objs=count_noun(ctx.lang, shape, colour))
    turn.meta["count"] = n
    return turn


def ask_ground(ctx: Ctx, scene: Scene) -> Turn | None:
    """Referring expression -> box, written with the dataset's grounding family."""
    got = _named(ctx.rng, scene)
    if got is None:
        return None
    o, ref = got
    label = P.noun(ctx.lang, **ref)
    ans = ctx.box_text(o.box(), label) if ctx.tagged else ctx.boxes_text([o.box()], [label])
    turn = _turn(ctx, "ground", ans, [ans], "ground", obj=label)
    turn.meta.update(box=o.box(), label=label)
    return turn


def ask(ctx: Ctx, scene: Scene, qtype: str) -> Turn | None:
    """Dispatch by question type (the vqa / dialogue qtypes)."""
    if qtype in ("colour", "shape", "size"):
        return ask_attribute(ctx, scene, qtype)
    if qtype == "position":
        return ask_position(ctx, scene)
    if qtype in ("relation", "relation_yn"):
        return ask_relation(ctx, scene, yes_no=qtype == "relation_yn")
    if qtype == "exists":
        return ask_exists(ctx, scene)
    if qtype == "count":
        return ask_count(ctx, scene)
    if qtype == "ground":
        return ask_ground(ctx, scene)
    raise ValueError(f"unknown question type {qtype!r}")
