"""The hand-written PNG encoder gives files Pillow reads back pixel-exact; fonts resolve offline."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from qwenvl.data.render import available_fonts, encode_png, font, text_layer


def test_png_round_trips_pixel_exact() -> None:
    rng = np.random.default_rng(0)
    for w, h in ((224, 224), (97, 31), (1, 1)):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        back = Image.open(io.BytesIO(encode_png(Image.fromarray(a))))
        back.load()
        assert back.mode == "RGB" and back.size == (w, h)
        assert np.array_equal(np.asarray(back), a)


def test_fonts_are_found_offline_and_render() -> None:
    fonts = available_fonts()
    assert "pil" in fonts and fonts["pil"] is None  # Pillow's built-in scalable font is always there
    for name in fonts:
        assert font(name, 20).getbbox("Hg")[3] > 10
        mask = text_layer("Ab3", name, 20, 25.0)
        assert mask.mode == "L" and mask.getbbox() == (0, 0, *mask.size)
