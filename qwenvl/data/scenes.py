"""Scene specs for the synthetic data: shapes, colours, sizes, placement, regions and relations.

A scene is pure data (no pixels): a list of `Obj` with integer geometry, so the same spec always
draws the same pixels (render.py) and its boxes are exact. Boxes are [x1, y1, x2, y2] in image
pixels with exclusive x2/y2: the drawn pixels are columns x1..x2-1 and rows y1..y2-1.

Must not: draw, pick phrasing, or seed anything; every random choice comes from the caller's rng.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Saturated colours that stay distinct from each other and from the pale backgrounds (all channels of
# a background are >= 190, see render.py), so a pixel of exactly this RGB can only be an object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 190, 0),
    "orange": (245, 120, 20),
    "purple": (130, 50, 180),
    "pink": (235, 90, 170),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
    "gray": (120, 120, 120),
    "cyan": (0, 185, 200),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
# Radius bands as a fraction of min(W, H), with gaps between them so "small/medium/large" is decidable.
SIZES: dict[str, tuple[float, float]] = {"small": (0.05, 0.07), "medium": (0.09, 0.11), "large": (0.14, 0.17)}
REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("left", "right", "above", "below")  # a is <relation> of b
KEY_GRID = 8  # content keys quantise centres to an 8x8 grid: near-identical scenes share a key (and a split)


@dataclass(frozen=True)
class Obj:
    """One filled shape: centre (cx, cy) and radius r in pixels (integers)."""

    shape: str
    colour: str
    size: str
    cx: int
    cy: int
    r: int

    def points(self) -> list[tuple[int, int]]:
        """Polygon vertices (integer pixels); for a circle the two corners of its ellipse bbox."""
        cx, cy, r = self.cx, self.cy, self.r
        if self.shape == "circle":
            return [(cx - r, cy - r), (cx + r, cy + r)]
        if self.shape == "square":
            h = round(r * 0.85)
            return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        if self.shape == "diamond":
            return [(cx, cy - r), (cx + round(r * 0.8), cy), (cx, cy + r), (cx - round(r * 0.8), cy)]
        if self.shape == "star":
            return [_polar(cx, cy, r if i % 2 == 0 else r * 0.45, -90 + 36 * i) for i in range(10)]
        n, start = {"triangle": (3, -90), "hexagon": (6, 0)}[self.shape]
        return [_polar(cx, cy, r, start + 360 / n * i) for i in range(n)]

    def box(self) -> list[int]:
        """[x1, y1, x2, y2] of the drawn pixels, x2/y2 exclusive (PIL fills vertices inclusively)."""
        pts = self.points()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]

    def as_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size,
                "cx": self.cx, "cy": self.cy, "r": self.r, "box": self.box()}


def _polar(cx: int, cy: int, r: float, deg: float) -> tuple[int, int]:
    a = math.radians(deg)
    return round(cx + r * math.cos(a)), round(cy + r * math.sin(a))


@dataclass
class Scene:
    """Objects on a canvas of `size` = (W, H); `objects` are drawn in order (none overlap)."""

    size: tuple[int, int]
    objects: list[Obj] = field(default_factory=list)

    def key(self) -> str:
        """Content key for split assignment: the objects with centres quantised, order-free, no background."""
        w, h = self.size
        parts = sorted(f"{o.shape}.{o.colour}.{o.size}.{o.cx * KEY_GRID // w}.{o.cy * KEY_GRID // h}"
                       for o in self.objects)
        return "scene:" + "|".join(parts)


def radius(rng: random.Random, size: str, canvas: tuple[int, int]) -> int:
    lo, hi = SIZES[size]
    side = min(canvas)
    return max(3, round(rng.uniform(lo, hi) * side))


def place(
    rng: random.Random,
    specs: list[tuple[str, str, str]],
    canvas: tuple[int, int],
    gap: int = 4,
    tries: int = 60,
    bounds: list[tuple[int, int, int, int] | None] | None = None,
) -> list[Obj] | None:
    """Objects for (shape, colour, size) specs at random non-overlapping spots, or None if they don't fit.

    gap: minimum pixels between the circumscribed circles, so same-colour shapes never touch (which keeps
    them countable as separate blobs). bounds: optional per-object (x1, y1, x2, y2) window for the centre.
    """
    w, h = canvas
    placed: list[Obj] = []
    for i, (shape, colour, size) in enumerate(specs):
        r = radius(rng, size, canvas)
        x1, y1, x2, y2 = (bounds[i] if bounds and bounds[i] else None) or (0, 0, w, h)
        lo_x, hi_x = max(x1, r + 2), min(x2, w - r - 3)
        lo_y, hi_y = max(y1, r + 2), min(y2, h - r - 3)
        if lo_x > hi_x or lo_y > hi_y:
            return None
        for _ in range(tries):
            cx, cy = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
            if all(math.hypot(cx - o.cx, cy - o.cy) >= r + o.r + gap for o in placed):
                placed.append(Obj(shape, colour, size, cx, cy, r))
                break
        else:
            return None
    return placed


def region_of(o: Obj, canvas: tuple[int, int], margin: float = 0.05) -> str | None:
    """Which of the 3x3 regions holds the centre; None when it is within margin*side of a third line."""
    w, h = canvas
    col = _third(o.cx / w, margin)
    row = _third(o.cy / h, margin)
    if col is None or row is None:
        return None
    return REGIONS[row * 3 + col]


def _third(t: float, margin: float) -> int | None:
    for edge in (1 / 3, 2 / 3):
        if abs(t - edge) < margin:
            return None
    return min(int(t * 3), 2)


def region_window(name: str, canvas: tuple[int, int], margin: float = 0.08) -> tuple[int, int, int, int]:
    """Centre window inside region `name`, kept margin*side away from the third lines."""
    w, h = canvas
    i = REGIONS.index(name)
    row, col = divmod(i, 3)
    return (round((col / 3 + (margin if col else 0)) * w), round((row / 3 + (margin if row else 0)) * h),
            round(((col + 1) / 3 - (margin if col < 2 else 0)) * w),
            round(((row + 1) / 3 - (margin if row < 2 else 0)) * h))


def relation(a: Obj, b: Obj) -> str | None:
    """Where a is relative to b, when unambiguous: separated boxes along the dominant axis, whose
    offset is at least twice the other axis's; None otherwise."""
    ax1, ay1, ax2, ay2 = a.box()
    bx1, by1, bx2, by2 = b.box()
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= 2 * abs(dy):
        if ax2 <= bx1:
            return "left"
        if bx2 <= ax1:
            return "right"
    if abs(dy) >= 2 * abs(dx):
        if ay2 <= by1:
            return "above"
        if by2 <= ay1:
            return "below"
    return None


def matches(o: Obj, colour: str | None = None, shape: str | None = None, size: str | None = None) -> bool:
    return (colour in (None, o.colour)) and (shape in (None, o.shape)) and (size in (None, o.size))


def distinguishing(target: Obj, objects: list[Obj]) -> dict[str, str] | None:
    """The fewest attributes (shape; colour+shape; size+colour+shape) that pick out target alone."""
    for attrs in (("shape",), ("colour", "shape"), ("size", "colour", "shape")):
        want = {a: getattr(target, a) for a in attrs}
        if sum(matches(o, **want) for o in objects) == 1:
            return want
    return None


def random_spec(rng: random.Random, sizes: tuple[str, ...] = tuple(SIZES), avoid: set | None = None,
                ) -> tuple[str, str, str]:
    """A random (shape, colour, size); `avoid` holds (shape, colour) pairs not to produce."""
    while True:
        spec = (rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(sizes))
        if not avoid or (spec[0], spec[1]) not in avoid:
            return spec
