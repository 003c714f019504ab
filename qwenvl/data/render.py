"""Pixels for the synthetic data: backgrounds, clutter, scene shapes, text with fonts and rotation.

Fonts are found offline: Pillow's built-in scalable font (always there when Pillow has FreeType),
plus DejaVu faces from matplotlib's bundled mpl-data or the usual system font folders. `available_fonts`
lists what this machine has; the manifest records the chosen files' hashes, since other font files give
other pixels. Pillow's fonts have no CJK glyphs, so no Chinese is ever rendered into images.

Invariant used by the tests: background and clutter pixels have every channel >= 150 (pale), object
colours (scenes.COLOURS) are saturated or dark, so an object's exact RGB never occurs elsewhere.
Must not: choose content or phrasing; all randomness comes from the caller's rng.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from qwenvl.data.scenes import COLOURS, Scene

# name -> file name; "pil" is Pillow's embedded default font (Aileron), needing no file.
FONT_FILES = {
    "pil": None,
    "dejavu-sans": "DejaVuSans.ttf",
    "dejavu-sans-bold": "DejaVuSans-Bold.ttf",
    "dejavu-sans-oblique": "DejaVuSans-Oblique.ttf",
    "dejavu-serif": "DejaVuSerif.ttf",
    "dejavu-serif-bold": "DejaVuSerif-Bold.ttf",
    "dejavu-mono": "DejaVuSansMono.ttf",
    "dejavu-condensed": "DejaVuSansCondensed.ttf",
}
_SYSTEM_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
                "/usr/share/fonts/truetype", "/usr/local/share/fonts", "/Library/Fonts")
BACKGROUNDS = ("plain", "gradient", "stripes", "grid", "speckle")


def _font_dirs() -> list[Path]:
    dirs = []
    spec = importlib.util.find_spec("matplotlib")  # locates mpl-data without importing matplotlib
    if spec and spec.submodule_search_locations:
        dirs += [Path(p) / "mpl-data" / "fonts" / "ttf" for p in spec.submodule_search_locations]
    return dirs + [Path(d) for d in _SYSTEM_DIRS]


@functools.cache
def available_fonts() -> dict[str, str | None]:
    """Font name -> file path (None for Pillow's built-in), for the FONT_FILES found on this machine."""
    found: dict[str, str | None] = {}
    dirs = _font_dirs()
    for name, fname in FONT_FILES.items():
        if fname is None:
            found[name] = None
            continue
        path = next((d / fname for d in dirs if (d / fname).is_file()), None)
        if path is not None:
            found[name] = str(path)
    return found


def resolve_fonts(names: list[str] | None) -> list[str]:
    """The fonts to use: all available ones when names is None; an unknown/missing name is an error."""
    have = available_fonts()
    if names is None:
        return list(have)
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"fonts {missing} are not available here; available: {sorted(have)}")
    return list(names)


def font_fingerprint(names: list[str]) -> dict[str, str]:
    """name -> sha256[:12] of the font file (Pillow's version for the built-in one), for the manifest."""
    import PIL

    out = {}
    for n in names:
        path = available_fonts()[n]
        digest = None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        out[n] = digest or f"pillow-{PIL.__version__}"
    return out


@functools.lru_cache(maxsize=512)
def font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = available_fonts()[name]
    return ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)


# ------------------------------------------------------------------------- backgrounds


def pale(rng: random.Random, lo: int = 205) -> tuple[int, int, int]:
    """A light, low-saturation colour (every channel in [lo, 255])."""
    base = rng.randint(lo + 15, 255)
    return tuple(min(255, max(lo, base + rng.randint(-15, 15))) for _ in range(3))  # type: ignore[return-value]


def background(rng: random.Random, size: tuple[int, int], style: str) -> Image.Image:
    """A pale canvas: plain, gradient, stripes, grid or speckle. Kept smooth: per-pixel noise makes
    PNGs 50x bigger and 10x slower to encode without teaching anything the clutter does not."""
    w, h = size
    c0 = pale(rng)
    if style in ("gradient", "speckle"):  # per-pixel work: numpy, seeded from the sample's rng
        return _gradient(rng, size, c0) if style == "gradient" else _speckle(rng, size, c0)
    img = Image.new("RGB", size, c0)
    d = ImageDraw.Draw(img)
    if style == "stripes":
        c1, step = pale(rng), rng.randint(8, 24)
        for k in range(-h, w, step * 2):
            d.polygon([(k, 0), (k + step, 0), (k + step + h, h), (k + h, h)], fill=c1)
    elif style == "grid":
        c1, step = pale(rng, 170), rng.randint(10, 28)
        for x in range(rng.randint(0, step), w, step):
            d.line([(x, 0), (x, h)], fill=c1)
        for y in range(rng.randint(0, step), h, step):
            d.line([(0, y), (w, y)], fill=c1)
    elif style != "plain":
        raise ValueError(f"unknown background style {style!r}; expected one of {BACKGROUNDS}")
    return img


def _gradient(rng: random.Random, size: tuple[int, int], c0: tuple[int, int, int]) -> Image.Image:
    """A linear blend from c0 to another pale colour, left-right or top-bottom."""
    w, h = size
    c1 = pale(rng)
    horizontal = rng.random() < 0.5
    n = w if horizontal else h
    ramp = np.rint(np.array(c0) + (np.array(c1) - np.array(c0)) * np.linspace(0.0, 1.0, n)[:, None]).astype(np.uint8)
    strip = Image.fromarray(ramp[None] if horizontal else ramp[:, None])  # 1 x n or n x 1
    return strip.resize(size, Image.Resampling.NEAREST)  # nearest = exact copies of the strip


def _speckle(rng: random.Random, size: tuple[int, int], c0: tuple[int, int, int]) -> Image.Image:
    """c0 with one pixel in 60 set to a random pale colour (channels >= 160)."""
    w, h = size
    g = np.random.default_rng(rng.getrandbits(64))
    n = w * h // 60
    a = np.array(Image.new("RGB", size, c0))
    base = g.integers(175, 256, n)[:, None]
    a[g.integers(0, h, n), g.integers(0, w, n)] = np.clip(base + g.integers(-15, 16, (n, 3)), 160, 255)
    return Image.fromarray(a)


def clutter(rng: random.Random, img: Image.Image, level: int) -> None:
    """Faint scribbles and outline shapes (channels >= 150) under the content; level 0 draws nothing."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    for _ in range(level * 3):
        c = pale(rng, 150)
        kind = rng.random()
        x, y = rng.randrange(w), rng.randrange(h)
        if kind < 0.5:
            d.line([(x, y), (rng.randrange(w), rng.randrange(h))], fill=c, width=rng.randint(1, 2))
        elif kind < 0.8:
            r = rng.randint(4, max(5, min(w, h) // 8))
            d.ellipse((x - r, y - r, x + r, y + r), outline=c)
        else:
            r = rng.randint(4, max(5, min(w, h) // 8))
            d.rectangle((x - r, y - r, x + r, y + r), outline=c)


def pick_background(rng: random.Random, clutter_level: int) -> str:
    return "plain" if clutter_level == 0 else rng.choice(BACKGROUNDS)


# ------------------------------------------------------------------------- scenes


def draw_objects(img: Image.Image, scene: Scene) -> None:
    """Fill each object in its exact colour, no anti-aliasing (so boxes and blob counts are exact)."""
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            d.ellipse(o.points(), fill=fill)
        else:
            d.polygon(o.points(), fill=fill)


def draw_scene(rng: random.Random, scene: Scene, clutter_level: int) -> tuple[Image.Image, str]:
    """Background (style chosen by rng), clutter, then the objects; returns (image, background style)."""
    style = pick_background(rng, clutter_level)
    img = background(rng, scene.size, style)
    clutter(rng, img, clutter_level)
    draw_objects(img, scene)
    return img, style


# ------------------------------------------------------------------------- text


def text_layer(text: str, font_name: str, size: int, angle: float) -> Image.Image:
    """An "L" mask of the text rotated by angle degrees (counter-clockwise), cropped to its ink."""
    f = font(font_name, size)
    x0, y0, x1, y1 = f.getbbox(text)
    mask = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(mask).text((2 - x0, 2 - y0), text, font=f, fill=255)
    if angle:
        mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    bbox = mask.getbbox()
    return mask.crop(bbox) if bbox else mask


def text_colour(rng: random.Random, bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour readable on bg: dark on light backgrounds, light on dark ones."""
    if sum(bg) > 3 * 128:
        return rng.choice([(20, 20, 20), (40, 40, 90), (110, 20, 20), (20, 80, 30), (60, 60, 60)])
    return rng.choice([(250, 250, 250), (255, 230, 120), (200, 240, 255)])


def paste_text(img: Image.Image, mask: Image.Image, xy: tuple[int, int], colour: tuple[int, int, int]) -> list[int]:
    """Stamp a text mask at xy in colour; returns its [x1, y1, x2, y2] ink box (x2/y2 exclusive)."""
    img.paste(Image.new("RGB", mask.size, colour), xy, mask)
    x, y = xy
    return [max(0, x), max(0, y), min(img.width, x + mask.width), min(img.height, y + mask.height)]


def dark_background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A dark solid canvas (chalkboard, night sign) for light text; OCR only."""
    return Image.new("RGB", size, tuple(rng.randint(10, 70) for _ in range(3)))


def encode_png(img: Image.Image, level: int = 1) -> bytes:
    """An RGB image as PNG bytes: no row filter, zlib level 1. A plain PNG any reader opens; written by hand
    because Pillow's encoder (adaptive row filters) takes ~3 ms for a 224x224 image and this ~0.8 ms,
    which is most of a sample's cost, at about the same size (~6 KB for a scene)."""
    a = np.asarray(img.convert("RGB"))
    h, w, _ = a.shape
    rows = np.zeros((h, 1 + w * 3), np.uint8)  # each row: filter byte 0 (None), then RGB bytes
    rows[:, 1:] = a.reshape(h, w * 3)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + _chunk(b"IEND", b""))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def save_png(img: Image.Image, path: str | os.PathLike) -> None:
    Path(path).write_bytes(encode_png(img))
