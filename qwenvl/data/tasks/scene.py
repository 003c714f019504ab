"""Single-image shape-scene tasks: caption, vqa (attributes, position, relations), count, grounding,
grounded_caption. Each builds one scene in the sample's split, draws it and asks about it.
Must not: write files; the generator saves `ctx.images`.
"""

from __future__ import annotations

import random

from qwenvl.data import phrases as P
from qwenvl.data.render import draw_scene
from qwenvl.data.scenes import COLOURS, SHAPES, Scene, matches, place, random_spec, region_of
from qwenvl.data.tasks.base import Ctx, Sample, Task, first, levels, qa
from qwenvl.data.tasks.questions import Turn, ask, count_noun

VQA_TYPES = ("colour", "shape", "size", "position", "relation", "relation_yn", "exists")


def random_scene(rng: random.Random, size: tuple[int, int], n: int,
                 sizes: tuple[str, ...] = ("small", "medium", "large"), similar: float = 0.0) -> Scene | None:
    """n random objects; with probability `similar` each later one copies the first's shape or colour,
    which forces longer referring expressions (harder grounding)."""
    specs = [random_spec(rng, sizes)]
    for _ in range(n - 1):
        shape, colour, sz = random_spec(rng, sizes)
        if rng.random() < similar:
            if rng.random() < 0.5:
                shape = specs[0][0]
            else:
                colour = specs[0][1]
        specs.append((shape, colour, sz))
    objs = place(rng, specs, size)
    return Scene(size, objs) if objs else None


def scene_sizes(n: int) -> tuple[str, ...]:
    """Size classes that leave room for n objects (large shapes only in sparse scenes)."""
    return ("small", "medium", "large") if n <= 4 else ("small", "medium") if n <= 7 else ("small",)


def _draw(ctx: Ctx, scene: Scene) -> tuple[str, str]:
    img, style = draw_scene(ctx.rng, scene, ctx.knobs["clutter"])
    return ctx.add_image(img, scene.key()), style


def _objects_meta(scene: Scene) -> list[dict]:
    return [o.as_dict() for o in scene.objects]


# ------------------------------------------------------------------------- caption


def caption_text(scene: Scene, lang: str, rng: random.Random) -> str:
    """Objects left to right, each with size, colour, shape and (when clear) its region."""
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    n = len(objs)
    if lang == "en":
        items = []
        for o in objs:
            reg = region_of(o, scene.size)
            np_ = P.noun("en", o.shape, o.colour, o.size, article="a")
            items.append(f"{np_} {P.region_at(reg, 'en')}" if reg else np_)
        if n == 1:
            return f"There is {items[0]}."
        if rng.random() < 0.5:
            return f"There are {P.number(n, 'en')} shapes: {P.join(items, 'en')}."
        return f"The image shows {P.join(items, 'en')}."
    items = []
    for o in objs:
        reg = region_of(o, scene.size)
        np_ = "一个" + P.noun("zh", o.shape, o.colour, o.size)
        items.append(f"{P.REGION['zh'][reg]}有{np_}" if reg else np_)
    if n == 1:
        return f"图中{items[0]}。" if region_of(objs[0], scene.size) else f"图中有{items[0]}。"
    return f"图中有{P.number(n, 'zh', True)}个图形：{'，'.join(items)}。"


def build_caption(ctx: Ctx) -> Sample:
    lo, hi = ctx.knobs["objects"]
    scene = ctx.in_split(lambda r: random_scene(r, ctx.size, n := r.randint(lo, hi), scene_sizes(n)), Scene.key)
    path, style = _draw(ctx, scene)
    text = caption_text(scene, ctx.lang, ctx.rng)
    return qa(ctx, path, P.say(ctx.rng, "caption", ctx.lang), text, qtype="caption", objects=_objects_meta(scene),
              background=style)


# ------------------------------------------------------------------------- vqa


def build_vqa(ctx: Ctx) -> Sample:
    qtype = ctx.rng.choice(ctx.knobs["qtypes"])
    lo, hi = ctx.knobs["distractors"]
    if qtype.startswith("relation"):
        lo, hi = max(lo, 1), max(hi, 1)  # a relation needs a second object

    def make(rng: random.Random) -> Scene | None:
        n = 1 + rng.randint(lo, hi)
        return random_scene(rng, ctx.size, n, scene_sizes(n), ctx.knobs["similar"])

    def scene_and_turn() -> tuple[Scene, Turn] | None:  # a scene where the question has one clear answer
        scene = ctx.in_split(make, Scene.key)
        turn = ask(ctx, scene, qtype)
        return None if turn is None else (scene, turn)

    scene, turn = first(scene_and_turn, f"vqa/{qtype}")
    path, style = _draw(ctx, scene)
    return qa(ctx, path, turn.question, turn.answer, **turn.meta, objects=_objects_meta(scene), background=style)


# ------------------------------------------------------------------------- count


def _count_scene(rng: random.Random, ctx: Ctx, n: int, shape: str | None, colour: str | None) -> Scene | None:
    k = ctx.knobs
    n_distract = rng.randint(*k["distractors"])
    sizes = scene_sizes(n + n_distract)
    specs = [(shape or rng.choice(SHAPES), colour or rng.choice(list(COLOURS)), rng.choice(sizes)) for _ in range(n)]
    for _ in range(n_distract):
        while True:
            spec = random_spec(rng, sizes)
            if not matches_spec(spec, shape, colour):
                break
        specs.append(spec)
    rng.shuffle(specs)  # distractors are not always drawn last
    objs = place(rng, specs, ctx.size)
    return Scene(ctx.size, objs) if objs else None


def matches_spec(spec: tuple[str, str, str], shape: str | None, colour: str | None) -> bool:
    return (shape in (None, spec[0])) and (colour in (None, spec[1]))


def build_count(ctx: Ctx) -> Sample:
    """How many <target>? with 1..max targets among distractors that never match the target."""
    k = ctx.knobs
    n = ctx.rng.randint(*k["count"])
    kind = ctx.rng.choice(k["targets"])
    shape = ctx.rng.choice(SHAPES) if kind in ("shape", "colour_shape") else None
    colour = ctx.rng.choice(list(COLOURS)) if kind in ("colour", "colour_shape") else None
    scene = ctx.in_split(lambda r: _count_scene(r, ctx, n, shape, colour), Scene.key)
    assert sum(matches(o, colour=colour, shape=shape) for o in scene.objects) == n
    path, style = _draw(ctx, scene)
    answers = P.count_answers(n, ctx.lang)
    question = P.say(ctx.rng, "count", ctx.lang, objs=count_noun(ctx.lang, shape, colour))
    return qa(ctx, path, question, answers[0], answers=answers, qtype=f"count_{kind}", count=n,
              target={"shape": shape, "colour": colour}, objects=_objects_meta(scene), background=style)


# ------------------------------------------------------------------------- grounding


def build_grounding(ctx: Ctx) -> Sample:
    """ref: expression -> box; all: every <shape> -> boxes; region: box in the question -> description."""
    k = ctx.knobs
    qtype = ctx.rng.choice(k["qtypes"])
    lo, hi = k["distractors"]

    def make(rng: random.Random) -> Scene | None:
        n = 1 + rng.randint(lo, hi)
        return random_scene(rng, ctx.size, n, scene_sizes(n), k["similar"] if qtype != "all" else 0.6)

    def scene_and_turn() -> tuple | None:  # a scene whose target can be named unambiguously
        scene = ctx.in_split(make, Scene.key)
        got = _grounding_turn(ctx, scene, qtype)
        return None if got is None else (scene, *got)

    scene, question, answer, meta = first(scene_and_turn, f"grounding/{qtype}")
    path, style = _draw(ctx, scene)
    return qa(ctx, path, question, answer, qtype=qtype, **meta, objects=_objects_meta(scene), background=style)


def _grounding_turn(ctx: Ctx, scene: Scene, qtype: str) -> tuple[str, str, dict] | None:
    lang, rng = ctx.lang, ctx.rng
    if qtype == "ref":
        turn = ask(ctx, scene, "ground")
        return None if turn is None else (turn.question, turn.answer, {"box": turn.meta["box"],
                                                                       "label": turn.meta["label"]})
    if qtype == "all":
        shape = rng.choice(scene.objects).shape
        hits = sorted((o for o in scene.objects if o.shape == shape), key=lambda o: (o.cx, o.cy))
        label = P.noun(lang, shape=shape, plural=True) if lang == "en" else P.SHAPE["zh"][shape]
        boxes = [o.box() for o in hits]
        answer = ctx.boxes_text(boxes, [label] * len(boxes))
        q = P.say(rng, "ground_all", lang, objs=label, obj=P.noun(lang, shape=shape, article=""))
        return q, answer, {"boxes": boxes, "labels": [label] * len(boxes), "count": len(boxes)}
    if qtype == "region":
        o = rng.choice(scene.objects)
        q = P.say(rng, "region", lang, box=ctx.box_text(o.box(), None))
        full = P.noun(lang, o.shape, o.colour, o.size, article="a")
        answer = P.sentence_start(full, lang) if lang == "en" else "一个" + full
        answers = [answer, P.noun(lang, o.shape, o.colour, o.size, article=""), P.noun(lang, o.shape, o.colour)]
        return q, answer, {"query_box": o.box(), "answers": answers}
    raise ValueError(f"unknown grounding qtype {qtype!r}")


def build_grounded_caption(ctx: Ctx) -> Sample:
    """A caption whose every object carries its box: inline <ref>/<box> (tag families) or caption + JSON."""
    lo, hi = ctx.knobs["objects"]
    scene = ctx.in_split(lambda r: random_scene(r, ctx.size, n := r.randint(lo, hi), scene_sizes(n)), Scene.key)
    path, style = _draw(ctx, scene)
    lang = ctx.lang
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    labels = [P.noun(lang, o.shape, o.colour, o.size, article="a") if lang == "en"
              else "一个" + P.noun(lang, o.shape, o.colour, o.size) for o in objs]
    boxes = [o.box() for o in objs]
    n = len(objs)
    if ctx.tagged:
        items = [ctx.box_text(b, lab) for b, lab in zip(boxes, labels, strict=True)]
        listed = P.join(items, lang)
        if lang == "en":
            text = f"There is {listed}." if n == 1 else f"There are {P.number(n, 'en')} shapes: {listed}."
        else:
            text = f"图中有{listed}。" if n == 1 else f"图中有{P.number(n, 'zh', True)}个图形：{listed}。"
    else:
        text = caption_text(scene, lang, ctx.rng) + "\n" + ctx.boxes_text(boxes, labels)
    return qa(ctx, path, P.say(ctx.rng, "grounded_caption", lang), text, qtype="grounded_caption", boxes=boxes,
              labels=labels, objects=_objects_meta(scene), background=style)


# ------------------------------------------------------------------------- registry

def _lv(medium: dict, easy: dict, hard: dict) -> dict:
    return levels({"clutter": 1, **medium}, {"clutter": 0, **easy}, {"clutter": 2, **hard})


TASKS = [
    Task("caption", build_caption, _lv({"objects": (1, 4)}, {"objects": (1, 2)}, {"objects": (3, 6)})),
    Task("vqa", build_vqa, _lv({"qtypes": VQA_TYPES, "distractors": (1, 3), "similar": 0.3},
                               {"distractors": (0, 1), "similar": 0.0}, {"distractors": (3, 5), "similar": 0.6})),
    Task("count", build_count, _lv(
        {"count": (1, 6), "distractors": (0, 3), "targets": ("shape", "colour", "colour_shape")},
        {"count": (1, 3), "distractors": (0, 1)}, {"count": (1, 6), "distractors": (2, 5)})),
    # qtypes may repeat an entry to weight it: referring expressions are half of grounding by default.
    Task("grounding", build_grounding, _lv(
        {"qtypes": ("ref", "ref", "all", "region"), "distractors": (1, 3), "similar": 0.3},
        {"distractors": (0, 1), "similar": 0.0}, {"distractors": (3, 5), "similar": 0.7})),
    Task("grounded_caption", build_grounded_caption, _lv(
        {"objects": (1, 4)}, {"objects": (1, 2)}, {"objects": (3, 6)})),
]
