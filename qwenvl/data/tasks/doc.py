"""Drawing and markdown for the document and chart tasks: receipts, ruled tables, bar charts.
Must not: choose phrasing; all randomness comes from the caller's rng.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from qwenvl.data import words as W
from qwenvl.data.render import font
from qwenvl.data.scenes import COLOURS

INK = (25, 25, 25)
CHART_GROUPS = (
    ("A", "B", "C", "D", "E", "F", "G", "H"),
    ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"),
    ("Q1", "Q2", "Q3", "Q4"),
    tuple(w for w in W.CHART_LABELS if len(w) > 2 and w not in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun",
                                                                 "Jan", "Feb", "Mar", "Apr", "May", "Jun")),
)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(rng: random.Random, kind: str) -> str:
    if kind.startswith(("int:", "dec:")):
        _, lo, hi = kind.split(":")
        if kind.startswith("int"):
            return str(rng.randint(int(lo), int(hi)))
        return f"{rng.randint(int(lo), int(hi) - 1)}.{rng.randint(0, 99):02d}"
    pool = {"name": W.NAMES, "city": W.CITIES, "word": W.TEAMS, "item": W.RECEIPT_ITEMS}[kind]
    return rng.choice(pool)


def table_cells(rng: random.Random, columns: list[str], n: int) -> list[list[str]]:
    """n rows; the first column's values are distinct, so 'the <col> of <row>' names one cell."""
    first_kind = W.COLUMN_KIND[columns[0]]
    pool = {"name": W.NAMES, "city": W.CITIES, "word": W.TEAMS, "item": W.RECEIPT_ITEMS}[first_kind]
    firsts = rng.sample(pool, n)
    return [[f] + [_cell(rng, W.COLUMN_KIND[c]) for c in columns[1:]] for f in firsts]


def _text_w(f, s: str) -> int:
    x0, _, x1, _ = f.getbbox(s)
    return x1 - x0


def draw_receipt(img: Image.Image, doc: dict, font_name: str, rng: random.Random, sizes: list[int]) -> None:
    """A white slip: store name, ITEM / QTY / AMOUNT header, a line per item, rule, TOTAL (the sum of the
    amounts); shrinks the font until it fits."""
    w, h = img.size
    lines = 4 + len(doc["rows"]) + 1
    size = rng.randint(*sizes)
    while size > 7 and (lines * (size + 4) > h - 16):
        size -= 1
    f = font(font_name, size)
    step = size + 4
    header = [c.upper() for c in doc["columns"]]
    name_w = max(_text_w(f, s) for s in [header[0], *(r[0] for r in doc["rows"])])
    qty_w = _text_w(f, header[1])
    amount_w = max(_text_w(f, s) for s in [header[2], doc["total"], *(r[2] for r in doc["rows"])])
    paper_w = min(w - 8, max(int(w * 0.6), name_w + qty_w + amount_w + 4 * size))
    x0 = rng.randint(4, w - paper_w - 4)
    y0 = rng.randint(4, max(4, h - lines * step - 12))
    d = ImageDraw.Draw(img)
    bottom = min(h - 4, y0 + lines * step + 8)
    d.rectangle((x0, y0, x0 + paper_w, bottom), fill=(252, 252, 248), outline=(200, 200, 200))
    pad, y = 5, y0 + 4
    right = x0 + paper_w - pad
    qty_x = x0 + pad + name_w + size
    d.text((x0 + (paper_w - _text_w(f, doc["store"])) // 2, y), doc["store"], font=f, fill=INK)
    y += step + step // 2
    for row in [header, *doc["rows"]]:
        d.text((x0 + pad, y), row[0], font=f, fill=INK)
        d.text((qty_x + (qty_w - _text_w(f, row[1])) // 2, y), row[1], font=f, fill=INK)
        d.text((right - _text_w(f, row[2]), y), row[2], font=f, fill=INK)
        y += step
    d.line((x0 + pad, y + step // 4, right, y + step // 4), fill=(120, 120, 120))
    y += step // 2
    d.text((x0 + pad, y), "TOTAL", font=f, fill=INK)
    d.text((right - _text_w(f, doc["total"]), y), doc["total"], font=f, fill=INK)


def draw_table(img: Image.Image, doc: dict, font_name: str, rng: random.Random, sizes: list[int]) -> None:
    """A ruled table with a shaded header row; shrinks the font until it fits the canvas."""
    w, h = img.size
    cols, rows = doc["columns"], doc["rows"]
    size = rng.randint(*sizes)
    while True:
        f = font(font_name, size)
        pad = max(3, size // 2)
        widths = [max(_text_w(f, str(r[c])) for r in [cols, *rows]) + 2 * pad for c in range(len(cols))]
        row_h = size + 2 * pad
        if (sum(widths) <= w - 8 and row_h * (len(rows) + 1) <= h - 8) or size <= 7:
            break
        size -= 1
    tw, th = sum(widths), row_h * (len(rows) + 1)
    x0, y0 = rng.randint(4, max(4, w - tw - 4)), rng.randint(4, max(4, h - th - 4))
    d = ImageDraw.Draw(img)
    d.rectangle((x0, y0, x0 + tw, y0 + th), fill=(253, 253, 253))
    d.rectangle((x0, y0, x0 + tw, y0 + row_h), fill=(225, 230, 240))
    for i, row in enumerate([cols, *rows]):
        x = x0
        for c, text in enumerate(row):
            d.text((x + pad, y0 + i * row_h + pad), str(text), font=f, fill=INK, anchor="lt")
            x += widths[c]
    grid = (90, 90, 90)
    for i in range(len(rows) + 2):
        d.line((x0, y0 + i * row_h, x0 + tw, y0 + i * row_h), fill=grid)
    x = x0
    for wd in [0, *widths]:
        x += wd
        d.line((x, y0, x, y0 + th), fill=grid)


def draw_chart(img: Image.Image, chart: dict, font_name: str, rng: random.Random, show_values: bool) -> list[list[int]]:
    """Vertical bars on a y axis with ticks and grid lines; labels under the bars, values on top if asked.
    Returns each bar's [x1, y1, x2, y2]."""
    w, h = img.size
    labels, values, vmax = chart["labels"], chart["values"], chart["vmax"]
    small = font(font_name, max(8, min(w, h) // 22))
    left, right, top, bottom = 26, w - 6, 10 + (12 if show_values else 0), h - 18
    slot = (right - left) / len(labels)
    lab_size = max(8, min(w, h) // 22)
    while lab_size > 7 and max(_text_w(font(font_name, lab_size), s) for s in labels) > slot - 2:
        lab_size -= 1
    lab_font = font(font_name, lab_size)
    d = ImageDraw.Draw(img)
    d.rectangle((left, top - 4, right, bottom), fill=(253, 253, 253))
    tick = 2 if vmax <= 10 else 5
    for v in range(0, vmax + 1, tick):
        y = bottom - round(v / vmax * (bottom - top))
        d.line((left, y, right, y), fill=(215, 215, 215))
        d.text((left - 3, y), str(v), font=small, fill=INK, anchor="rm")
    d.line((left, top - 4, left, bottom), fill=INK)
    d.line((left, bottom, right, bottom), fill=INK)
    one = rng.random() < 0.5
    palette = list(COLOURS)
    base = rng.choice(palette)
    boxes = []
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        cx = left + slot * (i + 0.5)
        bw = max(4, round(slot * 0.6))
        x1, x2 = round(cx - bw / 2), round(cx + bw / 2)
        y1 = bottom - round(v / vmax * (bottom - top))
        d.rectangle((x1, y1, x2, bottom - 1), fill=COLOURS[base if one else rng.choice(palette)])
        boxes.append([x1, y1, x2 + 1, bottom])
        d.text((round(cx), bottom + 3), lab, font=lab_font, fill=INK, anchor="mt")
        if show_values:
            d.text((round(cx), y1 - 2), str(v), font=small, fill=INK, anchor="mb")
    return boxes
