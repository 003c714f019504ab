"""Family.box_input_size: Qwen2.5-VL's boxes are pixels of the resized input, and the family's rule gives
the size the released processor settings produce; the other conventions are image-relative (None)."""

from __future__ import annotations

import pytest
from PIL import Image

from qwenvl import families
from qwenvl.config import FAMILY_NAMES, QWEN2_5_VL
from qwenvl.processing.image import ImageProcessorConfig, process_image


@pytest.mark.parametrize("size", [(640, 480), (1000, 37), (3000, 2000), (57, 57)])
@pytest.mark.parametrize("budget", [(None, None), (64 * 28 * 28, 256 * 28 * 28)])
def test_qwen2_5_vl_matches_the_processor(size, budget):
    lo, hi = budget
    _, (_, gh, gw) = process_image(Image.new("RGB", size), ImageProcessorConfig(), min_pixels=lo, max_pixels=hi)
    assert families.get(QWEN2_5_VL).box_input_size(size, lo, hi) == (gw * 14, gh * 14)


def test_other_families_are_image_relative():
    for name in FAMILY_NAMES:
        if name != QWEN2_5_VL:
            assert families.get(name).box_input_size((640, 480)) is None, name
