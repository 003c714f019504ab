"""draw_boxes: same-size copy, outlines where the boxes are, labels, colours, tiny and huge images."""

from __future__ import annotations

from PIL import Image

from qwenvl.processing.draw import PALETTE, box_colours, draw_boxes
from qwenvl.processing.grounding import Box

WHITE = (255, 255, 255)


def test_outline_pixels_change_and_the_rest_does_not() -> None:
    image = Image.new("RGB", (400, 300), WHITE)
    boxes = [Box("dog", 50, 100, 200, 250), Box(None, 250, 20, 380, 120)]
    out = draw_boxes(image, boxes)
    assert out.size == image.size and out.mode == "RGB"
    assert image.getpixel((50, 175)) == WHITE  # the caller's image is untouched
    c0, c1 = box_colours(boxes)
    assert c0 != c1
    # Every side of each outline carries its box colour.
    for (x1, y1, x2, y2), c in [((50, 100, 200, 250), c0), ((250, 20, 380, 120), c1)]:
        mx, my = (x1 + x2) // 2, (y1 + y2) // 2
        assert [out.getpixel(p) for p in [(x1, my), (x2, my), (mx, y1), (mx, y2)]] == [c] * 4
        assert out.getpixel((mx, my)) == WHITE  # outline only, the inside stays visible
    assert out.getpixel((10, 290)) == WHITE
    # The label tag sits just above the labelled box, filled with its colour.
    tag = out.crop((50, 70, 120, 100))
    assert c0 in [colour for _, colour in tag.getcolors(10000)]
    assert tag.getcolors(10000) != [(70 * 30, WHITE)]


def test_colours_follow_labels() -> None:
    boxes = [Box("a", 0, 0, 1, 1), Box("b", 0, 0, 1, 1), Box("a", 0, 0, 1, 1), Box(None, 0, 0, 1, 1)]
    colours = box_colours(boxes)
    assert colours[0] == colours[2] and len({colours[0], colours[1], colours[3]}) == 3
    many = box_colours([Box(str(i), 0, 0, 1, 1) for i in range(len(PALETTE))])
    assert len(set(many)) == len(PALETTE)


def test_tiny_huge_and_odd_inputs_do_not_crash() -> None:
    for size, mode in [((3, 2), "RGB"), ((1, 1), "L"), ((64, 48), "P"), ((5000, 3000), "RGB"), ((80, 60), "RGBA")]:
        image = Image.new(mode, size)
        w, h = size
        boxes = [
            Box("cat 猫", 0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h),  # the built-in font lacks CJK: drawn as boxes
            Box(None, -50, -50, 2 * w, 2 * h),  # beyond every edge: drawn on the edges
            Box("flat", 0.5 * w, 0.5 * h, 0.5 * w, 0.5 * h),  # zero area
            Box("swapped", 0.9 * w, 0.9 * h, 0.1 * w, 0.1 * h),
        ]
        out = draw_boxes(image, boxes)
        assert out.size == size
        assert out.mode == ("RGBA" if mode == "RGBA" else "RGB")
    big = draw_boxes(Image.new("RGB", (5000, 3000), WHITE), [Box("x", 1000, 1000, 4000, 2000)])
    assert big.getpixel((1000, 1500)) != WHITE and big.getpixel((2500, 1500)) == WHITE


def test_no_boxes_gives_an_equal_copy() -> None:
    image = Image.new("RGB", (20, 10), (1, 2, 3))
    out = draw_boxes(image, [])
    assert out is not image and out.tobytes() == image.tobytes()
