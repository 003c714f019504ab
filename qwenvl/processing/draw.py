"""Draw grounding boxes (original-image pixels, see grounding.py) with labels onto a copy of an image.

Uses Pillow's built-in default font only (no font files, no downloads). Line width and font size
scale with the image so boxes stay visible on a 16 px thumbnail and on a 10,000 px scan.

Must not: parse model text (grounding.py does) or modify the caller's image.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from qwenvl.processing.grounding import Box

# Twelve well-separated colours (hue steps with alternating lightness), cycled per distinct label.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (0, 0, 128),
)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 with FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()  # fixed-size bitmap fallback


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    # Dark text on light fills, white on dark ones (ITU-R BT.601 luma).
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 150 else (255, 255, 255)


def box_colours(boxes: Sequence[Box]) -> list[tuple[int, int, int]]:
    """One colour per box: boxes sharing a label share a colour; unlabelled boxes each get the next."""
    by_label: dict[str, tuple[int, int, int]] = {}
    out, n = [], 0
    for b in boxes:
        if b.label is not None and b.label in by_label:
            out.append(by_label[b.label])
            continue
        colour = PALETTE[n % len(PALETTE)]
        n += 1
        if b.label is not None:
            by_label[b.label] = colour
        out.append(colour)
    return out


def draw_boxes(image: Image.Image, boxes: Sequence[Box], width: int | None = None) -> Image.Image:
    """A copy of image (RGB, or RGBA if it had alpha) with each box outlined and its label written
    on a filled tag above the box (inside it when there is no room above). Same size as the input."""
    out = image.copy() if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    w, h = out.size
    line = width or max(1, round(min(w, h) / 250))
    font = _font(max(10, min(48, round(min(w, h) / 40))))
    draw = ImageDraw.Draw(out)
    for box, colour in zip(boxes, box_colours(boxes), strict=True):
        # Round to pixel centres and keep inside the canvas; a box beyond the edge is drawn on the edge.
        x1, x2 = sorted(min(max(round(v), 0), w - 1) for v in (box.x1, box.x2))
        y1, y2 = sorted(min(max(round(v), 0), h - 1) for v in (box.y1, box.y2))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if box.label:
            _draw_label(draw, font, box.label, (x1, y1), colour, (w, h))
    return out


def _draw_label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    label: str,
    corner: tuple[int, int],
    colour: tuple[int, int, int],
    size: tuple[int, int],
) -> None:
    try:
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    except UnicodeEncodeError:
        # The bitmap fallback font is Latin-1 only; show the label escaped rather than fail.
        label = label.encode("ascii", "backslashreplace").decode("ascii")
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    tw, th = right - left + 4, bottom - top + 4
    x = min(corner[0], max(0, size[0] - tw))
    y = corner[1] - th if corner[1] - th >= 0 else corner[1]
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
    draw.text((x + 2 - left, y + 2 - top), label, fill=_text_colour(colour), font=font)
