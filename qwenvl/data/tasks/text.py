"""Text-in-image tasks: ocr (words, numbers, codes in several fonts, sizes, rotations, backgrounds),
document (receipt or table -> markdown, or a question about a cell) and chart (bar chart QA).
The rendered text is Latin/digits in every language (no offline CJK font); only the questions change.
Must not: write files.
"""

from __future__ import annotations

import random

from qwenvl.data import phrases as P
from qwenvl.data import words as W
from qwenvl.data.render import (
    background,
    clutter,
    dark_background,
    paste_text,
    pick_background,
    text_colour,
    text_layer,
)
from qwenvl.data.tasks.base import Ctx, Sample, Task, levels, qa
from qwenvl.data.tasks.doc import CHART_GROUPS, draw_chart, draw_receipt, draw_table, markdown_table, table_cells

# ------------------------------------------------------------------------- ocr


def ocr_string(rng: random.Random, lo: int, hi: int, kinds: list[str]) -> str:
    """A word (lower / Title / UPPER), a number (maybe with 2 decimals) or a code, lo..hi characters."""
    n = rng.randint(lo, hi)
    kind = rng.choice(kinds)
    if kind == "word":
        pool = [w for w in W.WORDS if len(w) == n]
        if pool:
            w = rng.choice(pool)
            return rng.choice((w, w.title(), w.upper()))
        kind = "code"  # no word of that length: fall through to a code of the same length
    if kind == "number":
        if n >= 4 and rng.random() < 0.3:
            head = n - 3
            return str(rng.randint(10 ** (head - 1) if head > 1 else 0, 10**head - 1)) + f".{rng.randint(0, 99):02d}"
        return str(rng.randint(10 ** (n - 1) if n > 1 else 0, 10**n - 1))
    chars = [rng.choice(W.CODE_CHARS) for _ in range(n)]
    if n >= 6 and rng.random() < 0.3:
        chars[n // 2] = "-"
    return "".join(chars)


def build_ocr(ctx: Ctx) -> Sample:
    """Read the one string in the image (or, for qtype ground, give its box)."""
    k, rng = ctx.knobs, ctx.rng
    text = ctx.in_split(lambda r: ocr_string(r, *k["length"], k["kinds"]), lambda t: "ocr:" + t.casefold())
    w, h = ctx.size
    dark = rng.random() < k["dark_frac"]
    style = "dark" if dark else pick_background(rng, k["clutter"])
    img = dark_background(rng, ctx.size) if dark else background(rng, ctx.size, style)
    if not dark:
        clutter(rng, img, k["clutter"])
    font_name = rng.choice(ctx.fonts)
    size = rng.randint(*k["font_size"])
    angle = rng.uniform(-k["max_rotation"], k["max_rotation"])
    while True:  # shrink until the rotated text fits with a margin
        mask = text_layer(text, font_name, size, angle)
        if (mask.width <= w - 8 and mask.height <= h - 8) or size <= 6:
            break
        size = max(6, int(size * 0.85))
    x = rng.randint(4, max(4, w - mask.width - 4))
    y = rng.randint(4, max(4, h - mask.height - 4))
    colour = text_colour(rng, img.getpixel((min(w - 1, x + mask.width // 2), min(h - 1, y + mask.height // 2))))
    box = paste_text(img, mask, (x, y), colour)
    path = ctx.add_image(img, "ocr:" + text.casefold())
    meta = {"ocr_text": text, "text_box": box, "font": font_name, "font_size": size, "angle": round(angle, 2),
            "background": style}
    if rng.random() < k["ground_frac"]:
        question = P.say(rng, "ocr_ground", ctx.lang, text=text)
        answer = ctx.box_text(box, text) if ctx.tagged else ctx.boxes_text([box], [text])
        return qa(ctx, path, question, answer, qtype="ground", box=box, label=text, **meta)
    answers = [text] + ([text.lower()] if text.lower() != text else [])
    return qa(ctx, path, P.say(rng, "ocr", ctx.lang), text, qtype="read", answers=answers, **meta)


# ------------------------------------------------------------------------- document


def _price(rng: random.Random) -> str:
    return f"{rng.randint(0, 19)}.{rng.choice((0, 25, 49, 50, 75, 99, rng.randint(0, 99))):02d}"


def receipt_content(rng: random.Random, lo: int, hi: int) -> dict:
    """Items with quantity and line amount; the total is the sum of the amounts (exact, in cents)."""
    items = rng.sample(W.RECEIPT_ITEMS, rng.randint(lo, hi))
    rows = []
    for it in items:
        amount = _price(rng)
        rows.append([it, str(rng.randint(1, 5)), "1.00" if amount == "0.00" else amount])
    total = sum(round(float(r[2]) * 100) for r in rows)
    return {"kind": "receipt", "store": rng.choice(W.STORES), "columns": ["Item", "Qty", "Amount"], "rows": rows,
            "total": f"{total // 100}.{total % 100:02d}"}


def table_content(rng: random.Random, lo: int, hi: int) -> dict:
    cols = list(rng.choice(W.TABLE_SCHEMAS))
    n = rng.randint(lo, hi)
    rows = table_cells(rng, cols, n)
    return {"kind": "table", "columns": cols, "rows": rows}


def doc_markdown(doc: dict) -> str:
    """The target transcription: '# STORE' heading for receipts, the table, then 'Total: x' for receipts."""
    table = markdown_table(doc["columns"], doc["rows"])
    if doc["kind"] == "receipt":
        return f"# {doc['store']}\n\n{table}\n\nTotal: {doc['total']}"
    return table


def build_document(ctx: Ctx) -> Sample:
    k, rng = ctx.knobs, ctx.rng
    kind = rng.choice(k["kinds"])
    make = (lambda r: receipt_content(r, *k["rows"])) if kind == "receipt" else (lambda r: table_content(r, *k["rows"]))
    doc = ctx.in_split(make, lambda d: "doc:" + doc_markdown(d))
    style = pick_background(rng, k["clutter"])
    img = background(rng, ctx.size, style)
    clutter(rng, img, k["clutter"])
    font_name = rng.choice(ctx.fonts)
    (draw_receipt if kind == "receipt" else draw_table)(img, doc, font_name, rng, k["font_size"])
    path = ctx.add_image(img, "doc:" + doc_markdown(doc))
    meta = {"doc": doc, "font": font_name, "background": style}
    qtype = rng.choice(k["qtypes"])
    lang = ctx.lang
    if qtype == "markdown":
        q = P.say(rng, "doc_markdown", lang, doc=P.doc_name(kind, lang))
        return qa(ctx, path, q, doc_markdown(doc), qtype="markdown", **meta)
    if kind == "receipt":
        if rng.random() < 0.5:
            return qa(ctx, path, P.say(rng, "doc_total", lang), doc["total"], qtype="total", **meta)
        row = rng.choice(doc["rows"])
        return qa(ctx, path, P.say(rng, "doc_price", lang, item=row[0]), row[2], qtype="price", **meta)
    r = rng.randrange(len(doc["rows"]))
    c = rng.randrange(1, len(doc["columns"]))
    col = doc["columns"][c] if lang == "en" else W.COLUMN_ZH[doc["columns"][c]]
    q = P.say(rng, "doc_cell", lang, row=doc["rows"][r][0], col=col.lower() if lang == "en" else col)
    return qa(ctx, path, q, doc["rows"][r][c], qtype="cell", **meta)


# ------------------------------------------------------------------------- chart


def chart_content(rng: random.Random, lo: int, hi: int, vmax: int) -> dict | None:
    group = rng.choice(CHART_GROUPS)
    n = min(rng.randint(lo, hi), len(group))
    if n < 2:
        return None
    start = rng.randint(0, len(group) - n)
    labels = list(group[start:start + n]) if group is not CHART_GROUPS[-1] else rng.sample(group, n)
    values = [rng.randint(1, vmax) for _ in labels]
    return {"labels": labels, "values": values, "vmax": vmax}


def chart_key(chart: dict) -> str:
    return "chart:" + ",".join(f"{a}={v}" for a, v in zip(chart["labels"], chart["values"], strict=True))


def build_chart(ctx: Ctx) -> Sample:
    k, rng, lang = ctx.knobs, ctx.rng, ctx.lang
    chart = ctx.in_split(lambda r: chart_content(r, *k["bars"], k["vmax"]), chart_key)
    show_values = rng.random() < k["show_values"]
    style = pick_background(rng, k["clutter"])
    img = background(rng, ctx.size, style)
    clutter(rng, img, k["clutter"])
    font_name = rng.choice(ctx.fonts)
    bar_boxes = draw_chart(img, chart, font_name, rng, show_values)
    path = ctx.add_image(img, chart_key(chart))
    meta = {"chart": {**chart, "bar_boxes": bar_boxes, "show_values": show_values}, "font": font_name,
            "background": style}
    labels, values = chart["labels"], chart["values"]
    qtypes = list(k["qtypes"])
    if values.count(max(values)) > 1:
        qtypes = [q for q in qtypes if q != "max"]
    if values.count(min(values)) > 1:
        qtypes = [q for q in qtypes if q != "min"]
    qtype = rng.choice(qtypes or ["value"])
    if qtype == "value":
        i = rng.randrange(len(labels))
        return qa(ctx, path, P.say(rng, "chart_value", lang, label=labels[i]), str(values[i]), qtype=qtype, **meta)
    if qtype in ("max", "min"):
        i = values.index(max(values) if qtype == "max" else min(values))
        return qa(ctx, path, P.say(rng, f"chart_{qtype}", lang), labels[i], qtype=qtype, choices=labels, **meta)
    if qtype == "count":
        answers = P.count_answers(len(labels), lang)
        return qa(ctx, path, P.say(rng, "chart_count", lang), answers[0], answers=answers, qtype=qtype, **meta)
    if qtype == "compare":  # two bars of different heights, asked either way round: yes/no is balanced
        pairs = [(i, j) for i in range(len(values)) for j in range(len(values)) if values[i] != values[j]]
        i, j = rng.choice(pairs) if pairs else (0, 1)
        answers = P.yes_no(values[i] > values[j], lang)
        q = P.say(rng, "chart_compare", lang, a=labels[i], b=labels[j])
        return qa(ctx, path, q, answers[0], answers=answers, qtype=qtype, choices=[P.YES[lang], P.NO[lang]], **meta)
    md = markdown_table(["Label", "Value"], [[a, str(v)] for a, v in zip(labels, values, strict=True)])
    return qa(ctx, path, P.say(rng, "chart_markdown", lang), md, qtype="markdown", **meta)


# ------------------------------------------------------------------------- registry

TASKS = [
    Task("ocr", build_ocr, levels(
        {"length": (3, 8), "kinds": ("word", "number", "code"), "font_size": (14, 34), "max_rotation": 15.0,
         "clutter": 1, "dark_frac": 0.2, "ground_frac": 0.15},
        {"length": (3, 5), "font_size": (20, 36), "max_rotation": 0.0, "clutter": 0, "dark_frac": 0.0},
        {"length": (6, 8), "font_size": (11, 28), "max_rotation": 30.0, "clutter": 2, "dark_frac": 0.3})),
    Task("document", build_document, levels(
        {"kinds": ("receipt", "table"), "rows": (2, 4), "qtypes": ("markdown", "qa"), "font_size": (10, 13),
         "clutter": 1},
        {"rows": (2, 3), "font_size": (12, 13), "clutter": 0},
        {"rows": (3, 6), "font_size": (9, 12), "clutter": 2})),
    Task("chart", build_chart, levels(
        {"bars": (3, 6), "vmax": 10, "show_values": 0.5, "qtypes": ("value", "max", "min", "count", "compare",
                                                                     "markdown"), "clutter": 1},
        {"bars": (3, 4), "show_values": 1.0, "clutter": 0},
        {"bars": (5, 8), "vmax": 20, "show_values": 0.0, "clutter": 2})),
]
