"""Tasks over several images or turns: compare (2-4 images), dialogue (several turns about one scene) and
video (a list of frames in which one shape moves; for the v2 video path).
Every image of a sample is drawn in the sample's split on its own content key, so no single image
of a multi-image sample can appear in another split. Must not: write files.
"""

from __future__ import annotations

import math
import random

from qwenvl.data import phrases as P
from qwenvl.data.render import background, clutter, draw_objects, draw_scene, pick_background
from qwenvl.data.scenes import COLOURS, SHAPES, Obj, Scene, place, radius, random_spec
from qwenvl.data.tasks.base import Ctx, Sample, Task, assistant, first, image_part, levels, user
from qwenvl.data.tasks.questions import Turn, ask, count_noun, reference
from qwenvl.data.tasks.scene import random_scene, scene_sizes

# ------------------------------------------------------------------------- compare


def _compare_plan(ctx: Ctx, qtype: str, n_img: int) -> list[Scene]:
    """Scenes for one comparison question, each drawn in the sample's split."""
    lo, hi = (1, 1) if qtype == "same" else ctx.knobs["objects"]
    return [ctx.in_split(lambda r: random_scene(r, ctx.size, n := r.randint(lo, hi), scene_sizes(n), similar=0.5),
                         Scene.key) for _ in range(n_img)]


def _compare_question(ctx: Ctx, qtype: str, scenes: list[Scene]) -> tuple[str, list[str], dict] | None:
    """(question, answers, meta) or None when this set of scenes gives no unambiguous answer."""
    lang, rng = ctx.lang, ctx.rng
    n = len(scenes)
    choices = [P.image_name(i + 1, lang) for i in range(n)]
    if qtype == "more":
        shape = rng.choice(rng.choice(scenes).objects).shape
        counts = [sum(o.shape == shape for o in s.objects) for s in scenes]
        if counts.count(max(counts)) > 1:
            return None
        best = counts.index(max(counts)) + 1
        q = P.say(rng, "compare_more", lang, objs=count_noun(lang, shape, None))
        return q, P.image_name_answers(best, lang), {"counts": counts, "choices": choices}
    if qtype == "which":
        pairs = [{(o.colour, o.shape) for o in s.objects} for s in scenes]
        unique = sorted({p for ps in pairs for p in ps if sum(p in other for other in pairs) == 1})
        if not unique:
            return None
        colour, shape = rng.choice(unique)
        best = next(i for i, ps in enumerate(pairs) if (colour, shape) in ps) + 1
        q = P.say(rng, "compare_which", lang, obj=P.noun(lang, shape=shape, colour=colour, article="a"))
        return q, P.image_name_answers(best, lang), {"choices": choices}
    if qtype == "same":
        same = scenes[0].objects[0].colour == scenes[1].objects[0].colour
        return P.say(rng, "compare_same", lang), P.yes_no(same, lang), {"choices": [P.YES[lang], P.NO[lang]]}
    if qtype == "total":
        shape = rng.choice(rng.choice(scenes).objects).shape
        total = sum(o.shape == shape for s in scenes for o in s.objects)
        q = P.say(rng, "compare_total", lang, objs=count_noun(lang, shape, None))
        return q, P.count_answers(total, lang), {"count": total}
    raise ValueError(f"unknown compare qtype {qtype!r}")


def build_compare(ctx: Ctx) -> Sample:
    k, rng = ctx.knobs, ctx.rng
    qtype = rng.choice(k["qtypes"])
    n_img = 2 if qtype == "same" else rng.randint(*k["images"])
    if qtype == "same" and rng.random() < 0.5:  # make "same colour" as likely as "different"
        colour = rng.choice(list(COLOURS))
        scenes = []
        for _ in range(2):
            scenes.append(ctx.in_split(lambda r, c=colour: _one_object(r, ctx.size, c), Scene.key))
        got = _compare_question(ctx, qtype, scenes)
    else:
        def plan() -> tuple | None:
            scenes = _compare_plan(ctx, qtype, n_img)
            got = _compare_question(ctx, qtype, scenes)
            return None if got is None else (scenes, got)

        scenes, got = first(plan, f"compare/{qtype}")
    question, answers, meta = got
    parts = []
    styles = []
    for i, s in enumerate(scenes):
        img, style = draw_scene(rng, s, k["clutter"])
        parts.append(image_part(ctx.add_image(img, s.key(), suffix=f"-{i + 1}")))
        styles.append(style)
    msgs = [user(parts, question), assistant(answers[0])]
    return Sample(msgs, {"answer": answers[0], "answers": answers, "qtype": qtype, **meta,
                         "images": [[o.as_dict() for o in s.objects] for s in scenes], "background": styles})


def _one_object(rng: random.Random, size: tuple[int, int], colour: str) -> Scene | None:
    objs = place(rng, [(rng.choice(SHAPES), colour, rng.choice(("small", "medium", "large")))], size)
    return Scene(size, objs) if objs else None


# ------------------------------------------------------------------------- dialogue


def build_dialogue(ctx: Ctx) -> Sample:
    """Several turns about one scene; a colour/shape question may be followed by a short "And <obj>?"."""
    k, rng = ctx.knobs, ctx.rng
    lo, hi = k["objects"]
    scene = ctx.in_split(lambda r: random_scene(r, ctx.size, n := r.randint(lo, hi), scene_sizes(n), 0.3), Scene.key)
    img, style = draw_scene(rng, scene, k["clutter"])
    path = ctx.add_image(img, scene.key())
    n_turns = rng.randint(*k["turns"])
    msgs: list[dict] = []
    turns: list[dict] = []
    prev, asked = None, set()

    def new_turn() -> Turn | None:  # never the same question (type and target) twice in one dialogue
        turn = ask(ctx, scene, rng.choice(k["qtypes"]))
        if turn is None:
            return None
        sig = (turn.meta["qtype"], str(turn.meta.get("target") or turn.meta.get("box") or turn.question), turn.answer)
        if sig in asked:
            return None
        asked.add(sig)
        return turn

    for _ in range(n_turns):
        turn = first(new_turn, "dialogue")
        qtype = turn.meta["qtype"]
        if prev is not None and prev.meta["qtype"] in ("colour", "shape") and qtype == prev.meta["qtype"]:
            turn = _followup(ctx, scene, turn)
        msgs.append(user([image_part(path)] if not msgs else [], turn.question))
        msgs.append(assistant(turn.answer))
        turns.append({"question": turn.question, "answer": turn.answer, **turn.meta})
        prev = turn
    return Sample(msgs, {"answer": turns[-1]["answer"], "answers": turns[-1]["answers"], "turns": turns,
                         "objects": [o.as_dict() for o in scene.objects], "background": style})


def _followup(ctx: Ctx, scene: Scene, turn: Turn) -> Turn:
    """Rephrase a repeated colour/shape question about another object as 'And <obj>?'."""
    target = next(o for o in scene.objects if o.box() == turn.meta["target"])
    ref = reference(target, scene.objects, exclude=turn.meta["qtype"])
    turn.question = P.say(ctx.rng, "followup", ctx.lang, obj=P.noun(ctx.lang, **ref))
    turn.meta["followup"] = True
    return turn


# ------------------------------------------------------------------------- video

_DIRS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1), "up-left": (-1, -1), "up-right": (1, -1),
         "down-left": (-1, 1), "down-right": (1, 1)}


def _clip(rng: random.Random, ctx: Ctx) -> dict | None:
    """A moving object (start, direction, step per frame) and static distractors clear of its path."""
    k = ctx.knobs
    w, h = ctx.size
    frames = k["frames"]
    direction = rng.choice(k["directions"])
    ux, uy = _DIRS[direction]
    norm = math.hypot(ux, uy)
    step = rng.uniform(*k["speed"]) * min(w, h)
    dx, dy = round(ux / norm * step), round(uy / norm * step)
    shape, colour, size = random_spec(rng, ("small", "medium"))
    r = radius(rng, size, ctx.size)
    span_x, span_y = dx * (frames - 1), dy * (frames - 1)
    xs = (r + 3 - min(0, span_x), w - r - 4 - max(0, span_x))
    ys = (r + 3 - min(0, span_y), h - r - 4 - max(0, span_y))
    if xs[0] > xs[1] or ys[0] > ys[1]:
        return None
    x0, y0 = rng.randint(*xs), rng.randint(*ys)
    path = [Obj(shape, colour, size, x0 + dx * i, y0 + dy * i, r) for i in range(frames)]
    n = rng.randint(*k["distractors"])
    others = place(rng, [random_spec(rng, ("small", "medium")) for _ in range(n)], ctx.size)
    if others is None or any(_hits(o, p) for o in others for p in path):
        return None
    return {"direction": direction, "path": path, "static": others, "step": [dx, dy]}


def _hits(a: Obj, b: Obj, gap: int = 4) -> bool:
    return math.hypot(a.cx - b.cx, a.cy - b.cy) < a.r + b.r + gap


def _clip_key(c: dict) -> str:
    """The first frame's scene plus the motion: clips differing only in sub-cell jitter share a key."""
    scene0 = Scene(c["size"], [c["path"][0], *c["static"]])
    return f"video:{c['direction']}:{c['step'][0]},{c['step'][1]}:" + scene0.key()


def build_video(ctx: Ctx) -> Sample:
    k, rng, lang = ctx.knobs, ctx.rng, ctx.lang

    def make(r: random.Random) -> dict | None:
        c = _clip(r, ctx)
        if c is not None:
            c["size"] = ctx.size
        return c

    clip = ctx.in_split(make, _clip_key)
    style = pick_background(rng, k["clutter"])
    base = background(rng, ctx.size, style)
    clutter(rng, base, k["clutter"])
    frames = []
    for i, moving in enumerate(clip["path"]):
        img = base.copy()
        draw_objects(img, Scene(ctx.size, [*clip["static"], moving]))
        frames.append(ctx.add_image(img, _clip_key(clip), suffix=f"-f{i}"))
    everything = [clip["path"][0], *clip["static"]]
    qtypes = list(k["qtypes"])
    ref = reference(clip["path"][0], everything)
    if ref is None:
        qtypes = [q for q in qtypes if q == "static"] or ["static"]
    qtype = rng.choice(qtypes)
    if qtype == "direction":
        ans = P.DIRECTION[lang][clip["direction"]]
        q = P.say(rng, "video_direction", lang, obj=P.noun(lang, **ref))
        answers, choices = [ans], [P.DIRECTION[lang][d] for d in k["directions"]]
    elif qtype == "which":
        m = clip["path"][0]
        full = P.noun(lang, **ref)
        q, answers, choices = P.say(rng, "video_which", lang), [full, P.noun(lang, m.shape, m.colour, article="")], None
    else:
        q, answers, choices = P.say(rng, "video_static", lang), P.count_answers(len(clip["static"]), lang), None
    video = {"type": "video", "video": frames}
    msgs = [user([video], q), assistant(answers[0])]
    meta = {"answer": answers[0], "answers": answers, "qtype": qtype, "direction": clip["direction"],
            "frames": len(frames), "trajectory": [p.box() for p in clip["path"]],
            "static": [o.as_dict() for o in clip["static"]], "moving": clip["path"][0].as_dict(), "background": style}
    if choices:
        meta["choices"] = choices
    return Sample(msgs, meta)


# ------------------------------------------------------------------------- registry

TASKS = [
    Task("compare", build_compare, levels(
        {"images": (2, 3), "objects": (1, 4), "qtypes": ("more", "which", "same", "total"), "clutter": 1},
        {"images": (2, 2), "objects": (1, 3), "clutter": 0},
        {"images": (3, 4), "objects": (2, 5), "clutter": 2})),
    Task("dialogue", build_dialogue, levels(
        {"turns": (2, 4), "objects": (2, 5), "clutter": 1,
         "qtypes": ("colour", "shape", "size", "position", "relation", "exists", "count", "ground")},
        {"turns": (2, 2), "objects": (2, 3), "clutter": 0},
        {"turns": (3, 5), "objects": (3, 6), "clutter": 2})),
    Task("video", build_video, levels(
        {"frames": 4, "directions": ("left", "right", "up", "down"), "speed": (0.06, 0.1), "distractors": (0, 2),
         "qtypes": ("direction", "direction", "which", "static"), "clutter": 1},
        {"speed": (0.09, 0.12), "distractors": (0, 1), "clutter": 0},
        {"frames": 6, "directions": tuple(_DIRS), "speed": (0.04, 0.07), "distractors": (1, 3), "clutter": 2})),
]
